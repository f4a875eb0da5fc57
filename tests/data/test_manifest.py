"""thyroaug.data.manifest: formats, aliases, registry layout, every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from data_helpers import blob, blob_mask, write_jpg, write_png

from thyroaug.data.manifest import (
    CANONICAL_COLUMNS,
    combine_manifests,
    load_manifest,
    load_registry,
    normalise_label,
    parse_class_map,
)
from thyroaug.errors import ManifestError


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for i in range(4):
        write_png(tmp_path / "img" / f"c{i}.png", blob(16, seed=i))
        write_png(tmp_path / "img" / f"m{i}.png", blob_mask(blob(16, seed=i)) * 255)
    return tmp_path


def rows(n: int = 4) -> list[dict]:
    labels = ["DG", "NG", "NL", "TI"]
    return [
        {
            "case_id": f"c{i}",
            "patient_id": f"p{i}",
            "center": "A",
            "label": labels[i % 4],
            "image": f"img/c{i}.png",
            "mask": f"img/m{i}.png",
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".xlsx", ".tsv"])
def test_formats_round_trip(files: Path, suffix: str) -> None:
    df = pd.DataFrame(rows())
    df["age"] = [30, 41.5, None, 50]
    path = files / f"manifest{suffix}"
    {
        ".csv": lambda: df.to_csv(path, index=False),
        ".tsv": lambda: df.to_csv(path, index=False, sep="\t"),
        ".parquet": lambda: df.to_parquet(path),
        ".xlsx": lambda: df.to_excel(path, index=False),
    }[suffix]()
    table = load_manifest(path)
    assert list(table.columns) == [*CANONICAL_COLUMNS, "image_path", "mask_path"]
    assert table["case_id"].tolist() == ["c0", "c1", "c2", "c3"]
    assert table["label"].tolist() == ["DG", "NG", "NL", "TI"]
    assert Path(table["image_path"][2]) == (files / "img" / "c2.png").absolute()
    assert table["image"][2] == "img/c2.png"  # as written (the hash uses it)
    assert table["age"].tolist()[:2] == [30.0, 41.5] and np.isnan(table["age"][2])
    assert (table["split"] == "").all() and (table["prompt"] == "").all()


def test_aliases_case_insensitive_and_defaults(files: Path) -> None:
    df = pd.DataFrame(
        {
            "ID": ["c0", "c1"],
            "Class": ["diffuse goiter", "nl"],
            "IMAGE": ["img/c0.png", "img/c1.png"],
            "Mask": ["img/m0.png", ""],
            "Prompt": ["enlarged gland", "normal gland"],
            "Site": ["B", "B"],
            "Gender": ["female", "M"],
            "Data Split": ["training", "Validation"],
            "extra": [1, 2],
        }
    )
    df = df.rename(columns={"Data Split": "Subset"})
    df.to_csv(files / "m.csv", index=False)
    table = load_manifest(files / "m.csv")
    assert table["label"].tolist() == ["DG", "NL"]
    assert table["patient_id"].tolist() == ["c0", "c1"]  # default: one case per patient
    assert table["center"].tolist() == ["B", "B"]
    assert table["sex"].tolist() == ["F", "M"]
    assert table["split"].tolist() == ["train", "val"]
    assert table["mask_path"][1] == "" and table["mask_path"][0].endswith("m0.png")
    assert table["prompt"][0] == "enlarged gland"


def test_every_problem_is_reported_at_once(files: Path) -> None:
    data = [*rows(4), dict(rows(1)[0])]
    data[1]["label"] = "goitre"
    data[2]["image"] = "img/missing.png"
    data[3]["mask"] = "img/nomask.png"
    data[3]["case_id"] = ""
    data[0]["age"] = "old"
    for r in data:
        r.setdefault("age", "")
        r["split"] = "train"
    data[4]["split"] = "holdout"
    data[1]["split"] = "external"
    data[1]["patient_id"] = "p0"
    pd.DataFrame(data).to_csv(files / "bad.csv", index=False)
    with pytest.raises(ManifestError) as err:
        load_manifest(files / "bad.csv")
    problems = err.value.problems
    text = "\n".join(problems)
    assert "row 2 (case c1): unknown label 'goitre'" in text
    assert "row 3 (case c2): image file not found" in text and "missing.png" in text
    assert "row 4 (case <empty id>): empty case_id" in text
    assert "row 4 (case <empty id>): mask file not found" in text
    assert "row 1 (case c0): age 'old' is not a number" in text
    assert "row 5 (case c0): bad split 'holdout'" in text
    assert "duplicate case_id 'c0' in rows 1, 5" in text
    assert "patient p0 is in splits external, train: cases c0 (train), c1 (external)" in text
    assert len(problems) == 8
    assert str(files / "bad.csv") in str(err.value)


def test_missing_columns_and_bad_files(files: Path) -> None:
    pd.DataFrame({"case": ["c0"], "Diagnosis": ["DG"]}).to_csv(files / "m.csv", index=False)
    with pytest.raises(ManifestError) as err:
        load_manifest(files / "m.csv")
    assert any("'center' is missing" in p for p in err.value.problems)
    assert any("'image' is missing" in p for p in err.value.problems)
    with pytest.raises(ManifestError, match="manifest file not found"):
        load_manifest(files / "nope.csv")
    (files / "m.json").write_text("{}")
    with pytest.raises(ManifestError, match="unknown manifest type"):
        load_manifest(files / "m.json")
    (files / "broken.xlsx").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ManifestError, match="cannot read the file"):
        load_manifest(files / "broken.xlsx")
    pd.DataFrame({"ID": ["a"], "id": ["b"]}).to_csv(files / "twice.csv", index=False)
    with pytest.raises(ManifestError, match="both mean 'case_id'"):
        load_manifest(files / "twice.csv")


def test_partial_split_and_center_flag(files: Path) -> None:
    data = rows(3)
    for r in data:
        r.pop("center")
    data[0]["split"] = "train"
    pd.DataFrame(data).to_csv(files / "m.csv", index=False)
    with pytest.raises(ManifestError, match=r"split is empty in 2 row\(s\)"):
        load_manifest(files / "m.csv", center="C")
    data[0]["split"] = ""
    pd.DataFrame(data).to_csv(files / "m.csv", index=False)
    assert (load_manifest(files / "m.csv", center="C")["center"] == "C").all()


def test_labels_and_class_map() -> None:
    assert normalise_label("ng") == "NG"
    assert normalise_label("Nodular_Goiter") == "NG"
    assert normalise_label("Thyroiditis ") == "TI"
    assert normalise_label(2) is None
    cmap = parse_class_map("0=DG,1=NG,2=normal,3=TI")
    assert cmap == {"0": "DG", "1": "NG", "2": "NL", "3": "TI"}
    assert normalise_label(2.0, cmap) == "NL"
    with pytest.raises(ManifestError, match="bad entry"):
        parse_class_map("0=goitre")


def make_registry(root: Path, ids: list[str], classes: list, sheet: str = "Train") -> Path:
    """The authors' layout: Data/Scintigraphy.xlsx + IMAGES/<ID>.jpg + MASKS/<ID>.jpg."""
    (root / "Data").mkdir(parents=True)
    (root / "IMAGES").mkdir()
    (root / "MASKS").mkdir()
    for i, cid in enumerate(ids):
        img = blob(32, seed=i)
        write_jpg(root / "IMAGES" / f"{cid}.jpg", img)
        write_jpg(root / "MASKS" / f"{cid}.jpg", blob_mask(img) * 255)
    xlsx = root / "Data" / "Scintigraphy.xlsx"
    prompts = [f"thyroid scan {i}" for i in range(len(ids))]
    with pd.ExcelWriter(xlsx) as writer:
        pd.DataFrame({"ID": ids, "Prompt": prompts, "Class": classes}).to_excel(
            writer, sheet_name=sheet, index=False
        )
        pd.DataFrame({"note": ["exported 2024"]}).to_excel(writer, sheet_name="Info", index=False)
    return xlsx


