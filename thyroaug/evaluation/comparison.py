"""The analysis of ``thyroaug compare``, from the files a study's runs logged (no MLflow here).

``analyse`` takes, per scenario, what its chosen classifier run logged (external metrics,
``predictions.csv``, the bootstrap file) and returns a ``Comparison``: the paired tests on the
same external cases (``paired.paired_comparisons``), Table 2 with a 95 % percentile-bootstrap
interval on every number, the minimal detectable accuracy difference and the paper's method
(``paper_method``). The job (``thyroaug.jobs.compare``) finds and downloads the runs, writes the
files and logs them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd

from thyroaug.evaluation import metrics as M
from thyroaug.evaluation.alignment import AlignedPredictions, align_predictions, external_rows
from thyroaug.evaluation.bootstrap import bootstrap, summarize
from thyroaug.evaluation.paired import minimal_detectable_difference, paired_comparisons
from thyroaug.evaluation.paper_method import ComparisonResult, compare_bootstraps
from thyroaug.evaluation.table2 import format_ci, table2_ci

log = logging.getLogger(__name__)

METRIC_PREFIX = "external_"
"""Prefix of the external-set metrics a classifier run logs."""

PAIRED_NAME = {
    "accuracy": "accuracy",
    "f1_macro": "macro_f1",
    "macro_f1": "macro_f1",
    "auc_macro": "macro_auc",
    "macro_auc": "macro_auc",
}
"""``--metric`` (a bootstrap column or a paired metric name) -> the paired metric name."""

BOOTSTRAP_NAME = {"accuracy": "accuracy", "macro_f1": "f1_macro", "macro_auc": "auc_macro"}
"""Paired metric name -> the bootstrap file's column."""


@dataclass(frozen=True)
class Settings:
    """The comparison's own settings (logged as params of the compare run)."""

    study_id: str
    metric: str = "accuracy"  # paired metric name
    alpha: float = 0.05
    n_resamples: int = 2000
    seed: int = 0


@dataclass
class Comparison:
    """Everything computed from the downloaded files."""

    aligned: AlignedPredictions | None = None
    not_tested: dict[str, str] = field(default_factory=dict)
    paired: pd.DataFrame | None = None
    t2: pd.DataFrame | None = None  # numeric Table 2
    t2_ci: pd.DataFrame | None = None  # formatted
    t2_long: pd.DataFrame | None = None
    points: dict[str, dict[str, float]] = field(default_factory=dict)  # scenario -> Table 2
    mdd: dict[str, float] = field(default_factory=dict)
    paper: ComparisonResult | None = None
    paper_summary: pd.DataFrame | None = None
    resamples: tuple[int, int] = (0, 0)
    bootstrapped: list[str] = field(default_factory=list)  # scenarios with a bootstrap file


def metrics_with_intervals(
    y: np.ndarray, proba: np.ndarray, n_resamples: int, seed: int
) -> tuple[dict[str, float], pd.DataFrame]:
    """Every Table 2 metric on all cases and its percentile-bootstrap summary (``summarize``)."""
    interval = summarize(bootstrap(y, proba, n_resamples=n_resamples, seed=seed, metrics="all"))
    return M.compute_metrics(y, proba), interval


def _points_and_intervals(
    logged: Mapping[str, Mapping[str, float]],
    aligned: AlignedPredictions | None,
    boots: Mapping[str, pd.DataFrame],
    n: int,
    seed: int,
) -> tuple[dict[str, dict[str, float]], dict[str, pd.DataFrame | None]]:
    """Table 2 point estimates and 95 % intervals per scenario: from its predictions, else from
    its logged metrics and bootstrap file."""
    points, intervals = {}, {}
    for scenario, run_metrics in logged.items():
        if aligned is not None and scenario in aligned.probas:
            points[scenario], intervals[scenario] = metrics_with_intervals(
                aligned.y, aligned.probas[scenario], n, seed
            )
            continue
        points[scenario] = {
            k[len(METRIC_PREFIX) :]: v
            for k, v in run_metrics.items()
            if k.startswith(METRIC_PREFIX)
        }
        intervals[scenario] = summarize(boots[scenario]) if scenario in boots else None
    return {s: m for s, m in points.items() if m}, intervals


