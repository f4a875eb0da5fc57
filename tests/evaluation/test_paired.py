"""Paired tests (McNemar, paired bootstrap, DeLong, MDD, seed combination) against references.

References used: statsmodels' exact McNemar, scikit-learn metrics in a plain Python loop,
``scipy.stats.bootstrap(paired=True)``, R pROC's published DeLong results on its aSAH data, a
hand-computed DeLong example, a direct O(n^2) DeLong from the definition, and
``scipy.stats.false_discovery_control``.
"""

from __future__ import annotations

import inspect
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from statsmodels.stats.contingency_tables import mcnemar

from thyroaug.evaluation.bootstrap import bootstrap_p_value, metric_replicates, resample_indices
from thyroaug.evaluation.delong import DELONG_COLUMNS, delong_roc_test, delong_test
from thyroaug.evaluation.metrics import MetricInputError
from thyroaug.evaluation.paired import (
    COMPARISON_COLUMNS,
    McNemarResult,
    combine_seeds,
    mcnemar_exact,
    minimal_detectable_difference,
    paired_bootstrap,
    paired_comparisons,
    seed_combined_test,
)
from thyroaug.evaluation.paper_method import pairwise_wilcoxon

K = 4


# --------------------------------------------------------------------------------------------
# data helpers


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _round(p: np.ndarray, decimals: int | None) -> np.ndarray:
    """Round probabilities (creates tied scores, the hard case for AUC) and renormalise."""
    if decimals is None:
        return p
    p = np.round(p, decimals) + 1e-9
    return p / p.sum(axis=1, keepdims=True)


