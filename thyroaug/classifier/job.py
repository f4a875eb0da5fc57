"""The train_classifier job: one scenario -> a trained ResNet18, external evaluation, an MLflow run.

``train_and_evaluate`` is what ``thyroaug train-classifier``, the MLproject entry point and the
study job call. Steps:

1. parse the scenario; load every synthetic set it names (local folder, artifact URI or run id),
   check image size / cohort hash / that no set was conditioned on validation or external cases;
2. resize the cohort (and the sets) once to the profile's input size (antialiased bilinear);
3. assemble the training set (O + sets + CA made from the training images); check that the
   validation and external sets are exactly the cohort's rows, never augmented;
4. train (``thyroaug.classifier.train.fit``), keep the best validation epoch;
5. evaluate on the external centers with ``thyroaug.evaluation``: Table 2 metrics, confusion
   matrix, ROC, bootstrap distributions, Grad-CAM;
6. log it all to MLflow (see ``train_and_evaluate``) and return a summary dict.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from thyroaug import CLASSES
from thyroaug.classifier.config import ClassifierConfig
from thyroaug.classifier.model import gradcam_layer
from thyroaug.classifier.train import (
    EpochCallback,
    FitResult,
    cpu_name,
    fit,
    predict_proba,
    resize_cohort,
    resize_images,
    torch_threads,
)
from thyroaug.config import to_dict
from thyroaug.data.cohort import PreparedCohort
from thyroaug.errors import ScenarioError
from thyroaug.scenarios import (
    LoadedSynthetic,
    Scenario,
    TrainingSet,
    assemble_training_set,
    assert_not_augmented,
    check_compatible,
    check_no_leakage,
    require_synthetic,
    resolve_synthetic,
    tensor_sha256,
)
from thyroaug.synthetic import SyntheticSet

log = logging.getLogger(__name__)

STEP_TAG = "train_classifier"
BOOTSTRAP_ARTIFACT = "bootstrap/bootstrap.csv"
SyntheticInput = SyntheticSet | LoadedSynthetic | str | Path


def default_cohort_dir() -> Path:
    """``$THYROAUG_HOME/outputs/cohort`` (THYROAUG_HOME defaults to the current directory).

    This is where ``thyroaug prepare`` / ``mlflow run . -e prepare_data`` write by default when run
    from the same folder.
    """
    from thyroaug.tracking.setup import project_home

    return project_home() / "outputs" / "cohort"


@dataclass
class ScenarioData:
    """Everything a scenario trains and is evaluated on, at the classifier's input size."""

    scenario: Scenario
    train: TrainingSet
    val: PreparedCohort
    external: PreparedCohort
    synthetic: dict[str, LoadedSynthetic] = field(default_factory=dict)
    input_size: int = 0


def _load_synthetic(
    scenario: Scenario, synthetic: Mapping[str, SyntheticInput] | None
) -> dict[str, LoadedSynthetic]:
    require_synthetic(scenario, (synthetic or {}).keys())  # fail before any download
    loaded: dict[str, LoadedSynthetic] = {}
    for key, item in (synthetic or {}).items():
        method = key.upper()
        if method not in scenario.synthetic_methods:
            log.warning("synthetic set %s given but scenario %s does not use it", method, scenario)
            continue
        if isinstance(item, LoadedSynthetic):
            loaded[method] = item
        elif isinstance(item, SyntheticSet):
            sha = tensor_sha256(item.images, item.labels)
            loaded[method] = LoadedSynthetic(method, item, "<in-memory>", None, sha)
        else:
            loaded[method] = resolve_synthetic(method, str(item))
    return loaded


