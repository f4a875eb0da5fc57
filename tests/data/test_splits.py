"""thyroaug.data.splits: center split, stratified grouped 9:1, determinism, leaks refused,
val carved from the train cases of a manifest that names none."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from thyroaug.contract import CLASSES
from thyroaug.data.splits import (
    assign_splits,
    carves_val,
    check_splits,
    parse_centers,
    stratified_group_split,
)
from thyroaug.errors import ConfigError, SplitError


def make_table(seed: int = 0, centers: str = "ABCDEFGHI", multi: bool = True) -> pd.DataFrame:
    """Random class counts per center; some patients have 2-3 cases (possibly mixed classes)."""
    rng = np.random.default_rng(seed)
    rows = []
    patient = 0
    for center in centers:
        for label in CLASSES:
            for _ in range(int(rng.integers(5, 40))):
                rows.append({"center": center, "label": label, "patient_id": f"P{patient}"})
                if not (multi and rng.random() < 0.15):
                    patient += 1  # 15 %: the next case belongs to the same patient
        patient += 1
    table = pd.DataFrame(rows)
    table.insert(0, "case_id", [f"c{i:04d}" for i in range(len(table))])
    table["split"] = ""
    return table


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_invariants(seed: int) -> None:
    table = make_table(seed)
    out = assign_splits(table, seed=seed)
    assert set(out["split"]) == {"train", "val", "external"}
    # by center first
    assert (out.loc[out["center"].isin(list("GHI")), "split"] == "external").all()
    assert (out.loc[out["center"].isin(list("ABCDEF")), "split"] != "external").all()
    # no patient in two splits
    assert (out.groupby("patient_id")["split"].nunique() == 1).all()
    # stratified: every class within +-1 of 10 % of the training centers' cases
    train_centers = out[out["center"].isin(list("ABCDEF"))]
    for cls in CLASSES:
        n = (train_centers["label"] == cls).sum()
        n_val = ((train_centers["label"] == cls) & (train_centers["split"] == "val")).sum()
        assert abs(n_val - 0.1 * n) <= 1, (cls, n_val, n)
    # the input is not modified
    assert (table["split"] == "").all()


def test_deterministic_by_seed() -> None:
    table = make_table(5)
    a = assign_splits(table, seed=11)["split"]
    b = assign_splits(table, seed=11)["split"]
    c = assign_splits(table, seed=12)["split"]
    assert a.equals(b)
    assert not a.equals(c)


def test_singleton_patients_hit_the_quota_exactly() -> None:
    labels = ["DG"] * 95 + ["TI"] * 14
    val = stratified_group_split(labels, [f"p{i}" for i in range(109)], 0.1, seed=0)
    assert val[:95].sum() == 10 and val[95:].sum() == 1  # round(9.5) = 10, round(1.4) = 1


def test_groups_are_never_divided() -> None:
    groups = [f"p{i // 3}" for i in range(90)]
    labels = ["NG"] * 90
    val = stratified_group_split(labels, groups, 0.2, seed=4)
    assert val.sum() == 18
    for g in set(groups):
        members = [v for v, gg in zip(val, groups) if gg == g]
        assert len(set(members)) == 1


def test_patient_in_train_and_external_center_is_refused() -> None:
    table = make_table(0, centers="AG", multi=False)
    table.loc[table.index[-1], "patient_id"] = table["patient_id"].iloc[0]
    first, last = table["case_id"].iloc[0], table["case_id"].iloc[-1]
    with pytest.raises(SplitError, match=rf"patient P0 .*{first} \(train\).*{last} \(external\)"):
        assign_splits(table)


def test_given_splits_are_kept_and_validated() -> None:
    table = make_table(0, centers="AG", multi=False)
    table["split"] = np.where(table["center"] == "A", "train", "external")
    table.loc[0, "split"] = "val"
    out = assign_splits(table, seed=99)
    assert out["split"].equals(table["split"])
    table.loc[1, "patient_id"] = table.loc[0, "patient_id"]
    with pytest.raises(
        SplitError, match=r"patient P0 is in more than one split: cases c0000 \(val\)"
    ):
        assign_splits(table)
    table.loc[2, "split"] = ""
    with pytest.raises(SplitError, match="filled for some cases only"):
        assign_splits(table)
    bad = pd.DataFrame(
        {"case_id": ["a"], "patient_id": ["p"], "center": ["A"], "label": ["DG"], "split": ["dev"]}
    )
    with pytest.raises(SplitError, match="case a: split 'dev'"):
        check_splits(bad)


def test_centers_checks() -> None:
    table = make_table(0, centers="AZ", multi=False)
    with pytest.raises(SplitError, match=r"center 'Z' \(cases"):
        assign_splits(table)
    with pytest.raises(ConfigError, match="both training and external"):
        assign_splits(table, train_centers="AZ", external_centers="Z")
    with pytest.raises(SplitError, match="no case comes from a training center"):
        assign_splits(table, train_centers="B", external_centers="AZ")
    out = assign_splits(table, train_centers="A,Z", external_centers=[], val_fraction=0.0)
    assert set(out["split"]) == {"train"}
    assert parse_centers("ABC") == ("A", "B", "C")
    assert parse_centers("Kashan, Tehran") == ("Kashan", "Tehran")
    assert parse_centers(["G", "H"]) == ("G", "H")


def _train_external_manifest(seed: int) -> pd.DataFrame:
    """A clinical export: the split column names train and external cases only (any centers)."""
    table = make_table(seed, centers="KLMNOPQ")
    table["split"] = np.where(table["center"].isin(list("KLMNO")), "train", "external")
    return table


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_manifest_without_val_gets_val_carved_from_its_train_cases(seed: int) -> None:
    table = _train_external_manifest(seed)
    assert carves_val(table, 0.1)
    out = assign_splits(table, seed=seed)  # the default center lists do not apply here
    given_train = table["split"] == "train"
    assert out.loc[~given_train, "split"].eq("external").all()  # external kept exactly
    assert set(out.loc[given_train, "split"]) == {"train", "val"}
    assert (out.groupby("patient_id")["split"].nunique() == 1).all()  # no patient in two splits
    n_train, n_val = int(given_train.sum()), int((out["split"] == "val").sum())
    assert abs(n_val - 0.1 * n_train) <= len(CLASSES)  # ~10 % of the train cases
    for cls in CLASSES:  # stratified: every class within +-1 of 10 % of its train cases
        n = int((given_train & (table["label"] == cls)).sum())
        got = int(((out["split"] == "val") & (out["label"] == cls)).sum())
        assert abs(got - 0.1 * n) <= 1, (cls, got, n)
    again = assign_splits(table, seed=seed)["split"]
    assert again.equals(out["split"])  # deterministic per seed
    assert not assign_splits(table, seed=seed + 10)["split"].equals(out["split"])
    assert table["split"].isin(["train", "external"]).all()  # the input is not modified


def test_manifest_splits_with_val_or_val_fraction_zero_are_kept() -> None:
    table = _train_external_manifest(0)
    assert not carves_val(table, 0.0)
    assert assign_splits(table, val_fraction=0.0)["split"].equals(table["split"])
    named = table.copy()
    first_patient = named["patient_id"] == named["patient_id"].iloc[0]
    named.loc[first_patient, "split"] = "val"
    assert not carves_val(named, 0.1)
    assert assign_splits(named, seed=7)["split"].equals(named["split"])
    assert not carves_val(named.assign(split=""), 0.1)  # no splits: the center path instead
    assert not carves_val(named.drop(columns="split"), 0.1)
    with pytest.raises(ConfigError, match=r"val_fraction=1\.5"):
        assign_splits(table, val_fraction=1.5)