def _pair(
    n: int,
    seed: int = 0,
    k: int = K,
    shift_a: float = 1.2,
    shift_b: float = 1.2,
    rho: float = 0.7,
    decimals: int | None = 2,
    y: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two models whose errors are correlated (shared logit noise, weight ``rho``)."""
    rng = np.random.default_rng(seed)
    if y is None:
        y = rng.integers(0, k, n)
        y[:k] = np.arange(k)  # every class present
    common = rng.normal(size=(n, k))
    out = []
    for shift in (shift_a, shift_b):
        logits = rho * common + math.sqrt(1 - rho**2) * rng.normal(size=(n, k))
        logits[np.arange(n), y] += shift
        out.append(_round(_softmax(logits), decimals))
    return y, out[0], out[1]


def _proba_from_pred(pred: np.ndarray, k: int = K, top: float = 0.6) -> np.ndarray:
    """Probabilities whose arg-max is ``pred`` (``top`` on it, the rest spread evenly)."""
    p = np.full((len(pred), k), (1 - top) / (k - 1))
    p[np.arange(len(pred)), pred] = top
    return p


def _wrong(y: np.ndarray, rng: np.random.Generator, k: int = K) -> np.ndarray:
    """A wrong class for every case."""
    return (y + rng.integers(1, k, len(y))) % k


def _sklearn_metrics(y: np.ndarray, p: np.ndarray) -> tuple[float, float, float]:
    pred = p.argmax(axis=1)
    acc = accuracy_score(y, pred)
    f1 = f1_score(y, pred, average="macro", labels=list(range(p.shape[1])), zero_division=0)
    try:
        auc = roc_auc_score(y, p, multi_class="ovr", average="macro")
    except ValueError:  # a class absent from this resample
        auc = math.nan
    return float(acc), float(f1), float(auc)


# --------------------------------------------------------------------------------------------
# McNemar


def _tables() -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(0)
    tables = [(5, 0, 0, 3), (0, 0, 0, 1), (10, 1, 0, 2), (0, 0, 1, 0), (3, 7, 7, 3)]
    tables += [(4, 0, 12, 1), (100, 600, 650, 100), (50, 1000, 1100, 20), (0, 3, 2, 0)]
    for _ in range(200):
        n11, n00 = rng.integers(0, 60, 2)
        scale = rng.choice([3, 15, 80, 400])
        n10, n01 = rng.integers(0, scale, 2)
        tables.append((int(n11), int(n10), int(n01), int(n00)))
    return tables


def _correctness(n11: int, n10: int, n01: int, n00: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-case correctness of models a and b realising a 2x2 table (a rows, b columns)."""
    ca = np.r_[np.ones(n11 + n10, bool), np.zeros(n01 + n00, bool)]
    cb = np.r_[np.ones(n11, bool), np.zeros(n10, bool), np.ones(n01, bool), np.zeros(n00, bool)]
    perm = np.random.default_rng(n11 + 7 * n10).permutation(ca.size)
    return ca[perm], cb[perm]


def test_mcnemar_exact_equals_statsmodels_on_many_tables() -> None:
    checked = 0
    for n11, n10, n01, n00 in _tables():
        ca, cb = _correctness(n11, n10, n01, n00)
        res = mcnemar_exact(ca, cb)
        ref = mcnemar(np.array([[n11, n10], [n01, n00]]), exact=True)
        assert (res.b, res.c, res.n) == (n10, n01, n11 + n10 + n01 + n00)
        assert res.statistic == ref.statistic == min(n10, n01)
        assert res.p_value == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
        if n10 + n01 == 0:
            assert res.p_value == 1.0
        checked += 1
    assert checked > 200


def test_mcnemar_counts_sign_and_validation() -> None:
    ca = np.array([1, 1, 1, 0, 0, 1], dtype=bool)
    cb = np.array([1, 0, 0, 1, 0, 1], dtype=bool)
    res = mcnemar_exact(ca, cb)
    assert isinstance(res, McNemarResult)
    assert (res.b, res.c) == (2, 1)  # b: a right / b wrong; c: a wrong / b right
    assert res.diff == pytest.approx(cb.mean() - ca.mean())
    assert res.p_value == pytest.approx(1.0)  # Binomial(3, 1/2): 2 vs 1 is not evidence
    assert mcnemar_exact(ca.astype(int), cb.astype(float)) == res  # 0/1 input accepted
    with pytest.raises(MetricInputError, match=r"correct_b.*shape mismatch"):
        mcnemar_exact(ca, cb[:-1])
    with pytest.raises(ValueError, match="correct_a contains NaN"):
        mcnemar_exact(np.array([1.0, np.nan]), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="correct_b must be boolean"):
        mcnemar_exact(np.array([1, 0]), np.array([2, 0]))
    with pytest.raises(ValueError, match="correct_a must be 1-D"):
        mcnemar_exact(np.ones((2, 2), bool), np.ones(4, bool))


# --------------------------------------------------------------------------------------------
# paired bootstrap


def _rare_class_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """60 cases where class 3 has only 3 cases, so some resamples lack it (AUC undefined)."""
    y = np.r_[np.repeat([0, 1, 2], 19), [3, 3, 3]]
    return _pair(60, seed=5, y=np.random.default_rng(5).permutation(y))


def test_metric_replicates_equal_sklearn_per_resample() -> None:
    y, pa, _ = _rare_class_data()
    idx = resample_indices(len(y), 120, seed=11)
    rep = metric_replicates(y, pa, idx)
    assert list(rep.columns) == ["accuracy", "macro_f1", "macro_auc"]
    assert rep.index.name == "resample" and len(rep) == 120
    ref = np.array([_sklearn_metrics(y[row], pa[row]) for row in idx])
    assert np.isnan(ref[:, 2]).any() and np.isfinite(ref[:, 2]).any()  # both cases occur
    np.testing.assert_allclose(rep.to_numpy(), ref, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.isnan(rep["macro_auc"]), np.isnan(ref[:, 2]))
    # the identity index row gives the full-data metrics
    full = metric_replicates(y, pa, np.arange(len(y))[None, :]).iloc[0].to_numpy()
    np.testing.assert_allclose(full, _sklearn_metrics(y, pa), rtol=0, atol=1e-12)


def test_paired_bootstrap_equals_python_loop_on_same_indices() -> None:
    y, pa, pb = _rare_class_data()
    n_res, seed, level = 150, 4, 0.9
    df = paired_bootstrap(y, pa, pb, n_resamples=n_res, seed=seed, level=level)
    assert list(df.columns) == [
        "metric",
        "a",
        "b",
        "diff",
        "ci_low",
        "ci_high",
        "se",
        "p_value",
        "n_resamples",
        "n_dropped",
    ]
    idx = resample_indices(len(y), n_res, seed)
    ref_a = np.array([_sklearn_metrics(y[row], pa[row]) for row in idx])
    ref_b = np.array([_sklearn_metrics(y[row], pb[row]) for row in idx])
    full_a, full_b = _sklearn_metrics(y, pa), _sklearn_metrics(y, pb)
    for j, metric in enumerate(["accuracy", "macro_f1", "macro_auc"]):
        row = df.set_index("metric").loc[metric]
        d = ref_b[:, j] - ref_a[:, j]
        kept = d[np.isfinite(d)]
        assert row["a"] == pytest.approx(full_a[j], abs=1e-12)
        assert row["b"] == pytest.approx(full_b[j], abs=1e-12)
        assert row["diff"] == pytest.approx(full_b[j] - full_a[j], abs=1e-12)
        lo, hi = np.quantile(kept, [(1 - level) / 2, (1 + level) / 2])
        assert row["ci_low"] == pytest.approx(lo, abs=1e-12)
        assert row["ci_high"] == pytest.approx(hi, abs=1e-12)
        assert row["se"] == pytest.approx(kept.std(ddof=1), abs=1e-12)
        assert row["p_value"] == pytest.approx(bootstrap_p_value(kept), abs=1e-12)
        assert row["n_resamples"] == n_res
        assert row["n_dropped"] == n_res - kept.size
    assert df.set_index("metric").loc["macro_auc", "n_dropped"] > 0
    assert df.set_index("metric").loc["accuracy", "n_dropped"] == 0


def test_paired_bootstrap_deterministic_ci_contains_diff_and_sign() -> None:
    y, pa, pb = _pair(200, seed=1, shift_a=0.8, shift_b=1.6)
    a = paired_bootstrap(y, pa, pb, n_resamples=500, seed=3)
    pd.testing.assert_frame_equal(a, paired_bootstrap(y, pa, pb, n_resamples=500, seed=3))
    assert not a.equals(paired_bootstrap(y, pa, pb, n_resamples=500, seed=4))
    assert ((a["ci_low"] <= a["diff"]) & (a["diff"] <= a["ci_high"])).all()
    assert (a["diff"] > 0).all()  # b has the stronger signal: diff = b - a > 0
    flipped = paired_bootstrap(y, pb, pa, n_resamples=500, seed=3)
    np.testing.assert_allclose(flipped["diff"], -a["diff"])
    np.testing.assert_allclose(flipped["ci_low"], -a["ci_high"], atol=1e-12)
    single = paired_bootstrap(y, pa, pb, metrics="macro_f1", n_resamples=500, seed=3)
    assert list(single["metric"]) == ["macro_f1"]
    pd.testing.assert_series_equal(single.iloc[0], a.iloc[1], check_names=False)


def test_paired_bootstrap_percentile_ci_coverage_simulation() -> None:
    """Known population: P(a right, b wrong) = .05, P(a wrong, b right) = .10 -> diff = .05."""
    n, n_sets = 150, 200
    cells = np.array([0.72, 0.05, 0.10, 0.13])  # (11, 10, 01, 00) of (a correct, b correct)
    true_diff = cells[2] - cells[1]
    rng = np.random.default_rng(2024)
    hits = 0
    for s in range(n_sets):
        y = rng.integers(0, K, n)
        cell = rng.choice(4, size=n, p=cells)
        a_right, b_right = np.isin(cell, (0, 1)), np.isin(cell, (0, 2))
        pred_a = np.where(a_right, y, _wrong(y, rng))
        pred_b = np.where(b_right, y, _wrong(y, rng))
        res = paired_bootstrap(
            y,
            _proba_from_pred(pred_a),
            _proba_from_pred(pred_b),
            metrics=("accuracy",),
            n_resamples=500,
            seed=s,
        ).iloc[0]
        hits += int(res["ci_low"] <= true_diff <= res["ci_high"])
    coverage = hits / n_sets
    assert 0.88 <= coverage <= 0.99, coverage


def test_paired_bootstrap_accuracy_ci_agrees_with_scipy_bootstrap() -> None:
    rng = np.random.default_rng(8)
    n = 200
    y = rng.integers(0, K, n)
    cell = rng.choice(4, size=n, p=[0.7, 0.06, 0.12, 0.12])
    ca, cb = np.isin(cell, (0, 1)), np.isin(cell, (0, 2))
    pa = _proba_from_pred(np.where(ca, y, _wrong(y, rng)))
    pb = _proba_from_pred(np.where(cb, y, _wrong(y, rng)))
    ours = paired_bootstrap(y, pa, pb, metrics="accuracy", n_resamples=4000, seed=0).iloc[0]
    ref = stats.bootstrap(
        (ca.astype(float), cb.astype(float)),
        lambda a, b, axis: b.mean(axis=axis) - a.mean(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=4000,
        method="percentile",
        confidence_level=0.95,
        rng=np.random.default_rng(1),
    )
    assert ours["diff"] == pytest.approx(cb.mean() - ca.mean())
    assert ours["ci_low"] == pytest.approx(ref.confidence_interval.low, abs=0.01)
    assert ours["ci_high"] == pytest.approx(ref.confidence_interval.high, abs=0.01)
    assert ours["se"] == pytest.approx(ref.standard_error, rel=0.08)


def test_paired_bootstrap_rejects_bad_input_naming_the_argument() -> None:
    y, pa, pb = _pair(40, seed=2)
    with pytest.raises(MetricInputError, match=r"proba_b has 39 rows.*shape mismatch"):
        paired_bootstrap(y, pa, pb[:-1])
    bad = pb.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="proba_b contains NaN"):
        paired_bootstrap(y, pa, bad)
    with pytest.raises(ValueError, match="proba_b has K=3 class columns but proba_a has K=4"):
        paired_bootstrap(y, pa, _round(pb[:, :3] / pb[:, :3].sum(1, keepdims=True), None))
    with pytest.raises(ValueError, match=r"y_true has label\(s\) \[4\] outside 0..3"):
        paired_bootstrap(np.r_[y[:-1], 4], pa, pb)
    with pytest.raises(ValueError, match="y_true contains NaN"):
        paired_bootstrap(np.r_[y[:-1], np.nan], pa, pb)
    with pytest.raises(ValueError, match="proba_a rows must sum to 1"):
        paired_bootstrap(y, pa * 2 / 3, pb)
    with pytest.raises(ValueError, match="proba_a values must lie in"):
        paired_bootstrap(y, pa * 3 - 1, pb)
    with pytest.raises(ValueError, match="metrics: unknown"):
        paired_bootstrap(y, pa, pb, metrics=("f1",))
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap(y, pa, pb, level=95)
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap(y, pa, pb, n_resamples=1)
    with pytest.raises(ValueError, match="indices"):
        metric_replicates(y, pa, np.array([[0, 1, 40]]))


# --------------------------------------------------------------------------------------------
# DeLong


def test_delong_aucs_equal_sklearn_and_columns() -> None:
    y, pa, pb = _pair(150, seed=3)
    df = delong_test(y, pa, pb, classes=["DG", "NG", "NL", "TI"])
    assert tuple(df.columns) == DELONG_COLUMNS
    assert list(df["metric"]) == ["auc_DG", "auc_NG", "auc_NL", "auc_TI", "macro_auc"]
    for k in range(K):
        assert df.loc[k, "auc_a"] == pytest.approx(roc_auc_score(y == k, pa[:, k]), abs=1e-12)
        assert df.loc[k, "auc_b"] == pytest.approx(roc_auc_score(y == k, pb[:, k]), abs=1e-12)
    macro = df.iloc[-1]
    ref_a = roc_auc_score(y, pa, multi_class="ovr", average="macro")
    ref_b = roc_auc_score(y, pb, multi_class="ovr", average="macro")
    assert macro["auc_a"] == pytest.approx(ref_a, abs=1e-12)
    assert macro["auc_b"] == pytest.approx(ref_b, abs=1e-12)
    assert macro["diff"] == pytest.approx(ref_b - ref_a, abs=1e-12)
    z = stats.norm.ppf(0.975)
    np.testing.assert_allclose(df["z"], df["diff"] / df["se"])
    np.testing.assert_allclose(df["p_value"], 2 * stats.norm.sf(np.abs(df["z"])))
    np.testing.assert_allclose(df["ci_low"], df["diff"] - z * df["se"])
    np.testing.assert_allclose(df["ci_high"], df["diff"] + z * df["se"])
    assert list(delong_test(y, pa, pb)["metric"])[:2] == ["auc_0", "auc_1"]


def _psi(x: float, y: float) -> float:
    return 1.0 if x > y else (0.5 if x == y else 0.0)


def _delong_by_definition(
    y: np.ndarray, pa: np.ndarray, pb: np.ndarray
) -> tuple[list[dict[str, float]], float]:
    """Direct O(n^2) DeLong from placement values (pairwise comparisons), per class and macro."""
    per_class, psis = [], []
    n = len(y)
    for k in range(pa.shape[1]):
        pos, neg = np.flatnonzero(y == k), np.flatnonzero(y != k)
        m, q = len(pos), len(neg)
        v10, v01, psi = [], [], np.zeros((n, 2))
        for r, p in enumerate((pa[:, k], pb[:, k])):
            v10.append(np.array([np.mean([_psi(p[i], p[j]) for j in neg]) for i in pos]))
            v01.append(np.array([np.mean([_psi(p[i], p[j]) for i in pos]) for j in neg]))
            auc = v10[-1].mean()
            psi[pos, r] = (v10[-1] - auc) / math.sqrt(m * (m - 1))
            psi[neg, r] = (v01[-1] - auc) / math.sqrt(q * (q - 1))
        s10, s01 = np.cov(v10), np.cov(v01)
        cov = s10 / m + s01 / q
        per_class.append(
            {
                "auc_a": v10[0].mean(),
                "auc_b": v10[1].mean(),
                "var": cov[0, 0] + cov[1, 1] - 2 * cov[0, 1],
            }
        )
        psis.append(psi[:, 1] - psi[:, 0])
    phi = np.mean(psis, axis=0)
    return per_class, float(np.sum(phi**2))


def test_delong_equals_direct_quadratic_definition_with_ties() -> None:
    y, pa, pb = _pair(70, seed=9, decimals=1)  # one decimal: many ties
    assert len(np.unique(pa[:, 0])) < 30
    df = delong_test(y, pa, pb)
    per_class, macro_var = _delong_by_definition(y, pa, pb)
    for k, ref in enumerate(per_class):
        assert df.loc[k, "auc_a"] == pytest.approx(ref["auc_a"], abs=1e-12)
        assert df.loc[k, "auc_b"] == pytest.approx(ref["auc_b"], abs=1e-12)
        assert df.loc[k, "se"] == pytest.approx(math.sqrt(ref["var"]), rel=1e-10)
        single = delong_roc_test(y == k, pa[:, k], pb[:, k])
        assert single.se == pytest.approx(df.loc[k, "se"], rel=1e-12)
    assert df.iloc[-1]["se"] == pytest.approx(math.sqrt(macro_var), rel=1e-10)


def test_delong_hand_computed_example() -> None:
    """Two positives, two negatives, by hand from the definition.

    a: positives (.8, .4), negatives (.4, .1): V10 = (1, .75), V01 = (.75, 1), AUC .875.
    b: positives (.7, .3), negatives (.5, .2): V10 = (1, .5),  V01 = (.5, 1),  AUC .75.
    S10 = S01 = [[1/32, 1/16], [1/16, 1/8]]; Var = S10/2 + S01/2 = S10;
    Var(b - a) = 1/8 + 1/32 - 2/16 = 1/32; z = -0.125 / sqrt(1/32) = -1/sqrt(2).
    """
    res = delong_roc_test([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1], [0.7, 0.3, 0.5, 0.2])
    assert (res.auc_a, res.auc_b, res.diff) == (0.875, 0.75, -0.125)
    assert res.var_a == pytest.approx(1 / 32, abs=1e-15)
    assert res.var_b == pytest.approx(1 / 8, abs=1e-15)
    assert res.cov_ab == pytest.approx(1 / 16, abs=1e-15)
    assert res.se == pytest.approx(math.sqrt(1 / 32), abs=1e-15)
    assert res.z == pytest.approx(-1 / math.sqrt(2), abs=1e-14)
    assert res.p_value == pytest.approx(0.4795001221869535, abs=1e-12)
    assert (res.n_pos, res.n_neg) == (2, 2)


# pROC's aSAH data (113 patients; Turck et al. 2010, Intensive Care Med 36:107), as used in
# pROC's own tests: outcome (G = Good, P = Poor), WFNS grade, S100B and NDKA.
ASAH_OUTCOME = (
    "GGGGPPGPGGPGPPGGPGPPPGPGGGGGGGGGPGGPPGPPGGGGGGGGGPPGGGPGGGPGPGG"
    "PPPGPPGPPPPGGGPPGPGGGGGGPGGGGGGGGGGGGPPPPPPGGGPGGG"
)
ASAH_WFNS = (
    "111132541252551252252111121211342145414255112411255212512221511"
    "25214524414121421232421451154221113125225552445111"
)
ASAH_S100B = """
0.13 0.14 0.1 0.04 0.13 0.1 0.47 0.16 0.18 0.1 0.12 0.1 0.44 0.71 0.04 0.08 0.49 0.04 0.07
0.33 0.09 0.09 0.07 0.11 0.07 0.17 0.07 0.11 0.13 0.19 0.05 0.16 0.41 0.14 0.34 0.35 0.48
0.09 0.96 0.25 0.5 0.46 0.16 0.07 0.43 0.45 0.11 0.08 0.09 0.86 0.52 0.08 0.06 0.13 2.07 0.1
0.14 0.15 0.07 0.06 0.77 0.05 0.09 0.3 0.03 0.09 0.04 0.23 0.7 0.09 0.27 0.71 0.08 0.26 0.08
0.16 0.09 0.13 0.1 0.08 0.11 0.33 0.11 0.28 0.07 0.1 0.32 0.22 0.07 0.05 0.24 0.38 0.1 0.15
0.08 0.14 0.1 0.07 0.04 0.19 0.56 0.14 0.58 0.32 0.82 0.74 0.15 0.47 0.17 0.44 0.15 0.5 0.48
"""
ASAH_NDKA = """
3.01 8.54 8.09 10.42 17.4 12.75 6 13.2 15.54 6.01 15.96 17.86 5.18 8.9 13.41 20.75 11.6
16.11 32.37 54.82 32.41 49.94 40.34 9.47 6.29 12.53 6.54 6.3 80.3 12.8 9.8 9.81 9.85 18.21
5.03 14.04 21.93 8.02 7.42 8.38 6.59 9.63 13.12 7.96 14.34 41.43 7.63 7.06 12.59 13.56 3.87
9.44 7.66 12.98 419.19 27.19 22.27 9.95 21.22 11.73 10.4 58.83 6.39 11.09 12.22 13.67 17.21
22.63 12.9 9.7 21.57 8.23 72.57 15.54 10.51 10.6 14.57 5.19 9.63 4.61 21.48 17.3 12.71 9.44
11.07 19.46 10.83 5.37 11.97 7.75 9.83 10.55 28.49 8.53 12.57 12.9 46.83 11.68 12.67 9.01
9.57 34.06 11.72 14.26 47.61 11.67 24.58 10.33 13.87 15.89 22.43 6.79 13.45
"""


def _asah() -> dict[str, np.ndarray]:
    data = {
        "poor": np.array([c == "P" for c in ASAH_OUTCOME]),
        "wfns": np.array([float(c) for c in ASAH_WFNS]),
        "s100b": np.array(ASAH_S100B.split(), dtype=float),
        "ndka": np.array(ASAH_NDKA.split(), dtype=float),
    }
    assert {len(v) for v in data.values()} == {113}
    assert data["poor"].sum() == 41  # pROC: 72 Good, 41 Poor
    return data


# pROC tests/testthat/test-roc.test.R: roc.test(r.<first>, r.<second>) (DeLong, paired). pROC's
# Z and CI are for AUC(first) - AUC(second); ours are for b - a, so a = second and b = first.
PROC_ROC_TEST = [
    ("wfns", "s100b", 2.20898359144091, 0.0271757822291882, 0.0104061769564846, 0.174214419249478),
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098, 0.0634011709339876, 0.36004056348336),
    ("ndka", "s100b", -1.39077002573558, 0.164295175223054, -0.287691744634191, 0.0488706064228094),
]


