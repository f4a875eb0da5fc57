"""Paired comparisons of two classifiers evaluated on the same external test cases.

Every scenario of the study is scored on the *same* external cases, so two models' results are
paired: a case that is hard for one model tends to be hard for the other. Valid tests use that
pairing and have a sampling unit of one case; their p-values do not depend on a resample count.
(The paper's method, a Wilcoxon rank-sum test between two sets of bootstrap replicates in
``thyroaug.evaluation.stats``, treats the replicates as independent observations: its p-value
shrinks as the number of resamples grows, for the same data.)

This module provides:

- ``mcnemar_exact``: exact McNemar test of two accuracies (binomial test on discordant pairs);
- ``paired_bootstrap``: differences of accuracy / macro-F1 / macro-AUC with percentile
  confidence intervals, both models scored on the *same* resampled case indices;
- ``delong_test``: DeLong's test for correlated one-vs-rest AUCs per class and for the macro AUC
  (``thyroaug.evaluation.delong``; ``metric_replicates`` lives in ``.replicates``);
- ``minimal_detectable_difference``: the accuracy difference a McNemar test can detect with n
  external cases (Connor 1987);
- ``seed_combined_test``: combines per-training-seed differences (seed + case variability);
- ``paired_comparisons``: all of the above for every pair of models, with Benjamini-Hochberg
  applied within each metric family.

Conventions:

- ``y_true`` holds class indices 0..K-1; ``proba_*`` are ``[n, K]`` probabilities (rows sum to 1);
  the predicted class is the arg-max (ties: lower index, as ``numpy.argmax``). K is read from the
  probability matrices, so the code works for any K >= 2.
- Every difference is ``diff = metric(b) - metric(a)``: a positive ``diff`` means model ``b`` is
  better (for all three metrics higher is better).
- Macro-F1 equals ``sklearn.metrics.f1_score(average="macro", labels=range(K), zero_division=0)``.
  Macro-AUC equals ``roc_auc_score(y, P, multi_class="ovr", average="macro")`` when every class
  occurs in ``y``; a class absent from ``y_true`` has an undefined one-vs-rest AUC and the macro
  AUC is the mean over the defined classes (as ``thyroaug.evaluation.metrics.one_vs_rest_auc``).

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
from scipy.stats import binomtest, false_discovery_control, norm
from scipy.stats import t as student_t

from thyroaug.evaluation.delong import DELONG_COLUMNS, DeLongResult, delong_roc_test, delong_test
from thyroaug.evaluation.metrics import MetricInputError
from thyroaug.evaluation.replicates import (
    PAIRED_METRICS,
    _check_correct,
    _check_label_range,
    _check_labels,
    _check_level,
    _check_metrics,
    _check_n_resamples,
    _check_pair,
    _check_proba,
    _replicates,
    _summarise_diffs,
    bootstrap_p_value,
    metric_replicates,
)
from thyroaug.evaluation.stats import resample_indices

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

    Only discordant cases carry information on the accuracy difference. Under H0 (equal
    accuracies) each of the ``b + c`` discordant cases favours model a or b with probability 1/2,
    so ``b ~ Binomial(b + c, 1/2)``; the two-sided p-value is ``scipy.stats.binomtest(b, b + c,
    0.5).pvalue`` (McNemar 1947; exact form e.g. Fagerland, Lydersen & Laake 2013, BMC Med Res
    Methodol 13:91). It equals ``statsmodels.stats.contingency_tables.mcnemar(table,
    exact=True).pvalue`` (tested).

    Args:
        correct_a: bool [n], whether model a classified each case correctly.
        correct_b: bool [n], the same for model b (same cases, same order).

    Returns:
        McNemarResult (``p_value`` 1.0 when there are no discordant cases).

    Raises:
        MetricInputError (a ValueError): non-boolean input, NaN, or a length mismatch.
    """
    ca = _check_correct(correct_a, "correct_a")
    cb = _check_correct(correct_b, "correct_b")
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

    One index matrix ``resample_indices(n, n_resamples, seed)`` (cases drawn with replacement,
    ``numpy.random.default_rng(seed)``) is shared by both models, so each replicate difference
    keeps the pairing of the two models' errors on the same cases (Efron & Tibshirani 1993,
    ch. 13 percentile interval). Replicates are vectorised (``metric_replicates``). Resamples in
    which a metric is undefined (macro-AUC when a class lacks positives or negatives) are
    dropped from that metric's summary and counted in ``n_dropped``.

    Args:
        y_true: true class indices [n].
        proba_a: model a probabilities [n, K].
        proba_b: model b probabilities [n, K] (same cases, same order).
        metrics: names from ``PAIRED_METRICS``.
        n_resamples: number of bootstrap resamples B.
        seed: seed of the resample index matrix (deterministic given the seed).
        level: central coverage of the percentile interval.

    Returns:
        DataFrame, one row per metric, columns ``metric``, ``a``, ``b`` (full-data metric of each
        model), ``diff`` (= b - a on the full data; positive: b better), ``ci_low``, ``ci_high``
        (percentile interval of the replicate differences), ``se`` (their standard deviation,
        ddof 1), ``p_value`` (``bootstrap_p_value``), ``n_resamples``, ``n_dropped``.

    Raises:
        MetricInputError (a ValueError): malformed inputs, unknown metric, bad level / B.
    """
    y, pa, pb = _check_pair(y_true, proba_a, proba_b)
    wanted = _check_metrics(metrics)
    n_resamples = _check_n_resamples(n_resamples)
    level = _check_level(level)
    full = np.arange(len(y), dtype=np.int64)[None, :]
    point_a, point_b = _replicates(y, pa, full, wanted), _replicates(y, pb, full, wanted)
    idx = resample_indices(len(y), n_resamples, seed)
    rep_a, rep_b = _replicates(y, pa, idx, wanted), _replicates(y, pb, idx, wanted)
    rows = []
    for m in wanted:
        a, b = float(point_a[m][0]), float(point_b[m][0])
        rows.append(
            {
                "metric": m,
                "a": a,
                "b": b,
                "diff": b - a,
                **_summarise_diffs(rep_b[m] - rep_a[m], level),
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

    Method: Connor (1987, Biometrics 43:207-211) normal approximation for paired proportions,
    ``n = (z_{1-alpha/2} sqrt(psi) + z_{power} sqrt(psi - delta^2))^2 / delta^2`` with ``psi``
    the discordance proportion ``P(a right, b wrong) + P(a wrong, b right)`` and ``delta`` the
    accuracy difference, solved for ``delta`` in closed form (the root of the quadratic with
    ``sqrt(n) delta >= z_{1-alpha/2} sqrt(psi)``):

        ``delta = sqrt(psi) (z_a sqrt(n) + z_b sqrt(n - z_a^2 + z_b^2)) / (n + z_b^2)``.

    When ``p_discordant`` is not known it is approximated from a common accuracy ``acc`` as if
    the two models erred independently given the case: ``psi = 2 acc (1 - acc)``. Models trained
    on the same data usually make positively correlated errors (lower ``psi``), so this is
    conservative (a larger MDD) - pass a measured ``p_discordant`` when one is available. The
    normal approximation is optimistic for very small numbers of discordant pairs (``n psi`` <
    ~10); the exact test then needs a somewhat larger difference.

    Args:
        n_cases: number of external test cases n >= 1.
        p_discordant: discordance proportion psi in (0, 1]; exclusive with ``acc``.
        acc: common accuracy in (0, 1) to approximate psi; exclusive with ``p_discordant``.
        alpha: two-sided significance level.
        power: target power in (0, 1).

    Returns:
        The minimal detectable accuracy difference (a proportion); ``math.inf`` when even
        ``delta = psi`` (all discordant pairs favouring one model) does not reach the power.

    Raises:
        MetricInputError (a ValueError): arguments out of range, or not exactly one of
        ``p_discordant`` / ``acc`` given.
    """
    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) or n_cases < 1:
        raise MetricInputError(f"n_cases must be an int >= 1, got {n_cases!r}")
    if (p_discordant is None) == (acc is None):
        raise MetricInputError("give exactly one of p_discordant or acc")
    alpha = _check_level(alpha, "alpha")
    power = _check_level(power, "power")
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


