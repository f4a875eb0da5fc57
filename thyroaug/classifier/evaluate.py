"""Evaluation of a trained classifier on the external centers, written to a run folder.

``evaluate_and_report`` turns a ``FitResult`` and the scenario's evaluation sets into files: Table 2
metrics (``thyroaug.evaluation.metrics``), bootstrap distributions of every Table 2 metric (their
percentile intervals are the 95 % CIs of ``thyroaug compare``), confusion matrix / ROC plots,
Grad-CAM overlays and maps (``gradcam/cams.npz``) and per-case predictions (case ids and centers,
never patient ids). MLflow logging of those files is the job's business
(``thyroaug.jobs.train_classifier``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from thyroaug.classifier.config import ClassifierConfig
from thyroaug.classifier.model import gradcam_layer
from thyroaug.classifier.train import FitResult, predict_proba
from thyroaug.contract import BOOTSTRAP_ARTIFACT, CLASSES
from thyroaug.data.cohort import PreparedCohort
from thyroaug.evaluation import bootstrap, gradcam, plots
from thyroaug.evaluation import metrics as M
from thyroaug.evaluation.findings import sanity_flags
from thyroaug.utils.atomic import atomic_path, write_json
from thyroaug.utils.csvsafe import to_csv_safe

log = logging.getLogger(__name__)


class EvaluationSets(Protocol):
    """What evaluation reads (``scenarios.ScenarioData`` is one): the untouched val / external."""

    val: PreparedCohort
    external: PreparedCohort


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


def write_csv(path: Path, df: pd.DataFrame, index: bool = False) -> Path:
    """Write ``df`` to ``path`` atomically, formula-like text cells escaped (``utils.csvsafe``):
    these CSVs are opened by people in spreadsheets."""
    with atomic_path(path) as tmp:
        to_csv_safe(df, tmp, index=index)
    return path


def evaluate_and_report(
    result: FitResult,
    data: EvaluationSets,
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
    model = result.model
    cl = cfg.channels_last
    files: dict[str, Path] = {}
    val_y = data.val.labels.numpy()
    val_p = predict_proba(model, data.val.images, batch_size=cfg.eval_batch_size, channels_last=cl)
    val_m = M.compute_metrics(val_y, val_p)
    metrics: dict[str, float] = {f"best_val_{k}": v for k, v in val_m.items()}
    metrics["best_val_loss"] = result.best_val_loss
    metrics["best_epoch"] = float(result.best_epoch)
    files["history"] = write_csv(out_dir / "metrics" / "history.csv", pd.DataFrame(result.history))
    summary: dict[str, Any] = {"scenario": name, "best_val": val_m, "best_epoch": result.best_epoch}
    predictions = [_predictions_frame(data.val, val_p, "val")]
    if not external:
        files["metrics_json"] = write_json(out_dir / "metrics" / "metrics.json", summary)
        files["predictions"] = write_csv(
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
    files["metrics_table"] = write_csv(out_dir / "metrics" / "metrics_table.csv", table, True)
    files["metrics_json"] = write_json(
        out_dir / "metrics" / "metrics.json", {**summary, "external": ext_m}
    )
    predictions.append(_predictions_frame(data.external, ext_p, "external"))
    files["predictions"] = write_csv(
        out_dir / "predictions" / "predictions.csv", pd.concat(predictions)
    )

    cm = M.confusion(ext_y, M.predict(ext_p))
    files["confusion"] = plots.plot_confusion(
        cm, out_dir / "plots" / "confusion.png", title=f"{name}: external confusion matrix"
    )
    files["roc"] = plots.plot_roc(
        ext_y, ext_p, out_dir / "plots" / "roc.png", title=f"{name}: external ROC (one vs rest)"
    )
    auc = (ext_m["auc_macro"], math.nan, math.nan)
    if cfg.bootstrap > 0:
        boot_files, boot_metrics = _write_bootstrap(ext_y, ext_p, cfg, out_dir, name)
        files.update(boot_files)
        metrics.update(boot_metrics)
        auc = (
            auc[0],
            boot_metrics["bootstrap_auc_macro_lower"],
            boot_metrics["bootstrap_auc_macro_upper"],
        )
    sanity = sanity_flags(ext_y, {name: ext_p}, {name: auc}, {}).iloc[0]
    metrics["external_top_class_share"] = float(sanity["top_share"])
    if cfg.gradcam_per_class > 0:
        files.update(_write_gradcam(model, data.external, ext_p, cfg, out_dir, name))
    return {"metrics": metrics, "files": files, "sanity": str(sanity["flags"])}


def _write_bootstrap(
    y: np.ndarray, probs: np.ndarray, cfg: ClassifierConfig, out_dir: Path, name: str
) -> tuple[dict[str, Path], dict[str, float]]:
    """Bootstrap replicates of every Table 2 metric on the external set, their summary and plot.

    Every metric, so that `thyroaug compare` has a 95 % CI for each number even without the
    predictions; the run metrics and the plot keep the three headline ones.

    Returns:
        (files, ``bootstrap_<metric>_<mean|std|lower|upper>`` metrics).
    """
    boot = bootstrap.bootstrap(y, probs, n_resamples=cfg.bootstrap, seed=cfg.seed, metrics="all")
    files = {"bootstrap": write_csv(out_dir / BOOTSTRAP_ARTIFACT, boot)}
    summary = bootstrap.summarize(boot)
    files["bootstrap_summary"] = write_csv(out_dir / "bootstrap" / "summary.csv", summary, True)
    metrics = {
        f"bootstrap_{metric}_{col}": float(summary.loc[metric, col])
        for metric in bootstrap.DEFAULT_METRICS
        for col in ("mean", "std", "lower", "upper")
    }
    files["bootstrap_plot"] = plots.plot_bootstrap(
        boot[list(bootstrap.DEFAULT_METRICS)],
        out_dir / "plots" / "bootstrap.png",
        title=f"{name}: bootstrap (external)",
    )
    return files, metrics


def _write_gradcam(
    model: torch.nn.Module,
    external: PreparedCohort,
    probs: np.ndarray,
    cfg: ClassifierConfig,
    out_dir: Path,
    name: str,
) -> dict[str, Path]:
    """Grad-CAM (Selvaraju et al. 2017) of the predicted class on fixed external cases.

    The first ``cfg.gradcam_per_class`` cases of each class by case id (the same for every
    scenario and seed), at the layer ``gradcam_layer`` picks for the image size; writes the
    maps as data (``gradcam.CAMS_ARTIFACT``) and as the figure ``gradcam/gradcam.png``.
    """
    y = external.labels.numpy()
    case_ids = external.table["case_id"].astype(str).to_numpy()
    pick = gradcam.select_cases(case_ids, y, cfg.gradcam_per_class)
    images = external.images[torch.as_tensor(pick)]
    pred = probs[pick].argmax(1)
    layer = gradcam_layer(model, external.size)
    res = gradcam.explain(model, images, layer.module, target_classes=pred)
    if layer.note:
        log.warning("%s: %s", name, layer.note)
    cams = gradcam.CamSet(
        case_ids=case_ids[pick],
        true=y[pick],
        pred=pred,
        target=res.targets,
        probs=probs[pick],
        images=images[:, 0].float().numpy(),
        cams=res.cams,
        layer=layer.name,
        map_size=res.map_size,
        scenario=name,
        note=layer.note,
    )
    h, w = res.map_size
    figure = gradcam.overlay_figure(
        images,
        res.cams,
        cams.true,
        pred,
        out_dir / "gradcam" / "gradcam.png",
        n_per_class=cfg.gradcam_per_class,
        title=f"{name}: Grad-CAM at {layer.name} ({h}x{w} map) on external cases (predicted class)",
        case_ids=cams.case_ids,
        note=layer.note,
    )
    return {
        "gradcam": figure,
        "gradcam_data": gradcam.save_cams(cams, out_dir / gradcam.CAMS_ARTIFACT),
    }