@pytest.mark.parametrize(("first", "second", "z", "p", "lo", "hi"), PROC_ROC_TEST)
def test_delong_reproduces_proc_on_asah(
    first: str, second: str, z: float, p: float, lo: float, hi: float
) -> None:
    d = _asah()
    res = delong_roc_test(d["poor"], d[second], d[first])
    assert res.z == pytest.approx(z, rel=1e-10)
    assert res.p_value == pytest.approx(p, rel=1e-10)
    assert res.ci_low == pytest.approx(lo, rel=1e-10)
    assert res.ci_high == pytest.approx(hi, rel=1e-10)
    rev = delong_roc_test(d["poor"], d[first], d[second])
    assert rev.z == pytest.approx(-z, rel=1e-10) and rev.p_value == pytest.approx(p, rel=1e-10)


def test_delong_asah_aucs_variances_and_multiclass_form() -> None:
    """pROC documentation: roc.test(roc(outcome, s100b), roc(outcome, wfns)) gives Z = -2.209,
    p = 0.02718, AUCs 0.7314 and 0.8237; var() of the curves: 0.002668682 (s100b), 0.001469915
    (wfns), 0.003190811 (ndka)."""
    d = _asah()
    res = delong_roc_test(d["poor"], d["wfns"], d["s100b"])  # a = wfns, b = s100b
    assert round(res.z, 3) == -2.209 and round(res.p_value, 5) == 0.02718
    assert round(res.auc_b, 4) == 0.7314 and round(res.auc_a, 4) == 0.8237
    assert res.auc_a == pytest.approx(0.823678861788618, rel=1e-12)
    assert res.var_a == pytest.approx(0.00146991470882363, rel=1e-10)
    assert res.var_b == pytest.approx(0.00266868245717244, rel=1e-10)
    ndka = delong_roc_test(d["poor"], d["ndka"], d["wfns"])
    assert ndka.auc_a == pytest.approx(0.611957994579946, rel=1e-12)
    assert ndka.var_a == pytest.approx(0.0031908105493913, rel=1e-10)
    # the same test through delong_test with K = 2 (monotone rescaling keeps every AUC): both
    # class rows and the macro row equal the binary DeLong test
    p_w = np.c_[1 - d["wfns"] / 10, d["wfns"] / 10]
    p_s = np.c_[1 - d["s100b"] / 3, d["s100b"] / 3]
    df = delong_test(d["poor"].astype(int), p_w, p_s, classes=["good", "poor"])
    for row in df.itertuples():
        assert row.z == pytest.approx(res.z, rel=1e-10), row.metric
        assert row.p_value == pytest.approx(res.p_value, rel=1e-10), row.metric


