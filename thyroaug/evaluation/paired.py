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
- ``delong_test``: DeLong's test for correlated one-vs-rest AUCs per class and for the macro AUC;
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
from scipy.stats import binomtest, false_discovery_control, norm, rankdata
from scipy.stats import t as student_t

from thyroaug.evaluation.metrics import MetricInputError
from thyroaug.evaluation.stats import resample_indices

PAIRED_METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "macro_auc")
"""Metrics ``paired_bootstrap`` knows, in its default order."""

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

_ROW_SUM_ATOL = 1e-3  # as thyroaug.evaluation.metrics.PROBABILITY_ATOL
_CHUNK_ELEMENTS = 2_000_000  # resamples x cases gathered per chunk, bounds memory


# --------------------------------------------------------------------------------------------
# input validation


def _check_labels(y_true: object, name: str = "y_true") -> np.ndarray:
    """1-D int64 class indices >= 0 (no NaN, integral values only)."""
    arr = np.asarray(y_true)
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D class indices, got shape {arr.shape}")
    if arr.size == 0:
        raise MetricInputError(f"{name} is empty; a paired comparison needs at least one case")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise MetricInputError(f"{name} contains NaN or inf")
        if not np.all(arr == np.round(arr)):
            raise MetricInputError(f"{name} must hold integer class indices, got non-integers")
    elif arr.dtype.kind == "b" or arr.dtype.kind not in "iu":
        raise MetricInputError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise MetricInputError(f"{name} has negative label(s), e.g. {int(arr.min())}")
    return arr


def _check_proba(
    proba: object, n_cases: int, name: str, n_classes: int | None = None, ref: str = ""
) -> np.ndarray:
    """``[n_cases, K]`` finite probabilities in [0, 1] whose rows sum to 1 (float64)."""
    arr = np.asarray(proba, dtype=np.float64)
    if arr.ndim != 2:
        raise MetricInputError(f"{name} must be a 2-D [n_cases, K] matrix, got shape {arr.shape}")
    if arr.shape[0] != n_cases:
        raise MetricInputError(
            f"{name} has {arr.shape[0]} rows but y_true has {n_cases} cases (shape mismatch)"
        )
    if arr.shape[1] < 2:
        raise MetricInputError(f"{name} needs K >= 2 class columns, got {arr.shape[1]}")
    if n_classes is not None and arr.shape[1] != n_classes:
        raise MetricInputError(
            f"{name} has K={arr.shape[1]} class columns but {ref} has K={n_classes}"
        )
    if not np.all(np.isfinite(arr)):
        raise MetricInputError(f"{name} contains NaN or inf")
    if arr.min() < 0 or arr.max() > 1:
        raise MetricInputError(
            f"{name} values must lie in [0, 1], got [{arr.min():.3g}, {arr.max():.3g}]; "
            "pass softmax probabilities, not logits"
        )
    sums = arr.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1) > _ROW_SUM_ATOL)
    if off.size:
        raise MetricInputError(
            f"{name} rows must sum to 1 (±{_ROW_SUM_ATOL}); {off.size} row(s) do not, "
            f"e.g. row {off[0]} sums to {sums[off[0]]:.4f}"
        )
    return arr


