"""utils.csvsafe: formula-like text cells are escaped for spreadsheets, nothing else changes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from thyroaug.utils.csvsafe import FORMULA_START, escape_cells, escape_value, to_csv_safe


@pytest.mark.parametrize("start", FORMULA_START)
def test_each_formula_start_gets_a_quote(start: str) -> None:
    assert escape_value(f"{start}cmd|' /C calc'!A0") == f"'{start}cmd|' /C calc'!A0"


@pytest.mark.parametrize("value", ["A-001", "case 1", "", " =x", "'=x", -0.5, 3, None, np.nan])
def test_other_values_are_left_alone(value) -> None:
    out = escape_value(value)
    assert out is value or (isinstance(value, float) and np.isnan(out))


def test_escape_cells_touches_text_only_and_copies() -> None:
    df = pd.DataFrame(
        {
            "case_id": ["=HYPERLINK(1)", "ok", "@SUM(A1)", None],
            "center": pd.Categorical(["A", "+B", "A", "A"]),
            "prob": [-0.25, 0.5, -1.0, np.nan],
            "n": [-1, 2, 3, 4],
            "flag": [True, False, True, False],
        },
        index=pd.Index(["-row", "r1", "r2", "r3"], name="Method"),
    )
    df["=col"] = "\tx"
    out = escape_cells(df)
    assert out["case_id"].tolist()[:3] == ["'=HYPERLINK(1)", "ok", "'@SUM(A1)"]
    assert pd.isna(out["case_id"].iloc[3])
    assert out["center"].tolist() == ["A", "'+B", "A", "A"]
    assert out["prob"].tolist()[:3] == [-0.25, 0.5, -1.0] and out["n"].tolist()[0] == -1
    assert out["flag"].dtype == bool
    assert list(out.index) == ["'-row", "r1", "r2", "r3"] and out.index.name == "Method"
    assert list(out.columns)[-1] == "'=col" and set(out["'=col"]) == {"'\tx"}
    assert df["case_id"].iloc[0] == "=HYPERLINK(1)" and "=col" in df.columns  # input untouched


def test_repeated_column_names_and_multiindex() -> None:
    df = pd.DataFrame([["=a", "-b"]], columns=["x", "x"])
    assert escape_cells(df).values.tolist() == [["'=a", "'-b"]]
    idx = pd.MultiIndex.from_tuples([("=m", "a"), ("ok", "-b")])
    out = escape_cells(pd.DataFrame({"v": [1, 2]}, index=idx))
    assert list(out.index) == [("'=m", "a"), ("ok", "'-b")]


def test_to_csv_safe_writes_escaped_cells(tmp_path: Path) -> None:
    df = pd.DataFrame({"case_id": ["=1+1", "c2"], "prob": [-0.1, 0.2]})
    to_csv_safe(df, tmp_path / "p.csv", index=False)
    rows = list(csv.reader((tmp_path / "p.csv").open()))
    assert rows == [["case_id", "prob"], ["'=1+1", "-0.1"], ["c2", "0.2"]]


def test_classifier_csvs_are_escaped(tmp_path: Path) -> None:
    from thyroaug.classifier.evaluate import write_csv

    frame = pd.DataFrame({"case_id": ["-2+3", "c1"], "center": ["G", "H"], "prob_DG": [0.1, 0.9]})
    write_csv(tmp_path / "predictions" / "predictions.csv", frame)
    text = (tmp_path / "predictions" / "predictions.csv").read_text()
    assert text.splitlines() == ["case_id,center,prob_DG", "'-2+3,G,0.1", "c1,H,0.9"]