def test_delong_macro_reduces_to_binary_for_two_classes() -> None:
    y, pa, pb = _pair(120, seed=4, k=2)
    df = delong_test(y, pa, pb).set_index("metric")
    for col in ("auc_a", "auc_b", "diff", "se", "z", "p_value"):
        assert df.loc["macro_auc", col] == pytest.approx(df.loc["auc_1", col], rel=1e-12)


def test_delong_se_agrees_with_paired_bootstrap_se() -> None:
    y, pa, pb = _pair(300, seed=6, shift_a=1.0, shift_b=1.3)
    dl = delong_test(y, pa, pb).set_index("metric").loc["macro_auc"]
    boot = paired_bootstrap(y, pa, pb, metrics="macro_auc", n_resamples=4000, seed=0).iloc[0]
    assert boot["diff"] == pytest.approx(dl["diff"], abs=1e-12)
    assert boot["n_dropped"] == 0
    assert 0.85 <= dl["se"] / boot["se"] <= 1.15, (dl["se"], boot["se"])


def test_delong_degenerate_cases_and_validation() -> None:
    y, pa, pb = _pair(80, seed=7)
    same = delong_test(y, pa, pa)
    assert (same["diff"] == 0).all() and (same["z"] == 0).all() and (same["p_value"] == 1).all()
    y_absent = np.where(y == 2, 1, y)  # class 2 absent: its row is NaN, macro over the rest
    df = delong_test(y_absent, pa, pb).set_index("metric")
    assert df.loc["auc_2"].drop("metric", errors="ignore").isna().all()
    defined = [roc_auc_score(y_absent == k, pa[:, k]) for k in (0, 1, 3)]
    assert df.loc["macro_auc", "auc_a"] == pytest.approx(np.mean(defined), abs=1e-12)
    one_pos = y.copy()
    one_pos[one_pos == 3] = 0
    one_pos[0] = 3  # a single case of class 3: AUC defined, variance not estimable
    df = delong_test(one_pos, pa, pb).set_index("metric")
    assert np.isfinite(df.loc["auc_3", "auc_a"]) and np.isnan(df.loc["auc_3", "se"])
    assert np.isnan(df.loc["macro_auc", "p_value"])
    with pytest.raises(ValueError, match="classes has 3 names"):
        delong_test(y, pa, pb, classes=["DG", "NG", "NL"])
    with pytest.raises(ValueError, match="proba_a has 79 rows"):
        delong_test(y, pa[1:], pb)
    with pytest.raises(ValueError, match="y_binary must contain both"):
        delong_roc_test(np.ones(4), np.arange(4.0), np.arange(4.0))
    with pytest.raises(ValueError, match="score_b contains NaN"):
        delong_roc_test([1, 0, 1], [0.1, 0.2, 0.3], [0.1, np.nan, 0.3])


