"""Synthetic sets: provenance recorded and verified, damaged files named, downloads cleaned up."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from thyroaug.contract import CLASSES
from thyroaug.errors import ScenarioError
from thyroaug.synthetic import (
    DOWNLOAD_PREFIX,
    SyntheticSet,
    resolve_set,
    sweep_stale_downloads,
    tensor_sha256,
)
from thyroaug.utils.digest import json_sha256


def small_set(per_class: int = 2, size: int = 8, method: str = "FM") -> SyntheticSet:
    labels = torch.arange(len(CLASSES)).repeat_interleave(per_class)
    images = torch.rand(len(labels), 1, size, size, generator=torch.Generator().manual_seed(0))
    n = len(labels)
    manifest = pd.DataFrame(
        {
            "index": np.arange(n),
            "label": [CLASSES[i] for i in labels],
            "method": method,
            "generator_uri": "models:/fake/1",
            "generator_version": "1",
            "seed": np.arange(n),
            "source_id": [""] * n,
        }
    )
    return SyntheticSet(images, labels, manifest, {"cohort_hash": "h"})


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return small_set().save(tmp_path / "FM")


def _info(folder: Path) -> dict:
    return json.loads((folder / "set.json").read_text())


def _write_info(folder: Path, info: dict) -> None:
    """Rewrite set.json as a consistent record (its own hash recomputed)."""
    (folder / "set.json").write_text(json.dumps({**info, "sha256": json_sha256(info)}))


def _refused(folder: Path, *texts: str, **kwargs) -> str:
    with pytest.raises(ScenarioError) as info:
        SyntheticSet.load(folder, **kwargs)
    message = str(info.value)
    for text in texts:
        assert text in message, message
    return message


# --- provenance ----------------------------------------------------------------------------------
def test_save_records_the_tensor_hash_and_load_verifies_it(saved: Path) -> None:
    original = small_set()
    info = _info(saved)
    assert info["tensor_sha256"] == tensor_sha256(original.images, original.labels)
    assert info["count"] == 8
    loaded = SyntheticSet.load(saved)
    assert torch.equal(loaded.images, original.images) and loaded.info["cohort_hash"] == "h"


def test_a_set_without_set_json_is_refused(saved: Path) -> None:
    (saved / "set.json").unlink()
    _refused(saved, str(saved), "set.json is missing", "interrupted", "thyroaug synthesize")
    _refused(saved, "set.json is missing", trust_legacy=True)  # never incomplete ones


def test_changed_tensors_or_counts_are_refused(saved: Path) -> None:
    from safetensors.torch import save_file

    other = small_set()
    save_file(
        {"images": other.images + 0.01, "labels": other.labels}, str(saved / "images.safetensors")
    )
    _refused(saved, "does not match the hash in set.json", "thyroaug synthesize")
    save_file(
        {"images": other.images[:6], "labels": other.labels[:6]}, str(saved / "images.safetensors")
    )
    _refused(saved, "set.json records 8 images, images.safetensors holds 6")
    info = {**_info(saved), "count": 6}
    (saved / "set.json").write_text(json.dumps(info))
    _refused(saved, "set.json does not match its own hash")  # a value changed by hand
    _write_info(saved, info)
    _refused(saved, "manifest.csv has 8 rows for 6 images")


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.0])
def test_truncated_images_file_is_named(saved: Path, keep: float) -> None:
    path = saved / "images.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    message = _refused(
        saved, f"{saved} (a synthetic set) is damaged: images.safetensors is truncated or corrupt"
    )
    assert "regenerate it with `thyroaug synthesize`" in message
    assert "Traceback" not in message


def test_unreadable_set_json_and_manifest_are_named(saved: Path) -> None:
    (saved / "set.json").write_text("{half")
    _refused(saved, "manifest.csv or set.json unreadable")
    (saved / "set.json").write_text("[1, 2]")
    _refused(saved, "set.json is not a JSON object")


def test_legacy_sets_need_trust_legacy(saved: Path, caplog: pytest.LogCaptureFixture) -> None:
    info = _info(saved)
    for key in ("tensor_sha256", "manifest_sha256", "sha256"):  # as an older thyroaug wrote it
        del info[key]
    (saved / "set.json").write_text(json.dumps(info))
    _refused(saved, "records no tensor hash", "regenerate", "trust_legacy=True")
    with caplog.at_level(logging.WARNING):
        assert len(SyntheticSet.load(saved, trust_legacy=True).manifest) == 8
    assert "legacy synthetic set" in caplog.text
    assert resolve_set("FM", str(saved), trust_legacy=True).local_path == str(saved)
    with pytest.raises(ScenarioError, match="trust_legacy"):
        resolve_set("FM", str(saved))


# --- downloads -----------------------------------------------------------------------------------
@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary folder ``resolve_set`` downloads into, observable by the test."""
    folder = tmp_path / "systmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def logged_run(tracking_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    import mlflow

    from thyroaug.tracking.setup import configure_tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # artifacts under tracking_home
    folder = small_set().save(tmp_path / "set" / "FM")
    configure_tracking(experiment="synthetic")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), artifact_path="synthetic/FM")
    return run.info.run_id