def _check_pair(
    y_true: object, proba_a: object, proba_b: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (y_true, proba_a, proba_b) with a common K and labels in 0..K-1."""
    y = _check_labels(y_true)
    pa = _check_proba(proba_a, len(y), "proba_a")
    pb = _check_proba(proba_b, len(y), "proba_b", pa.shape[1], "proba_a")
    _check_label_range(y, pa.shape[1])
    return y, pa, pb


def _check_label_range(y: np.ndarray, n_classes: int) -> None:
    if y.max() >= n_classes:
        bad = sorted(set(y[y >= n_classes].tolist()))[:5]
        raise MetricInputError(
            f"y_true has label(s) {bad} outside 0..{n_classes - 1} "
            f"(K={n_classes} from the probability columns)"
        )


def _check_level(level: float, name: str = "level") -> float:
    if not (isinstance(level, (int, float, np.floating)) and 0 < float(level) < 1):
        raise MetricInputError(f"{name} must lie in (0, 1), got {level!r}")
    return float(level)


def _check_n_resamples(n_resamples: int) -> int:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)):
        raise MetricInputError(f"n_resamples must be an int, got {n_resamples!r}")
    if n_resamples < 2:
        raise MetricInputError(f"n_resamples must be >= 2, got {n_resamples}")
    return int(n_resamples)


def _check_metrics(metrics: Sequence[str] | str) -> list[str]:
    wanted = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in wanted if m not in PAIRED_METRICS]
    if unknown or not wanted:
        raise MetricInputError(
            f"metrics: unknown name(s) {unknown}; choose from {list(PAIRED_METRICS)}"
        )
    if len(set(wanted)) != len(wanted):
        raise MetricInputError(f"metrics: duplicate names in {wanted}")
    return wanted


def _check_correct(values: object, name: str) -> np.ndarray:
    """1-D boolean per-case correctness (bool or 0/1 values)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D per-case correctness, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise MetricInputError(f"{name} contains NaN or inf")
    if arr.dtype.kind != "b" and (
        arr.dtype.kind not in "iuf" or not np.all((arr == 0) | (arr == 1))
    ):
        raise MetricInputError(f"{name} must be boolean (or 0/1), got dtype {arr.dtype}")
    return arr.astype(bool)


def _check_scores(values: object, n_cases: int, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D scores, got shape {arr.shape}")
    if arr.shape[0] != n_cases:
        raise MetricInputError(
            f"{name} has {arr.shape[0]} values but the labels have {n_cases} (shape mismatch)"
        )
    if not np.all(np.isfinite(arr)):
        raise MetricInputError(f"{name} contains NaN or inf")
    return arr


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
# bootstrap replicates


def _rank_codes(scores: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense ranks 0..U-1 of ``scores`` (ties share a code) and the number of distinct values U."""
    uniq, inv = np.unique(scores, return_inverse=True)
    return inv.astype(np.int64), len(uniq)


def _auc_defined_classes(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Classes with at least one positive and one negative case in ``y`` (AUC defined)."""
    support = np.bincount(y, minlength=n_classes)
    return np.flatnonzero((support > 0) & (support < len(y)))


def _weighted_auc_chunk(
    codes: np.ndarray, n_codes: int, positive: np.ndarray, idx: np.ndarray
) -> np.ndarray:
    """One-vs-rest AUC on each resample row of ``idx`` (Mann-Whitney, ties count 1/2).

    Per resample, the multiplicity-weighted counts of positives and negatives at each distinct
    score are built with one ``bincount``; the AUC is ``sum_s pos(s) * (neg(< s) + neg(s) / 2) /
    (P * N)``, which is scikit-learn's trapezoidal ROC area. NaN where P or N is 0.
    """
    n_res = idx.shape[0]
    offsets = (np.arange(n_res, dtype=np.int64) * n_codes)[:, None]
    flat = (offsets + codes[idx]).ravel()
    size = n_res * n_codes
    w_pos = np.bincount(flat, weights=positive[idx].ravel(), minlength=size)
    w_all = np.bincount(flat, minlength=size).astype(np.float64)
    w_pos = w_pos.reshape(n_res, n_codes)
    w_neg = w_all.reshape(n_res, n_codes) - w_pos
    neg_below = np.cumsum(w_neg, axis=1) - w_neg
    num = (w_pos * (neg_below + 0.5 * w_neg)).sum(axis=1)
    denom = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, num / np.where(denom > 0, denom, 1.0), np.nan)


def metric_replicates(
    y_true: np.ndarray,
    proba: np.ndarray,
    indices: np.ndarray,
    metrics: Sequence[str] | str = PAIRED_METRICS,
) -> pd.DataFrame:
    """Accuracy, macro-F1 and macro-AUC of one model on each row of a resample index matrix.

    Vectorised over resamples (chunks bound memory): accuracy is the mean per-case correctness
    gathered by ``indices``; macro-F1 comes from per-resample confusion counts built with one
    ``numpy.bincount`` over ``resample * K^2 + true * K + predicted`` codes; macro-AUC from
    multiplicity-weighted Mann-Whitney statistics per class (ties count 1/2), one ``bincount``
    per class. Row ``r`` equals scikit-learn's ``accuracy_score``, ``f1_score(average="macro",
    labels=range(K), zero_division=0)`` and ``roc_auc_score(multi_class="ovr",
    average="macro")`` on ``y_true[indices[r]], proba[indices[r]]`` (tested to 1e-12).

    Macro-AUC is NaN (undefined) in a resample that lacks a positive or a negative case of any
    class whose AUC is defined on the full data (i.e. where scikit-learn's ovr macro AUC would
    fail); classes absent from the full ``y_true`` are left out of the mean, as in
    ``thyroaug.evaluation.metrics``.

    Args:
        y_true: true class indices [n].
        proba: probabilities [n, K].
        indices: int [B, n'] case indices per resample (e.g. ``resample_indices(n, B, seed)``);
            the identity row ``arange(n)[None]`` gives the full-data metrics.
        metrics: names from ``PAIRED_METRICS``.

    Returns:
        DataFrame [B, len(metrics)], index ``resample``.

    Raises:
        MetricInputError (a ValueError): malformed inputs or unknown metric names.
    """
    y = _check_labels(y_true)
    p = _check_proba(proba, len(y), "proba")
    _check_label_range(y, p.shape[1])
    wanted = _check_metrics(metrics)
    idx = np.asarray(indices)
    if idx.ndim != 2 or idx.shape[1] == 0 or idx.dtype.kind not in "iu":
        raise MetricInputError(
            f"indices must be a 2-D integer [n_resamples, n_drawn] matrix, got shape "
            f"{idx.shape} dtype {idx.dtype}"
        )
    if idx.size and (idx.min() < 0 or idx.max() >= len(y)):
        raise MetricInputError(f"indices must lie in 0..{len(y) - 1}")
    idx = idx.astype(np.int64)
    out = _replicates(y, p, idx, wanted)
    return pd.DataFrame(out, index=pd.RangeIndex(idx.shape[0], name="resample"))


def _replicates(
    y: np.ndarray, p: np.ndarray, idx: np.ndarray, wanted: Sequence[str]
) -> dict[str, np.ndarray]:
    """``metric_replicates`` on validated inputs: {metric: [B] values}."""
    n_classes = p.shape[1]
    n_res, n_drawn = idx.shape
    pred = p.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    pair_code = y * n_classes + pred
    defined = _auc_defined_classes(y, n_classes)
    auc_inputs = [(*_rank_codes(p[:, k]), (y == k).astype(np.float64)) for k in defined]
    chunk = max(1, _CHUNK_ELEMENTS // n_drawn)
    out: dict[str, list[np.ndarray]] = {m: [] for m in wanted}
    for start in range(0, n_res, chunk):
        sub = idx[start : start + chunk]
        rows = sub.shape[0]
        if "accuracy" in wanted:
            out["accuracy"].append(correct[sub].mean(axis=1))
        if "macro_f1" in wanted:
            kk = n_classes * n_classes
            flat = ((np.arange(rows, dtype=np.int64) * kk)[:, None] + pair_code[sub]).ravel()
            conf = np.bincount(flat, minlength=rows * kk).reshape(rows, n_classes, n_classes)
            tp = np.diagonal(conf, axis1=1, axis2=2).astype(np.float64)
            denom = (conf.sum(axis=1) + conf.sum(axis=2)).astype(np.float64)  # pred + true
            f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1.0), 0.0)
            out["macro_f1"].append(f1.mean(axis=1))
        if "macro_auc" in wanted:
            if len(defined) == 0:
                out["macro_auc"].append(np.full(rows, np.nan))
            else:
                aucs = np.stack(
                    [_weighted_auc_chunk(codes, u, pos, sub) for codes, u, pos in auc_inputs],
                    axis=1,
                )
                # NaN in any defined class -> NaN macro (the resample is dropped, not re-averaged)
                out["macro_auc"].append(aucs.mean(axis=1))
    return {m: np.concatenate(v) if v else np.empty(0) for m, v in out.items()}


def bootstrap_p_value(diffs: np.ndarray) -> float:
    """Two-sided bootstrap p-value of H0: difference = 0, by inverting the percentile interval.

    ``p = min(1, 2 * min(1 + #{d* <= 0}, 1 + #{d* >= 0}) / (B + 1))`` over the B finite
    replicates ``d*`` of the paired difference: twice the smaller tail proportion of resampled
    differences on the far side of (or at) zero, with the usual +1 correction so that p is
    never 0 (Davison & Hinkley 1997, sec. 4.4; Efron & Tibshirani 1993, sec. 15.4). ``p <
    alpha`` exactly when (up to the +1 correction and quantile interpolation) the ``1 - alpha``
    percentile interval of the difference excludes 0. Unlike a rank-sum test *between*
    replicate sets, its value converges as B grows (Monte-Carlo error ~ ``2 * sqrt(q (1 - q) /
    B)``, q the tail proportion) instead of shrinking towards 0.

    Args:
        diffs: 1-D bootstrap replicates of ``metric(b) - metric(a)``; NaN values are ignored.

    Returns:
        The p-value in (0, 1]; NaN when no replicate is finite.
    """
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 1:
        raise MetricInputError(f"diffs must be 1-D, got shape {d.shape}")
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    below = int(np.sum(d <= 0))
    above = int(np.sum(d >= 0))
    return min(1.0, 2.0 * (1 + min(below, above)) / (d.size + 1))


def _summarise_diffs(diffs: np.ndarray, level: float) -> dict[str, float]:
    """Percentile CI, SE, bootstrap p and the dropped count of difference replicates."""
    finite = diffs[np.isfinite(diffs)]
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    if finite.size >= 2:
        ci_low, ci_high = (float(v) for v in np.quantile(finite, [lo_q, hi_q]))
        se = float(finite.std(ddof=1))
    else:
        ci_low = ci_high = se = math.nan
    return {
        "ci_low": ci_low,
        "ci_high": ci_high,
        "se": se,
        "p_value": bootstrap_p_value(finite) if finite.size >= 2 else math.nan,
        "n_dropped": int(diffs.size - finite.size),
    }


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
# DeLong


@dataclass(frozen=True)
class DeLongResult:
    """DeLong's test of two correlated AUCs (one binary problem).

    Attributes:
        auc_a, auc_b: the two AUCs.
        diff: ``auc_b - auc_a``.
        var_a, var_b, cov_ab: DeLong (co)variances of the AUC estimates.
        se: standard error of ``diff`` (``sqrt(var_a + var_b - 2 cov_ab)``).
        z: ``diff / se`` (0 when diff and se are both 0).
        p_value: two-sided normal p-value.
        ci_low, ci_high: ``diff -/+ z_{(1+level)/2} * se``.
        n_pos, n_neg: numbers of positive and negative cases.
    """

    auc_a: float
    auc_b: float
    diff: float
    var_a: float
    var_b: float
    cov_ab: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    n_pos: int
    n_neg: int


def _structural_components(
    scores: np.ndarray, positive: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and per-case DeLong influence columns of several score vectors on one binary task.

    Fast algorithm of Sun & Xu (2014, IEEE Signal Process. Lett. 21:1389) with midranks: for
    positives X (m) and negatives Y (n) of each score row, with midranks Tx (within X), Ty
    (within Y) and Tz (within X and Y together),

    - AUC = (sum Tz[X] - m (m + 1) / 2) / (m n);
    - V10(x) = (Tz(x) - Tx(x)) / n: fraction of negatives below x, ties counting 1/2;
    - V01(y) = 1 - (Tz(y) - Ty(y)) / m: fraction of positives above y, ties counting 1/2.

    DeLong, DeLong & Clarke-Pearson (1988, Biometrics 44:837) estimate Cov(AUC_r, AUC_s) =
    S10[r, s] / m + S01[r, s] / n with S10, S01 the sample covariances (ddof 1) of the V10 over
    positives and of the V01 over negatives. Written per case, that is ``sum_i psi_r(i) psi_s(i)``
    with ``psi(i) = (V10(i) - AUC) / sqrt(m (m - 1))`` for a positive case and ``(V01(i) - AUC) /
    sqrt(n (n - 1))`` for a negative one; returning ``psi`` lets callers combine several binary
    tasks on the same cases (the macro AUC).

    Args:
        scores: float [r, N] scores of r models on the same N cases.
        positive: bool [N], at least one positive and one negative.

    Returns:
        (AUC [r], psi [N, r]); psi is NaN when m < 2 or n < 2 (variance not estimable).
    """
    pos, neg = scores[:, positive], scores[:, ~positive]
    m, n = pos.shape[1], neg.shape[1]
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    psi = np.full((scores.shape[1], scores.shape[0]), np.nan)
    if m >= 2 and n >= 2:
        psi[positive] = ((v10 - auc[:, None]) / math.sqrt(m * (m - 1))).T
        psi[~positive] = ((v01 - auc[:, None]) / math.sqrt(n * (n - 1))).T
    return auc, psi


def _z_test(diff: float, var: float, level: float) -> dict[str, float]:
    """z, two-sided normal p and Wald interval of ``diff`` with variance ``var``."""
    if not np.isfinite(var):
        return dict.fromkeys(("se", "z", "p_value", "ci_low", "ci_high"), math.nan)
    se = math.sqrt(max(var, 0.0))
    if se > 0:
        z = diff / se
    else:
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    crit = float(norm.ppf(0.5 + level / 2))
    return {
        "se": se,
        "z": z,
        "p_value": float(min(1.0, 2.0 * norm.sf(abs(z)))),
        "ci_low": diff - crit * se,
        "ci_high": diff + crit * se,
    }


def delong_roc_test(
    y_binary: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, level: float = 0.95
) -> DeLongResult:
    """DeLong's test of two correlated ROC AUCs on one binary task (same cases, two scores).

    Method: DeLong, DeLong & Clarke-Pearson (1988, Biometrics 44:837-845) with the midrank
    algorithm of Sun & Xu (2014, IEEE Signal Process. Lett. 21:1389-1393); see
    ``_structural_components``. ``z = (auc_b - auc_a) / sqrt(var_a + var_b - 2 cov_ab)``,
    two-sided normal p-value and Wald interval. Matches R's ``pROC::roc.test(method="delong")``
    (tested on pROC's aSAH data); higher scores mean "positive".

    Args:
        y_binary: bool (or 0/1) [n], the positive class; both classes must occur.
        score_a: float [n] scores of model a.
        score_b: float [n] scores of model b.
        level: coverage of the Wald interval of the difference.

    Returns:
        DeLongResult (se / z / p NaN when there are fewer than 2 positives or negatives).

    Raises:
        MetricInputError (a ValueError): malformed inputs or only one class present.
    """
    pos = _check_correct(y_binary, "y_binary")
    sa = _check_scores(score_a, pos.size, "score_a")
    sb = _check_scores(score_b, pos.size, "score_b")
    level = _check_level(level)
    m = int(pos.sum())
    if m == 0 or m == pos.size:
        raise MetricInputError("y_binary must contain both positive and negative cases")
    auc, psi = _structural_components(np.stack([sa, sb]), pos)
    cov = psi.T @ psi
    diff = float(auc[1] - auc[0])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    res = _z_test(diff, var, level)
    return DeLongResult(
        auc_a=float(auc[0]),
        auc_b=float(auc[1]),
        diff=diff,
        var_a=float(cov[0, 0]),
        var_b=float(cov[1, 1]),
        cov_ab=float(cov[0, 1]),
        n_pos=m,
        n_neg=int(pos.size - m),
        **res,
    )


DELONG_COLUMNS: tuple[str, ...] = (
    "metric",
    "auc_a",
    "auc_b",
    "diff",
    "se",
    "z",
    "p_value",
    "ci_low",
    "ci_high",
)


def delong_test(
    y_true: np.ndarray,
    proba_a: np.ndarray,
    proba_b: np.ndarray,
    classes: Sequence[str] | None = None,
    level: float = 0.95,
) -> pd.DataFrame:
    """DeLong tests of one-vs-rest AUC differences per class and of the macro-AUC difference.

    Per class k: ``delong_roc_test(y_true == k, proba_a[:, k], proba_b[:, k])`` (DeLong et al.
    1988; Sun & Xu 2014 midrank algorithm).

    Macro row: ``diff = mean_k AUC_k(b) - mean_k AUC_k(a)`` over the classes whose AUC is defined
    (both positives and negatives present). All classes' AUCs are estimated on the same cases, so
    their errors are correlated; the variance of the macro difference is estimated from the
    per-case DeLong structural components (the Hoeffding projection of each two-sample
    U-statistic): with ``psi_{k,r}(i)`` the centred structural component of case i for class k and
    model r (``(V10 - AUC) / sqrt(m (m - 1))`` if case i is a positive of class k, ``(V01 - AUC) /
    sqrt(n (n - 1))`` otherwise),

        ``Var(diff) = sum_i phi(i)^2``,  ``phi(i) = mean_k (psi_{k,b}(i) - psi_{k,a}(i))``,

    i.e. the full 2K x 2K covariance matrix ``Psi^T Psi`` contracted with the macro contrast.
    Its diagonal blocks are exactly DeLong's ``S10/m + S01/n`` per class; the cross-class terms
    follow from the same per-case linearisation, and with K = 2 the macro row equals the DeLong
    test of the single AUC (tested), and it agrees with the paired bootstrap SE (tested). Wald
    z-test, two-sided normal p-value, ``diff -/+ z * se`` interval. Caveat: like DeLong's test it
    is asymptotic; with very small classes (< ~10 cases) prefer the paired bootstrap.

    Args:
        y_true: true class indices [n].
        proba_a: model a probabilities [n, K].
        proba_b: model b probabilities [n, K].
        classes: optional K class names for the row labels (default: class indices).
        level: coverage of the Wald intervals.

    Returns:
        DataFrame with rows ``auc_<class>`` (K) then ``macro_auc``, columns ``metric``, ``auc_a``,
        ``auc_b``, ``diff`` (b - a), ``se``, ``z``, ``p_value``, ``ci_low``, ``ci_high``. Classes
        absent from ``y_true`` (or the only class present) have NaN rows; se/z/p are NaN for a
        class with fewer than 2 positives or negatives, and then also for the macro row.

    Raises:
        MetricInputError (a ValueError): malformed inputs or a ``classes`` list of the wrong size.
    """
    y, pa, pb = _check_pair(y_true, proba_a, proba_b)
    level = _check_level(level)
    n_classes = pa.shape[1]
    if classes is None:
        names = [str(k) for k in range(n_classes)]
    else:
        names = [str(c) for c in classes]
        if len(names) != n_classes:
            raise MetricInputError(
                f"classes has {len(names)} names but the probabilities have K={n_classes} columns"
            )
    defined = _auc_defined_classes(y, n_classes)
    rows = []
    psis: list[np.ndarray] = []
    aucs: list[np.ndarray] = []
    for k in range(n_classes):
        row = dict.fromkeys(DELONG_COLUMNS, math.nan)
        row["metric"] = f"auc_{names[k]}"
        if k in defined:
            auc, psi = _structural_components(np.stack([pa[:, k], pb[:, k]]), y == k)
            aucs.append(auc)
            psis.append(psi)
            diff = float(auc[1] - auc[0])
            var = float(np.sum((psi[:, 1] - psi[:, 0]) ** 2))
            row.update(auc_a=float(auc[0]), auc_b=float(auc[1]), diff=diff)
            row.update(_z_test(diff, var, level))
        rows.append(row)
    macro = dict.fromkeys(DELONG_COLUMNS, math.nan)
    macro["metric"] = "macro_auc"
    if aucs:
        auc_mat = np.stack(aucs)  # [K', 2]
        psi_diff = np.stack([p[:, 1] - p[:, 0] for p in psis], axis=1)  # [n, K']
        phi = psi_diff.mean(axis=1)
        diff = float(auc_mat[:, 1].mean() - auc_mat[:, 0].mean())
        macro.update(auc_a=float(auc_mat[:, 0].mean()), auc_b=float(auc_mat[:, 1].mean()))
        macro["diff"] = diff
        macro.update(_z_test(diff, float(np.sum(phi**2)), level))
    rows.append(macro)
    return pd.DataFrame(rows)[list(DELONG_COLUMNS)]


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