def seed_combined_test(per_seed: pd.DataFrame, level: float = 0.95) -> dict[str, float]:
    """Combine per-training-seed paired differences into one estimate and test.

    Input: one row per training seed for one pair of scenarios and one metric, with the paired
    difference ``diff`` (b - a) on the external cases and its case-level standard error ``se``
    (paired bootstrap ``se`` or DeLong ``se``).

    Method: the estimate is the mean over the S seeds, ``d = mean(diff)``, and its variance has a
    seed part and a case part,

        ``Var(d) = sd_seeds^2 / S + mean(se^2)``,

    where ``sd_seeds`` is the between-seed standard deviation (ddof 1; 0 when S == 1). The case
    part is *not* divided by S: every seed is scored on the same external cases, so the case
    sampling error is shared by all seeds and does not average out (dividing by S would assume
    independent test sets and be anti-conservative). ``mean(se^2)`` bounds the variance of the
    seed-averaged case error from above, and the observed between-seed spread also contains the
    seed-specific part of the case error, so the total is conservative. The reference
    distribution is Student's t with Welch-Satterthwaite degrees of freedom ``df = Var(d)^2 (S -
    1) / (sd_seeds^2 / S)^2`` (the case part counted as known, infinite df; the normal when
    ``sd_seeds == 0`` or S == 1). Limits: with S = 2 or 3 the seed variance is poorly
    estimated (wide t intervals); for an exact case-level part, bootstrap the seed-averaged
    difference on one shared index matrix instead.

    Special cases (tested): S == 1 gives the case-level result (``se`` unchanged, normal
    z-test); with all ``se == 0`` it is the one-sample t-test of the per-seed differences.

    Args:
        per_seed: DataFrame with columns ``diff`` and ``se`` (one row per seed, finite,
            ``se >= 0``); other columns are ignored.
        level: coverage of the interval.

    Returns:
        dict with ``diff`` (mean over seeds), ``sd_seeds``, ``se`` (combined), ``ci_low``,
        ``ci_high``, ``p_value`` (two-sided), ``n_seeds``, ``df`` (inf: normal), ``se_seed``
        (``sd_seeds / sqrt(S)``) and ``se_case`` (``sqrt(mean(se^2))``).

    Raises:
        MetricInputError (a ValueError): missing columns, no rows, NaN or negative ``se``.
    """
    if not isinstance(per_seed, pd.DataFrame):
        raise MetricInputError(f"per_seed must be a DataFrame, got {type(per_seed).__name__}")
    missing = [c for c in ("diff", "se") if c not in per_seed.columns]
    if missing:
        raise MetricInputError(f"per_seed lacks column(s) {missing}; need 'diff' and 'se'")
    if len(per_seed) == 0:
        raise MetricInputError("per_seed has no rows; need one row per training seed")
    level = _check_level(level)
    diffs = per_seed["diff"].to_numpy(dtype=np.float64)
    ses = per_seed["se"].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(diffs)):
        raise MetricInputError("per_seed['diff'] contains NaN or inf")
    if not np.all(np.isfinite(ses)) or np.any(ses < 0):
        raise MetricInputError("per_seed['se'] must be finite and >= 0")
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


