"""`thyroaug train-classifier`: train + evaluate the ResNet18 for one scenario, as an MLflow run.

Examples:
    thyroaug train-classifier --scenario O+CA --profile quick
    thyroaug train-classifier --scenario O+FM+CA --profile quick \\
        --synthetic FM=runs:/<run_id>/synthetic/FM
    thyroaug train-classifier --scenario O --profile smoke --cohort outputs/cohort --epochs 3
    thyroaug train-classifier --scenario O --profile smoke --resume   # after a kill

The cohort defaults to ``$THYROAUG_HOME/outputs/cohort`` (THYROAUG_HOME defaults to the current
folder), where ``thyroaug prepare`` writes by default.

Resume: after every epoch the whole training state is checkpointed atomically in
``$THYROAUG_HOME/outputs/classifier/resume/<scenario>-<profile>-s<seed>-<identity hash>``
(``thyroaug.classifier.resume``; the identity is scenario, profile, seed, study id, cohort hash
and synthetic sets). ``--resume`` continues a killed run from there, in the same MLflow run when
it still exists (set back to RUNNING) or else in a new one, sends the epochs' metrics the server
has not got (each metric and epoch once), and reaches the numbers an uninterrupted run reaches.
Without ``--resume`` an existing checkpoint is an error; with it and no checkpoint the run starts
afresh. The folder is deleted when the run finishes (``--keep-checkpoint`` keeps it).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import torchvision
from mlflow.models import infer_signature

from thyroaug.classifier.config import ClassifierConfig
from thyroaug.classifier.evaluate import evaluate_and_report, write_csv
from thyroaug.classifier.resume import RunCheckpoint
from thyroaug.classifier.train import EpochCallback, FitResult, cpu_name, fit
from thyroaug.config import resolve, to_dict
from thyroaug.contract import (
    DEFAULT_COHORT_DIR,
    STEP_CLASSIFIER,
    TAG_CLASSIFIER_COHORT_HASH,
    TAG_COHORT_HASH,
    TAG_ONE_CLASS,
    TAG_PARAMS_FROM,
    TAG_PRETRAINED,
    TAG_PROFILE,
    TAG_RESUMED_AFTER_EPOCH,
    TAG_SANITY,
    TAG_SCENARIO,
    TAG_STEP,
    TAG_STUDY_ID,
    TAG_UNFINISHED_SETS,
    deviation_tag,
)
from thyroaug.data.cohort import PreparedCohort
from thyroaug.errors import ConfigError
from thyroaug.jobs import substitutes
from thyroaug.jobs.champion import resolve_generator_sets
from thyroaug.jobs.classifier_resume import (
    Checkpointing,
    EpochLog,
    open_checkpoint,
    open_run,
    storage_failure,
    tracking_errors,
    unreachable,
)
from thyroaug.jobs.common import (
    add_cohort,
    add_experiment,
    add_profile,
    cohort_path,
    ensure_default_cohort,
)
from thyroaug.scenarios import (
    Scenario,
    ScenarioData,
    SyntheticInput,
    parse_synthetic_args,
    prepare_scenario_data,
    require_synthetic,
)
from thyroaug.synthetic import ALLOW_UNFINISHED
from thyroaug.tracking.runs import (
    describe_run,
    load_best_params,
    log_cohort_input,
    log_params_safely,
    log_synthetic_input,
)
from thyroaug.tracking.setup import configure_tracking, project_home, sweep_stale_runs
from thyroaug.utils.atomic import write_json
from thyroaug.utils.threads import torch_threads

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `thyroaug train-classifier`."""
    parser.add_argument(
        "--scenario", required=True, help="parts joined by '+', e.g. O, O+CA, O+FM+CA (any order)"
    )
    add_profile(parser)
    add_cohort(parser)
    parser.add_argument(
        "--synthetic",
        action="append",
        default=[],
        metavar="METHOD=REF",
        help="synthetic set for a scenario part: local folder, runs:/<id>/synthetic/FM, "
        "mlflow-artifacts:/... or a run id (repeatable; default: the @champion generator's "
        "newest set for this cohort, synthesized now if there is none)",
    )
    substitutes.add_argument(parser)
    parser.add_argument(
        "--allow-other-cohort",
        action="store_true",
        help="accept synthetic sets made by a generator trained on another cohort",
    )
    parser.add_argument(
        ALLOW_UNFINISHED,
        action="store_true",
        help="accept a synthetic set whose creating run did not finish (killed, failed) or cannot "
        f"be looked up; the run is tagged {TAG_UNFINISHED_SETS}",
    )
    parser.add_argument("--seed", type=int, help="seed (weights, batches, CA, bootstrap)")
    parser.add_argument("--epochs", type=int, help="training epochs (paper 300)")
    parser.add_argument("--batch-size", type=int, help="batch size (default 32)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (paper 1e-4)")
    parser.add_argument("--image-size", type=int, help="input side in pixels (paper 128)")
    parser.add_argument(
        "--per-class", type=int, help="synthetic / CA images per class per method (paper 1000)"
    )
    parser.add_argument("--bootstrap", type=int, help="bootstrap resamples (paper 1000)")
    parser.add_argument("--num-threads", type=int, help="torch CPU threads (0: torch default)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    parser.add_argument("--init", choices=("imagenet", "random"), help="default imagenet if found")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other ClassifierConfig field, e.g. --set lr_patience=5 (repeatable)",
    )
    parser.add_argument(
        "--params-from",
        metavar="JSON_OR_RUN_ID",
        help="hyperparameters found by `thyroaug tune` (its best_params.json or the tune run id); "
        "explicit flags still win",
    )
    parser.add_argument("--study-id", default="default", help="tag grouping a study's runs")
    parser.add_argument("--run-name", help="MLflow run name (default <scenario>-<profile>-s<seed>)")
    add_experiment(parser)
    parser.add_argument("--out", help="output folder (default outputs/classifier/<run>)")
    parser.add_argument("--no-model", action="store_true", help="do not log the model")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue this job's killed run from its last epoch checkpoint (none: start afresh)",
    )
    parser.add_argument(
        "--keep-checkpoint",
        action="store_true",
        help="keep the per-epoch checkpoint folder after the run finished",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "image_size": args.image_size,
        "per_class_synthetic": args.per_class,
        "bootstrap": args.bootstrap,
        "num_threads": args.num_threads,
        "device": args.device,
        "init": args.init,
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr_patience=5")
        values[key.strip().replace("-", "_")] = value.strip()
    return values


def run(args: argparse.Namespace) -> int:
    """Run `thyroaug train-classifier`; prints a one-line summary, returns the exit code."""

    scenario = Scenario.parse(args.scenario)
    synthetic = parse_synthetic_args(args.synthetic)
    explicit = {k: v for k, v in _overrides(args).items() if v is not None}
    resolve(ClassifierConfig, args.profile, **explicit)  # validate flags before any run exists
    cohort_file = cohort_path(args)
    ensure_default_cohort(cohort_file, args.profile)
    configure_tracking(experiment=args.experiment)
    sweep_stale_runs()  # killed runs read as KILLED before their sets and checkpoints are judged
    overrides: dict[str, Any] = {}
    tags: dict[str, str] = {}
    if args.params_from:
        overrides.update(load_best_params(args.params_from))
        tags[TAG_PARAMS_FROM] = args.params_from
    overrides.update(explicit)
    cfg = resolve(ClassifierConfig, args.profile, **overrides)
    needs = ["classifier_init"] if cfg.init == "imagenet" else []
    subs = substitutes.check(cfg.profile, needs, args.allow_substitutes)
    tags.update({deviation_tag(k): v for k, v in subs.items()})
    cohort = PreparedCohort.load(cohort_file)
    missing = [m for m in scenario.generator_methods if m not in synthetic]
    if missing:
        synthetic.update(
            resolve_generator_sets(
                missing,
                cohort_file,
                cohort.content_hash,
                args.profile,
                cfg.per_class_synthetic,
                cfg.seed,
            )
        )
    require_synthetic(scenario, synthetic)
    out = train_and_evaluate(
        cohort,
        scenario,
        cfg,
        synthetic,
        args.out,
        study_id=args.study_id,
        run_name=args.run_name,
        tags=tags,
        log_model=not args.no_model,
        progress=not args.no_progress,
        cohort_source=cohort_file,
        allow_other_cohort=args.allow_other_cohort,
        checkpoint=Checkpointing(resume=args.resume, keep=args.keep_checkpoint),
        allow_unfinished_set=args.allow_unfinished_set,
    )
    m = out["metrics"]
    print(
        f"{out['scenario']} ({cfg.profile}): external accuracy {m['external_accuracy']:.3f}, "
        f"F1 macro {m['external_f1_macro']:.3f}, AUC macro {m['external_auc_macro']:.3f}; "
        f"best epoch {out['best_epoch']}; run {out['run_id']}; files in {out['out_dir']}"
        + (f"\nWARNING: {out['sanity']}" if out.get("sanity") else "")
    )
    return 0


# ----------------------------------------------------------------------------------------------
# The MLflow run (also used by `thyroaug tune` and the study)
# ----------------------------------------------------------------------------------------------
def scenario_data(
    cohort: PreparedCohort,
    scenario: str | Scenario,
    cfg: ClassifierConfig,
    synthetic: Mapping[str, SyntheticInput] | None = None,
    *,
    progress: bool = True,
    allow_other_cohort: bool = False,
    allow_unfinished: bool = False,
) -> ScenarioData:
    """``scenarios.prepare_scenario_data`` with the classifier config's size, counts and seed."""
    return prepare_scenario_data(
        cohort,
        scenario,
        cfg.image_size,
        synthetic,
        per_class=cfg.per_class_synthetic,
        seed=cfg.seed,
        progress=progress,
        allow_other_cohort=allow_other_cohort,
        allow_unfinished=allow_unfinished,
    )


def model_name(scenario: str | Scenario) -> str:
    """Logged-model name of a scenario's classifier (``classifier-O-FM-CA``)."""
    return "classifier-" + Scenario.parse(scenario).name.replace("+", "-")


def _log_model(model: torch.nn.Module, input_size: int, name: str) -> str | None:
    """``mlflow.pytorch.log_model`` with a signature and a small float32 input example."""

    model = model.cpu().to(memory_format=torch.contiguous_format).eval()
    example = np.zeros((2, 1, input_size, input_size), dtype=np.float32)
    with torch.inference_mode():
        out = model(torch.from_numpy(example)).numpy()
    # mlflow.pytorch is loaded here, on first use, not at import: importing it calls
    # logging.basicConfig(level=ERROR), which would silence the CLI's own logging set up later
    requirements = [
        *mlflow.pytorch.get_default_pip_requirements(),
        f"torchvision=={torchvision.__version__.split('+')[0]}",
    ]
    info = mlflow.pytorch.log_model(
        model,
        name=name,
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
    cohort_source: str | Path | None = None,
    allow_other_cohort: bool = False,
    checkpoint: Checkpointing | None = None,
    allow_unfinished_set: bool = False,
) -> dict[str, Any]:
    """Train the ResNet18 for one scenario, evaluate it on the external centers, log to MLflow.

    Args:
        cohort: a ``PreparedCohort``, its folder / file, or None for the default cohort folder.
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
        cohort_source: the cohort's file, logged as the run's dataset input (default: the
            default cohort folder when ``cohort`` is an object).
        allow_other_cohort: accept synthetic sets made for another cohort.
        checkpoint: checkpoint every epoch in the job's folder and, with ``resume``, continue
            from it (module docstring); None (``tune``, tests): no per-epoch checkpoint.
        allow_unfinished_set: use synthetic sets whose creating run did not finish or cannot be
            looked up (``synthetic.resolve_set``); the run is tagged with them.

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
        ConfigError: a checkpoint of this job exists without ``resume``, or does not match.
        TrackingError: the tracking server was unreachable where the run cannot go on without
            it (the checkpoint is kept: ``resume`` finishes the run).
        StorageError: a write failed for lack of space or permission (the run is ended FAILED;
            one line says which file and how to go on).
    """
    if cohort is None or isinstance(cohort, (str, Path)):
        cohort_source = cohort or project_home() / DEFAULT_COHORT_DIR
        cohort = PreparedCohort.load(cohort_source)
    sc = Scenario.parse(scenario)
    name = run_name or f"{sc.name}-{cfg.profile}-s{cfg.seed}"
    data = scenario_data(
        cohort,
        sc,
        cfg,
        synthetic_sets,
        progress=progress,
        allow_other_cohort=allow_other_cohort,
        allow_unfinished=allow_unfinished_set,
    )
    # checkpoint refusals come before any MLflow run exists
    ckpt = (
        open_checkpoint(checkpoint, data, cohort, cfg, study_id, tracking) if checkpoint else None
    )
    job = _Job(data, cohort, cfg, name, on_epoch, progress, log_model, evaluate_external, ckpt)
    if not tracking:
        out = _execute(job, out_dir, None)
    else:
        out = _tracked(job, out_dir, study_id, tags, cohort_source)
    if ckpt is not None:
        ckpt.finish()
    return out


@dataclass
class _Job:
    """One classifier job: its data, settings and callbacks (what ``_execute`` works on)."""

    data: ScenarioData
    cohort: PreparedCohort
    cfg: ClassifierConfig
    name: str
    on_epoch: EpochCallback | None
    progress: bool
    log_model: bool
    evaluate_external: bool
    ckpt: RunCheckpoint | None


def _tracked(
    job: _Job,
    out_dir: str | Path | None,
    study_id: str,
    tags: Mapping[str, str] | None,
    cohort_source: str | Path | None,
) -> dict[str, Any]:
    """``_execute`` inside an MLflow run: the checkpoint's own run again when resuming."""

    sc, cfg = job.data.scenario, job.cfg
    run_tags = {
        TAG_SCENARIO: sc.name,
        TAG_PROFILE: cfg.profile,
        TAG_STUDY_ID: study_id,
        TAG_STEP: STEP_CLASSIFIER,
        TAG_CLASSIFIER_COHORT_HASH: job.cohort.content_hash,
        TAG_COHORT_HASH: job.cohort.content_hash,
        **dict(tags or {}),
    }
    unfinished = [item.unfinished for item in job.data.synthetic.values() if item.unfinished]
    if unfinished:
        run_tags[TAG_UNFINISHED_SETS] = "; ".join(unfinished)
    nested = mlflow.active_run() is not None
    previous = job.ckpt.run_id if job.ckpt is not None else None
    run_id = None
    try:
        with open_run(job.name, run_tags, nested, previous) as run:
            run_id = run.info.run_id
            mlflow.set_tags(run_tags)  # also on a run `mlflow run` created
            state = job.ckpt.train_state if job.ckpt is not None else None
            if state is not None:
                mlflow.set_tag(TAG_RESUMED_AFTER_EPOCH, state["epoch"])
            log_cohort_input(job.cohort, cohort_source or project_home() / DEFAULT_COHORT_DIR)
            for method, item in job.data.synthetic.items():
                log_synthetic_input(item.data, item.ref, method, item.sha256, item.local_path)
            out = _execute(job, out_dir, run)
            describe_run(_description(out, cfg, len(job.data.train)))
            return out
    except Exception as exc:
        full = storage_failure(exc, job.ckpt, run_id)
        if full is not None:
            raise full from exc
        if isinstance(exc, tracking_errors()):
            raise unreachable(exc, job.ckpt) from exc
        raise


def _description(out: dict[str, Any], cfg: ClassifierConfig, n_train: int) -> str:
    """The run's description: what was trained, on what, and the headline numbers."""
    m = out["metrics"]
    text = (
        f"ResNet18 ({cfg.profile} profile, {cfg.image_size} px, best of {cfg.epochs} epochs: "
        f"{out['best_epoch']}) trained on scenario {out['scenario']} ({n_train} images)."
    )
    if "external_accuracy" in m:
        text += (
            f" External centers: accuracy {m['external_accuracy']:.3f}, macro-F1 "
            f"{m['external_f1_macro']:.3f}, macro-AUC {m['external_auc_macro']:.3f}."
        )
    return text


def _run_params(job: _Job, counts: Any) -> dict[str, Any]:
    """The run's params: resolved config, data composition, synthetic sets, machine."""
    data, cfg = job.data, job.cfg
    params: dict[str, Any] = {**to_dict(cfg)}
    params.update(
        {
            "scenario": data.scenario.name,
            "cohort_hash": job.cohort.content_hash,
            "cohort_size": job.cohort.size,
            "data_source": job.cohort.settings.get("data_source", {}).get("kind", "unknown"),
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
    return params


def _execute(job: _Job, out_dir: str | Path | None, run: Any) -> dict[str, Any]:
    """Train, evaluate and (when ``run`` is set) log; the shared body of train_and_evaluate."""
    data, cfg = job.data, job.cfg
    run_id = run.info.run_id if run is not None else None
    if out_dir is None:
        stamp = run_id or time.strftime("%Y%m%d-%H%M%S")
        out_dir = project_home() / "outputs" / "classifier" / f"{job.name}-{stamp}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = data.train.counts()
    write_json(out / "config" / "classifier_config.json", to_dict(cfg))
    write_csv(out / "inputs" / "training_set_counts.csv", counts, index=True)
    for method, item in data.synthetic.items():
        write_json(out / "inputs" / f"synthetic_{method}.json", item.describe())

    callback, epoch_log = job.on_epoch, None
    if run is not None:
        log_params_safely(_run_params(job, counts))
        epoch_log = EpochLog(out, run_id, job.ckpt)
        callback = _chain(epoch_log, job.on_epoch)
    result = fit(
        data.train.images,
        data.train.labels,
        data.val.images,
        data.val.labels,
        cfg,
        checkpoint_path=out / "checkpoint" / "best.pt",
        on_epoch=callback,
        progress=job.progress,
        resume_state=job.ckpt.train_state if job.ckpt is not None else None,
        on_state=_saver(job.ckpt, run_id, epoch_log),
    )
    with torch_threads(cfg.num_threads):
        report = evaluate_and_report(
            result, data, cfg, out, name=data.scenario.name, external=job.evaluate_external
        )
    metrics = _final_metrics(report["metrics"], result)
    sanity = report.get("sanity", "")
    model_uri = None
    if run is not None:
        model_uri = _log_results(job, out, result, metrics, epoch_log, sanity)
    _say_results(job, metrics, result.best_epoch, sanity)
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
        "sanity": sanity,
    }


def _say_results(job: _Job, metrics: dict[str, float], best_epoch: int, sanity: str) -> None:
    """The headline numbers in the log, and what makes them nonsense, if anything."""
    name = job.data.scenario.name
    if sanity:
        log.warning("%s: %s - these external numbers are not a result", name, sanity)
    if job.evaluate_external:
        log.info(
            "%s: external accuracy %.3f, F1 macro %.3f, AUC macro %.3f (best epoch %d)",
            name,
            metrics["external_accuracy"],
            metrics["external_f1_macro"],
            metrics["external_auc_macro"],
            best_epoch,
        )


def _chain(first: EpochCallback, then: EpochCallback | None) -> EpochCallback:
    """``first`` then ``then`` (the caller's own callback) after every epoch."""

    def callback(epoch: int, metrics: dict[str, float]) -> None:
        first(epoch, metrics)
        if then is not None:
            then(epoch, metrics)

    return callback


def _saver(
    ckpt: RunCheckpoint | None, run_id: str | None, epoch_log: EpochLog | None
) -> Callable[[dict[str, Any]], None] | None:
    """``fit``'s per-epoch state -> the job's checkpoint (with the metrics not sent yet)."""
    if ckpt is None:
        return None
    ckpt.run_id = run_id

    def save(state: dict[str, Any]) -> None:
        ckpt.save(state, list(epoch_log.buffered.pending) if epoch_log is not None else [])

    return save


def _final_metrics(metrics: dict[str, float], result: FitResult) -> dict[str, float]:
    """The report's metrics plus training time and throughput."""
    metrics["train_time_s"] = result.train_seconds
    metrics["mean_epoch_time_s"] = float(np.mean([h["epoch_time_s"] for h in result.history]))
    metrics["mean_train_images_per_s"] = float(
        np.mean([h["train_images_per_s"] for h in result.history])
    )
    return metrics


def _log_results(
    job: _Job,
    out: Path,
    result: FitResult,
    metrics: dict[str, float],
    epoch_log: EpochLog | None,
    sanity: str = "",
) -> str | None:
    """Final metrics, sanity tags, artifacts and (optionally) the model into the active run."""

    if epoch_log is not None:
        epoch_log.flush()
    log_params_safely({"pretrained": result.pretrained, "device": result.device})
    mlflow.set_tag(TAG_PRETRAINED, str(result.pretrained).lower())
    mlflow.log_metrics(metrics)
    if job.evaluate_external:
        one_class = str("one-class predictor" in sanity).lower()
        mlflow.set_tags({TAG_SANITY: sanity or "none", TAG_ONE_CLASS: one_class})
    for sub in ("config", "inputs", "metrics", "bootstrap", "plots", "gradcam", "predictions"):
        if (out / sub).exists():
            mlflow.log_artifacts(str(out / sub), artifact_path=sub)
    if not job.log_model:
        return None
    with torch_threads(job.cfg.num_threads):
        return _log_model(result.model, job.data.input_size, model_name(job.data.scenario))
