"""Bootstrap distributions, Wilcoxon rank-sum tests and Benjamini-Hochberg correction (paper 3.3.3).

The paper bootstraps each model's external-set predictions 1,000 times (cases sampled with
replacement), compares the accuracy distributions pairwise with the Wilcoxon rank-sum test and
adjusts the p-values for the false discovery rate with Benjamini-Hochberg (significant: adjusted
p < 0.05).

That rank-sum test is kept as "the paper method" for comparison only: it treats the B bootstrap
replicates as independent observations, although they resample the same external cases, so its
p-values shrink as B grows for the same predictions. The valid paired tests on the same cases
(McNemar, paired bootstrap, DeLong) are ``thyroaug.evaluation.paired``; ``thyroaug compare`` uses
those by default. ``bootstrap`` + ``summarize`` also give the percentile confidence intervals of
every Table 2 number.

``bootstrap`` is vectorised: the resample index matrix ``[n_resamples, n_cases]`` is drawn once
from ``numpy.random.default_rng(seed)``, turned into per-case multiplicities, and every metric is
computed from those counts (confusion counts by one matrix product, AUCs as the Mann-Whitney
statistic with ties counted one half, which is what scikit-learn's trapezoidal ROC area equals).
Each row equals ``compute_metrics`` on ``y_true[idx], y_prob[idx]`` for that row's indices
(tested), including the NaN conventions for classes a resample lacks.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 4, 200)
    >>> p = rng.dirichlet(np.ones(4), 200)
    >>> df = bootstrap(y, p, n_resamples=100, seed=0)
    >>> list(df.columns)
    ['accuracy', 'f1_macro', 'auc_macro']
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.stats import false_discovery_control, ranksums

from thyroaug.contract import CLASSES
from thyroaug.evaluation.metrics import (
    MetricInputError,
    check_labels,
    check_probabilities,
    metric_names,
    predict,
)

log = logging.getLogger(__name__)

DEFAULT_METRICS: tuple[str, ...] = ("accuracy", "f1_macro", "auc_macro")
_CHUNK_ELEMENTS = 4_000_000  # resamples x (cases x classes) handled per chunk, bounds memory


def resample_indices(n_cases: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """Bootstrap index matrix: row ``b`` lists the cases drawn (with replacement) for resample b.

    Args:
        n_cases: number of cases N in the evaluated set.
        n_resamples: number of bootstrap resamples B.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        int64 array [B, N] with values in 0..N-1.
    """
    if n_cases < 1 or n_resamples < 1:
        raise MetricInputError(
            f"bootstrap needs n_cases >= 1 and n_resamples >= 1, got {n_cases}, {n_resamples}"
        )
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_cases, size=(n_resamples, n_cases), dtype=np.int64)


def _multiplicities(idx: np.ndarray, n_cases: int) -> np.ndarray:
    """[B, N] float64 counts of how often each case appears in each resample."""
    n_res = idx.shape[0]
    flat = (np.arange(n_res, dtype=np.int64)[:, None] * n_cases + idx).ravel()
    return np.bincount(flat, minlength=n_res * n_cases).reshape(n_res, n_cases).astype(np.float64)


class _WeightedAuc:
    """AUC of (scores, positives) for many case-weight vectors at once (Mann-Whitney, ties = 1/2).

    ``items`` may repeat a case (micro averaging scores every (case, class) pair); ``case_of_item``
    maps each item to the case whose multiplicity weights it.
    """

    def __init__(self, scores: np.ndarray, positive: np.ndarray, case_of_item: np.ndarray, n: int):
        uniq, inv = np.unique(scores, return_inverse=True)
        shape = (n, len(uniq))
        pos = positive.astype(np.float64)
        self.pos_map = sparse.csr_matrix((pos, (case_of_item, inv)), shape=shape)
        self.neg_map = sparse.csr_matrix((1.0 - pos, (case_of_item, inv)), shape=shape)

    def __call__(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (AUC [B] with NaN where undefined, positive weight [B])."""
        pos_w = np.asarray((self.pos_map.T @ counts.T).T)
        neg_w = np.asarray((self.neg_map.T @ counts.T).T)
        neg_below = np.cumsum(neg_w, axis=1) - neg_w
        num = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1)
        w_pos, w_neg = pos_w.sum(axis=1), neg_w.sum(axis=1)
        denom = w_pos * w_neg
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = np.where(denom > 0, num / np.where(denom > 0, denom, 1.0), np.nan)
        return auc, w_pos


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (scikit-learn's zero_division=0)."""
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _chunk_metrics(
    counts: np.ndarray,
    pair_map: np.ndarray,
    correct: np.ndarray,
    auc_kernels: dict[str, _WeightedAuc],
    wanted: Sequence[str],
    classes: Sequence[str],
) -> dict[str, np.ndarray]:
    """All wanted metrics for one chunk of resamples (``counts`` [b, N])."""
    n_classes = len(classes)
    n_cases = counts.shape[1]
    conf = (counts @ pair_map).reshape(-1, n_classes, n_classes)  # [b, true, pred]
    tp = np.diagonal(conf, axis1=1, axis2=2)
    n_pred = conf.sum(axis=1)
    n_true = conf.sum(axis=2)
    per_class = {
        "precision": _safe_div(tp, n_pred),
        "recall": _safe_div(tp, n_true),
        "f1": _safe_div(2 * tp, n_pred + n_true),
    }
    accuracy = counts @ correct / n_cases
    out: dict[str, np.ndarray] = {"accuracy": accuracy}
    for kind, values in per_class.items():
        for k, c in enumerate(classes):
            out[f"{kind}_{c}"] = values[:, k]
        out[f"{kind}_micro"] = accuracy  # single-label multiclass: micro P = R = F1 = accuracy
        out[f"{kind}_macro"] = values.mean(axis=1)
        out[f"{kind}_weighted"] = (values * n_true).sum(axis=1) / n_true.sum(axis=1)
    if any(m.startswith("auc_") for m in wanted):
        aucs, supports = [], []
        for c in classes:
            auc, w_pos = auc_kernels[c](counts)
            aucs.append(auc)
            supports.append(w_pos)
        auc_mat, sup_mat = np.stack(aucs, axis=1), np.stack(supports, axis=1)
        defined = np.isfinite(auc_mat)
        filled = np.where(defined, auc_mat, 0.0)
        n_def = defined.sum(axis=1)
        w_def = (sup_mat * defined).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["auc_macro"] = np.where(
                n_def > 0, filled.sum(axis=1) / np.maximum(n_def, 1), np.nan
            )
            out["auc_weighted"] = np.where(
                w_def > 0, (filled * sup_mat).sum(axis=1) / np.where(w_def > 0, w_def, 1), np.nan
            )
        for k, c in enumerate(classes):
            out[f"auc_{c}"] = auc_mat[:, k]
        if "auc_micro" in wanted:
            out["auc_micro"] = auc_kernels["__micro__"](counts)[0]
    return {m: out[m] for m in wanted}


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
        metrics: names from ``metric_names(classes)``, or ``"all"``.
        classes: class names in index order.

    Returns:
        DataFrame [B, len(metrics)], index ``resample`` 0..B-1; row b equals
        ``compute_metrics(y_true[idx[b]], y_prob[idx[b]])`` restricted to ``metrics`` (AUCs NaN
        where that resample lacks a class, as there). ``df.attrs`` holds seed, n_cases.

    Raises:
        MetricInputError: bad inputs or an unknown metric name.
    """
    n_classes = len(classes)
    y_true = check_labels(y_true, n_classes)
    y_prob = check_probabilities(y_prob, len(y_true), n_classes)
    valid = metric_names(classes)
    wanted = (
        list(valid)
        if metrics == "all"
        else [metrics]
        if isinstance(metrics, str)
        else list(metrics)
    )
    unknown = [m for m in wanted if m not in valid]
    if unknown or not wanted:
        raise MetricInputError(f"unknown bootstrap metric(s) {unknown}; choose from {valid}")

    n_cases = len(y_true)
    idx = resample_indices(n_cases, n_resamples, seed)
    y_pred = predict(y_prob)
    pair_map = np.zeros((n_cases, n_classes * n_classes))
    pair_map[np.arange(n_cases), y_true * n_classes + y_pred] = 1.0
    correct = (y_true == y_pred).astype(np.float64)

    auc_kernels: dict[str, _WeightedAuc] = {}
    if any(m.startswith("auc_") for m in wanted):
        cases = np.arange(n_cases)
        for k, c in enumerate(classes):
            auc_kernels[c] = _WeightedAuc(y_prob[:, k], y_true == k, cases, n_cases)
        onehot = np.eye(n_classes, dtype=bool)[y_true]
        auc_kernels["__micro__"] = _WeightedAuc(
            y_prob.ravel(), onehot.ravel(), np.repeat(cases, n_classes), n_cases
        )

    chunk = max(1, _CHUNK_ELEMENTS // (n_cases * n_classes))
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, n_resamples, chunk):
        counts = _multiplicities(idx[start : start + chunk], n_cases)
        parts.append(_chunk_metrics(counts, pair_map, correct, auc_kernels, wanted, classes))
    data = {m: np.concatenate([p[m] for p in parts]) for m in wanted}
    df = pd.DataFrame(data, index=pd.RangeIndex(n_resamples, name="resample"))
    df.attrs.update({"seed": seed, "n_cases": n_cases, "n_resamples": n_resamples})
    return df


def summarize(df: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Mean, std, median and percentile confidence interval of each bootstrap column.

    Args:
        df: a ``bootstrap`` result (or any numeric columns); NaN values are ignored.
        level: central coverage of the percentile interval.

    Returns:
        DataFrame indexed by metric with columns mean, std, median, lower, upper, n_valid.
    """
    if not 0 < level < 1:
        raise MetricInputError(f"level must lie in (0, 1), got {level}")
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


def _finite(name: str, values: np.ndarray) -> np.ndarray:
    """1-D finite float values of one distribution (NaN dropped with a log line)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise MetricInputError(f"distribution {name!r} must be 1-D, got shape {arr.shape}")
    keep = np.isfinite(arr)
    if not keep.all():
        log.info("distribution %r: dropping %d non-finite value(s)", name, int((~keep).sum()))
    arr = arr[keep]
    if arr.size == 0:
        raise MetricInputError(
            f"distribution {name!r} has no finite values; check that its bootstrap metric is "
            "defined (e.g. AUC needs at least two classes in the evaluated set)"
        )
    return arr


def _check_distributions(distributions: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if len(distributions) < 2:
        raise MetricInputError(
            f"pairwise comparison needs at least two distributions, got {list(distributions)}"
        )
    return {str(k): _finite(str(k), v) for k, v in distributions.items()}


def pairwise_wilcoxon(distributions: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Two-sided Wilcoxon rank-sum test (``scipy.stats.ranksums``) for each unordered pair.

    Args:
        distributions: {name: 1-D values (e.g. bootstrap accuracies)}; NaN values are dropped.

    Returns:
        Long DataFrame, one row per pair (a, b) with a before b in input order: columns ``a``,
        ``b``, ``n_a``, ``n_b``, ``median_a``, ``median_b``, ``statistic`` (z; > 0 when a ranks
        higher), ``p_value`` (raw, two-sided).
    """
    dists = _check_distributions(distributions)
    rows = []
    for a, b in combinations(dists, 2):
        res = ranksums(dists[a], dists[b], alternative="two-sided")
        rows.append(
            {
                "a": a,
                "b": b,
                "n_a": dists[a].size,
                "n_b": dists[b].size,
                "median_a": float(np.median(dists[a])),
                "median_b": float(np.median(dists[b])),
                "statistic": float(res.statistic),
                "p_value": float(res.pvalue),
            }
        )
    return pd.DataFrame(rows)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (``scipy.stats.false_discovery_control``, method bh).

    Args:
        p: raw p-values (any shape); NaN entries are left NaN and not counted as tests.

    Returns:
        Adjusted p-values, same shape as ``p``.
    """
    arr = np.asarray(p, dtype=np.float64)
    out = np.full(arr.shape, np.nan)
    finite = np.isfinite(arr)
    if finite.any():
        vals = arr[finite]
        if vals.min() < 0 or vals.max() > 1:
            raise MetricInputError(
                f"p-values must lie in [0, 1], got [{vals.min():.3g}, {vals.max():.3g}]"
            )
        out[finite] = false_discovery_control(vals, method="bh")
    return out


@dataclass
class ComparisonResult:
    """Pairwise comparison of named distributions (square frames are names x names).

    Attributes:
        names: distribution names in input order.
        p_raw: raw two-sided rank-sum p-values, symmetric, NaN diagonal.
        p_adj: Benjamini-Hochberg adjusted p-values (one correction across all unordered pairs).
        direction: +1 where the row's median exceeds the column's, -1 where lower; on a median tie
            the sign of the rank-sum statistic (which one ranks higher), 0 only if that is 0 too;
            0 on the diagonal.
        significant: ``p_adj < alpha`` (False on the diagonal).
        statistic: rank-sum z of row vs column (antisymmetric, NaN diagonal).
        medians: median of each distribution.
        alpha: significance level.
        metric: what was compared (e.g. ``"accuracy"``), for titles; may be empty.
    """

    names: list[str]
    p_raw: pd.DataFrame
    p_adj: pd.DataFrame
    direction: pd.DataFrame
    significant: pd.DataFrame
    statistic: pd.DataFrame
    medians: pd.Series
    alpha: float = 0.05
    metric: str = ""

    def to_long(self) -> pd.DataFrame:
        """One row per unordered pair (a before b in input order) with every pairwise field."""
        rows = []
        for i, a in enumerate(self.names):
            for b in self.names[i + 1 :]:
                rows.append(
                    {
                        "a": a,
                        "b": b,
                        "median_a": self.medians[a],
                        "median_b": self.medians[b],
                        "statistic": self.statistic.loc[a, b],
                        "p_raw": self.p_raw.loc[a, b],
                        "p_adj": self.p_adj.loc[a, b],
                        "direction": int(self.direction.loc[a, b]),
                        "significant": bool(self.significant.loc[a, b]),
                    }
                )
        return pd.DataFrame(rows)

    def summary(self) -> pd.DataFrame:
        """Per name: median, significant wins and losses against the others, sorted best first."""
        wins = (self.significant & (self.direction > 0)).sum(axis=1)
        losses = (self.significant & (self.direction < 0)).sum(axis=1)
        out = pd.DataFrame({"median": self.medians, "wins": wins, "losses": losses})
        out.index.name = "name"
        return out.sort_values(["wins", "median"], ascending=False)


def compare_distributions(
    distributions: Mapping[str, np.ndarray], alpha: float = 0.05, metric: str = ""
) -> ComparisonResult:
    """Pairwise rank-sum tests with one Benjamini-Hochberg correction over all unordered pairs.

    With m names there are m(m-1)/2 tests (153 for the paper's 18 scenarios); BH is applied once to
    that whole family, and the adjusted value is written to both (a, b) and (b, a).

    Args:
        distributions: {name: 1-D values}; NaN values are dropped; order sets the matrix order.
        alpha: significance level for ``significant``.
        metric: label stored on the result (used by plot titles).

    Returns:
        ComparisonResult.
    """
    if not 0 < alpha < 1:
        raise MetricInputError(f"alpha must lie in (0, 1), got {alpha}")
    pairs = pairwise_wilcoxon(distributions)
    names = [str(k) for k in distributions]
    p_adj_pairs = benjamini_hochberg(pairs["p_value"].to_numpy())
    eye = np.eye(len(names), dtype=bool)

    def square(fill: float) -> pd.DataFrame:
        return pd.DataFrame(np.full((len(names), len(names)), fill), index=names, columns=names)

    p_raw, p_adj, stat = square(np.nan), square(np.nan), square(np.nan)
    for row, q in zip(pairs.itertuples(index=False), p_adj_pairs):
        p_raw.loc[row.a, row.b] = p_raw.loc[row.b, row.a] = row.p_value
        p_adj.loc[row.a, row.b] = p_adj.loc[row.b, row.a] = q
        stat.loc[row.a, row.b], stat.loc[row.b, row.a] = row.statistic, -row.statistic
    medians = pd.Series(
        {n: float(np.median(_finite(n, distributions[n]))) for n in names}, name="median"
    )
    med = medians.to_numpy()
    diff = np.sign(med[:, None] - med[None, :])
    tie_break = np.sign(np.nan_to_num(stat.to_numpy()))
    direction = np.where(diff != 0, diff, tie_break).astype(np.int64)
    direction[eye] = 0
    significant = (np.nan_to_num(p_adj.to_numpy(), nan=1.0) < alpha) & ~eye
    return ComparisonResult(
        names=names,
        p_raw=p_raw,
        p_adj=p_adj,
        direction=pd.DataFrame(direction, index=names, columns=names),
        significant=pd.DataFrame(significant, index=names, columns=names),
        statistic=stat,
        medians=medians,
        alpha=alpha,
        metric=metric,
    )


def compare_bootstraps(
    bootstraps: Mapping[str, pd.DataFrame], metric: str = "accuracy", alpha: float = 0.05
) -> ComparisonResult:
    """``compare_distributions`` on one column of several ``bootstrap`` results.

    Args:
        bootstraps: {scenario name: bootstrap DataFrame}.
        metric: the column to compare (paper: accuracy).
        alpha: significance level.
    """
    missing = [name for name, df in bootstraps.items() if metric not in df.columns]
    if missing:
        raise MetricInputError(f"bootstrap results for {missing} have no column {metric!r}")
    return compare_distributions(
        {name: df[metric].to_numpy() for name, df in bootstraps.items()}, alpha=alpha, metric=metric
    )


__all__ = [
    "DEFAULT_METRICS",
    "ComparisonResult",
    "benjamini_hochberg",
    "bootstrap",
    "compare_bootstraps",
    "compare_distributions",
    "pairwise_wilcoxon",
    "resample_indices",
    "summarize",
]
