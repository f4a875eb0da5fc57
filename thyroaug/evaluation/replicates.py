"""Vectorised per-resample metrics of one model, plus the input checks the paired tests share.

``metric_replicates`` scores accuracy, macro-F1 and macro-AUC on every row of a resample index
matrix at once; ``bootstrap_p_value`` turns replicate differences into a two-sided p-value.
The ``_check_*`` validators are shared by ``thyroaug.evaluation.paired`` and ``.delong``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from thyroaug.evaluation.metrics import MetricInputError

PAIRED_METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "macro_auc")
"""Metrics ``paired_bootstrap`` knows, in its default order."""

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


__all__ = ["PAIRED_METRICS", "bootstrap_p_value", "metric_replicates"]
