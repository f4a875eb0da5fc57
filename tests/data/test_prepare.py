"""thyroaug.data.prepare and `thyroaug prepare`: mixed formats, cache reuse, bad inputs, MLflow."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from data_helpers import (
    blob,
    blob_mask,
    truncate,
    write_cohort,
    write_dicom,
    write_nifti,
    write_png,
)
from test_manifest import make_registry

import thyroaug.data.prepare
from thyroaug.contract import CLASSES
from thyroaug.data.cohort import COHORT_FILE, PreparedCohort
from thyroaug.data.manifest import load_registry
from thyroaug.data.prepare import (
    PrepareConfig,
    cached_hash,
    prepare,
    prepare_cohort,
    summary_table,
)
from thyroaug.errors import (
    ImageReadError,
    ManifestError,
    PromptError,
    SplitError,
    ThyroaugError,
)


@pytest.fixture
def cohort_dir(tmp_path: Path) -> Path:
    return write_cohort(tmp_path / "data", centers="ABG", per_class=3, size=32).parent


def test_mixed_formats_prepare_without_code_changes(cohort_dir: Path, tmp_path: Path) -> None:
    cohort = prepare_cohort(cohort_dir / "manifest.csv", tmp_path / "out", size=16, progress=False)
    assert (tmp_path / "out" / COHORT_FILE).is_file()
    assert cohort.images.shape == (36, 1, 16, 16) and cohort.images.dtype == torch.float32
    assert cohort.masks.dtype == torch.uint8 and set(cohort.masks.unique().tolist()) == {0, 1}
    assert cohort.images.min() >= 0.0 and cohort.images.max() == 1.0
    table = cohort.table
    assert table["label"].tolist() == [CLASSES[i] for i in cohort.labels.tolist()]
    assert set(table.loc[table["center"] == "G", "split"]) == {"external"}
    assert set(table.loc[table["center"] != "G", "split"]) <= {"train", "val"}
    assert table["has_mask"].all()
    suffixes = {Path(p).name.split(".", 1)[1] for p in table["source_image"]}
    assert suffixes == {"png", "dcm", "nii.gz"}
    assert set(table.loc[table["center"] == "B", "orig_rows"]) == {64}  # 2x matrix resampled
    assert cohort.settings["size"] == 16 and cohort.settings["normalisation"] == "max"
    assert len(cohort.content_hash) == 32
    loaded = PreparedCohort.load(tmp_path / "out")
    assert torch.equal(loaded.images, cohort.images) and loaded.content_hash == cohort.content_hash
    assert loaded.table["case_id"].tolist() == table["case_id"].tolist()
    counts = summary_table(cohort)
    assert counts.set_index("center").loc["all", "total"] == 36


def test_same_content_in_any_format_gives_the_same_case(tmp_path: Path) -> None:
    counts = np.rint(blob(32, seed=9, peak=300))
    mask = blob_mask(counts)
    (tmp_path / "f").mkdir()
    write_png(tmp_path / "f/a.png", counts * 100, bits=16)
    write_dicom(tmp_path / "f/b.dcm", counts * 4, slope=0.25)
    write_nifti(tmp_path / "f/c.nii.gz", counts, np.float32)
    write_png(tmp_path / "f/m.png", mask * 255)
    write_nifti(tmp_path / "f/m.nii.gz", mask)
    manifest = pd.DataFrame(
        {
            "case_id": ["a", "b", "c"],
            "center": "A",
            "label": "NG",
            "image": ["f/a.png", "f/b.dcm", "f/c.nii.gz"],
            "mask": ["f/m.png", "f/m.nii.gz", "f/m.png"],
        }
    )
    manifest.to_csv(tmp_path / "m.csv", index=False)
    cohort = prepare_cohort(tmp_path / "m.csv", tmp_path / "out", size=16, progress=False)
    torch.testing.assert_close(cohort.images[0], cohort.images[1])
    torch.testing.assert_close(cohort.images[0], cohort.images[2])
    assert torch.equal(cohort.masks[0], cohort.masks[1])


def test_registry_excel_jpg_layout_prepares(tmp_path: Path) -> None:
    make_registry(tmp_path / "reg", [f"{i}" for i in range(8)], list(CLASSES) * 2)
    table = load_registry(tmp_path / "reg", center="A")
    cohort = prepare_cohort(table, tmp_path / "out", size=16, progress=False)
    assert len(cohort) == 8 and cohort.table["has_mask"].all()
    assert cohort.table["prompt"].str.startswith("thyroid scan").all()
    assert cohort.table["source_image"][0] == "IMAGES/0.jpg"


def test_hash_skip_and_rebuild(cohort_dir: Path, tmp_path: Path, caplog) -> None:
    manifest, out = cohort_dir / "manifest.csv", tmp_path / "out"
    cfg = PrepareConfig(size=16)
    first = prepare(manifest, out, cfg, progress=False)
    assert not first.reused
    stamp = first.path.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="thyroaug.data.prepare"):
        again = prepare(manifest, out, cfg, progress=False)
    assert again.reused and again.path.stat().st_mtime_ns == stamp
    assert "up to date" in caplog.text
    assert again.cohort.content_hash == first.cohort.content_hash
    assert torch.equal(again.cohort.images, first.cohort.images)
    assert prepare(manifest, out, cfg, force=True, progress=False).reused is False
    # a changed image byte, a changed setting, a changed manifest cell: each a new hash
    changed = prepare(manifest, out, PrepareConfig(size=16, seed=1), progress=False)
    assert not changed.reused and changed.cohort.content_hash != first.cohort.content_hash
    table = pd.read_csv(manifest, keep_default_na=False)
    assert table["image"][4].endswith(".png")  # an 8-bit PNG case of write_cohort
    write_png(cohort_dir / table["image"][4], blob(32, seed=77))
    image_changed = prepare(manifest, out, PrepareConfig(size=16, seed=1), progress=False)
    assert not image_changed.reused
    assert image_changed.cohort.content_hash != changed.cohort.content_hash
    assert not torch.equal(image_changed.cohort.images[4], changed.cohort.images[4])
    table.loc[0, "prompt"] = "a different prompt"
    table.to_csv(manifest, index=False)
    assert prepare(manifest, out, PrepareConfig(size=16, seed=1), progress=False).reused is False
    assert cached_hash(out) not in (None, first.cohort.content_hash)


def test_workers_give_the_same_cohort(cohort_dir: Path, tmp_path: Path) -> None:
    manifest = cohort_dir / "manifest.csv"
    serial = prepare_cohort(manifest, tmp_path / "a", size=16, progress=False)
    pooled = prepare_cohort(manifest, tmp_path / "b", size=16, workers=2, progress=False)
    assert torch.equal(serial.images, pooled.images) and torch.equal(serial.masks, pooled.masks)
    assert serial.content_hash == pooled.content_hash


def test_prompts_built_from_reports(cohort_dir: Path, tmp_path: Path, monkeypatch) -> None:
    fake = types.ModuleType("thyroaug.reports.prompts")
    fake.__file__ = str(cohort_dir / "manifest.csv")  # any file: its bytes version the builder
    fake.report_to_prompt = lambda report: "prompt: " + report.split(".")[0].lower()
    monkeypatch.setattr(thyroaug.data.prepare, "prompts", fake)
    table = pd.read_csv(cohort_dir / "manifest.csv", keep_default_na=False)
    table.loc[0, ["prompt", "report"]] = ["", "Enlarged gland. Homogeneous uptake."]
    table.loc[1, ["prompt", "report"]] = ["kept as is", "Ignored report."]
    table.to_csv(cohort_dir / "manifest.csv", index=False)
    cohort = prepare_cohort(cohort_dir / "manifest.csv", tmp_path / "out", size=16, progress=False)
    assert cohort.table["prompt"][0] == "prompt: enlarged gland"
    assert cohort.table["prompt"][1] == "kept as is"
    assert (
        cohort.settings["prompt_builder"]["function"] == "thyroaug.reports.prompts.report_to_prompt"
    )

    def refuse(report: str) -> str:
        raise PromptError("too many tokens")

    monkeypatch.setattr(fake, "report_to_prompt", refuse)
    with pytest.raises(PromptError, match=rf"case {table['case_id'][0]}: prompt: too many tokens"):
        prepare_cohort(cohort_dir / "manifest.csv", tmp_path / "o2", size=16, progress=False)
    assert not (tmp_path / "o2").exists()


def _break(kind: str, folder: Path, table: pd.DataFrame) -> tuple[pd.DataFrame, type, str]:
    """Damage case 2 (or the table) one way; return the table, error type and message pattern."""
    case = table["case_id"][2]
    image = folder / table["image"][2]
    if kind == "truncated":
        new = folder / "img" / "trunc.png"
        truncate(write_png(new, blob(32) * 100, 16))
        table.loc[2, "image"] = "img/trunc.png"
        return table, ImageReadError, rf"case {case}, file .*trunc\.png: .*truncated"
    if kind == "non_image":
        (folder / "img" / "report.dcm").write_text("Findings: enlarged thyroid.")
        table.loc[2, "image"] = "img/report.dcm"
        return table, ImageReadError, rf"case {case}, file .*report\.dcm: not a readable image"
    if kind == "missing":
        image.unlink()
        return table, ManifestError, rf"row 3 \(case {case}\): image file not found"
    if kind == "label":
        table.loc[2, "label"] = "Goitre"
        return table, ManifestError, rf"row 3 \(case {case}\): unknown label 'Goitre'"
    if kind == "size_mismatch":
        write_nifti(folder / "msk" / "small.nii.gz", np.ones((16, 16)))
        table.loc[2, "mask"] = "msk/small.nii.gz"
        return table, ImageReadError, rf"case {case}: image is 32x32 but mask is 16x16"
    if kind == "nan":
        bad = blob(32).astype(np.float32)
        bad[4, 4] = np.nan
        write_nifti(folder / "img" / "nan.nii.gz", bad, np.float32)
        table.loc[2, "image"] = "img/nan.nii.gz"
        return table, ImageReadError, rf"case {case}, file .*nan\.nii\.gz: 1 pixel\(s\) are NaN"
    if kind == "inf":
        bad = blob(32).astype(np.float32)
        bad[4, 4] = -np.inf
        import SimpleITK as sitk

        sitk.WriteImage(sitk.GetImageFromArray(bad), str(folder / "img" / "inf.tif"))
        table.loc[2, "image"] = "img/inf.tif"
        return table, ImageReadError, rf"case {case}, file .*inf\.tif: 1 pixel\(s\) are NaN or inf"
    if kind == "zero":
        write_png(folder / "img" / "zero.png", np.zeros((32, 32)))
        table.loc[2, "image"] = "img/zero.png"
        return table, ImageReadError, rf"case {case}, file .*zero\.png: image is all zero"
    if kind == "volume":
        write_nifti(folder / "img" / "vol.nii.gz", np.stack([blob(32)] * 5), np.float32)
        table.loc[2, "image"] = "img/vol.nii.gz"
        return table, ImageReadError, rf"case {case}, file .*vol\.nii\.gz: image is 32x32x5"
    if kind == "duplicate":
        table.loc[2, "case_id"] = table["case_id"][1]
        return table, ManifestError, rf"duplicate case_id '{table['case_id'][1]}' in rows 2, 3"
    if kind == "patient_two_splits":
        g = table.index[table["center"] == "G"][0]
        table.loc[g, "patient_id"] = table["patient_id"][2]
        pat = rf"patient {table['patient_id'][2]} is in more than one split: cases {case} \(train"
        return table, SplitError, pat
    raise AssertionError(kind)


BAD_INPUTS = [
    "truncated",
    "non_image",
    "missing",
    "label",
    "size_mismatch",
    "nan",
    "inf",
    "zero",
    "volume",
    "duplicate",
    "patient_two_splits",
]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_clear_error_and_nothing_written(
    cohort_dir: Path, tmp_path: Path, kind: str
) -> None:
    manifest = cohort_dir / "manifest.csv"
    table, error, pattern = _break(kind, cohort_dir, pd.read_csv(manifest, keep_default_na=False))
    table.to_csv(manifest, index=False)
    out = tmp_path / "out"
    with pytest.raises(error, match=pattern):
        prepare_cohort(manifest, out, size=16, progress=False)
    assert not out.exists()


def test_all_failing_cases_reported_and_old_cache_kept(cohort_dir: Path, tmp_path: Path) -> None:
    manifest, out = cohort_dir / "manifest.csv", tmp_path / "out"
    good = prepare_cohort(manifest, out, size=16, progress=False)
    before = (out / COHORT_FILE).read_bytes()
    table = pd.read_csv(manifest, keep_default_na=False)
    write_png(cohort_dir / "img" / "zero.png", np.zeros((32, 32)))
    table.loc[[3, 7], "image"] = "img/zero.png"
    write_nifti(cohort_dir / "msk" / "small.nii.gz", np.ones((8, 8)))
    table.loc[9, "mask"] = "msk/small.nii.gz"
    table.to_csv(manifest, index=False)
    with pytest.raises(ImageReadError) as err:
        prepare_cohort(manifest, out, size=16, progress=False)
    text = str(err.value)
    assert "3 problem(s) in 36 case(s); nothing was written" in text
    for i in (3, 7, 9):
        assert f"case {table['case_id'][i]}" in text
    assert (out / COHORT_FILE).read_bytes() == before  # the previous cohort is untouched
    assert good.content_hash == cached_hash(out)
    assert list(out.iterdir()) == [out / COHORT_FILE]  # no temp files left behind


def test_cli_prepare_logs_to_mlflow(cohort_dir: Path, tracking_home: Path, capsys) -> None:
    from mlflow.tracking import MlflowClient

    from thyroaug.cli import main

    out = tracking_home / "cohort"
    argv = ["prepare", "--manifest", str(cohort_dir / "manifest.csv"), "--out", str(out)]
    code = main([*argv, "--size", "16", "--seed", "3", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "center" in printed and "DG" in printed and "external" in printed
    cohort = PreparedCohort.load(out)
    client = MlflowClient()
    exp = client.get_experiment_by_name("thyroaug")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["step"] == "prepare_data"
    assert run.info.run_name == "prepare_data"
    assert run.data.tags["cohort.content_hash"] == cohort.content_hash
    assert run.data.params["content_hash"] == cohort.content_hash
    assert run.data.params["size"] == "16" and run.data.params["seed"] == "3"
    assert run.data.params["n_external"] == "12"
    assert run.data.params["val_carved_from_train"] == "false"  # no split column: by center
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == cohort.content_hash
    assert dataset_input.tags[0].value == "prepared"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "cohort")}
    assert {"cohort/counts_center_class.json", "cohort/counts_center_class.csv"} <= artifacts
    assert "cohort/examples.png" in artifacts
    csv = Path(client.download_artifacts(run.info.run_id, "cohort/counts_center_class.csv"))
    counts = pd.read_csv(csv, keep_default_na=False)
    assert counts.set_index("center").loc["A", "DG"] == 3
    png = Path(client.download_artifacts(run.info.run_id, "cohort/examples.png"))
    assert png.read_bytes()[:4] == b"\x89PNG"
    # nothing private in params / tags
    logged = " ".join([*run.data.params.values(), *run.data.tags.values()])
    assert "P0000" not in logged
    # patient data on disk is private: the cohort cache and the run's artifacts, 0600 / 0700
    written = [*out.rglob("*"), *(tracking_home / "mlartifacts").rglob("*")]
    assert written and all(
        p.stat().st_mode & 0o077 == 0 for p in written if p.is_file() or p.is_dir()
    ), [oct(p.stat().st_mode) for p in written]


def test_cli_bad_input_exit_2(tmp_path: Path, capsys) -> None:
    from thyroaug.cli import main

    (tmp_path / "m.csv").write_text("case_id,center,label,image\nc1,A,XX,img.png\n")
    code = main(["prepare", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown label 'XX'" in err and "image file not found" in err
    assert not (tmp_path / "o").exists()
    assert main(["prepare", "--out", str(tmp_path / "o"), "--no-mlflow"]) == 2
    assert "no input" in capsys.readouterr().err
    assert issubclass(ManifestError, ThyroaugError)


def test_cli_phantom_default_path(tmp_path: Path, caplog) -> None:
    """MLproject's prepare_data without a manifest: simulate the phantom cohort, then prepare."""
    from thyroaug.cli import main

    out = tmp_path / "outputs" / "cohort"
    argv = ["prepare", "--phantom-scale", "0.01", "--out", str(out), "--size", "16"]
    assert main([*argv, "--no-mlflow", "--no-progress"]) == 0
    manifest = tmp_path / "outputs" / "phantom" / "manifest.csv"
    assert manifest.is_file()
    cohort = PreparedCohort.load(out)
    assert set(cohort.table["center"]) == set("ABCDEFGHI")
    assert (cohort.table["prompt"] != "").all()  # built from the phantom's reports
    stamp = manifest.stat().st_mtime_ns
    with caplog.at_level("INFO"):
        assert main([*argv, "--no-mlflow", "--no-progress"]) == 0
    assert manifest.stat().st_mtime_ns == stamp and "reusing the phantom cohort" in caplog.text
    assert "up to date" in caplog.text


