"""Bootstrap semantics: every replicate equals the metric on its resample (scikit-learn)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

import thyroaug.evaluation.bootstrap as bootstrap_mod
from thyroaug.contract import CLASSES
from thyroaug.evaluation.bootstrap import (
    bootstrap,
    metric_replicates,
    resample_indices,
    summarize,
)
from thyroaug.evaluation.metrics import MetricInputError, compute_metrics, metric_names


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
    y, p = _data(40, seed=2)
    whole = bootstrap(y, p, n_resamples=50, seed=1, metrics="all")
    monkeypatch.setattr(bootstrap_mod, "_CHUNK_ELEMENTS", 40 * 4 * 7)  # 7 resamples per chunk
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


def test_auc_classes_conventions_differ_only_where_a_class_is_missing() -> None:
    """'resample' is compute_metrics on the resample; 'full' is NaN where a class defined on the
    full data is undefined in the resample (scikit-learn's ovr macro AUC would raise)."""
    y, p = _data(40, seed=3)
    y[:3] = 3
    y[3:][y[3:] == 3] = 2  # class 3 has exactly 3 cases: many resamples lack it
    idx = resample_indices(40, 150, seed=5)
    names = ["accuracy", "f1_macro", "auc_macro", "macro_auc", "macro_f1"]
    resample = metric_replicates(y, p, idx, names, classes=list(CLASSES), auc_classes="resample")
    full = metric_replicates(y, p, idx, names, classes=list(CLASSES), auc_classes="full")
    ref = bootstrap(y, p, n_resamples=150, seed=5, metrics=names)
    pd.testing.assert_frame_equal(resample, ref, check_exact=True, check_freq=False)
    lacks = np.array([not (0 < np.sum(y[row] == 3) < 40) for row in idx])
    assert lacks.any() and not lacks.all()
    assert np.isnan(full["auc_macro"][lacks]).all()
    np.testing.assert_array_equal(full["auc_macro"][~lacks], resample["auc_macro"][~lacks])
    for b in np.flatnonzero(lacks)[:5]:
        assert resample.loc[b, "auc_macro"] == pytest.approx(
            compute_metrics(y[idx[b]], p[idx[b]])["auc_macro"], abs=1e-12
        )
    # paired names are the Table 2 metrics of the same name
    np.testing.assert_array_equal(full["macro_auc"], full["auc_macro"])
    np.testing.assert_array_equal(full["macro_f1"], full["f1_macro"])
    np.testing.assert_array_equal(full["f1_macro"], resample["f1_macro"])
    with pytest.raises(MetricInputError, match="auc_classes"):
        metric_replicates(y, p, idx, auc_classes="defined")
    with pytest.raises(MetricInputError, match="duplicate"):
        metric_replicates(y, p, idx, ["accuracy", "accuracy"])