# --------------------------------------------------------------------------------------------
# resample-count (in)dependence


def _one_case_apart(n: int = 150, n_diff: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model b fixes ``n_diff`` of model a's errors and is otherwise identical."""
    rng = np.random.default_rng(12)
    y = rng.integers(0, K, n)
    pred_a = np.where(rng.random(n) < 0.8, y, _wrong(y, rng))
    pred_b = pred_a.copy()
    fix = np.flatnonzero(pred_a != y)[:n_diff]
    pred_b[fix] = y[fix]
    return y, _proba_from_pred(pred_a), _proba_from_pred(pred_b)


def test_valid_p_values_do_not_depend_on_resamples_but_paper_method_does() -> None:
    y, pa, pb = _one_case_apart()
    for fn in (mcnemar_exact, delong_test, delong_roc_test):
        assert "n_resamples" not in inspect.signature(fn).parameters
    p_mcnemar = mcnemar_exact(pa.argmax(1) == y, pb.argmax(1) == y).p_value
    assert p_mcnemar == pytest.approx(0.5)  # b = 0, c = 2
    # the paper's method: rank-sum test between the two sets of bootstrap accuracies
    p_paper = {}
    for n_res in (200, 2000):
        idx = resample_indices(len(y), n_res, seed=0)
        acc = {
            name: metric_replicates(y, p, idx, "accuracy")["accuracy"].to_numpy()
            for name, p in (("a", pa), ("b", pb))
        }
        p_paper[n_res] = float(pairwise_wilcoxon(acc)["p_value"].iloc[0])
    # same data, same 2-case difference: 10x the resamples -> orders of magnitude smaller p
    assert p_paper[2000] < p_paper[200] / 100, p_paper
    assert p_paper[2000] < 1e-6 < p_mcnemar


def test_bootstrap_p_value_is_stable_in_the_number_of_resamples() -> None:
    y, pa, pb = _pair(150, seed=21, shift_a=1.0, shift_b=1.15)
    res = {
        n_res: paired_bootstrap(y, pa, pb, n_resamples=n_res, seed=n_res).set_index("metric")
        for n_res in (1000, 4000)
    }
    for metric in ("accuracy", "macro_f1", "macro_auc"):
        p1, p4 = res[1000].loc[metric, "p_value"], res[4000].loc[metric, "p_value"]
        q = min(max(p4 / 2, 0.01), 0.5)  # tail proportion
        mc_sd = 2 * math.sqrt(q * (1 - q) / 1000 + q * (1 - q) / 4000)
        assert abs(p1 - p4) <= 4 * mc_sd, (metric, p1, p4)
    assert 0.01 < res[4000].loc["accuracy", "p_value"] < 0.9  # a non-trivial p for this data


def test_bootstrap_p_value_definition() -> None:
    assert bootstrap_p_value(np.zeros(50)) == 1.0
    assert bootstrap_p_value(np.ones(99)) == pytest.approx(2 / 100)
    d = np.r_[-np.ones(10), np.ones(89)]  # 10 of 99 at or below 0
    assert bootstrap_p_value(d) == pytest.approx(2 * 11 / 100)
    assert bootstrap_p_value(np.r_[d, np.nan]) == bootstrap_p_value(d)
    assert math.isnan(bootstrap_p_value(np.array([np.nan])))


# --------------------------------------------------------------------------------------------
# minimal detectable difference


def _connor_n(delta: float, psi: float, alpha: float = 0.05, power: float = 0.8) -> float:
    za, zb = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    return (za * math.sqrt(psi) + zb * math.sqrt(psi - delta**2)) ** 2 / delta**2


def test_minimal_detectable_difference_hand_value_and_round_trip() -> None:
    # by hand: sqrt(.2) (1.959964 * 10 + 0.841621 * sqrt(100 - 3.841459 + 0.708326))
    #          / (100 + 0.708326) = 0.4472136 * 27.882994 / 100.708326 = 0.12382
    mdd = minimal_detectable_difference(100, p_discordant=0.2)
    assert mdd == pytest.approx(0.12382, abs=5e-5)
    assert _connor_n(mdd, 0.2) == pytest.approx(100, rel=1e-10)  # Connor's n at the MDD
    for n, psi, alpha, power in [(57, 0.3, 0.05, 0.9), (400, 0.3, 0.01, 0.8), (30, 0.5, 0.1, 0.5)]:
        d = minimal_detectable_difference(n, p_discordant=psi, alpha=alpha, power=power)
        assert _connor_n(d, psi, alpha, power) == pytest.approx(n, rel=1e-10)
    # acc approximates psi as 2 acc (1 - acc) (independent errors)
    assert minimal_detectable_difference(100, acc=0.8) == pytest.approx(
        minimal_detectable_difference(100, p_discordant=0.32)
    )


def test_minimal_detectable_difference_monotone_and_validation() -> None:
    ns = [20, 50, 100, 200, 500, 1000, 5000]
    mdds = [minimal_detectable_difference(n, p_discordant=0.25) for n in ns]
    assert all(a > b for a, b in itertools.pairwise(mdds))
    assert minimal_detectable_difference(100, p_discordant=0.3) > minimal_detectable_difference(
        100, p_discordant=0.1
    )
    assert minimal_detectable_difference(100, acc=0.8, power=0.9) > minimal_detectable_difference(
        100, acc=0.8, power=0.8
    )
    assert minimal_detectable_difference(5, p_discordant=0.05) == math.inf  # not reachable
    with pytest.raises(ValueError, match="exactly one of p_discordant or acc"):
        minimal_detectable_difference(100)
    with pytest.raises(ValueError, match="exactly one"):
        minimal_detectable_difference(100, p_discordant=0.2, acc=0.8)
    with pytest.raises(ValueError, match="n_cases"):
        minimal_detectable_difference(0, acc=0.8)
    with pytest.raises(ValueError, match="acc must lie"):
        minimal_detectable_difference(100, acc=1.0)
    with pytest.raises(ValueError, match="power"):
        minimal_detectable_difference(100, acc=0.8, power=1.2)


# --------------------------------------------------------------------------------------------
# seed combination


def test_seed_combined_single_seed_is_the_case_level_result() -> None:
    res = seed_combined_test(pd.DataFrame({"seed": [0], "diff": [0.04], "se": [0.02]}))
    assert res["n_seeds"] == 1 and math.isnan(res["sd_seeds"]) and math.isinf(res["df"])
    assert res["diff"] == 0.04 and res["se"] == pytest.approx(0.02)
    assert res["p_value"] == pytest.approx(2 * stats.norm.sf(2.0))
    z = stats.norm.ppf(0.975)
    assert res["ci_low"] == pytest.approx(0.04 - z * 0.02)
    assert res["ci_high"] == pytest.approx(0.04 + z * 0.02)


def test_seed_combined_without_case_error_is_a_one_sample_t_test() -> None:
    diffs = [0.03, 0.05, 0.01, 0.04, 0.06]
    res = combine_seeds(diffs, [0.0] * 5)
    ref = stats.ttest_1samp(diffs, 0.0)
    assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert res["df"] == pytest.approx(4)
    assert res["sd_seeds"] == pytest.approx(np.std(diffs, ddof=1))
    ci = ref.confidence_interval(0.95)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_seed_combined_adds_seed_and_shared_case_variance() -> None:
    diffs, ses = np.array([0.02, 0.06, 0.04]), np.array([0.03, 0.02, 0.025])
    res = combine_seeds(diffs, ses)
    var_seed = np.var(diffs, ddof=1) / 3
    var_case = np.mean(ses**2)  # not / 3: the external cases are shared by every seed
    assert res["diff"] == pytest.approx(0.04)
    assert res["se"] == pytest.approx(math.sqrt(var_seed + var_case))
    assert res["se_case"] == pytest.approx(math.sqrt(var_case))
    assert res["df"] == pytest.approx((var_seed + var_case) ** 2 * 2 / var_seed**2)
    assert res["se"] >= max(res["se_seed"], res["se_case"])
    assert res["ci_low"] < res["diff"] < res["ci_high"]
    # identical seeds: the seed term vanishes and the result equals one seed's case-level test
    same = combine_seeds([0.04] * 4, [0.02] * 4)
    one = combine_seeds([0.04], [0.02])
    for key in ("diff", "se", "p_value", "ci_low", "ci_high"):
        assert same[key] == pytest.approx(one[key])
    # more spread between seeds -> larger se and p
    wide = combine_seeds(diffs * 3 - 0.08, ses)
    assert wide["diff"] == pytest.approx(res["diff"]) and wide["se"] > res["se"]
    assert wide["p_value"] > res["p_value"]


def test_seed_combined_validation() -> None:
    with pytest.raises(ValueError, match="lacks column"):
        seed_combined_test(pd.DataFrame({"diff": [0.1]}))
    with pytest.raises(ValueError, match="no rows"):
        seed_combined_test(pd.DataFrame({"diff": [], "se": []}))
    with pytest.raises(ValueError, match="se"):
        seed_combined_test(pd.DataFrame({"diff": [0.1], "se": [-1.0]}))
    with pytest.raises(ValueError, match="diff"):
        seed_combined_test(pd.DataFrame({"diff": [np.nan], "se": [0.1]}))
    with pytest.raises(ValueError, match="equal length"):
        combine_seeds([0.1, 0.2], [0.1])


# --------------------------------------------------------------------------------------------
# all pairs


def test_paired_comparisons_small_difference_is_not_significant() -> None:
    y, pa, pb = _pair(100, seed=13)
    pb = pa.copy()
    rng = np.random.default_rng(0)
    changed = rng.choice(100, 2, replace=False)  # b differs from a on 2 of 100 cases only
    for i in changed:
        order = np.argsort(pb[i])
        pb[i, [order[-1], order[-2]]] = pb[i, [order[-2], order[-1]]]
    df = paired_comparisons(y, {"a": pa, "b": pb}, n_resamples=1000)
    assert tuple(df.columns[: len(COMPARISON_COLUMNS)]) == COMPARISON_COLUMNS
    assert list(df["metric"]) == ["accuracy", "macro_f1", "macro_auc"]
    assert list(df["test"]) == ["McNemar exact", "paired bootstrap", "DeLong"]
    assert not df["significant"].any(), df
    assert (df["p"] > 0.2).all(), df


def test_paired_comparisons_large_difference_is_significant() -> None:
    y, good, _ = _pair(100, seed=14, shift_a=2.5)
    noise = _round(_softmax(np.random.default_rng(1).normal(size=(100, K))), 2)
    df = paired_comparisons(y, {"good": good, "noise": noise}, n_resamples=1000)
    assert df["significant"].all(), df
    assert (df["diff"] < 0).all()  # diff = noise - good
    assert ((df["ci_low"] <= df["diff"]) & (df["diff"] <= df["ci_high"])).all()
    acc = df.set_index("metric").loc["accuracy"]
    ref = paired_bootstrap(y, good, noise, metrics="accuracy", n_resamples=1000).iloc[0]
    assert (acc["ci_low"], acc["ci_high"]) == (ref["ci_low"], ref["ci_high"])
    auc = df.set_index("metric").loc["macro_auc"]
    dl = delong_test(y, good, noise).iloc[-1]
    assert (auc["diff"], auc["p"], auc["ci_low"]) == pytest.approx(
        (dl["diff"], dl["p_value"], dl["ci_low"])
    )


def test_paired_comparisons_bh_within_each_metric_family() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, K, 90)
    y[:K] = np.arange(K)
    probas = {}
    for name, shift in zip(("m0", "m1", "m2", "m3"), (0.6, 0.9, 1.2, 2.0)):
        logits = rng.normal(size=(90, K))
        logits[np.arange(90), y] += shift
        probas[name] = _round(_softmax(logits), 2)
    df = paired_comparisons(y, probas, n_resamples=500, alpha=0.05)
    assert len(df) == 6 * 3
    assert list(zip(df["a"], df["b"]))[::3] == [
        ("m0", "m1"),
        ("m0", "m2"),
        ("m0", "m3"),
        ("m1", "m2"),
        ("m1", "m3"),
        ("m2", "m3"),
    ]
    for metric, sub in df.groupby("metric"):
        assert (sub["family"] == metric).all()
        expected = stats.false_discovery_control(sub["p"].to_numpy(), method="bh")
        np.testing.assert_allclose(sub["p_adj"].to_numpy(), expected, rtol=1e-12)
        np.testing.assert_array_equal(sub["significant"], sub["p_adj"] < 0.05)
    # one global BH over all 18 tests would differ: families really are separate
    global_adj = stats.false_discovery_control(df["p"].to_numpy(), method="bh")
    assert not np.allclose(global_adj, df["p_adj"])
    # explicit pairs keep the given orientation (diff = b - a)
    rev = paired_comparisons(y, probas, pairs=[("m3", "m0")], n_resamples=500)
    fwd = df[(df["a"] == "m0") & (df["b"] == "m3")]
    np.testing.assert_allclose(rev["diff"], -fwd["diff"].to_numpy())


def test_paired_comparisons_validation() -> None:
    y, pa, pb = _pair(40, seed=2)
    with pytest.raises(ValueError, match="at least two"):
        paired_comparisons(y, {"a": pa})
    with pytest.raises(ValueError, match=r"pairs: unknown model name\(s\) \['c'\]"):
        paired_comparisons(y, {"a": pa, "b": pb}, pairs=[("a", "c")])
    with pytest.raises(ValueError, match="itself"):
        paired_comparisons(y, {"a": pa, "b": pb}, pairs=[("a", "a")])
    with pytest.raises(ValueError, match=r"probas\['b'\] has K=3"):
        paired_comparisons(y, {"a": pa, "b": _round(pb[:, :3], None) / pb[:, :3].sum(1)[:, None]})
