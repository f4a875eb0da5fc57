"""The case bootstrap: resample indices, metric replicates, percentile summaries, p-values.

One engine scores every resampled metric of the project: the Table 2 names of
``metrics.metric_names`` and the paired-test names of ``PAIRED_METRICS`` (``macro_f1`` and
``macro_auc`` are ``f1_macro`` and ``auc_macro``). Row ``b`` of a replicate table equals the metric
on ``y_true[idx[b]], proba[idx[b]]`` (tested against ``compute_metrics`` and scikit-learn). How it
is vectorised, and the two macro-AUC conventions (``auc_classes``): ``docs/statistics.md``,
"Bootstrap engine". Percentile intervals: Efron & Tibshirani 1993, ch. 13.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 4, 200)
    >>> p = rng.dirichlet(np.ones(4), 200)
    >>> list(bootstrap(y, p, n_resamples=100, seed=0).columns)
    ['accuracy', 'f1_macro', 'auc_macro']
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from thyroaug.contract import CLASSES
from thyroaug.evaluation.metrics import (
    MetricInputError,
    check_label_range,
    check_labels,
    check_level,
    check_probabilities,
    metric_names,
    predict,
)

DEFAULT_METRICS: tuple[str, ...] = ("accuracy", "f1_macro", "auc_macro")
"""What ``bootstrap`` scores by default (and the classifier logs per run)."""

PAIRED_METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "macro_auc")
"""The paired tests' metric names, in their default order."""

METRIC_ALIASES: dict[str, str] = {"macro_f1": "f1_macro", "macro_auc": "auc_macro"}
"""Paired-test name -> Table 2 name of the same metric."""

AUC_CLASSES: tuple[str, ...] = ("resample", "full")
"""Macro / weighted AUC conventions, see ``score_resamples``."""

_CHUNK_ELEMENTS = 4_000_000  # resamples x drawn cases x classes per chunk, bounds memory


def resample_indices(n_cases: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """Bootstrap index matrix: row ``b`` lists the cases drawn (with replacement) for resample b.

    Args:
        n_cases: number of cases N in the evaluated set.
        n_resamples: number of bootstrap resamples B.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        int64 array [B, N] with values in 0..N-1.

    Raises:
        MetricInputError: N or B below 1.
    """
    if n_cases < 1 or n_resamples < 1:
        raise MetricInputError(
            f"bootstrap needs n_cases >= 1 and n_resamples >= 1, got {n_cases}, {n_resamples}"
        )
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_cases, size=(n_resamples, n_cases), dtype=np.int64)


def check_n_resamples(n_resamples: int) -> int:
    """Validate a resample count for a paired bootstrap (an int >= 2) and return it."""
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)):
        raise MetricInputError(f"n_resamples must be an int, got {n_resamples!r}")
    if n_resamples < 2:
        raise MetricInputError(f"n_resamples must be >= 2, got {n_resamples}")
    return int(n_resamples)


def resolve_metrics(metrics: Sequence[str] | str, classes: Sequence[str]) -> list[str]:
    """Validate metric names (``"all"``: every Table 2 name) and return them as a list.

    Args:
        metrics: one name, several, or ``"all"``; names from ``metric_names(classes)`` or
            ``PAIRED_METRICS``.
        classes: class names that spell the class-wise metrics.

    Raises:
        MetricInputError: an unknown or repeated name, or none at all.
    """
    valid = metric_names(classes)
    if metrics == "all":
        return list(valid)
    wanted = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in wanted if m not in valid and m not in METRIC_ALIASES]
    if unknown or not wanted:
        raise MetricInputError(
            f"metrics: unknown bootstrap metric name(s) {unknown}; choose from "
            f"{[*valid, *METRIC_ALIASES]}"
        )
    if len(set(wanted)) != len(wanted):
        raise MetricInputError(f"metrics: duplicate names in {wanted}")
    return wanted


# --------------------------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------------------------
def _multiplicities(idx: np.ndarray, n_cases: int) -> np.ndarray:
    """[B, N] float64 counts of how often each case appears in each resample."""
    n_res = idx.shape[0]
    flat = (np.arange(n_res, dtype=np.int64)[:, None] * n_cases + idx).ravel()
    return np.bincount(flat, minlength=n_res * n_cases).reshape(n_res, n_cases).astype(np.float64)


