"""Damaged cohort files, formula-like ids and paths outside the manifest's folder are refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from data_helpers import blob, write_png
from safetensors.torch import save_file

from thyroaug.data.cohort import COHORT_FILE, PreparedCohort
from thyroaug.data.manifest import (
    combine_manifests,
    load_manifest,
    load_registry,
    validate_manifest,
)
from thyroaug.data.prepare import cached_hash
from thyroaug.errors import CohortFileError, ManifestError, ThyroaugError


# --- damaged cohort files ------------------------------------------------------------------------
@pytest.fixture
def cohort_file(tiny_cohort: PreparedCohort, tmp_path: Path) -> Path:
    return tiny_cohort.save(tmp_path / "out")


def _refused(path: Path, *more: str) -> str:
    with pytest.raises(CohortFileError) as info:
        PreparedCohort.load(path)
    message = str(info.value)
    assert str(path) in message and "thyroaug prepare" in message
    assert isinstance(info.value, ThyroaugError)
    for text in more:
        assert text in message, message
    return message


def test_a_sound_cohort_still_loads(cohort_file: Path, tiny_cohort: PreparedCohort) -> None:
    loaded = PreparedCohort.load(cohort_file.parent)
    assert torch.equal(loaded.images, tiny_cohort.images) and len(loaded) == len(tiny_cohort)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda raw: raw[: len(raw) // 2], "not a readable safetensors file"),
        (lambda raw: raw[: len(raw) - 1], "not a readable safetensors file"),
        (lambda raw: raw[:5], "not a readable safetensors file"),
        (lambda raw: b"", "not a readable safetensors file"),
        (lambda raw: raw[:8] + b"garbage!" + raw[16:], "not a readable safetensors file"),
        (lambda raw: b"\xff" * 8 + raw[8:], "not a readable safetensors file"),
    ],
    ids=["half", "one-byte-short", "five-bytes", "empty", "garbage-header", "header-size"],
)
def test_truncated_or_garbled_cohort_files_are_named(cohort_file: Path, damage, reason) -> None:
    cohort_file.write_bytes(damage(cohort_file.read_bytes()))
    _refused(cohort_file, reason)
    assert cached_hash(cohort_file) is None  # `thyroaug prepare` rebuilds it, as the message says


def test_inconsistent_cohort_contents_are_named(tmp_path: Path, tiny_cohort) -> None:
    n, path = len(tiny_cohort), tmp_path / COHORT_FILE
    meta = {"table": tiny_cohort.table.to_json(orient="records"), "content_hash": "x"}
    tensors = {
        "images": tiny_cohort.images,
        "masks": tiny_cohort.masks,
        "labels": tiny_cohort.labels,
    }
    save_file({k: v for k, v in tensors.items() if k != "masks"}, str(path), metadata=meta)
    _refused(path, "tensor(s) masks missing")
    save_file(tensors, str(path), metadata={"content_hash": "x"})
    _refused(path, "case table is missing or unreadable")
    save_file(tensors, str(path), metadata={**meta, "table": "[{not json"})
    _refused(path, "case table is missing or unreadable")
    short = {**meta, "table": tiny_cohort.table.iloc[:-1].to_json(orient="records")}
    save_file(tensors, str(path), metadata=short)
    _refused(path, f"the case table has {n - 1}")
    save_file(
        {**tensors, "images": tiny_cohort.images[:, 0].contiguous()}, str(path), metadata=meta
    )
    _refused(path, "expected [N, 1, S, S]")
    save_file({**tensors, "labels": tiny_cohort.labels + 7}, str(path), metadata=meta)
    _refused(path, "labels are not class indices 0..3")


def test_a_missing_cohort_says_to_prepare_one(tmp_path: Path) -> None:
    _refused(tmp_path / COHORT_FILE, "no prepared cohort")


# --- formula-like identifiers --------------------------------------------------------------------
@pytest.fixture
def files(tmp_path: Path) -> Path:
    """The manifest folder ``m/`` with ``img/c0..c5.png`` (``tmp_path`` itself is outside)."""
    (tmp_path / "m" / "img").mkdir(parents=True)
    for i in range(6):
        write_png(tmp_path / "m" / "img" / f"c{i}.png", blob(16, seed=i))
    return tmp_path / "m"


def _rows(n: int = 6) -> list[dict]:
    return [
        {"case_id": f"c{i}", "center": "A", "label": "DG", "image": f"img/c{i}.png"}
        for i in range(n)
    ]


def test_formula_like_case_ids_are_all_reported_with_row_and_case(files: Path) -> None:
    rows = _rows()
    for i, cid in enumerate(["=HYPERLINK(1)", "+1", "-2", "@SUM(A1)"]):
        rows[i]["case_id"] = cid
    rows[4]["center"] = "=B"
    rows[5]["label"] = "goitre"  # other problems are still reported in the same error
    pd.DataFrame(rows).to_csv(files / "m.csv", index=False)
    with pytest.raises(ManifestError) as err:
        load_manifest(files / "m.csv")
    text = "\n".join(err.value.problems)
    assert "row 1 (case =HYPERLINK(1)): case_id '=HYPERLINK(1)' starts with a character" in text
    for where in ("row 2 (case +1)", "row 3 (case -2)", "row 4 (case @SUM(A1))"):
        assert f"{where}: case_id" in text
    assert "row 5 (case c4): center '=B' starts with" in text
    assert "row 6 (case c5): unknown label 'goitre'" in text
    assert len(err.value.problems) == 6


@pytest.mark.parametrize("cid", ["\tc0", "\rc0", " =c0"])
def test_tab_and_carriage_return_prefixes_are_refused(files: Path, cid: str) -> None:
    rows = _rows(1)
    rows[0]["case_id"] = cid
    with pytest.raises(ManifestError, match="formula"):
        validate_manifest(pd.DataFrame(rows), root=files)


def test_ids_with_those_characters_inside_are_fine(files: Path) -> None:
    rows = _rows(2)
    rows[0]["case_id"], rows[1]["case_id"] = "A-001", "c@1+2=3"
    table = validate_manifest(pd.DataFrame(rows), root=files)
    assert table["case_id"].tolist() == ["A-001", "c@1+2=3"]


# --- paths outside the manifest's folder ---------------------------------------------------------
@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """An image beside (not under) the manifest folder ``files``."""
    write_png(tmp_path / "elsewhere.png", blob(16, seed=9))
    return tmp_path / "elsewhere.png"


def _manifest(folder: Path, image: str, extra: dict | None = None) -> Path:
    row = {"case_id": "c0", "center": "A", "label": "NG", "image": image, **(extra or {})}
    pd.DataFrame([row]).to_csv(folder / "m.csv", index=False)
    return folder / "m.csv"


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_paths_leaving_the_manifest_folder_are_refused(files: Path, outside: Path, how) -> None:
    if how == "symlink":
        os.symlink(outside, files / "img" / "link.png")
    image = {"absolute": str(outside), "dotdot": "img/../../elsewhere.png"}.get(how, "img/link.png")
    with pytest.raises(ManifestError) as err:
        load_manifest(_manifest(files, image))
    (problem,) = err.value.problems
    assert problem.startswith("row 1 (case c0): image path")
    assert f"points outside the manifest's folder {files}" in problem
    assert "allow_outside_root=True" in problem and "--allow-outside-root" in problem
    table = load_manifest(files / "m.csv", allow_outside_root=True)
    assert Path(table["image_path"][0]).resolve() == outside.resolve()


def test_absolute_paths_inside_the_folder_are_accepted(files: Path) -> None:
    table = load_manifest(_manifest(files, str(files / "img" / "c1.png")))
    assert table["image_path"][0] == str(files / "img" / "c1.png")


def test_path_columns_in_a_file_are_not_trusted(files: Path, outside: Path) -> None:
    path = _manifest(files, "", {"image_path": str(outside), "mask_path": ""})
    path.write_text(path.read_text().replace("image,image_path", "image_unused,image_path"))
    with pytest.raises(ManifestError, match="points outside"):
        load_manifest(path)


def test_validated_tables_are_combined_without_a_second_root_check(files: Path, outside: Path):
    inside = load_manifest(_manifest(files, "img/c0.png"))
    out = load_manifest(_manifest(files, str(outside)), allow_outside_root=True)
    out["case_id"] = "c9"
    both = combine_manifests([inside, out])
    assert both["image_path"].tolist() == [inside["image_path"][0], out["image_path"][0]]


def test_registry_ids_cannot_walk_out_of_the_images_folder(tmp_path: Path) -> None:
    (tmp_path / "IMAGES").mkdir()
    write_png(tmp_path / "IMAGES" / "1.png", blob(16, seed=1))
    sheet = pd.DataFrame({"ID": ["1", "../../x"], "Class": ["DG", "NG"]})
    sheet.to_excel(tmp_path / "reg.xlsx", index=False)
    with pytest.raises(ManifestError) as err:
        load_registry(tmp_path / "reg.xlsx", center="A", suffix=".png", check_files=False)
    assert [p.split(":")[0] for p in err.value.problems] == ["row 2 (case ../../x)"]
    assert "points outside" in err.value.problems[0]
    ok = load_registry(tmp_path / "reg.xlsx", center="A", suffix=".png", allow_outside_root=True,
                       check_files=False)  # fmt: skip
    assert len(ok) == 2


def test_manifest_error_is_plain_text(files: Path) -> None:
    rows = _rows(1)
    rows[0]["case_id"] = "=1+1"
    with pytest.raises(ManifestError) as err:
        validate_manifest(pd.DataFrame(rows), root=files)
    assert "Traceback" not in str(err.value) and json.dumps(err.value.problems)