def test_temporary_downloads_are_removed_after_loading(
    logged_run: str, private_tmp: Path, tmp_path: Path
) -> None:
    loaded = resolve_set("FM", logged_run)
    assert loaded.local_path is None and loaded.describe()["local_path"] is None
    assert loaded.data.class_counts() == dict.fromkeys(CLASSES, 2)
    assert list(private_tmp.iterdir()) == []  # the ~260 MB (at paper scale) are gone
    by_uri = resolve_set("FM", f"runs:/{logged_run}/synthetic/FM")
    assert by_uri.sha256 == loaded.sha256 and len(loaded.sha256) == 64
    assert list(private_tmp.iterdir()) == []
    kept = resolve_set("FM", logged_run, download_dir=tmp_path / "dl")
    assert kept.local_path and Path(kept.local_path).is_dir()  # a folder the caller chose stays
    assert kept.sha256 == loaded.sha256
    with pytest.raises(ScenarioError, match="could not be downloaded"):
        resolve_set("FM", f"runs:/{logged_run}/synthetic/SD1")
    with pytest.raises(ScenarioError, match="holds method 'FM'"):
        resolve_set("SD1", f"runs:/{logged_run}/synthetic/FM")
    assert list(private_tmp.iterdir()) == []  # failures clean up too


def test_stale_download_folders_are_swept(private_tmp: Path, saved: Path) -> None:
    old, fresh = private_tmp / f"{DOWNLOAD_PREFIX}FM-old", private_tmp / f"{DOWNLOAD_PREFIX}FM-new"
    unrelated, a_file = private_tmp / "someone-else-old", private_tmp / f"{DOWNLOAD_PREFIX}file"
    for folder in (old, fresh, unrelated):
        (folder / "synthetic").mkdir(parents=True)
    a_file.write_text("x")
    two_days_ago = time.time() - 2 * 86400
    for path in (old, unrelated, a_file):
        os.utime(path, (two_days_ago, two_days_ago))
    assert sweep_stale_downloads(max_age_s=3600, folder=private_tmp) == [old]
    assert fresh.exists() and unrelated.exists() and a_file.exists()
    stale = private_tmp / f"{DOWNLOAD_PREFIX}SD2-crashed"
    stale.mkdir()
    os.utime(stale, (two_days_ago, two_days_ago))
    resolve_set("FM", str(saved))  # any call sweeps what crashed runs left
    assert not stale.exists() and fresh.exists()


# --- every byte checked --------------------------------------------------------------------------
def _flip(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at % len(raw)] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("name", "where", "reason"),
    [
        ("images.safetensors", -5, "images.safetensors does not match the hash in set.json"),
        ("manifest.csv", -3, "manifest.csv does not match the hash in set.json"),
        ("set.json", None, "set.json does not match its own hash"),
    ],
    ids=["pixel", "manifest", "set.json"],
)
def test_a_flipped_byte_in_any_file_of_a_set_is_one_line(
    saved: Path, name: str, where: int | None, reason: str
) -> None:
    path = saved / name
    if where is None:  # a digit of the recorded count: still valid JSON
        where = path.read_bytes().index(b'"count": 8') + len(b'"count": ')
    _flip(path, where)
    message = _refused(saved, reason)
    assert message.startswith(f"{saved} (a synthetic set) is damaged: ") and "\n" not in message
    assert message.endswith(
        "regenerate it with `thyroaug synthesize` (or `mlflow run . -e synthesize`)"
    )


def test_the_set_hash_is_computed_once_and_is_the_tensor_hash(saved: Path) -> None:
    loaded = resolve_set("FM", str(saved))
    assert loaded.sha256 == _info(saved)["tensor_sha256"] and loaded.unfinished == ""


# --- sets whose creating run did not finish ------------------------------------------------------
def _set_of_run(tmp_path: Path, status: str | None) -> tuple[Path, str]:
    """A set whose set.json names a run of the tracking store ended with ``status``."""
    import mlflow

    client = mlflow.MlflowClient()
    run = client.create_run("0")  # RUNNING until ended
    if status is not None:
        client.set_terminated(run.info.run_id, status=status)
    sset = small_set()
    sset.info["created_by_run"] = run.info.run_id
    return sset.save(tmp_path / f"set-{status}" / "FM"), run.info.run_id


@pytest.mark.parametrize("status", ["KILLED", "FAILED", "RUNNING"])
def test_a_set_whose_run_did_not_finish_is_refused_unless_allowed(
    tracking_home: Path, tmp_path: Path, status: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder, run_id = _set_of_run(tmp_path, None if status == "RUNNING" else status)
    with pytest.raises(ScenarioError) as info:
        resolve_set("FM", str(folder))
    message = str(info.value)
    assert f"its creating run {run_id} is {status}, not FINISHED" in message
    assert "--allow-unfinished-set" in message and "\n" not in message
    with caplog.at_level(logging.WARNING):
        loaded = resolve_set("FM", str(folder), allow_unfinished=True)
    assert loaded.unfinished == f"FM: run {run_id} is {status}, not FINISHED"
    assert "--allow-unfinished-set" in caplog.text


def test_a_set_of_a_finished_run_or_of_no_run_is_used(tracking_home: Path, tmp_path: Path) -> None:
    folder, _ = _set_of_run(tmp_path, "FINISHED")
    assert resolve_set("FM", str(folder)).unfinished == ""
    plain = small_set().save(tmp_path / "plain" / "FM")  # in-memory / CA sets name no run
    assert resolve_set("FM", str(plain)).unfinished == ""


def test_a_set_whose_run_cannot_be_looked_up_is_refused(
    tracking_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    sset = small_set()
    sset.info["created_by_run"] = "f" * 32
    folder = sset.save(tmp_path / "elsewhere" / "FM")
    with pytest.raises(ScenarioError, match="is not in this tracking store"):
        resolve_set("FM", str(folder))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    mlflow.set_tracking_uri("http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ScenarioError, match="the tracking store is unreachable") as info:
        resolve_set("FM", str(folder))
    assert "--allow-unfinished-set" in str(info.value)
    assert resolve_set("FM", str(folder), allow_unfinished=True).unfinished
