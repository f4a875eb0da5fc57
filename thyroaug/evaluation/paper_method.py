"""The paper's significance method: Wilcoxon rank-sum between bootstrap replicate sets + BH.

Paper 3.3.3: each model's external predictions are bootstrapped 1,000 times, the accuracy
distributions compared pairwise with the Wilcoxon rank-sum test (``scipy.stats.ranksums``), and
the p-values adjusted with Benjamini-Hochberg (significant: adjusted p < 0.05). Kept for
comparison with the paper only: the test treats the B replicates as independent observations,
so its p-values shrink as B grows for the same predictions (``docs/statistics.md``, "The paper's
method"); ``thyroaug compare`` decides with the paired tests of ``thyroaug.evaluation.paired``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import ranksums

from thyroaug.evaluation.fdr import benjamini_hochberg
from thyroaug.evaluation.metrics import MetricInputError, check_level

log = logging.getLogger(__name__)

PAPER_METHOD_NAME = "paper method: rank-sum on bootstrap replicates"
"""How the report and the figures name this method."""

PAPER_METHOD_WHY = (
    "Its p-values shrink as the number of resamples grows: the Wilcoxon rank-sum test treats the "
    "B bootstrap replicates of each scenario as B independent observations, but they are "
    "resamples of the same external cases, so for the same data its z statistic grows like "
    "sqrt(B) and any fixed difference becomes 'significant' once B is large enough."
)
"""The report's one-paragraph caveat under the paper-method figure."""


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
    """{name: finite values} of at least two distributions."""
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
    alpha = check_level(alpha, "alpha")
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

    Returns:
        The ``ComparisonResult`` of that column.

    Raises:
        MetricInputError: a bootstrap result lacks the column.
    """
    missing = [name for name, df in bootstraps.items() if metric not in df.columns]
    if missing:
        raise MetricInputError(f"bootstrap results for {missing} have no column {metric!r}")
    return compare_distributions(
        {name: df[metric].to_numpy() for name, df in bootstraps.items()}, alpha=alpha, metric=metric
    )


__all__ = [
    "PAPER_METHOD_NAME",
    "PAPER_METHOD_WHY",
    "ComparisonResult",
    "compare_bootstraps",
    "compare_distributions",
    "pairwise_wilcoxon",
]