def _bh_within(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values of one family (NaN entries stay NaN, not counted)."""
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = false_discovery_control(p[finite], method="bh")
    return out


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

    For each pair (a, b) (all unordered pairs in the mapping's order when ``pairs`` is None):

    - ``accuracy``: diff and percentile CI from the paired bootstrap; test: exact McNemar
      (``mcnemar_exact``);
    - ``macro_f1``: diff, CI and p from the paired bootstrap (``bootstrap_p_value``; there is no
      exact small-sample test for a difference of macro-F1);
    - ``macro_auc``: diff, Wald CI and p from DeLong's test of the macro AUC (``delong_test``),
      so the interval and the test agree.

    The accuracy interval (bootstrap) and the McNemar p-value come from different methods and can
    disagree for borderline differences; the test decision is the McNemar one. All pairs share
    one resample index matrix (``resample_indices(n, n_resamples, seed)``).
    Benjamini-Hochberg (``scipy.stats.false_discovery_control``) is applied within each family,
    a family being one metric across all pairs; ``significant = p_adj < alpha``.

    Args:
        y_true: true class indices [n].
        probas: {model name: probabilities [n, K]} (at least two models, same K and cases).
        pairs: optional (a, b) name pairs to compare; diff is always ``metric(b) - metric(a)``.
        n_resamples: bootstrap resamples B.
        seed: seed of the resample index matrix.
        alpha: FDR level for ``significant``.
        level: coverage of the confidence intervals.

    Returns:
        DataFrame with columns ``a, b, metric, diff, ci_low, ci_high, test, p, p_adj,
        significant`` followed by ``family``, ``value_a``, ``value_b``, ``se``; rows ordered
        by pair, then metric.

    Raises:
        MetricInputError (a ValueError): fewer than two models, unknown names in ``pairs``,
        malformed inputs.
    """
    if not isinstance(probas, Mapping) or len(probas) < 2:
        raise MetricInputError("probas must map at least two model names to probability matrices")
    alpha = _check_level(alpha, "alpha")
    level = _check_level(level)
    n_resamples = _check_n_resamples(n_resamples)
    y = _check_labels(y_true)
    names = [str(k) for k in probas]
    if len(set(names)) != len(names):
        raise MetricInputError(f"probas: model names must be unique as strings, got {names}")
    checked: dict[str, np.ndarray] = {}
    for key, name in zip(probas, names):
        ref = names[0] if checked else ""
        k_ref = next(iter(checked.values())).shape[1] if checked else None
        checked[name] = _check_proba(probas[key], len(y), f"probas[{name!r}]", k_ref, ref)
    _check_label_range(y, checked[names[0]].shape[1])
    if pairs is None:
        pair_list = list(combinations(names, 2))
    else:
        pair_list = []
        for pair in pairs:
            if len(pair) != 2:
                raise MetricInputError(f"pairs: each entry must be (a, b), got {pair!r}")
            a, b = (str(v) for v in pair)
            unknown = [v for v in (a, b) if v not in checked]
            if unknown:
                raise MetricInputError(f"pairs: unknown model name(s) {unknown}; have {names}")
            if a == b:
                raise MetricInputError(f"pairs: cannot compare {a!r} with itself")
            pair_list.append((a, b))
        if not pair_list:
            raise MetricInputError("pairs is empty")

    boot_metrics = ["accuracy", "macro_f1"]
    full = np.arange(len(y), dtype=np.int64)[None, :]
    idx = resample_indices(len(y), n_resamples, seed)
    used = list(dict.fromkeys(v for pair in pair_list for v in pair))
    point = {m: _replicates(y, checked[m], full, boot_metrics) for m in used}
    reps = {m: _replicates(y, checked[m], idx, boot_metrics) for m in used}
    correct = {m: checked[m].argmax(axis=1) == y for m in used}

    rows = []
    for a, b in pair_list:
        for metric in PAIRED_METRICS:
            if metric == "macro_auc":
                dl = delong_test(y, checked[a], checked[b], level=level).iloc[-1]
                va, vb = float(dl["auc_a"]), float(dl["auc_b"])
                ci_low, ci_high = float(dl["ci_low"]), float(dl["ci_high"])
                p, se = float(dl["p_value"]), float(dl["se"])
            else:
                va, vb = float(point[a][metric][0]), float(point[b][metric][0])
                summ = _summarise_diffs(reps[b][metric] - reps[a][metric], level)
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
    df = pd.DataFrame(rows)
    df["p_adj"] = np.nan
    for _, sub in df.groupby("family", sort=False):
        df.loc[sub.index, "p_adj"] = _bh_within(sub["p"].to_numpy(dtype=np.float64))
    df["significant"] = df["p_adj"].fillna(1.0) < alpha
    extra = ["family", "value_a", "value_b", "se"]
    return df[[*COMPARISON_COLUMNS, *extra]].reset_index(drop=True)


__all__ = [
    "COMPARISON_COLUMNS",
    "DELONG_COLUMNS",
    "PAIRED_METRICS",
    "TEST_NAMES",
    "DeLongResult",
    "McNemarResult",
    "bootstrap_p_value",
    "combine_seeds",
    "delong_roc_test",
    "delong_test",
    "mcnemar_exact",
    "metric_replicates",
    "minimal_detectable_difference",
    "paired_bootstrap",
    "paired_comparisons",
    "seed_combined_test",
]