def test_clinical_export_naming_train_and_external_only_gets_a_val_set(
    cohort_dir: Path, tracking_home: Path
) -> None:
    """A split column with train / external cases only: val carved 9:1 from train, and logged."""
    from mlflow.tracking import MlflowClient

    from thyroaug.cli import main

    manifest = cohort_dir / "manifest.csv"
    table = pd.read_csv(manifest, keep_default_na=False)
    table["split"] = np.where(table["center"] == "G", "test", "training")  # export spellings
    table["center"] = table["center"].map({"A": "Tehran", "B": "Kashan", "G": "Shiraz"})
    table.loc[1, "patient_id"] = table.loc[0, "patient_id"]  # one patient with two DG cases
    table.to_csv(manifest, index=False)
    out = tracking_home / "cohort"
    argv = ["prepare", "--manifest", str(manifest), "--out", str(out), "--size", "16"]
    assert main([*argv, "--seed", "4", "--no-progress"]) == 0
    cohort = PreparedCohort.load(out)
    splits = cohort.table.set_index("case_id")["split"]
    given = table.set_index("case_id")["split"]
    assert (splits[given == "test"] == "external").all()
    assert set(splits[given == "training"]) == {"train", "val"}
    assert len(cohort.indices("val")) == 4  # round(0.1 x 6) of each class's 24 train cases
    assert (cohort.table.groupby("patient_id")["split"].nunique() == 1).all()
    settings = cohort.settings
    assert settings["val_carved_from_train"] is True
    assert settings["val_carve_fraction"] == 0.1 and settings["val_carve_seed"] == 4
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("thyroaug").experiment_id])
    params = run.data.params
    assert params["val_carved_from_train"] == "true" and params["n_val"] == "4"
    assert params["val_fraction"] == "0.1" and params["seed"] == "4"
    logged = json.loads(
        Path(client.download_artifacts(run.info.run_id, "cohort/settings.json")).read_text()
    )
    assert logged["val_carved_from_train"] is True
    # the same export with its own val cases keeps them exactly (and nothing is carved)
    table.loc[table["center"] == "Tehran", "split"] = "val"
    table.to_csv(manifest, index=False)
    kept = prepare(manifest, tracking_home / "kept", PrepareConfig(size=16), progress=False)
    assert "val_carved_from_train" not in kept.cohort.settings
    expected = table["split"].replace({"test": "external", "training": "train"})
    assert kept.cohort.table["split"].tolist() == expected.tolist()
