"""Tests of the phantom cohort generator (thyroaug.phantom)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from thyroaug.cli import main as cli_main
from thyroaug.contract import CLASSES
from thyroaug.errors import ConfigError
from thyroaug.phantom import planned_counts, simulate_cohort
from thyroaug.phantom import writer as phantom_writer
from thyroaug.phantom.describe import gland_size_factor
from thyroaug.phantom.planning import plan_cohort, scaled_count
from thyroaug.phantom.scanners import CENTERS, parse_centers
from thyroaug.phantom.simulate import simulate_case

TABLE1 = {  # DG / NG / TI / NL, the paper's Table 1
    "A": (100, 203, 81, 48),
    "B": (63, 110, 47, 23),
    "C": (215, 317, 88, 28),
    "D": (145, 199, 134, 120),
    "E": (89, 121, 60, 49),
    "F": (176, 61, 49, 29),
    "G": (20, 21, 24, 6),
    "H": (61, 42, 31, 8),
    "I": (46, 35, 60, 45),
}


def _read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img).squeeze(), img


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All nine centers at a tiny scale (about 90 cases)."""
    return simulate_cohort(
        tmp_path_factory.mktemp("ph") / "cohort", scale=0.03, seed=3, progress=False
    )


@pytest.fixture(scope="module")
def manifest(cohort: Path) -> pd.DataFrame:
    return pd.read_csv(cohort / "manifest.csv", keep_default_na=False)


# ------------------------------------------------------------------------------------- counts
def test_scale_one_gives_exact_table1_counts() -> None:
    counts = planned_counts(1.0)
    for center, (dg, ng, ti, nl) in TABLE1.items():
        assert counts[center] == {"DG": dg, "NG": ng, "NL": nl, "TI": ti}
    assert sum(sum(c.values()) for c in counts.values()) == 2954
    assert sum(counts[c][label] for c in counts for label in ["DG"]) == 915


def test_small_scale_keeps_every_cell() -> None:
    counts = planned_counts(0.02)
    assert all(n >= 1 for c in counts.values() for n in c.values())
    assert counts["C"]["NG"] == 6  # 317 * 0.02 = 6.34
    assert scaled_count(5, 0.5) == 3 and scaled_count(0, 0.5) == 0 and scaled_count(7, 0.01) == 1
    assert list(planned_counts(0.1, "IG")) == ["G", "I"]


def test_plan_at_scale_one_matches_demographics() -> None:
    plans = plan_cohort(seed=0, scale=1.0)
    table = pd.DataFrame([p.__dict__ for p in plans])
    assert len(table) == 2954 and table["case_id"].is_unique
    for center, profile in CENTERS.items():
        sub = table[table["center"] == center]
        assert (sub["sex"] == "M").sum() == profile.males  # exact at scale 1
        assert sub["age"].between(6, 95).all()
        if profile.age is not None:
            assert abs(sub["age"].mean() - profile.age[0]) < 0.3 * profile.age[1]
    assert abs((table["sex"] == "M").mean() - 0.26) < 0.01
    # repeat scans: same patient, class and sex, same center, age within a year
    repeats = table[table["repeat_of"].notna()]
    assert 20 <= len(repeats) <= 80
    first = table.set_index("case_id").loc[repeats["repeat_of"]]
    assert (first["patient_id"].to_numpy() == repeats["patient_id"].to_numpy()).all()
    assert (first["label"].to_numpy() == repeats["label"].to_numpy()).all()
    assert (first["sex"].to_numpy() == repeats["sex"].to_numpy()).all()
    assert ((repeats["age"].to_numpy() - first["age"].to_numpy()) <= 1).all()
    assert table.groupby("patient_id")["center"].nunique().max() == 1


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="scale"):
        planned_counts(0.0)
    with pytest.raises(ConfigError, match="unknown center"):
        parse_centers("AXZ")
    with pytest.raises(ConfigError, match="seed"):
        simulate_cohort(tmp_path / "x", scale=0.01, seed=-1)
    with pytest.raises(ConfigError, match="formats"):
        simulate_cohort(tmp_path / "x", scale=0.01, formats="bmp")
    assert not (tmp_path / "x").exists()


