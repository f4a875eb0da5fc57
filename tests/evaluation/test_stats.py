"""Bootstrap semantics, rank-sum tests and Benjamini-Hochberg against scipy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import false_discovery_control, ranksums
from sklearn.metrics import f1_score

from thyroaug.evaluation.metrics import MetricInputError, compute_metrics, metric_names
from thyroaug.evaluation.stats import (
    ComparisonResult,
    benjamini_hochberg,
    bootstrap,
    compare_bootstraps,
    compare_distributions,
    pairwise_wilcoxon,
    resample_indices,
    summarize,
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


def test_bootstrap_is_deterministic_by_seed() -> None:
    y, p = _data(120)
    a = bootstrap(y, p, n_resamples=200, seed=3)
    b = bootstrap(y, p, n_resamples=200, seed=3)
    c = bootstrap(y, p, n_resamples=200, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
    assert list(a.columns) == ["accuracy", "f1_macro", "auc_macro"]
    assert a.index.name == "resample" and len(a) == 200
    assert a.attrs["seed"] == 3 and a.attrs["n_cases"] == 120


def test_resample_semantics_by_hand() -> None:
    y, p = _data(50, seed=1)
    idx = resample_indices(50, 30, seed=9)
    assert idx.shape == (30, 50) and idx.min() >= 0 and idx.max() < 50
    # with replacement: some case repeats within a resample
    assert any(len(np.unique(row)) < 50 for row in idx)
    np.testing.assert_array_equal(
        idx, np.random.default_rng(9).integers(0, 50, size=(30, 50), dtype=np.int64)
    )
    df = bootstrap(y, p, n_resamples=30, seed=9)
    pred = p.argmax(axis=1)
    b = 7
    by_hand = sum(int(y[i] == pred[i]) for i in idx[b]) / 50
    assert df.loc[b, "accuracy"] == pytest.approx(by_hand, abs=1e-12)
    assert df.loc[b, "f1_macro"] == pytest.approx(
        f1_score(y[idx[b]], pred[idx[b]], labels=[0, 1, 2, 3], average="macro", zero_division=0)
    )


@pytest.mark.parametrize(("n", "seed"), [(300, 0), (8, 1)])
def test_every_metric_equals_compute_metrics_on_the_resample(n: int, seed: int) -> None:
    """Includes tiny sets whose resamples lack classes (NaN AUCs) and tied scores."""
    y, p = _data(n, seed=seed)
    df = bootstrap(y, p, n_resamples=60, seed=seed, metrics="all")
    assert list(df.columns) == metric_names()
    idx = resample_indices(n, 60, seed)
    for b in range(0, 60, 3):
        ref = compute_metrics(y[idx[b]], p[idx[b]])
        for name, value in ref.items():
            got = df.loc[b, name]
            if math.isnan(value):
                assert math.isnan(got), (b, name)
            else:
                assert got == pytest.approx(value, abs=1e-10), (b, name)
    if n == 8:
        assert df["auc_macro"].notna().any() and df.filter(like="auc_").isna().any().any()


def test_bootstrap_chunking_matches_single_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import thyroaug.evaluation.stats as stats_mod

    y, p = _data(40, seed=2)
    whole = bootstrap(y, p, n_resamples=50, seed=1, metrics="all")
    monkeypatch.setattr(stats_mod, "_CHUNK_ELEMENTS", 40 * 4 * 7)  # 7 resamples per chunk
    chunked = bootstrap(y, p, n_resamples=50, seed=1, metrics="all")
    pd.testing.assert_frame_equal(whole, chunked)


def test_bootstrap_rejects_unknown_metric() -> None:
    y, p = _data(10)
    with pytest.raises(MetricInputError, match="unknown bootstrap metric"):
        bootstrap(y, p, n_resamples=5, metrics=["accuracy", "kappa"])
    with pytest.raises(MetricInputError):
        bootstrap(y, p, n_resamples=0)


def test_summarize_percentiles() -> None:
    df = pd.DataFrame({"a": np.arange(101, dtype=float), "b": [np.nan] * 101})
    s = summarize(df, level=0.9)
    assert s.loc["a", "median"] == 50
    assert s.loc["a", "lower"] == pytest.approx(5) and s.loc["a", "upper"] == pytest.approx(95)
    assert s.loc["a", "n_valid"] == 101 and s.loc["b", "n_valid"] == 0
    assert math.isnan(s.loc["b", "mean"])


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


def test_benjamini_hochberg_equals_scipy_and_keeps_nan() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 0.2, 30)
    np.testing.assert_allclose(benjamini_hochberg(p), false_discovery_control(p, method="bh"))
    with_nan = p.copy()
    with_nan[[3, 10]] = np.nan
    adj = benjamini_hochberg(with_nan)
    keep = np.isfinite(with_nan)
    assert np.isnan(adj[[3, 10]]).all()
    np.testing.assert_allclose(adj[keep], false_discovery_control(p[keep], method="bh"))
    assert benjamini_hochberg(np.array([])).shape == (0,)
    with pytest.raises(MetricInputError):
        benjamini_hochberg(np.array([0.1, 1.5]))


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