def test_registry_layout(tmp_path: Path) -> None:
    ids = ["1001", "1002", "1003", "1004"]
    make_registry(tmp_path, ids, ["DG", "NG", "NL", "TI"])
    table = load_registry(tmp_path, center="D")  # folder: finds Data/*.xlsx, IMAGES beside Data
    assert table["case_id"].tolist() == ids  # numeric ids stay text
    assert (table["center"] == "D").all()
    assert table["patient_id"].tolist() == ids
    assert table["image"][0] == "IMAGES/1001.jpg" and table["mask"][0] == "MASKS/1001.jpg"
    assert Path(table["image_path"][3]).is_file() and Path(table["mask_path"][3]).is_file()
    assert table["prompt"][1] == "thyroid scan 1"
    same = load_registry(tmp_path / "Data" / "Scintigraphy.xlsx", center="D")
    assert same.equals(table)


def test_registry_numeric_classes_and_missing_mask(tmp_path: Path) -> None:
    make_registry(tmp_path, ["a1", "a2"], [0, 3])
    with pytest.raises(ManifestError, match="numeric labels need a class map"):
        load_registry(tmp_path, center="A")
    table = load_registry(tmp_path, center="A", class_map={"0": "DG", "3": "TI"})
    assert table["label"].tolist() == ["DG", "TI"]
    (tmp_path / "MASKS" / "a2.jpg").unlink()
    with pytest.raises(ManifestError, match=r"row 2 \(case a2\): mask file not found"):
        load_registry(tmp_path, center="A", class_map={"0": "DG", "3": "TI"})


def test_combine_finds_cross_file_duplicates(tmp_path: Path) -> None:
    make_registry(tmp_path / "siteA", ["x1", "x2"], ["DG", "NG"])
    make_registry(tmp_path / "siteB", ["x2", "x3"], ["NL", "TI"])
    a = load_registry(tmp_path / "siteA", center="A")
    b = load_registry(tmp_path / "siteB", center="B")
    with pytest.raises(ManifestError, match="duplicate case_id 'x2' in rows 2, 3"):
        combine_manifests([a, b])
