"""Training-seed variance for ``thyroaug compare`` (``thyroaug study --seeds 0,1,2``).

From the external predictions of every (scenario, training seed), on the same external cases:

- Table 2 per seed with its 95 % percentile case-bootstrap interval, and per scenario the mean
  and standard deviation (ddof 1) over seeds of every number, the case interval summarised as
  the mean of the per-seed bounds (``seed_summary``: ``compare/seed_table2.csv``);
- the paired tests of ``paired.paired_comparisons`` between the scenarios of each seed (one
  shared resample index matrix), whose per-seed ``diff`` and case-level ``se`` enter
  ``paired.seed_combined_test``, with Benjamini-Hochberg within each metric (``seed_tests``:
  ``compare/seed_tests.csv``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from thyroaug.evaluation.alignment import align_predictions
from thyroaug.evaluation.comparison import Settings, metrics_with_intervals
from thyroaug.evaluation.fdr import benjamini_hochberg_within
from thyroaug.evaluation.paired import paired_comparisons, seed_combined_test
from thyroaug.evaluation.table2 import table2_ci

SEED_TEST_COLUMNS: tuple[str, ...] = (
    "a",
    "b",
    "metric",
    "diff",
    "sd_seeds",
    "ci_low",
    "ci_high",
    "test",
    "p",
    "p_adj",
    "significant",
    "n_seeds",
)
"""The leading columns of ``compare/seed_tests.csv``, in order."""

SEED_TABLE_COLUMNS: tuple[str, ...] = (
    "scenario",
    "column",
    "metric",
    "mean",
    "sd",
    "n_seeds",
    "ci_low",
    "ci_high",
    "seeds",
)
"""Columns of ``compare/seed_table2.csv`` (``ci_low`` / ``ci_high``: mean per-seed bounds)."""

SE_SOURCE = {"accuracy": "paired bootstrap", "macro_f1": "paired bootstrap", "macro_auc": "DeLong"}
"""Where each metric's per-seed case-level SE comes from."""

Key = tuple[str, str]  # (scenario, training seed)


@dataclass
class SeedAnalysis:
    """Everything the training-seed section of the report shows."""

    seeds: list[str]  # training seeds with predictions, primary first
    primary: str  # the seed of Table 2 and paired_tests.csv
    n_seeds: dict[str, int] = field(default_factory=dict)  # scenario -> seeds with predictions
    per_seed: pd.DataFrame | None = None  # scenario, seed, column, metric, value, ci_low, ...
    summary: pd.DataFrame | None = None  # SEED_TABLE_COLUMNS
    per_seed_diffs: pd.DataFrame | None = None  # paired_comparisons of every seed + "seed"
    tests: pd.DataFrame | None = None  # seed_tests.csv
    probas: dict[Key, np.ndarray] = field(default_factory=dict)  # aligned, per (scenario, seed)

    @property
    def max_seeds(self) -> int:
        return max(self.n_seeds.values(), default=0)


def per_seed_table2(
    y: np.ndarray, probas: Mapping[Key, np.ndarray], n_resamples: int, seed: int
) -> pd.DataFrame:
    """Table 2 (long, with 95 % case-bootstrap intervals) of every (scenario, training seed).

    Returns:
        ``table2_ci``'s long frame of each, stacked, with a ``seed`` column.
    """
    parts = []
    for (scenario, training_seed), p in probas.items():
        point, interval = metrics_with_intervals(y, p, n_resamples, seed)
        _, long = table2_ci({scenario: point}, {scenario: interval})
        parts.append(long.assign(seed=training_seed))
    return pd.concat(parts, ignore_index=True)