# -------------------------------------------------------------------------------------- files
def test_manifest_layout(cohort: Path, manifest: pd.DataFrame) -> None:
    assert list(manifest.columns) == list(phantom_writer.MANIFEST_COLUMNS)
    assert manifest["case_id"].is_unique
    assert set(manifest["label"]) == set(CLASSES)
    assert (manifest["prompt"] == "").all() and (manifest["split"] == "").all()
    assert (manifest["report"].str.len() > 20).all()  # a report for every case
    assert set(manifest["sex"]) <= {"M", "F"}
    assert manifest["age"].between(6, 95).all()  # center A (age NA) included
    for _, row in manifest.iterrows():
        assert not Path(row["image"]).is_absolute()
        assert row["image"] == f"images/{row['center']}/{Path(row['image']).name}"
        assert (cohort / row["image"]).is_file() and (cohort / row["mask"]).is_file()
        assert row["manufacturer"] == CENTERS[row["center"]].manufacturer
    summary = json.loads((cohort / "phantom.json").read_text())
    assert summary["seed"] == 3 and summary["total"] == len(manifest)
    assert summary["counts"] == planned_counts(0.03)
    assert (cohort / "examples.png").stat().st_size > 10_000
    assert not list(cohort.parent.glob(".cohort.*"))  # no temp folder left behind


def test_images_and_masks_read_back(cohort: Path, manifest: pd.DataFrame) -> None:
    expected = {
        "A": ("dcm", np.uint16, 128),
        "B": ("png", np.uint16, 128),
        "C": ("dcm", np.float64, 128),  # RescaleSlope 0.5 -> rescaled (float) counts
        "D": ("png", np.uint16, 128),
        "E": ("dcm", np.uint16, 256),
        "F": ("png", np.uint8, 128),
        "G": ("dcm", np.uint16, 128),
        "H": ("png", np.uint16, 128),
        "I": ("jpg", np.uint8, 128),
    }
    for _, row in manifest.groupby("center").head(2).iterrows():
        ext, dtype, size = expected[row["center"]]
        assert row["image"].endswith("." + ext)
        pixels, _ = _read(cohort / row["image"])
        assert pixels.shape == (size, size) and pixels.dtype == dtype, row["case_id"]
        assert pixels.max() > 0
        if row["center"] == "C":
            assert np.array_equal(pixels, np.round(pixels))  # counts survive the rescale
        mask, _ = _read(cohort / row["mask"])
        assert mask.shape == (size, size) and mask.dtype == np.uint8
        values = set(np.unique(mask).tolist())
        assert values == ({0, 255} if row["mask"].endswith(".png") else {0, 1}), row["case_id"]
        gland = mask > 0
        # the gland is brighter than the rest of the field
        assert pixels[gland].mean() > pixels[~gland].mean(), row["case_id"]


def test_dicom_header(cohort: Path, manifest: pd.DataFrame) -> None:
    row = manifest[manifest["center"] == "E"].iloc[0]
    _, img = _read(cohort / row["image"])
    assert img.GetMetaData("0008|0060").strip() == "NM"
    assert img.GetMetaData("0008|0070").strip() == "SIEMENS"
    assert img.GetMetaData("0008|1090").strip() == "IP1 (ECAM10482)"
    assert img.GetMetaData("0010|0020").strip() == row["patient_id"]
    assert img.GetMetaData("0010|0040").strip() == row["sex"]
    assert img.GetMetaData("0010|1010").strip() == f"{int(row['age']):03d}Y"
    assert 0.3 < img.GetSpacing()[0] < 0.8  # 256 matrix over ~130 mm


def test_rescaled_dicom_stores_doubled_counts(cohort: Path, manifest: pd.DataFrame) -> None:
    pydicom = pytest.importorskip("pydicom")
    row = manifest[manifest["center"] == "C"].iloc[0]
    ds = pydicom.dcmread(cohort / row["image"])
    assert float(ds.RescaleSlope) == 0.5
    raw = ds.pixel_array.astype(np.int64)
    rescaled, _ = _read(cohort / row["image"])
    assert np.array_equal(raw, 2 * rescaled.astype(np.int64))


# ---------------------------------------------------------------------------- determinism etc.
def test_same_seed_same_data(tmp_path: Path) -> None:
    a = simulate_cohort(tmp_path / "a", scale=0.02, seed=5, centers="CFI", progress=False)
    b = simulate_cohort(tmp_path / "b", scale=0.02, seed=5, centers="CFI", progress=False)
    c = simulate_cohort(tmp_path / "c", scale=0.02, seed=6, centers="CFI", progress=False)
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    assert (a / "manifest.csv").read_bytes() != (c / "manifest.csv").read_bytes()
    table = pd.read_csv(a / "manifest.csv")
    for rel in list(table["image"]) + list(table["mask"]):
        assert np.array_equal(_read(a / rel)[0], _read(b / rel)[0]), rel
    # a center's cases do not depend on which other centers are simulated
    alone = simulate_cohort(tmp_path / "i", scale=0.02, seed=5, centers="I", progress=False)
    rel = table[table["center"] == "I"]["image"].iloc[0]
    assert np.array_equal(_read(a / rel)[0], _read(alone / rel)[0])


