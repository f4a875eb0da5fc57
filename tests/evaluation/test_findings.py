"""The findings: each verdict rule on constructed contrasts, the claims table, key contrasts,
sanity flags and per-center results on constructed predictions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from thyroaug.evaluation.claims import (
    CLAIM_COLUMNS,
    VERDICTS,
    Contrast,
    Contrasts,
    Evidence,
    best_verdict,
    claims_table,
    detectable,
    directional_verdict,
)
from thyroaug.evaluation.findings import find, key_contrasts, key_pairs, per_center, sanity_flags
from thyroaug.evaluation.paper_values import TABLE2

ALPHA = 0.05


def _c(diff: float, se: float, p_adj: float, a: str = "O", b: str = "O+FM") -> Contrast:
    half = 1.96 * se
    return Contrast(a, b, "macro_f1", diff, diff - half, diff + half, se, p_adj, p_adj)


@pytest.mark.parametrize(
    ("contrast", "effect", "verdict"),
    [
        (_c(+0.10, 0.02, 0.001), 0.08, "reproduced"),  # significant, the paper's direction
        (_c(-0.10, 0.02, 0.001), 0.08, "contradicted"),  # significant, the other way
        (_c(+0.00, 0.02, 0.90), 0.08, "contradicted"),  # excludes 0.08, detectable (mdd 0.056)
        (_c(+0.02, 0.05, 0.70), 0.08, "not testable"),  # mdd 0.14 > 0.08: cannot see it
        (_c(+0.04, 0.025, 0.11), 0.08, "inconclusive"),  # detectable, holds 0 and 0.08
        (_c(+0.00, 0.00, 1.00), 0.08, "not testable"),  # identical classifiers: no information
        (None, 0.08, "not run"),
    ],
)
def test_each_directional_verdict_rule(contrast, effect: float, verdict: str) -> None:
    got, why = directional_verdict(contrast, effect, ALPHA)
    assert got == verdict, why
    assert got in VERDICTS and why


def test_detectable_difference_is_the_power_formula() -> None:
    assert detectable(0.02) == pytest.approx((1.959964 + 0.841621) * 0.02, rel=1e-5)


def test_best_verdicts() -> None:
    values = {"O+FM": 0.80, "O+FM+CA": 0.70, "O": 0.60}
    ahead = Contrasts(pd.DataFrame([_c(0.10, 0.02, 0.001, "O+FM+CA", "O+FM").__dict__]))
    assert best_verdict("O+FM", values, ahead, "macro_f1", 0.01, ALPHA)[0] == "reproduced"
    behind = {"O+FM": 0.60, "O+FM+CA": 0.70}
    rival = Contrasts(pd.DataFrame([_c(0.10, 0.02, 0.001, "O+FM", "O+FM+CA").__dict__]))
    verdict, lead, *_ = best_verdict("O+FM", behind, rival, "macro_f1", 0.01, ALPHA)
    assert verdict == "contradicted" and lead == pytest.approx(-0.10)
    close = Contrasts(pd.DataFrame([_c(0.01, 0.05, 0.8, "O+FM+CA", "O+FM").__dict__]))
    assert best_verdict("O+FM", values, close, "macro_f1", 0.01, ALPHA)[0] == "not testable"
    assert best_verdict("O+FM", {"O": 0.5}, close, "macro_f1", 0.01, ALPHA)[0] == "not run"


def _evidence(contrasts: list[Contrast], one_class: frozenset[str] = frozenset()) -> Evidence:
    values = {s: dict(TABLE2[s]) for s in TABLE2}
    frame = pd.DataFrame([c.__dict__ for c in contrasts])
    return Evidence(values, Contrasts(frame), None, ALPHA, one_class)


def test_claims_table_has_every_claim_and_column() -> None:
    table = claims_table(_evidence([_c(0.08, 0.01, 0.001)]))
    assert list(table.columns) == list(CLAIM_COLUMNS)
    row = table.set_index("claim").loc["O+FM beats O (macro-F1)"]
    assert row["verdict"] == "reproduced" and row["paper"] == pytest.approx(0.08)
    assert (
        table.set_index("claim").loc[
            "FM has the lowest FID and KID, overall and in every class", "verdict"
        ]
        == "not run"
    )  # no Table 3 given
    assert set(table["verdict"]) <= set(VERDICTS)


def test_a_one_class_predictor_makes_its_claims_not_testable() -> None:
    table = claims_table(_evidence([_c(0.08, 0.01, 0.001)], frozenset({"O+FM"})))
    row = table.set_index("claim").loc["O+FM beats O (macro-F1)"]
    assert row["verdict"] == "not testable" and "one class" in row["why"]


def test_a_claim_the_papers_own_table_does_not_show_is_said_so() -> None:
    # FM's TI F1 is 0.85 against O's 0.93 in the paper's Table 2, though the text claims a gain
    c = Contrast("O", "FM", "f1_TI", 0.0, -0.05, 0.05, 0.025, 0.9, 0.9)
    table = claims_table(_evidence([c]))
    row = table.set_index("claim").loc["FM alone beats O in TI (F1)"]
    assert row["verdict"] == "not testable" and "Table 2 itself gives -0.080" in row["why"]


def test_fidelity_claim_reproduced_and_contradicted() -> None:
    rows = []
    for group in ("DG", "NG", "NL", "TI", "overall"):
        for method, fid in (("FM", 1.0), ("SD1", 3.0), ("SD2", 5.0)):
            rows.append({"method": method, "group": group, "fid": fid, "kid": fid / 10,
                         "fid_low": fid - 0.5, "fid_high": fid + 0.5})  # fmt: skip
    fid = pd.DataFrame(rows)
    ev = Evidence({}, Contrasts(), fid, ALPHA)
    table = claims_table(ev).set_index("claim")
    claim = "FM has the lowest FID and KID, overall and in every class"
    assert table.loc[claim, "verdict"] == "reproduced"
    fid.loc[fid["method"] == "FM", ["fid", "fid_low", "fid_high"]] = [9.0, 8.5, 9.5]
    table = claims_table(Evidence({}, Contrasts(), fid, ALPHA)).set_index("claim")
    assert table.loc[claim, "verdict"] == "contradicted"


def test_key_contrasts_are_the_prespecified_pairs_with_bh_within_them() -> None:
    scenarios = ["O", "FM", "O+FM", "O+FM+CA", "SD1", "O+SD1", "CA", "O+CA"]
    pairs = key_pairs(scenarios, ["SD1", "FM"])
    labels = [p[0] for p in pairs]
    assert labels == ["O+CA vs O", "O+SD1 vs O", "O+FM vs O", "CA vs O", "SD1 vs O", "FM vs O",
                      "O+FM vs O+FM+CA", "FM vs SD1"]  # fmt: skip
    rows = [dict(_c(0.05, 0.02, 0.02, a, b).__dict__, metric=m) for _, a, b in pairs
            for m in ("accuracy", "macro_f1")]  # fmt: skip
    table = key_contrasts(Contrasts(pd.DataFrame(rows)), pairs, ALPHA, ["accuracy", "macro_f1"])
    assert len(table) == 2 * len(pairs)
    assert (table["p_adj"] >= table["p"]).all()
    unadjusted_only = table[table["note"] != ""]
    assert ((unadjusted_only["ci_low"] > 0) & ~unadjusted_only["significant"]).all()


def _one_class(n: int, k: int) -> np.ndarray:
    p = np.full((n, 4), 0.1)
    p[:, k] = 0.7
    return p


def test_sanity_flags_name_one_class_predictors_auc_and_size() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 101)
    good = np.eye(4)[y] * 0.7 + 0.075
    probas = {"O": good, "FM": _one_class(101, 3)}
    auc = {"O": (0.9, 0.85, 0.95), "FM": (0.45, 0.38, 0.49)}
    sizes = {"O": (575, 575), "FM": (320, 0)}
    flags = sanity_flags(y, probas, auc, sizes).set_index("scenario")
    assert flags.loc["O", "flags"] == ""
    text = flags.loc["FM", "flags"]
    assert "one-class predictor (TI for 101/101)" in text
    assert "AUC below chance" in text and "size confound (synthetic only: 320" in text
    assert flags.loc["FM", "never_predicted"] == "DG,NG,NL"


def test_per_center_marks_a_center_where_augmentation_hurts() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 120)
    centers = np.array(["G"] * 60 + ["H"] * 60)
    right = np.eye(4)[y] * 0.8 + 0.05
    worse = right.copy()
    worse[60:] = np.eye(4)[(y[60:] + 1) % 4] * 0.8 + 0.05  # wrong on every H case
    table = per_center(y, centers, {"O": right, "O+FM": worse}, 200, 0, ["accuracy"])
    hurt = table[(table["scenario"] == "O+FM")].set_index("center")
    assert not hurt.loc["G", "hurts"] and hurt.loc["H", "hurts"]
    assert hurt.loc["H", "value"] == 0.0 and hurt.loc["H", "n"] == 60


def test_find_with_one_seed_builds_every_table() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 80)
    probas = {s: rng.dirichlet(np.ones(4), 80) for s in ("O", "FM", "O+FM")}
    from thyroaug.evaluation.paired import paired_comparisons

    paired = paired_comparisons(y, probas, n_resamples=200)
    values = {s: {"f1_macro": 0.5, "accuracy": 0.5} for s in probas}
    out = find(y=y, probas=probas, centers=np.array(["G", "H"] * 40), values=values,
               paired=paired, auc_intervals={}, train_sizes={}, methods=["FM"],
               n_resamples=100)  # fmt: skip
    assert not out.seed_combined and out.unconfirmed is None
    assert set(out.key_contrasts["contrast"]) == {"O+FM vs O", "FM vs O"}
    assert set(out.classwise["metric"]) == {"f1_NL", "f1_TI"}
    assert out.per_center is not None and set(out.per_center["center"]) == {"G", "H"}
    assert math.isfinite(out.claims.set_index("claim").loc["O+FM beats O (macro-F1)", "ours"])
