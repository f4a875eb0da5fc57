"""Training-seed variance for ``thyroaug compare``: a study whose scenarios were trained with
several seeds (``thyroaug study --seeds 0,1,2``).

One run per (scenario, training seed) (``compare_runs.find_runs``: the latest of each pair). On
the same external cases, for every scenario and seed:

- Table 2 on all external cases and its 95 % percentile case-bootstrap interval; per scenario the
  mean and standard deviation (ddof 1) over seeds of every number, with the case interval
  summarised as the mean over seeds of the per-seed bounds (``compare/seed_table2.csv``);
- the paired tests of ``paired.paired_comparisons`` between every two scenarios trained with that
  seed (one shared resample index matrix for every seed), whose per-seed difference ``diff`` and
  case-level standard error ``se`` (paired bootstrap for accuracy and macro-F1, DeLong for
  macro-AUC) enter ``paired.seed_combined_test``: the mean difference over the seeds both
  scenarios have, variance ``sd_seeds^2 / S + mean(se^2)``, Student's t reference;
  Benjamini-Hochberg within each metric family (``compare/seed_tests.csv``, columns
  ``SEED_TEST_COLUMNS`` then ``se, se_seed, se_case, df, seeds, diff_by_seed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from thyroaug.contract import PREDICTIONS_ARTIFACT
from thyroaug.jobs.compare_runs import StudyRuns, align_predictions, download_csvs, external_rows

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

    @property
    def max_seeds(self) -> int:
        return max(self.n_seeds.values(), default=0)


def has_several_seeds(runs: StudyRuns) -> bool:
    """Whether some scenario of the study has finished runs with two or more training seeds."""
    return any(len(per_seed) > 1 for per_seed in runs.by_seed.values())


def seed_frames(
    runs: StudyRuns, preds: dict[str, pd.DataFrame], dst: Path, progress: bool
) -> tuple[dict[tuple[str, str], pd.DataFrame], dict[tuple[str, str], str]]:
    """External predictions and run ids per (scenario, seed): the chosen runs' from ``preds``
    (already downloaded), every other seed's run downloaded to ``dst``."""
    chosen_ids = {r.info.run_id for r in runs.chosen.values()}
    others = {
        f"{scenario}__s{seed}": run
        for scenario, per_seed in runs.by_seed.items()
        for seed, run in per_seed.items()
        if run.info.run_id not in chosen_ids
    }
    fetched = download_csvs(others, PREDICTIONS_ARTIFACT, dst, "other seeds' predictions", progress)
    frames, run_ids = {}, {}
    for scenario, per_seed in runs.by_seed.items():
        for seed, run in per_seed.items():
            raw = preds.get(scenario) if run.info.run_id in chosen_ids else None
            raw = raw if raw is not None else fetched.get(f"{scenario}__s{seed}")
            ext = external_rows(raw) if raw is not None else None
            if ext is not None:
                frames[(scenario, seed)] = ext
                run_ids[(scenario, seed)] = run.info.run_id
    return frames, run_ids


def _per_seed_table2(
    y: np.ndarray, probas: dict[tuple[str, str], np.ndarray], n_resamples: int, seed: int
) -> pd.DataFrame:
    """Table 2 (long, with 95 % case-bootstrap intervals) of every (scenario, seed)."""
    from thyroaug.evaluation import stats
    from thyroaug.evaluation.metrics import compute_metrics
    from thyroaug.evaluation.report import table2_ci

    parts = []
    for (scenario, training_seed), p in probas.items():
        interval = stats.summarize(
            stats.bootstrap(y, p, n_resamples=n_resamples, seed=seed, metrics="all")
        )
        _, long = table2_ci({scenario: compute_metrics(y, p)}, {scenario: interval})
        parts.append(long.assign(seed=training_seed))
    return pd.concat(parts, ignore_index=True)


def seed_summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd (ddof 1; NaN for one seed) and mean case-interval bounds over seeds."""
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


def _per_seed_diffs(
    y: np.ndarray,
    probas: dict[tuple[str, str], np.ndarray],
    order: list[str],
    seeds: list[str],
    settings: Any,
) -> pd.DataFrame | None:
    """``paired_comparisons`` among the scenarios of each training seed, stacked."""
    from thyroaug.evaluation.paired import paired_comparisons

    parts = []
    for training_seed in seeds:
        at_seed = {s: probas[(s, training_seed)] for s in order if (s, training_seed) in probas}
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
    from scipy.stats import false_discovery_control

    from thyroaug.evaluation.paired import seed_combined_test

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
    df["p_adj"] = np.nan
    for _, sub in df.groupby("metric", sort=False):
        p = sub["p"].to_numpy(dtype=np.float64)
        ok = np.isfinite(p)
        if ok.any():
            df.loc[sub.index[ok], "p_adj"] = false_discovery_control(p[ok], method="bh")
    df["significant"] = df["p_adj"].fillna(1.0) < alpha
    extra = ["se", "se_seed", "se_case", "df", "seeds", "diff_by_seed"]
    return df[[*SEED_TEST_COLUMNS, *extra]].reset_index(drop=True)


def analyse_seeds(
    runs: StudyRuns,
    frames: dict[tuple[str, str], pd.DataFrame],
    run_ids: dict[tuple[str, str], str],
    settings: Any,
) -> SeedAnalysis | None:
    """Per-seed Table 2, its mean +- sd and the seed-combined tests (None: no predictions).

    ``settings``: the compare ``Settings`` (``n_resamples``, ``seed``, ``alpha``).

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
    seeds = [s for s in runs.seeds if any(k[1] == s for k in probas)]
    order = [s for s in runs.chosen if any(k[0] == s for k in probas)]
    out = SeedAnalysis(seeds=seeds, primary=runs.primary_seed)
    out.n_seeds = {s: sum(1 for k in probas if k[0] == s) for s in order}
    ordered = {(s, seed): probas[(s, seed)] for s in order for seed in seeds if (s, seed) in probas}
    out.per_seed = _per_seed_table2(aligned.y, ordered, settings.n_resamples, settings.seed)
    out.summary = seed_summary(out.per_seed)
    out.per_seed_diffs = _per_seed_diffs(aligned.y, probas, order, seeds, settings)
    if out.per_seed_diffs is not None:
        out.tests = seed_tests(out.per_seed_diffs, settings.alpha)
    return out


def seed_analysis(
    runs: StudyRuns, preds: dict[str, pd.DataFrame], tmp: Path, settings: Any, progress: bool
) -> SeedAnalysis | None:
    """The whole training-seed analysis of a study (None when no scenario has two seeds)."""
    if not has_several_seeds(runs):
        return None
    frames, run_ids = seed_frames(runs, preds, tmp, progress)
    return analyse_seeds(runs, frames, run_ids, settings)


def write_seed_tables(tmp: Path, analysis: SeedAnalysis | None) -> list[Path]:
    """``seed_table2.csv``, ``seed_table2_by_seed.csv`` and ``seed_tests.csv`` under ``tmp``."""
    if analysis is None or analysis.summary is None:
        return []
    files = [tmp / "seed_table2.csv", tmp / "seed_table2_by_seed.csv"]
    analysis.summary.to_csv(files[0], index=False)
    analysis.per_seed.to_csv(files[1], index=False)
    if analysis.tests is not None:
        analysis.tests.to_csv(tmp / "seed_tests.csv", index=False)
        files.append(tmp / "seed_tests.csv")
    return files