def _mdd(aligned: AlignedPredictions, alpha: float) -> dict[str, float]:
    """Minimal detectable accuracy difference (80 % power) for this external-set size.

    Returns:
        {n, acc (mean accuracy), psi (mean discordance over pairs), acc_based, psi_based}.
    """
    n = len(aligned.y)
    correct = {s: p.argmax(1) == aligned.y for s, p in aligned.probas.items()}
    acc = float(np.mean([c.mean() for c in correct.values()]))
    out = {"n": float(n), "acc": acc, "psi": np.nan, "psi_based": np.nan, "acc_based": np.nan}
    if 0 < acc < 1:
        out["acc_based"] = minimal_detectable_difference(n, acc=acc, alpha=alpha)
    psi = [float(np.mean(correct[a] != correct[b])) for a, b in combinations(correct, 2)]
    if psi and np.mean(psi) > 0:
        out["psi"] = float(np.mean(psi))
        out["psi_based"] = minimal_detectable_difference(n, p_discordant=out["psi"], alpha=alpha)
    return out


def _paper_method(
    boots: Mapping[str, pd.DataFrame], metric: str, alpha: float, cmp: Comparison
) -> None:
    """The paper's rank-sum on bootstrap replicates + BH, with a median [95 %] summary."""
    column = BOOTSTRAP_NAME[metric]
    usable = {s: b for s, b in boots.items() if column in b.columns}
    cmp.bootstrapped = list(usable)
    if len(usable) < 2:
        return
    cmp.paper = compare_bootstraps(usable, metric=column, alpha=alpha)
    sizes = [len(b) for b in usable.values()]
    cmp.resamples = (min(sizes), max(sizes))
    summary = cmp.paper.summary()
    spread = {s: summarize(b[[column]]).loc[column] for s, b in usable.items()}
    summary.insert(
        0,
        f"median {column} [95 % of replicates]",
        [
            format_ci(spread[s]["median"], spread[s]["lower"], spread[s]["upper"])
            for s in summary.index
        ],
    )
    cmp.paper_summary = summary.drop(columns="median")


def _table2(
    cmp: Comparison,
    points: dict[str, dict[str, float]],
    intervals: dict[str, pd.DataFrame | None],
) -> None:
    """Table 2 (numeric, formatted with intervals, long) of the scenarios with every number."""
    complete = {}
    for scenario, values in points.items():
        try:
            M.metrics_table(values, scenario)
            complete[scenario] = values
        except M.MetricInputError as exc:
            log.warning("Table 2 without %s: %s", scenario, exc)
    if complete:
        cmp.t2 = M.table2(complete)
        cmp.t2_ci, cmp.t2_long = table2_ci(complete, intervals)


def analyse(
    logged: Mapping[str, Mapping[str, float]],
    predictions: Mapping[str, pd.DataFrame],
    boots: Mapping[str, pd.DataFrame],
    run_ids: Mapping[str, str] | None = None,
    metric: str = "accuracy",
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Paired tests, Table 2 with intervals, the MDD and the paper method of a study.

    Args:
        logged: {scenario: the metrics its chosen run logged}, in report order.
        predictions: {scenario: its ``predictions.csv``} (scenarios without one: not tested).
        boots: {scenario: its bootstrap file} (the paper method and fallback intervals).
        run_ids: {scenario: run id}, named in alignment errors.
        metric: paired metric name of the paper method (``BOOTSTRAP_NAME`` keys).
        alpha: FDR level of both methods.
        n_resamples: paired bootstrap and Table 2 interval resamples.
        seed: seed of those resamples.

    Returns:
        The ``Comparison``.

    Raises:
        CompareError: runs scored on different external cases.
    """
    cmp = Comparison()
    usable = {}
    for scenario in logged:
        ext = external_rows(predictions[scenario]) if scenario in predictions else None
        if ext is None:
            cmp.not_tested[scenario] = "no predictions"
        else:
            usable[scenario] = ext
    if usable:
        cmp.aligned = align_predictions(usable, dict(run_ids or {}))
    if cmp.aligned is not None:
        cmp.mdd = _mdd(cmp.aligned, alpha)
        if len(usable) >= 2:
            cmp.paired = paired_comparisons(
                cmp.aligned.y, cmp.aligned.probas, n_resamples=n_resamples, seed=seed, alpha=alpha
            )
    points, intervals = _points_and_intervals(logged, cmp.aligned, boots, n_resamples, seed)
    cmp.points = points
    _table2(cmp, points, intervals)
    _paper_method(boots, metric, alpha, cmp)
    return cmp


__all__ = [
    "BOOTSTRAP_NAME",
    "METRIC_PREFIX",
    "PAIRED_NAME",
    "Comparison",
    "Settings",
    "analyse",
    "metrics_with_intervals",
]