class _WeightedAuc:
    """One-vs-rest AUC for many case-weight vectors at once (Mann-Whitney, ties count 1/2).

    ``scores`` / ``positive`` describe items; ``case_of_item`` maps each item to the case whose
    multiplicity weights it (micro averaging scores every (case, class) pair of a case).
    """

    def __init__(self, scores: np.ndarray, positive: np.ndarray, case_of_item: np.ndarray, n: int):
        uniq, inv = np.unique(scores, return_inverse=True)
        self.n_bins = len(uniq)
        pos = positive.astype(np.float64)
        rows = np.concatenate([inv, inv + self.n_bins])  # positives' bins, then negatives'
        cols = np.concatenate([case_of_item, case_of_item])
        data = np.concatenate([pos, 1.0 - pos])
        self.bins = sparse.csr_matrix((data, (rows, cols)), shape=(2 * self.n_bins, n))

    def __call__(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(AUC [B], NaN where undefined; positive weight [B]) for ``counts`` [B, N]."""
        weights = self.bins @ counts.T  # [2 U, B]: weight of positives / negatives per bin
        pos_w, neg_w = weights[: self.n_bins], weights[self.n_bins :]
        neg_below = np.cumsum(neg_w, axis=0) - neg_w
        num = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=0)
        w_pos = pos_w.sum(axis=0)
        denom = w_pos * neg_w.sum(axis=0)
        return _div(num, denom, np.nan), w_pos


def _div(num: np.ndarray, den: np.ndarray, fill: float) -> np.ndarray:
    """num / den with ``fill`` where den == 0 (0 is scikit-learn's ``zero_division=0``)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), fill)


def _confusion_metrics(
    counts: np.ndarray,
    pair_map: np.ndarray,
    correct: np.ndarray,
    classes: Sequence[str],
    n_drawn: int,
) -> dict[str, np.ndarray]:
    """Accuracy and class-wise / averaged precision, recall, F1 of each resample."""
    k = len(classes)
    conf = (counts @ pair_map).reshape(-1, k, k)  # [b, true, pred]
    tp = np.diagonal(conf, axis1=1, axis2=2)
    n_pred, n_true = conf.sum(axis=1), conf.sum(axis=2)
    accuracy = counts @ correct / n_drawn
    out = {"accuracy": accuracy}
    for kind, values in (
        ("precision", _div(tp, n_pred, 0.0)),
        ("recall", _div(tp, n_true, 0.0)),
        ("f1", _div(2 * tp, n_pred + n_true, 0.0)),
    ):
        for j, c in enumerate(classes):
            out[f"{kind}_{c}"] = values[:, j]
        out[f"{kind}_micro"] = accuracy  # single-label multiclass: micro P = R = F1 = accuracy
        out[f"{kind}_macro"] = values.mean(axis=1)
        out[f"{kind}_weighted"] = (values * n_true).sum(axis=1) / n_true.sum(axis=1)
    return out


def _auc_metrics(
    counts: np.ndarray,
    kernels: Sequence[_WeightedAuc],
    micro: _WeightedAuc | None,
    classes: Sequence[str],
    defined_full: np.ndarray,
    auc_classes: str,
) -> dict[str, np.ndarray]:
    """Class-wise, macro, weighted (and micro if its kernel is given) AUC of each resample."""
    pairs = [kernel(counts) for kernel in kernels]
    auc = np.stack([a for a, _ in pairs], axis=1)  # [b, K]
    support = np.stack([w for _, w in pairs], axis=1)
    if auc_classes == "resample":
        used = np.isfinite(auc)
        undefined = ~used.any(axis=1)
    else:  # the classes defined on the full data; NaN if one of them is undefined here
        used = np.broadcast_to(defined_full, auc.shape)
        undefined = (used & ~np.isfinite(auc)).any(axis=1) | ~defined_full.any()
    filled = np.where(used, auc, 0.0)
    out = {f"auc_{c}": auc[:, j] for j, c in enumerate(classes)}
    w_used = (support * used).sum(axis=1)
    macro = _div(filled.sum(axis=1), used.sum(axis=1).astype(np.float64), np.nan)
    weighted = _div((filled * support).sum(axis=1), w_used, np.nan)
    out["auc_macro"] = np.where(undefined, np.nan, macro)
    out["auc_weighted"] = np.where(undefined, np.nan, weighted)
    if micro is not None:
        out["auc_micro"] = micro(counts)[0]
    return out


def score_resamples(
    y: np.ndarray,
    proba: np.ndarray,
    indices: np.ndarray,
    metrics: Sequence[str],
    classes: Sequence[str],
    auc_classes: str = "resample",
) -> dict[str, np.ndarray]:
    """Every requested metric on each row of a resample index matrix (validated inputs).

    Args:
        y: int64 labels [n] in 0..K-1.
        proba: float64 probabilities [n, K].
        indices: int64 [B, n'] case indices per resample (the identity row ``arange(n)[None]``
            gives the full-data metrics).
        metrics: names from ``resolve_metrics``.
        classes: K class names spelling the class-wise metrics.
        auc_classes: which classes the macro and weighted AUC average over:
            ``"resample"``: those whose one-vs-rest AUC is defined in that resample (NaN if
            none), as ``compute_metrics`` on the resample (Table 2 intervals);
            ``"full"``: those defined on the full ``y``, NaN when one of them lacks positives or
            negatives in the resample, where ``roc_auc_score(multi_class="ovr")`` fails (paired
            tests drop such resamples).

    Returns:
        {metric name as requested: float64 [B]}.

    Raises:
        MetricInputError: an unknown ``auc_classes``.
    """
    if auc_classes not in AUC_CLASSES:
        raise MetricInputError(f"auc_classes must be one of {AUC_CLASSES}, got {auc_classes!r}")
    n_cases, k = proba.shape
    wanted = [METRIC_ALIASES.get(m, m) for m in metrics]
    y_pred = predict(proba)
    pair_map = np.zeros((n_cases, k * k))
    pair_map[np.arange(n_cases), y * k + y_pred] = 1.0
    correct = (y == y_pred).astype(np.float64)
    support = np.bincount(y, minlength=k)
    defined_full = (support > 0) & (support < n_cases)
    kernels: list[_WeightedAuc] = []
    micro = None
    cases = np.arange(n_cases)
    if any(m.startswith("auc_") for m in wanted):
        kernels = [_WeightedAuc(proba[:, j], y == j, cases, n_cases) for j in range(k)]
    if "auc_micro" in wanted:
        onehot = np.eye(k, dtype=bool)[y]
        micro = _WeightedAuc(proba.ravel(), onehot.ravel(), np.repeat(cases, k), n_cases)
    chunk = max(1, _CHUNK_ELEMENTS // (indices.shape[1] * k))
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, indices.shape[0], chunk):
        sub = indices[start : start + chunk]
        counts = _multiplicities(sub, n_cases)  # a row sums to n' (cases drawn)
        values = _confusion_metrics(counts, pair_map, correct, classes, sub.shape[1])
        if kernels:
            values.update(_auc_metrics(counts, kernels, micro, classes, defined_full, auc_classes))
        parts.append({m: values[m] for m in wanted})
    return {name: np.concatenate([p[m] for p in parts]) for name, m in zip(metrics, wanted)}


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------
def _class_names(classes: Sequence[str] | None, n_classes: int) -> list[str]:
    """The K class names (default ``"0"`` .. ``"K-1"``), checked against K."""
    if classes is None:
        return [str(k) for k in range(n_classes)]
    names = [str(c) for c in classes]
    if len(names) != n_classes:
        raise MetricInputError(
            f"classes has {len(names)} names but the probabilities have K={n_classes} columns"
        )
    return names


def metric_replicates(
    y_true: np.ndarray,
    proba: np.ndarray,
    indices: np.ndarray,
    metrics: Sequence[str] | str = PAIRED_METRICS,
    classes: Sequence[str] | None = None,
    auc_classes: str = "full",
) -> pd.DataFrame:
    """Metrics of one model on each row of a resample index matrix.

    Args:
        y_true: true class indices [n].
        proba: probabilities [n, K].
        indices: int [B, n'] case indices per resample (e.g. ``resample_indices(n, B, seed)``).
        metrics: names from ``PAIRED_METRICS`` or ``metric_names(classes)``, or ``"all"``.
        classes: K class names for the class-wise names (default ``"0"`` .. ``"K-1"``).
        auc_classes: macro-AUC convention (``score_resamples``); ``"full"`` as
            ``roc_auc_score(multi_class="ovr", average="macro")``.

    Returns:
        DataFrame [B, len(metrics)], index ``resample``.

    Raises:
        MetricInputError (a ValueError): malformed inputs or unknown metric names.
    """
    y = check_labels(y_true)
    p = check_probabilities(proba, len(y), name="proba")
    names = _class_names(classes, p.shape[1])
    check_label_range(y, p.shape[1], source=f"K={p.shape[1]} from the probability columns")
    wanted = resolve_metrics(metrics, names)
    idx = np.asarray(indices)
    if idx.ndim != 2 or idx.shape[1] == 0 or idx.dtype.kind not in "iu":
        raise MetricInputError(
            f"indices must be a 2-D integer [n_resamples, n_drawn] matrix, got shape "
            f"{idx.shape} dtype {idx.dtype}"
        )
    if idx.size and (idx.min() < 0 or idx.max() >= len(y)):
        raise MetricInputError(f"indices must lie in 0..{len(y) - 1}")
    out = score_resamples(y, p, idx.astype(np.int64), wanted, names, auc_classes)
    return pd.DataFrame(out, index=pd.RangeIndex(idx.shape[0], name="resample"))


def bootstrap(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    metrics: Sequence[str] | str = DEFAULT_METRICS,
    classes: Sequence[str] = CLASSES,
) -> pd.DataFrame:
    """Bootstrap distributions of classification metrics (cases sampled with replacement).

    Args:
        y_true: true class indices [N].
        y_prob: class probabilities [N, K] (rows sum to 1).
        n_resamples: number of resamples B (paper: 1000).
        seed: seed of the resample index matrix (``resample_indices(N, B, seed)``).
        metrics: names from ``metric_names(classes)`` (or ``PAIRED_METRICS``), or ``"all"``.
        classes: class names in index order.

    Returns:
        DataFrame [B, len(metrics)], index ``resample``; row b equals ``compute_metrics`` on
        that resample (AUC conventions included: ``auc_classes="resample"``). ``df.attrs``
        holds seed, n_cases, n_resamples.

    Raises:
        MetricInputError: bad inputs or an unknown metric name.
    """
    n_classes = len(classes)
    y = check_labels(y_true, n_classes)
    p = check_probabilities(y_prob, len(y), n_classes)
    wanted = resolve_metrics(metrics, classes)
    idx = resample_indices(len(y), n_resamples, seed)
    data = score_resamples(y, p, idx, wanted, classes, auc_classes="resample")
    df = pd.DataFrame(data, index=pd.RangeIndex(n_resamples, name="resample"))
    df.attrs.update({"seed": seed, "n_cases": len(y), "n_resamples": n_resamples})
    return df


# --------------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------------
def summarize(df: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Mean, std, median and percentile interval of each bootstrap column.

    Args:
        df: a ``bootstrap`` result (or any numeric columns); NaN values are ignored.
        level: central coverage of the percentile interval.

    Returns:
        DataFrame indexed by metric with columns mean, std, median, lower, upper, n_valid.
    """
    level = check_level(level)
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    rows = {}
    for col in df.columns:
        values = df[col].to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            rows[col] = dict.fromkeys(("mean", "std", "median", "lower", "upper"), math.nan)
        else:
            rows[col] = {
                "mean": values.mean(),
                "std": values.std(ddof=1) if values.size > 1 else math.nan,
                "median": float(np.median(values)),
                "lower": float(np.quantile(values, lo)),
                "upper": float(np.quantile(values, hi)),
            }
        rows[col]["n_valid"] = int(values.size)
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "metric"
    return out


def bootstrap_p_value(diffs: np.ndarray) -> float:
    """Two-sided bootstrap p-value of H0: difference = 0 (percentile interval inverted).

    ``p = min(1, 2 min(1 + #{d* <= 0}, 1 + #{d* >= 0}) / (B + 1))`` over the B finite
    replicates ``d*`` (Davison & Hinkley 1997, sec. 4.4; Efron & Tibshirani 1993, sec. 15.4);
    see ``docs/statistics.md``, "Paired bootstrap".

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


def summarize_diffs(diffs: np.ndarray, level: float) -> dict[str, float]:
    """Percentile interval, SE and bootstrap p-value of paired difference replicates.

    Args:
        diffs: [B] replicates of ``metric(b) - metric(a)``; non-finite ones are dropped.
        level: central coverage of the interval.

    Returns:
        {ci_low, ci_high, se (ddof 1), p_value, n_dropped}; NaN with fewer than 2 finite values.
    """
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


__all__ = [
    "AUC_CLASSES",
    "DEFAULT_METRICS",
    "METRIC_ALIASES",
    "PAIRED_METRICS",
    "bootstrap",
    "bootstrap_p_value",
    "check_n_resamples",
    "metric_replicates",
    "resample_indices",
    "resolve_metrics",
    "score_resamples",
    "summarize",
    "summarize_diffs",
]