def prepare_scenario_data(
    cohort: PreparedCohort,
    scenario: str | Scenario,
    cfg: ClassifierConfig,
    synthetic: Mapping[str, SyntheticInput] | None = None,
    *,
    progress: bool = True,
) -> ScenarioData:
    """Steps 1–3 of the job: load and check synthetic sets, resize, assemble, check eval sets.

    Raises:
        ScenarioError: missing / incompatible / leaking synthetic sets, or an empty split.
    """
    sc = Scenario.parse(scenario)
    loaded = _load_synthetic(sc, synthetic)
    for item in loaded.values():
        check_compatible(item, cohort, cfg.image_size)
    check_no_leakage({m: item.data for m, item in loaded.items()}, cohort)
    if cohort.size < cfg.image_size:
        log.warning(
            "cohort images are %d px, below image_size %d: training at %d px (no upsampling)",
            cohort.size,
            cfg.image_size,
            cohort.size,
        )
    resized = resize_cohort(cohort, cfg.image_size)
    sets = {
        m: SyntheticSet(
            resize_images(item.data.images, cfg.image_size),
            item.data.labels,
            item.data.manifest,
            item.data.info,
        )
        for m, item in loaded.items()
    }
    splits = {s: resized.subset(s) for s in ("train", "val", "external")}
    empty = [s for s, part in splits.items() if len(part) == 0]
    if empty:
        raise ScenarioError(
            f"cohort has no {', '.join(empty)} case(s); the classifier needs training, validation "
            "and external cases (see `thyroaug prepare --train-centers/--external-centers`)"
        )
    train = assemble_training_set(
        sc,
        splits["train"],
        sets,
        per_class=cfg.per_class_synthetic,
        seed=cfg.seed,
        progress=progress,
    )
    assert_not_augmented(splits["val"], resized, "val")
    assert_not_augmented(splits["external"], resized, "external")
    return ScenarioData(sc, train, splits["val"], splits["external"], loaded, resized.size)


def _predictions_frame(part: PreparedCohort, probs: np.ndarray, split: str) -> pd.DataFrame:
    """case_id, center, split, true, pred, prob_<CLASS> (no patient ids)."""
    df = pd.DataFrame(
        {
            "case_id": part.table["case_id"].astype(str).to_numpy(),
            "center": part.table["center"].astype(str).to_numpy(),
            "split": split,
            "true": [CLASSES[i] for i in part.labels.numpy()],
            "pred": [CLASSES[i] for i in probs.argmax(1)],
        }
    )
    for k, name in enumerate(CLASSES):
        df[f"prob_{name}"] = probs[:, k]
    return df


def _write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path


def _write_csv(path: Path, df: pd.DataFrame, index: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=index)
    os.replace(tmp, path)
    return path


