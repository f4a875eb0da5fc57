"""Paired comparisons of two classifiers evaluated on the same external test cases.

Every scenario is scored on the *same* external cases, so two models' results are paired; these
tests use that pairing with one case as the sampling unit, and their p-values do not depend on a
resample count (unlike the paper's method, ``thyroaug.evaluation.paper_method``). Why, and the
derivations: ``docs/statistics.md``.

- ``mcnemar_exact``: exact McNemar test of two accuracies;
- ``paired_bootstrap``: metric differences with percentile intervals, both models scored on the
  same resampled cases;
- ``delong_test`` / ``delong_roc_test``: DeLong's test of correlated AUCs (``.delong``);
- ``minimal_detectable_difference``: the accuracy difference McNemar can detect (Connor 1987);
- ``seed_combined_test`` / ``combine_seeds``: per-training-seed differences combined;
- ``paired_comparisons``: all pairs of models, Benjamini-Hochberg within each metric.

Conventions: ``y_true`` holds class indices 0..K-1, ``proba_*`` are ``[n, K]`` probabilities (K
from their columns); predictions are the arg-max; every difference is ``metric(b) - metric(a)``
(positive: b better). Macro-F1 and macro-AUC are scikit-learn's (``f1_score(average="macro",
labels=range(K), zero_division=0)``, ``roc_auc_score(multi_class="ovr", average="macro")``),
the macro AUC averaging over the classes present in ``y_true``.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 4, 200)
    >>> pa, pb = rng.dirichlet(np.ones(4), 200), rng.dirichlet(np.ones(4), 200)
    >>> list(paired_bootstrap(y, pa, pb, n_resamples=200)["metric"])
    ['accuracy', 'macro_f1', 'macro_auc']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import binomtest, norm
from scipy.stats import t as student_t

from thyroaug.evaluation.bootstrap import (
    PAIRED_METRICS,
    check_n_resamples,
    resample_indices,
    resolve_metrics,
    score_resamples,
    summarize_diffs,
)
from thyroaug.evaluation.delong import delong_test
from thyroaug.evaluation.fdr import benjamini_hochberg_within
from thyroaug.evaluation.metrics import (
    MetricInputError,
    check_correct,
    check_label_range,
    check_labels,
    check_level,
    check_pair,
    check_probabilities,
)

COMPARISON_COLUMNS: tuple[str, ...] = (
    "a",
    "b",
    "metric",
    "diff",
    "ci_low",
    "ci_high",
    "test",
    "p",
    "p_adj",
    "significant",
)
"""The leading columns of ``paired_comparisons``, in order."""

TEST_NAMES: dict[str, str] = {
    "accuracy": "McNemar exact",
    "macro_f1": "paired bootstrap",
    "macro_auc": "DeLong",
}
"""The test ``paired_comparisons`` applies to each metric family."""

# --------------------------------------------------------------------------------------------
# McNemar


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test of two paired accuracies.

    Attributes:
        n: number of cases.
        b: cases model a classifies correctly and model b wrongly.
        c: cases model a classifies wrongly and model b correctly.
        statistic: ``min(b, c)`` (the binomial statistic; as statsmodels' exact ``mcnemar``).
        p_value: two-sided exact p-value (1.0 when ``b + c == 0``).
        diff: ``accuracy(b) - accuracy(a) = (c - b) / n``.
    """

    n: int
    b: int
    c: int
    statistic: float
    p_value: float
    diff: float


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemarResult:
    """Exact (binomial) McNemar test for two classifiers scored on the same cases.

    Under H0 each of the ``b + c`` discordant cases favours a or b with probability 1/2:
    ``p = binomtest(b, b + c, 0.5).pvalue`` (McNemar 1947; Fagerland, Lydersen & Laake 2013).
    Equals statsmodels' ``mcnemar(table, exact=True)`` (tested).

    Args:
        correct_a: bool [n], whether model a classified each case correctly.
        correct_b: bool [n], the same for model b (same cases, same order).

    Returns:
        McNemarResult (``p_value`` 1.0 when there are no discordant cases).

    Raises:
        MetricInputError (a ValueError): non-boolean input, NaN, or a length mismatch.
    """
    ca = check_correct(correct_a, "correct_a")
    cb = check_correct(correct_b, "correct_b")
    if ca.shape != cb.shape:
        raise MetricInputError(
            f"correct_a has {ca.size} cases but correct_b has {cb.size} (shape mismatch)"
        )
    if ca.size == 0:
        raise MetricInputError("correct_a is empty; McNemar needs at least one case")
    b = int(np.sum(ca & ~cb))
    c = int(np.sum(~ca & cb))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return McNemarResult(
        n=int(ca.size),
        b=b,
        c=c,
        statistic=float(min(b, c)),
        p_value=min(1.0, p),
        diff=(c - b) / ca.size,
    )


