"""Benjamini-Hochberg against scipy: NaN kept and not counted, one correction per family."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import false_discovery_control

from thyroaug.evaluation.fdr import benjamini_hochberg, benjamini_hochberg_within
from thyroaug.evaluation.metrics import MetricInputError


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


def test_benjamini_hochberg_within_corrects_each_family_alone() -> None:
    rng = np.random.default_rng(2)
    df = pd.DataFrame(
        {
            "metric": np.repeat(["accuracy", "macro_f1", "macro_auc"], 6),
            "p": rng.uniform(0, 0.1, 18),
        },
        index=np.arange(100, 118),
    )
    df.loc[105, "p"] = np.nan
    adj = benjamini_hochberg_within(df, "metric")
    assert list(adj.index) == list(df.index) and np.isnan(adj[105])
    for _, sub in df.groupby("metric"):
        keep = sub["p"].notna()
        expected = false_discovery_control(sub["p"][keep].to_numpy(), method="bh")
        np.testing.assert_allclose(adj[sub.index[keep]], expected, rtol=1e-12)
    assert not np.allclose(
        adj.dropna(), false_discovery_control(df["p"].dropna().to_numpy(), method="bh")
    )