def evaluate_and_report(
    result: FitResult,
    data: ScenarioData,
    cfg: ClassifierConfig,
    out_dir: Path,
    *,
    name: str,
    external: bool = True,
) -> dict[str, Any]:
    """Step 5: metrics, bootstrap, plots, Grad-CAM and predictions written under ``out_dir``.

    Args:
        external: also evaluate on the external centers (False for hyperparameter search, which
            must only ever look at validation numbers).

    Returns:
        {"metrics": flat dict (external_*, best_val_*, bootstrap_*), "files": {key: path}}.
    """
    from thyroaug.evaluation import gradcam, plots, stats
    from thyroaug.evaluation import metrics as M

    model = result.model
    cl = cfg.channels_last
    files: dict[str, Path] = {}
    val_y = data.val.labels.numpy()
    val_p = predict_proba(model, data.val.images, batch_size=cfg.eval_batch_size, channels_last=cl)
    val_m = M.compute_metrics(val_y, val_p)
    metrics: dict[str, float] = {f"best_val_{k}": v for k, v in val_m.items()}
    metrics["best_val_loss"] = result.best_val_loss
    metrics["best_epoch"] = float(result.best_epoch)
    files["history"] = _write_csv(out_dir / "metrics" / "history.csv", pd.DataFrame(result.history))
    summary: dict[str, Any] = {"scenario": name, "best_val": val_m, "best_epoch": result.best_epoch}
    predictions = [_predictions_frame(data.val, val_p, "val")]
    if not external:
        files["metrics_json"] = _write_json(out_dir / "metrics" / "metrics.json", summary)
        files["predictions"] = _write_csv(
            out_dir / "predictions" / "predictions.csv", predictions[0]
        )
        return {"metrics": metrics, "files": files}

    ext_y = data.external.labels.numpy()
    ext_p = predict_proba(
        model, data.external.images, batch_size=cfg.eval_batch_size, channels_last=cl
    )
    ext_m = M.compute_metrics(ext_y, ext_p)
    metrics.update({f"external_{k}": v for k, v in ext_m.items()})
    table = M.metrics_table(ext_m, name)
    files["metrics_table"] = _write_csv(out_dir / "metrics" / "metrics_table.csv", table, True)
    files["metrics_json"] = _write_json(
        out_dir / "metrics" / "metrics.json", {**summary, "external": ext_m}
    )
    predictions.append(_predictions_frame(data.external, ext_p, "external"))
    files["predictions"] = _write_csv(
        out_dir / "predictions" / "predictions.csv", pd.concat(predictions)
    )

    cm = M.confusion(ext_y, M.predict(ext_p))
    files["confusion"] = plots.plot_confusion(
        cm, out_dir / "plots" / "confusion.png", title=f"{name}: external confusion matrix"
    )
    files["roc"] = plots.plot_roc(
        ext_y, ext_p, out_dir / "plots" / "roc.png", title=f"{name}: external ROC (one vs rest)"
    )
    if cfg.bootstrap > 0:
        boot = stats.bootstrap(ext_y, ext_p, n_resamples=cfg.bootstrap, seed=cfg.seed)
        files["bootstrap"] = _write_csv(out_dir / BOOTSTRAP_ARTIFACT, boot)
        summary = stats.summarize(boot)
        files["bootstrap_summary"] = _write_csv(
            out_dir / "bootstrap" / "summary.csv", summary, True
        )
        for metric, row in summary.iterrows():
            for col in ("mean", "std", "lower", "upper"):
                metrics[f"bootstrap_{metric}_{col}"] = float(row[col])
        files["bootstrap_plot"] = plots.plot_bootstrap(
            boot, out_dir / "plots" / "bootstrap.png", title=f"{name}: bootstrap (external)"
        )
    if cfg.gradcam_per_class > 0:
        pick = gradcam.select_per_class(ext_y, cfg.gradcam_per_class)
        images = data.external.images[torch.as_tensor(pick)]
        pred = ext_p[pick].argmax(1)
        cams = gradcam.gradcam(model, images, gradcam_layer(model), target_classes=pred)
        files["gradcam"] = gradcam.overlay_figure(
            images,
            cams,
            ext_y[pick],
            pred,
            out_dir / "gradcam" / "gradcam.png",
            n_per_class=cfg.gradcam_per_class,
            title=f"{name}: Grad-CAM on external cases (predicted class)",
        )
    return {"metrics": metrics, "files": files}


def _log_params_safely(params: Mapping[str, Any]) -> None:
    """``mlflow.log_params`` that survives params `mlflow run` already set with other strings.

    An entry point's ``-P`` values are logged by `mlflow run` before our code runs (e.g.
    ``epochs=""`` meaning "profile default"); MLflow forbids changing a param, so a resolved value
    that differs is logged as ``<key>_resolved`` instead.
    """
    import mlflow

    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    out: dict[str, str] = {}
    for key, value in params.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        text = text[:6000]
        if key in existing and existing[key] != text:
            key = f"{key}_resolved"
        if key not in existing:
            out[key] = text
    if out:
        mlflow.log_params(out)


def _log_model(model: torch.nn.Module, input_size: int) -> str | None:
    """``mlflow.pytorch.log_model`` with a signature and a small float32 input example."""
    import mlflow
    import mlflow.pytorch
    import torchvision
    from mlflow.models import infer_signature

    model = model.cpu().to(memory_format=torch.contiguous_format).eval()
    example = np.zeros((2, 1, input_size, input_size), dtype=np.float32)
    with torch.inference_mode():
        out = model(torch.from_numpy(example)).numpy()
    requirements = [
        *mlflow.pytorch.get_default_pip_requirements(),
        f"torchvision=={torchvision.__version__.split('+')[0]}",
    ]
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        signature=infer_signature(example, out),
        input_example=example,
        pip_requirements=requirements,
    )
    return getattr(info, "model_uri", None)