# --------------------------------------------------------------------------------------------
# paired bootstrap


def paired_bootstrap(
    y_true: np.ndarray,
    proba_a: np.ndarray,
    proba_b: np.ndarray,
    metrics: Sequence[str] | str = PAIRED_METRICS,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Paired case bootstrap of metric differences ``metric(b) - metric(a)``.

    Both models are scored on the same index matrix ``resample_indices(n, n_resamples, seed)``,
    so each replicate difference keeps the pairing (Efron & Tibshirani 1993, ch. 13 percentile
    interval). Resamples where a metric is undefined (macro-AUC when a class present in
    ``y_true`` lacks positives or negatives) are dropped from its summary and counted.

    Args:
        y_true: true class indices [n].
        proba_a: model a probabilities [n, K].
        proba_b: model b probabilities [n, K] (same cases, same order).
        metrics: names from ``PAIRED_METRICS`` (or any ``bootstrap.resolve_metrics`` name).
        n_resamples: number of bootstrap resamples B.
        seed: seed of the resample index matrix.
        level: central coverage of the percentile interval.

    Returns:
        DataFrame, one row per metric: ``metric``, ``a``, ``b`` (full-data values), ``diff``
        (b - a), ``ci_low``, ``ci_high``, ``se`` (ddof 1), ``p_value``
        (``bootstrap_p_value``), ``n_resamples``, ``n_dropped``.

    Raises:
        MetricInputError (a ValueError): malformed inputs, unknown metric, bad level / B.
    """
    y, pa, pb = check_pair(y_true, proba_a, proba_b)
    names = [str(k) for k in range(pa.shape[1])]
    wanted = resolve_metrics(metrics, names)
    n_resamples = check_n_resamples(n_resamples)
    level = check_level(level)
    full = np.arange(len(y), dtype=np.int64)[None, :]
    idx = resample_indices(len(y), n_resamples, seed)
    point_a, point_b, rep_a, rep_b = (
        score_resamples(y, p, index, wanted, names, auc_classes="full")
        for p, index in ((pa, full), (pb, full), (pa, idx), (pb, idx))
    )
    rows = []
    for m in wanted:
        a, b = float(point_a[m][0]), float(point_b[m][0])
        rows.append(
            {
                "metric": m,
                "a": a,
                "b": b,
                "diff": b - a,
                **summarize_diffs(rep_b[m] - rep_a[m], level),
                "n_resamples": n_resamples,
            }
        )
    cols = ["metric", "a", "b", "diff", "ci_low", "ci_high", "se", "p_value", "n_resamples"]
    return pd.DataFrame(rows)[[*cols, "n_dropped"]]


# --------------------------------------------------------------------------------------------
# power and seeds


def minimal_detectable_difference(
    n_cases: int,
    p_discordant: float | None = None,
    acc: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """Smallest accuracy difference a two-sided paired McNemar test detects with given power.

    Connor (1987, Biometrics 43:207) sample size for paired proportions, solved for the
    difference ``delta`` given the discordance proportion ``psi``; without a measured ``psi``,
    ``acc`` approximates it as ``2 acc (1 - acc)`` (independent errors: conservative). Equation
    and caveats: ``docs/statistics.md``, "Minimal detectable difference".

    Args:
        n_cases: number of external test cases n >= 1.
        p_discordant: discordance proportion psi in (0, 1]; exclusive with ``acc``.
        acc: common accuracy in (0, 1) to approximate psi; exclusive with ``p_discordant``.
        alpha: two-sided significance level.
        power: target power in (0, 1).

    Returns:
        The minimal detectable accuracy difference (a proportion); ``math.inf`` when even
        ``delta = psi`` (every discordant pair favouring one model) does not reach the power.

    Raises:
        MetricInputError (a ValueError): arguments out of range, or not exactly one of
        ``p_discordant`` / ``acc`` given.
    """
    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) or n_cases < 1:
        raise MetricInputError(f"n_cases must be an int >= 1, got {n_cases!r}")
    if (p_discordant is None) == (acc is None):
        raise MetricInputError("give exactly one of p_discordant or acc")
    alpha = check_level(alpha, "alpha")
    power = check_level(power, "power")
    if p_discordant is not None:
        psi = float(p_discordant)
        if not (np.isfinite(psi) and 0 < psi <= 1):
            raise MetricInputError(f"p_discordant must lie in (0, 1], got {p_discordant!r}")
    else:
        a = float(acc)  # type: ignore[arg-type]
        if not (np.isfinite(a) and 0 < a < 1):
            raise MetricInputError(f"acc must lie in (0, 1), got {acc!r}")
        psi = 2 * a * (1 - a)
    n = float(n_cases)
    z_a = float(norm.ppf(1 - alpha / 2))
    z_b = float(norm.ppf(power))
    inner = n - z_a**2 + z_b**2
    if inner < 0:
        return math.inf
    delta = math.sqrt(psi) * (z_a * math.sqrt(n) + z_b * math.sqrt(inner)) / (n + z_b**2)
    return delta if delta <= psi else math.inf


def _check_per_seed(per_seed: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(diffs, ses) of a per-seed table: columns ``diff`` and ``se``, finite, ``se >= 0``."""
    if not isinstance(per_seed, pd.DataFrame):
        raise MetricInputError(f"per_seed must be a DataFrame, got {type(per_seed).__name__}")
    missing = [c for c in ("diff", "se") if c not in per_seed.columns]
    if missing:
        raise MetricInputError(f"per_seed lacks column(s) {missing}; need 'diff' and 'se'")
    if len(per_seed) == 0:
        raise MetricInputError("per_seed has no rows; need one row per training seed")
    diffs = per_seed["diff"].to_numpy(dtype=np.float64)
    ses = per_seed["se"].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(diffs)):
        raise MetricInputError("per_seed['diff'] contains NaN or inf")
    if not np.all(np.isfinite(ses)) or np.any(ses < 0):
        raise MetricInputError("per_seed['se'] must be finite and >= 0")
    return diffs, ses