def seed_summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd (ddof 1; NaN for one seed) and mean case-interval bounds over seeds.

    Args:
        per_seed: ``per_seed_table2`` rows.

    Returns:
        One row per (scenario, metric), columns ``SEED_TABLE_COLUMNS``.
    """
    rows = []
    for (scenario, column, metric), g in per_seed.groupby(
        ["scenario", "column", "metric"], sort=False
    ):
        values = g["value"].to_numpy(dtype=np.float64)
        finite = values[np.isfinite(values)]
        rows.append(
            {
                "scenario": scenario,
                "column": column,
                "metric": metric,
                "mean": float(finite.mean()) if finite.size else np.nan,
                "sd": float(finite.std(ddof=1)) if finite.size > 1 else np.nan,
                "n_seeds": int(finite.size),
                "ci_low": float(g["ci_low"].mean()),
                "ci_high": float(g["ci_high"].mean()),
                "seeds": ",".join(g["seed"].astype(str)),
            }
        )
    return pd.DataFrame(rows, columns=list(SEED_TABLE_COLUMNS))


def per_seed_diffs(
    y: np.ndarray,
    probas: Mapping[Key, np.ndarray],
    scenarios: Sequence[str],
    seeds: Sequence[str],
    settings: Settings,
) -> pd.DataFrame | None:
    """``paired_comparisons`` among the scenarios of each training seed, stacked with ``seed``.

    Returns:
        None when no seed has two scenarios.
    """
    parts = []
    for training_seed in seeds:
        at_seed = {s: probas[(s, training_seed)] for s in scenarios if (s, training_seed) in probas}
        if len(at_seed) < 2:
            continue
        df = paired_comparisons(
            y, at_seed, n_resamples=settings.n_resamples, seed=settings.seed, alpha=settings.alpha
        )
        parts.append(df.assign(seed=training_seed))
    return pd.concat(parts, ignore_index=True) if parts else None


def seed_tests(per_seed_diffs: pd.DataFrame, alpha: float, level: float = 0.95) -> pd.DataFrame:
    """``seed_combined_test`` of every (a, b, metric) over its seeds; BH within each metric.

    Args:
        per_seed_diffs: ``paired_comparisons`` rows with a ``seed`` column (``diff``, ``se``).
        alpha: FDR level of ``significant``.
        level: coverage of the interval.

    Returns:
        Columns ``SEED_TEST_COLUMNS``, then ``se, se_seed, se_case, df, seeds, diff_by_seed``.
    """
    rows = []
    for (a, b, metric), g in per_seed_diffs.groupby(["a", "b", "metric"], sort=False):
        res = seed_combined_test(g[["diff", "se"]], level=level)
        rows.append(
            {
                "a": a,
                "b": b,
                "metric": metric,
                **{k: res[k] for k in ("diff", "sd_seeds", "ci_low", "ci_high")},
                "test": f"seed-combined t ({SE_SOURCE.get(metric, 'paired')} SE per seed)",
                "p": res["p_value"],
                "n_seeds": int(res["n_seeds"]),
                **{k: res[k] for k in ("se", "se_seed", "se_case", "df")},
                "seeds": ",".join(g["seed"].astype(str)),
                "diff_by_seed": ",".join(f"{d:.4f}" for d in g["diff"]),
            }
        )
    df = pd.DataFrame(rows)
    df["p_adj"] = benjamini_hochberg_within(df, "metric")
    df["significant"] = df["p_adj"].fillna(1.0) < alpha
    extra = ["se", "se_seed", "se_case", "df", "seeds", "diff_by_seed"]
    return df[[*SEED_TEST_COLUMNS, *extra]].reset_index(drop=True)


def analyse_seeds(
    frames: Mapping[Key, pd.DataFrame],
    run_ids: Mapping[Key, str],
    seeds: Sequence[str],
    scenarios: Sequence[str],
    primary: str,
    settings: Settings,
) -> SeedAnalysis | None:
    """Per-seed Table 2, its mean +- sd and the seed-combined tests.

    Args:
        frames: {(scenario, training seed): external rows of its predictions.csv}.
        run_ids: {(scenario, training seed): run id}, named in alignment errors.
        seeds: training seeds in report order, primary first.
        scenarios: scenarios in report order.
        primary: the seed of Table 2 and the paired tests.
        settings: ``n_resamples``, ``seed`` and ``alpha`` of the comparison.

    Returns:
        The ``SeedAnalysis``; None without any predictions.

    Raises:
        CompareError: runs of different seeds scored on different external cases.
    """
    if not frames:
        return None
    names = {key: f"{key[0]} (seed {key[1]})" for key in frames}
    aligned = align_predictions(
        {names[k]: f for k, f in frames.items()}, {names[k]: run_ids[k] for k in frames}
    )
    probas = {key: aligned.probas[names[key]] for key in frames}
    seeds = [s for s in seeds if any(k[1] == s for k in probas)]
    order = [s for s in scenarios if any(k[0] == s for k in probas)]
    out = SeedAnalysis(seeds=seeds, primary=primary)
    out.n_seeds = {s: sum(1 for k in probas if k[0] == s) for s in order}
    ordered = {(s, seed): probas[(s, seed)] for s in order for seed in seeds if (s, seed) in probas}
    out.probas = ordered
    out.per_seed = per_seed_table2(aligned.y, ordered, settings.n_resamples, settings.seed)
    out.summary = seed_summary(out.per_seed)
    out.per_seed_diffs = per_seed_diffs(aligned.y, probas, order, seeds, settings)
    if out.per_seed_diffs is not None:
        out.tests = seed_tests(out.per_seed_diffs, settings.alpha)
    return out


__all__ = [
    "SEED_TABLE_COLUMNS",
    "SEED_TEST_COLUMNS",
    "SE_SOURCE",
    "SeedAnalysis",
    "analyse_seeds",
    "per_seed_diffs",
    "per_seed_table2",
    "seed_summary",
    "seed_tests",
]