def train_and_evaluate(
    cohort: PreparedCohort | str | Path | None,
    scenario: str | Scenario,
    cfg: ClassifierConfig,
    synthetic_sets: Mapping[str, SyntheticInput] | None = None,
    out_dir: str | Path | None = None,
    *,
    study_id: str = "default",
    tracking: bool = True,
    log_model: bool = True,
    evaluate_external: bool = True,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Train the ResNet18 for one scenario, evaluate it on the external centers, log to MLflow.

    Args:
        cohort: a ``PreparedCohort``, its folder / file, or None for ``default_cohort_dir()``.
        scenario: e.g. ``"O+FM+CA"`` (any order).
        cfg: resolved ``ClassifierConfig`` (``thyroaug.config.resolve(ClassifierConfig, profile)``).
        synthetic_sets: {method: SyntheticSet | LoadedSynthetic | local folder | artifact URI |
            run id} for the scenario's generator parts (CA is made here unless given).
        out_dir: where checkpoint, tables and plots are written (default
            ``$THYROAUG_HOME/outputs/classifier/<run name>``).
        study_id: tag that groups a study's runs (``thyroaug compare`` reads it).
        tracking: log an MLflow run (the caller has run ``configure_tracking``); nested under an
            active run if there is one.
        log_model: log the model with ``mlflow.pytorch.log_model`` (name ``model``).
        evaluate_external: evaluate on the external centers; False (hyperparameter search) keeps
            to validation numbers: no external_* / bootstrap metrics, plots or Grad-CAM.
        run_name: MLflow run name (default ``<scenario>-<profile>-s<seed>``).
        tags: extra run tags; they override the defaults (e.g. ``{"step": "tune_trial"}`` keeps
            a search trial out of ``thyroaug compare``, which reads step=train_classifier runs).
        progress: tqdm progress bars.
        on_epoch: extra per-epoch callback (after MLflow logging), e.g. Optuna pruning.

    The run gets tags scenario / profile / study_id / step=train_classifier / cohort_hash; params
    = the resolved config, profile, scenario, cohort hash, input size, pretrained, training-set
    composition and each synthetic set (ref, sha256, count); per-epoch metrics (step = epoch)
    train_loss, train_accuracy, val_loss, val_accuracy, lr, epoch_time_s, train_images_per_s;
    final metrics external_<metric> (Table 2 names), best_val_<metric>, best_val_loss,
    best_epoch, bootstrap_<metric>_{mean,std,lower,upper}, train_time_s; artifacts config/,
    inputs/, metrics/ (Table 2 row CSV + JSON, history), bootstrap/bootstrap.csv + summary,
    plots/ (confusion, ROC, bootstrap), gradcam/gradcam.png, predictions/predictions.csv; and the
    model.

    Returns:
        {"run_id", "scenario", "metrics", "best_val_loss", "out_dir", "best_epoch", "pretrained",
        "history", "train_counts", "model_uri", "model"} (``model``: the trained network at its
        best epoch).

    Raises:
        ScenarioError: bad scenario or synthetic sets (see ``prepare_scenario_data``).
    """
    if cohort is None or isinstance(cohort, (str, Path)):
        cohort = PreparedCohort.load(cohort or default_cohort_dir())
    sc = Scenario.parse(scenario)
    name = run_name or f"{sc.name}-{cfg.profile}-s{cfg.seed}"
    data = prepare_scenario_data(cohort, sc, cfg, synthetic_sets, progress=progress)

    if not tracking:
        return _execute(
            data, cohort, cfg, out_dir, name, None, on_epoch, progress, False, evaluate_external
        )

    import mlflow

    from thyroaug.tracking.setup import start_run

    run_tags = {
        "scenario": sc.name,
        "profile": cfg.profile,
        "study_id": study_id,
        "step": STEP_TAG,
        "cohort_hash": cohort.content_hash,
        **dict(tags or {}),
    }
    nested = mlflow.active_run() is not None
    with start_run(run_name=name, tags=run_tags, nested=nested) as run:
        mlflow.set_tags(run_tags)  # also on a run `mlflow run` created
        return _execute(
            data, cohort, cfg, out_dir, name, run, on_epoch, progress, log_model, evaluate_external
        )


def _execute(
    data: ScenarioData,
    cohort: PreparedCohort,
    cfg: ClassifierConfig,
    out_dir: str | Path | None,
    name: str,
    run: Any,
    on_epoch: EpochCallback | None,
    progress: bool,
    log_model: bool,
    evaluate_external: bool,
) -> dict[str, Any]:
    """Train, evaluate and (when ``run`` is set) log; the shared body of train_and_evaluate."""
    from thyroaug.tracking.setup import project_home

    run_id = run.info.run_id if run is not None else None
    if out_dir is None:
        stamp = run_id or time.strftime("%Y%m%d-%H%M%S")
        out_dir = project_home() / "outputs" / "classifier" / f"{name}-{stamp}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = data.train.counts()
    _write_json(out / "config" / "classifier_config.json", to_dict(cfg))
    _write_csv(out / "inputs" / "training_set_counts.csv", counts, index=True)
    for method, item in data.synthetic.items():
        _write_json(out / "inputs" / f"synthetic_{method}.json", item.describe())

    callback = on_epoch
    if run is not None:
        import mlflow

        params: dict[str, Any] = {**to_dict(cfg)}
        params.update(
            {
                "scenario": data.scenario.name,
                "cohort_hash": cohort.content_hash,
                "cohort_size": cohort.size,
                "input_size": data.input_size,
                "n_train": len(data.train),
                "n_val": len(data.val),
                "n_external": len(data.external),
                "torch_version": torch.__version__,
                "cpu": cpu_name(),
                "torch_threads": cfg.num_threads or torch.get_num_threads(),
            }
        )
        for source, row in counts.iterrows():
            params[f"train_count_{source}"] = int(row["total"])
        for method, item in data.synthetic.items():
            params[f"synthetic_{method}"] = item.ref
            params[f"synthetic_{method}_sha256"] = item.sha256
            params[f"synthetic_{method}_count"] = len(item.data.manifest)
            gen = item.data.info.get("generator_uri") or ",".join(
                sorted(set(item.data.manifest["generator_uri"].astype(str)))
            )
            params[f"synthetic_{method}_generator"] = gen
        if data.scenario.uses_ca and "CA" not in data.synthetic:
            params["synthetic_CA"] = f"generated in this run (seed {cfg.seed})"
        _log_params_safely(params)

        def callback(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics(metrics, step=epoch)
            if on_epoch is not None:
                on_epoch(epoch, metrics)

    result = fit(
        data.train.images,
        data.train.labels,
        data.val.images,
        data.val.labels,
        cfg,
        checkpoint_path=out / "checkpoint" / "best.pt",
        on_epoch=callback,
        progress=progress,
    )
    with torch_threads(cfg.num_threads):
        report = evaluate_and_report(
            result, data, cfg, out, name=data.scenario.name, external=evaluate_external
        )
    metrics = report["metrics"]
    epoch_times = [h["epoch_time_s"] for h in result.history]
    metrics["train_time_s"] = result.train_seconds
    metrics["mean_epoch_time_s"] = float(np.mean(epoch_times))
    metrics["mean_train_images_per_s"] = float(
        np.mean([h["train_images_per_s"] for h in result.history])
    )
    model_uri = None
    if run is not None:
        import mlflow

        _log_params_safely({"pretrained": result.pretrained, "device": result.device})
        mlflow.set_tag("pretrained", str(result.pretrained).lower())
        mlflow.log_metrics(metrics)
        for sub in ("config", "inputs", "metrics", "bootstrap", "plots", "gradcam", "predictions"):
            if (out / sub).exists():
                mlflow.log_artifacts(str(out / sub), artifact_path=sub)
        if log_model:
            with torch_threads(cfg.num_threads):
                model_uri = _log_model(result.model, data.input_size)
    if evaluate_external:
        log.info(
            "%s: external accuracy %.3f, F1 macro %.3f, AUC macro %.3f (best epoch %d)",
            data.scenario.name,
            metrics["external_accuracy"],
            metrics["external_f1_macro"],
            metrics["external_auc_macro"],
            result.best_epoch,
        )
    return {
        "run_id": run_id,
        "scenario": data.scenario.name,
        "metrics": metrics,
        "best_val_loss": result.best_val_loss,
        "out_dir": str(out),
        "best_epoch": result.best_epoch,
        "pretrained": result.pretrained,
        "history": result.history,
        "train_counts": counts,
        "model_uri": model_uri,
        "model": result.model,
    }