def seed_combined_test(per_seed: pd.DataFrame, level: float = 0.95) -> dict[str, float]:
    """Combine per-training-seed paired differences into one estimate and test.

    ``d = mean(diff)`` over the S seeds with ``Var(d) = sd_seeds^2 / S + mean(se^2)``: the case
    part is not divided by S because every seed is scored on the same external cases. Reference:
    Student's t with Welch-Satterthwaite degrees of freedom (the normal when the seed part is 0).
    S == 1 gives the case-level z-test; all ``se == 0`` the one-sample t-test (both tested).
    Derivation and limits: ``docs/statistics.md``, "Training seeds".

    Args:
        per_seed: one row per seed with the paired difference ``diff`` (b - a) and its
            case-level standard error ``se`` (finite, >= 0); other columns are ignored.
        level: coverage of the interval.

    Returns:
        dict with ``diff`` (mean over seeds), ``sd_seeds`` (NaN for one seed), ``se``
        (combined), ``ci_low``, ``ci_high``, ``p_value`` (two-sided), ``n_seeds``, ``df`` (inf:
        normal), ``se_seed`` (``sd_seeds / sqrt(S)``) and ``se_case`` (``sqrt(mean(se^2))``).

    Raises:
        MetricInputError (a ValueError): missing columns, no rows, NaN or negative ``se``.
    """
    diffs, ses = _check_per_seed(per_seed)
    level = check_level(level)
    s = len(diffs)
    d = float(diffs.mean())
    sd_seeds = float(diffs.std(ddof=1)) if s > 1 else 0.0
    var_seed = sd_seeds**2 / s
    var_case = float(np.mean(ses**2))
    var = var_seed + var_case
    se = math.sqrt(var)
    df = var**2 * (s - 1) / var_seed**2 if var_seed > 0 else math.inf
    if se > 0:
        stat = d / se
    else:
        stat = 0.0 if d == 0 else math.copysign(math.inf, d)
    if math.isinf(df):
        p = float(2 * norm.sf(abs(stat)))
        crit = float(norm.ppf(0.5 + level / 2))
    else:
        p = float(2 * student_t.sf(abs(stat), df))
        crit = float(student_t.ppf(0.5 + level / 2, df))
    return {
        "diff": d,
        "sd_seeds": sd_seeds if s > 1 else math.nan,
        "se": se,
        "ci_low": d - crit * se,
        "ci_high": d + crit * se,
        "p_value": min(1.0, p),
        "n_seeds": s,
        "df": df,
        "se_seed": math.sqrt(var_seed),
        "se_case": math.sqrt(var_case),
    }


