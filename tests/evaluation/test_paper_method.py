"""The paper's method: rank-sum tests between bootstrap replicate sets against scipy, + BH."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import false_discovery_control, ranksums

from thyroaug.evaluation.bootstrap import bootstrap
from thyroaug.evaluation.metrics import MetricInputError
from thyroaug.evaluation.paper_method import (
    ComparisonResult,
    compare_bootstraps,
    compare_distributions,
    pairwise_wilcoxon,
)


def _data(n: int, seed: int = 0, decimals: int | None = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), y] += 1.2
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    if decimals is not None:  # rounding creates tied scores, the hard case for AUC
        p = np.round(p, decimals) + 1e-9
        p /= p.sum(axis=1, keepdims=True)
    return y, p


def test_pairwise_wilcoxon_equals_scipy() -> None:
    rng = np.random.default_rng(0)
    dists = {"O": rng.normal(0.70, 0.02, 100), "FM": rng.normal(0.72, 0.02, 100)}
    dists["SD3"] = rng.normal(0.45, 0.02, 80)
    dists["SD3"][:5] = np.nan  # dropped
    out = pairwise_wilcoxon(dists)
    assert list(zip(out["a"], out["b"])) == [("O", "FM"), ("O", "SD3"), ("FM", "SD3")]
    for row in out.itertuples():
        a, b = dists[row.a], dists[row.b]
        ref = ranksums(a[np.isfinite(a)], b[np.isfinite(b)])
        assert row.p_value == pytest.approx(ref.pvalue, rel=1e-12)
        assert row.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert out.loc[1, "n_b"] == 75


def test_compare_distributions_matrices() -> None:
    rng = np.random.default_rng(2)
    dists = {
        "O": rng.normal(0.70, 0.02, 200),
        "O+FM": rng.normal(0.78, 0.02, 200),
        "O+FM+CA": rng.normal(0.78, 0.02, 200),
        "SD3": rng.normal(0.44, 0.02, 200),
    }
    res = compare_distributions(dists, alpha=0.05, metric="accuracy")
    assert isinstance(res, ComparisonResult)
    names = list(dists)
    for frame in (res.p_raw, res.p_adj, res.direction, res.significant, res.statistic):
        assert list(frame.index) == names and list(frame.columns) == names
    assert np.isnan(np.diag(res.p_raw)).all() and np.isnan(np.diag(res.p_adj)).all()
    np.testing.assert_array_equal(res.p_adj.to_numpy(), res.p_adj.to_numpy().T)
    # one BH correction across the 6 unordered pairs
    pairs = pairwise_wilcoxon(dists)
    expected = false_discovery_control(pairs["p_value"].to_numpy(), method="bh")
    for (a, b), q in zip(zip(pairs["a"], pairs["b"]), expected):
        assert res.p_adj.loc[a, b] == pytest.approx(q) and res.p_adj.loc[b, a] == pytest.approx(q)
        assert res.p_raw.loc[a, b] == pytest.approx(ranksums(dists[a], dists[b]).pvalue)
    assert res.direction.loc["O+FM", "O"] == 1 and res.direction.loc["O", "O+FM"] == -1
    assert res.direction.loc["SD3", "O"] == -1 and (np.diag(res.direction) == 0).all()
    assert res.significant.loc["O+FM", "SD3"] and not res.significant.loc["O+FM", "O+FM+CA"]
    assert not np.diag(res.significant).any()
    assert (res.significant.to_numpy() == (res.p_adj.fillna(1).to_numpy() < 0.05)).all()
    summary = res.summary()
    assert summary.index[-1] == "SD3" and summary.loc["SD3", "losses"] == 3
    long = res.to_long()
    assert len(long) == 6 and set(long.columns) >= {"p_raw", "p_adj", "direction", "significant"}


def test_direction_tie_break_uses_rank_statistic() -> None:
    a = np.array([0.70] * 60 + [0.72] * 40)
    b = np.array([0.66] * 40 + [0.70] * 60)
    res = compare_distributions({"a": a, "b": b})
    assert np.median(a) == np.median(b)
    assert res.direction.loc["a", "b"] == 1 and res.direction.loc["b", "a"] == -1


def test_compare_bootstraps_and_errors() -> None:
    y, p = _data(80)
    worse = np.full_like(p, 0.25)
    boots = {"good": bootstrap(y, p, 100, seed=0), "chance": bootstrap(y, worse, 100, seed=0)}
    res = compare_bootstraps(boots, metric="accuracy")
    assert res.metric == "accuracy" and res.direction.loc["good", "chance"] == 1
    assert res.significant.loc["good", "chance"]
    with pytest.raises(MetricInputError, match="no column"):
        compare_bootstraps(boots, metric="kappa")
    with pytest.raises(MetricInputError, match="at least two"):
        compare_distributions({"only": np.ones(3)})
    with pytest.raises(MetricInputError, match="no finite values"):
        compare_distributions({"a": np.ones(3), "b": np.full(3, np.nan)})