def test_single_format_option(tmp_path: Path) -> None:
    out = simulate_cohort(tmp_path / "d", scale=0.02, centers="FI", formats="dicom", progress=False)
    table = pd.read_csv(out / "manifest.csv")
    assert table["image"].str.endswith(".dcm").all()
    assert table["mask"].str.endswith(".nii.gz").all()
    assert _read(out / table["image"].iloc[0])[0].dtype == np.uint16


def test_refuses_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        simulate_cohort(out, scale=0.01, centers="G", progress=False)
    assert (out / "keep.txt").exists()
    simulate_cohort(out, scale=0.01, centers="G", overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "manifest.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_no_partial_output_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = phantom_writer.write_case
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(phantom_writer, "write_case", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        simulate_cohort(tmp_path / "out", scale=0.02, centers="AB", progress=False)
    assert calls["n"] == 4
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["phantom", "--out", str(out), "--scale", "0.02", "--centers", "GH", "--seed", "1"]
    assert cli_main([*argv, "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "total" in text and str(out) in text
    assert set(pd.read_csv(out / "manifest.csv")["center"]) == {"G", "H"}
    assert cli_main([*argv, "--no-progress"]) == 2  # not empty, no --overwrite
    assert "not empty" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- appearance
def _uptake_ratio(case) -> float:
    """Mean expected counts in the gland over the median of the rest of the field."""
    expected = case.acquisition.expected
    gland = case.acquisition.mask > 0
    rest = expected[~gland & (expected > 0)]
    return float(expected[gland].mean() / np.median(rest))


def test_class_appearance() -> None:
    plans = [p for p in plan_cohort(seed=0, scale=0.25, centers="D")][:110]
    by_class: dict[str, list] = {c: [] for c in CLASSES}
    for plan in plans:
        by_class[plan.label].append(simulate_case(plan, seed=0))
    assert all(len(v) >= 20 for v in by_class.values())
    ratio = {c: np.mean([_uptake_ratio(k) for k in v]) for c, v in by_class.items()}
    assert ratio["TI"] < ratio["NL"] < ratio["DG"], ratio
    size = {c: np.mean([gland_size_factor(k.scene.gland) for k in v]) for c, v in by_class.items()}
    assert size["NL"] < size["NG"] and size["NL"] < size["DG"], size
    # findings agree with the class on average (atypical cases allowed)
    nodular = {c: np.mean([bool(k.findings.nodules) for k in v]) for c, v in by_class.items()}
    assert nodular["NG"] > 0.8 and max(nodular["DG"], nodular["NL"], nodular["TI"]) < 0.3
    low = {
        c: np.mean([k.findings.uptake in ("absent", "very low", "low") for k in v])
        for c, v in by_class.items()
    }
    assert low["TI"] > 0.7 and low["DG"] < 0.1
    for v in by_class.values():
        for k in v:
            assert k.findings.impression == k.plan.label
            assert k.report.strip()
            assert k.acquisition.mask.any()  # faint TI glands still have their outline
    # Poisson counting: counts scatter around the expected image
    k = by_class["NL"][0]
    residual = k.acquisition.counts.astype(float) - k.acquisition.expected
    assert abs(residual.sum()) < 5 * np.sqrt(k.acquisition.expected.sum())
    assert 1e4 < k.acquisition.counts.sum() < 1e6


def test_repeat_scan_shows_the_same_gland() -> None:
    plans = {p.case_id: p for p in plan_cohort(seed=0, scale=1.0, centers="G")}
    repeat = next(p for p in plans.values() if p.repeat_of is not None)
    first = plans[repeat.repeat_of]
    a, b = simulate_case(first, seed=0), simulate_case(repeat, seed=0)
    assert a.scene.gland == b.scene.gland and a.plan.patient_id == b.plan.patient_id
    assert not np.array_equal(a.acquisition.counts, b.acquisition.counts)  # a new acquisition
    assert b.report.startswith("Comparison: follow-up") and first.case_id in b.report
    assert not a.report.startswith("Comparison")