def combine_seeds(
    diffs_per_seed: Sequence[float], ses_per_seed: Sequence[float], level: float = 0.95
) -> dict[str, float]:
    """``seed_combined_test`` on two sequences (per-seed differences and case-level SEs).

    Args:
        diffs_per_seed: paired difference (b - a) of each training seed.
        ses_per_seed: its case-level standard error, same length.
        level: coverage of the interval.

    Returns:
        The ``seed_combined_test`` dict.
    """
    diffs = np.asarray(diffs_per_seed, dtype=np.float64)
    ses = np.asarray(ses_per_seed, dtype=np.float64)
    if diffs.ndim != 1 or ses.shape != diffs.shape:
        raise MetricInputError(
            f"diffs_per_seed and ses_per_seed must be 1-D of equal length, got shapes "
            f"{diffs.shape} and {ses.shape}"
        )
    return seed_combined_test(pd.DataFrame({"diff": diffs, "se": ses}), level=level)


# --------------------------------------------------------------------------------------------
# all pairs


def _check_models(
    y_true: np.ndarray, probas: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Validated labels and {model name as str: probabilities} with one K for all."""
    y = check_labels(y_true)
    names = [str(k) for k in probas]
    if len(set(names)) != len(names):
        raise MetricInputError(f"probas: model names must be unique as strings, got {names}")
    checked: dict[str, np.ndarray] = {}
    for key, name in zip(probas, names):
        k_ref = next(iter(checked.values())).shape[1] if checked else None
        checked[name] = check_probabilities(
            probas[key], len(y), k_ref, f"probas[{name!r}]", names[0] if checked else ""
        )
    k = checked[names[0]].shape[1]
    check_label_range(y, k, source=f"K={k} from the probability columns")
    return y, checked


def _pair_list(
    names: Sequence[str], pairs: Sequence[tuple[str, str]] | None
) -> list[tuple[str, str]]:
    """All unordered pairs in ``names`` order, or the given (a, b) pairs, checked."""
    if pairs is None:
        return list(combinations(names, 2))
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise MetricInputError(f"pairs: each entry must be (a, b), got {pair!r}")
        a, b = (str(v) for v in pair)
        unknown = [v for v in (a, b) if v not in names]
        if unknown:
            raise MetricInputError(f"pairs: unknown model name(s) {unknown}; have {list(names)}")
        if a == b:
            raise MetricInputError(f"pairs: cannot compare {a!r} with itself")
        out.append((a, b))
    if not out:
        raise MetricInputError("pairs is empty")
    return out


def _pair_rows(
    y: np.ndarray,
    probas: dict[str, np.ndarray],
    pair_list: list[tuple[str, str]],
    idx: np.ndarray,
    level: float,
) -> list[dict[str, object]]:
    """One row per (pair, metric): McNemar / paired bootstrap / DeLong as ``TEST_NAMES``."""
    boot_metrics = ["accuracy", "macro_f1"]
    names = [str(k) for k in range(next(iter(probas.values())).shape[1])]
    full = np.arange(len(y), dtype=np.int64)[None, :]
    used = list(dict.fromkeys(v for pair in pair_list for v in pair))
    point = {m: score_resamples(y, probas[m], full, boot_metrics, names, "full") for m in used}
    reps = {m: score_resamples(y, probas[m], idx, boot_metrics, names, "full") for m in used}
    correct = {m: probas[m].argmax(axis=1) == y for m in used}
    rows: list[dict[str, object]] = []
    for a, b in pair_list:
        for metric in PAIRED_METRICS:
            if metric == "macro_auc":
                dl = delong_test(y, probas[a], probas[b], level=level).iloc[-1]
                va, vb = float(dl["auc_a"]), float(dl["auc_b"])
                ci_low, ci_high = float(dl["ci_low"]), float(dl["ci_high"])
                p, se = float(dl["p_value"]), float(dl["se"])
            else:
                va, vb = float(point[a][metric][0]), float(point[b][metric][0])
                summ = summarize_diffs(reps[b][metric] - reps[a][metric], level)
                ci_low, ci_high, se = summ["ci_low"], summ["ci_high"], summ["se"]
                if metric == "accuracy":
                    p = mcnemar_exact(correct[a], correct[b]).p_value
                else:
                    p = summ["p_value"]
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "metric": metric,
                    "diff": vb - va,
                    "ci_low": ci_low,
                    "ci_high": ci_high,
                    "test": TEST_NAMES[metric],
                    "p": p,
                    "family": metric,
                    "value_a": va,
                    "value_b": vb,
                    "se": se,
                }
            )
    return rows


def paired_comparisons(
    y_true: np.ndarray,
    probas: Mapping[str, np.ndarray],
    pairs: Sequence[tuple[str, str]] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    level: float = 0.95,
) -> pd.DataFrame:
    """Paired tests of every model pair on accuracy, macro-F1 and macro-AUC, with BH per metric.

    Per pair (a, b): ``accuracy``: diff and CI from the paired bootstrap, p from the exact
    McNemar test (the decision is McNemar's; the two can disagree when borderline);
    ``macro_f1``: diff, CI and p from the paired bootstrap; ``macro_auc``: diff, Wald CI and p
    from DeLong's test. All pairs share one index matrix ``resample_indices(n, n_resamples,
    seed)``. Benjamini-Hochberg runs within each family (one metric across all pairs);
    ``significant = p_adj < alpha``.

    Args:
        y_true: true class indices [n].
        probas: {model name: probabilities [n, K]} (at least two models, same K and cases).
        pairs: optional (a, b) name pairs (default: all unordered pairs in mapping order);
            diff is always ``metric(b) - metric(a)``.
        n_resamples: bootstrap resamples B.
        seed: seed of the resample index matrix.
        alpha: FDR level for ``significant``.
        level: coverage of the confidence intervals.

    Returns:
        DataFrame with columns ``COMPARISON_COLUMNS`` followed by ``family``, ``value_a``,
        ``value_b``, ``se``; rows ordered by pair, then metric.

    Raises:
        MetricInputError (a ValueError): fewer than two models, unknown names in ``pairs``,
        malformed inputs.
    """
    if not isinstance(probas, Mapping) or len(probas) < 2:
        raise MetricInputError("probas must map at least two model names to probability matrices")
    alpha = check_level(alpha, "alpha")
    level = check_level(level)
    n_resamples = check_n_resamples(n_resamples)
    y, checked = _check_models(y_true, probas)
    pair_list = _pair_list(list(checked), pairs)
    idx = resample_indices(len(y), n_resamples, seed)
    df = pd.DataFrame(_pair_rows(y, checked, pair_list, idx, level))
    df["p_adj"] = benjamini_hochberg_within(df, "family")
    df["significant"] = df["p_adj"].fillna(1.0) < alpha
    extra = ["family", "value_a", "value_b", "se"]
    return df[[*COMPARISON_COLUMNS, *extra]].reset_index(drop=True)


__all__ = [
    "COMPARISON_COLUMNS",
    "TEST_NAMES",
    "McNemarResult",
    "combine_seeds",
    "mcnemar_exact",
    "minimal_detectable_difference",
    "paired_bootstrap",
    "paired_comparisons",
    "seed_combined_test",
]
