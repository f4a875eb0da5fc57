"""Every byte of the prepared cohort cache checked on load; a write that fails for lack of space or
permission leaves nothing half-written and is named as what it is."""

from __future__ import annotations

import errno
import json
import logging
import struct
from pathlib import Path

import pytest
import torch
from data_helpers import write_cohort
from safetensors.torch import save_file

from thyroaug.data.cohort import COHORT_FILE, PreparedCohort
from thyroaug.data.prepare import PrepareConfig, prepare
from thyroaug.errors import CohortFileError
from thyroaug.utils.atomic import storage_errno, storage_line
from thyroaug.utils.digest import DIGEST_KEY, payload_sha256, seal, unseal


@pytest.fixture
def cohort_file(tiny_cohort: PreparedCohort, tmp_path: Path) -> Path:
    return tiny_cohort.save(tmp_path / "outputs" / "cohort")


def _offsets(path: Path) -> tuple[int, dict[str, tuple[int, int]]]:
    """(start of the data section, {tensor: (begin, end)}) of a safetensors file."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    spans = {k: tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__"}
    return 8 + size, spans


def flip(path: Path, tensor: str, byte: int = 0, where: float = 0.5) -> int:
    """Flip the lowest bit of one byte of a 4-byte element ``where`` into ``tensor``."""
    start, spans = _offsets(path)
    begin, end = spans[tensor]
    offset = start + begin + int((end - begin) * where) // 4 * 4 + byte
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))
    return offset


def _refused(path: Path) -> str:
    with pytest.raises(CohortFileError) as info:
        PreparedCohort.load(path)
    return str(info.value)


def test_the_cache_records_a_digest_of_its_bytes(cohort_file: Path, tiny_cohort) -> None:
    from safetensors import safe_open

    with safe_open(str(cohort_file), framework="pt") as fh:
        assert len(fh.metadata()[DIGEST_KEY]) == 64
    loaded = PreparedCohort.load(cohort_file)
    assert torch.equal(loaded.images, tiny_cohort.images)


@pytest.mark.parametrize(
    ("tensor", "byte"),
    [("images", 0), ("images", 3), ("masks", 0), ("labels", 0)],
    ids=["pixel-low-order-byte", "pixel-high-order-byte", "mask", "label"],
)
def test_one_flipped_byte_is_one_line_naming_the_file_and_the_rebuild(
    cohort_file: Path, tensor: str, byte: int
) -> None:
    flip(cohort_file, tensor, byte)
    message = _refused(cohort_file)
    assert message == (
        f"{cohort_file} (the prepared cohort cache) is damaged: its bytes do not match the digest "
        f"written with it; rebuild it with `thyroaug prepare <its inputs> --size 32 --out "
        f"{cohort_file.parent} --force`"
    )
    assert "\n" not in message


def test_a_flipped_byte_in_the_case_table_is_caught(cohort_file: Path) -> None:
    raw = bytearray(cohort_file.read_bytes())
    at = raw.index(b"train", raw.index(b"split")) + 1
    raw[at] ^= 0x01  # "train" -> "tsain" in the header's case table: still valid JSON
    cohort_file.write_bytes(bytes(raw))
    assert "do not match the digest" in _refused(cohort_file)


def test_the_rebuild_command_follows_the_cohort_source(tmp_path: Path, tiny_cohort) -> None:
    tiny_cohort.settings = {"size": 128, "data_source": {"kind": "phantom", "scale": 0.25}}
    path = tiny_cohort.save(tmp_path / "c")
    flip(path, "images")
    assert f"`thyroaug prepare --phantom-scale 0.25 --out {tmp_path / 'c'} --force`" in (
        _refused(path)
    )


def test_a_cache_without_a_digest_loads_and_says_so_once(
    tmp_path: Path, tiny_cohort, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / COHORT_FILE
    meta = {
        "table": tiny_cohort.table.to_json(orient="records"),
        "content_hash": "h",
        "settings": "{}",
        "classes": json.dumps(["DG", "NG", "NL", "TI"]),
    }
    tensors = {
        "images": tiny_cohort.images,
        "masks": tiny_cohort.masks,
        "labels": tiny_cohort.labels,
    }
    save_file(tensors, str(path), metadata=meta)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert torch.equal(PreparedCohort.load(path).images, tiny_cohort.images)
    assert caplog.text.count("has no byte digest") == 1, caplog.text


def test_prepare_rebuilds_a_damaged_or_digestless_cache(tmp_path: Path, caplog) -> None:
    manifest = write_cohort(tmp_path / "data", centers="ABG", per_class=2, size=16)
    out, cfg = tmp_path / "out", PrepareConfig(size=16)
    first = prepare(manifest, out, cfg, progress=False)
    flip(first.path, "images", 3)
    with caplog.at_level(logging.WARNING):
        again = prepare(manifest, out, cfg, progress=False)
    assert not again.reused and "rebuilding it now" in caplog.text
    assert torch.equal(PreparedCohort.load(out).images, first.cohort.images)
    cohort = PreparedCohort.load(out)
    tensors = {"images": cohort.images, "masks": cohort.masks, "labels": cohort.labels}
    meta = {"table": cohort.table.to_json(orient="records"), "content_hash": cohort.content_hash}
    save_file(tensors, str(again.path), metadata=meta)  # as an older thyroaug wrote it
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert not prepare(manifest, out, cfg, progress=False).reused
    assert "no byte digest" in caplog.text
    assert prepare(manifest, out, cfg, progress=False).reused


# --- checkpoint payload digests --------------------------------------------------------------
def test_a_sealed_payload_survives_a_torch_round_trip_and_catches_a_flip(tmp_path: Path) -> None:
    import numpy as np

    payload = {
        "weights": {"a": torch.arange(10.0), "b": torch.ones(2, 2, dtype=torch.bfloat16)},
        "rng": ("MT19937", np.arange(4, dtype=np.uint32), 3, 0, 0.0),
        "history": [{"epoch": 1, "loss": 0.25}],
        "flag": None,
    }
    torch.save(seal(payload), tmp_path / "p.pt")
    back, ok = unseal(torch.load(tmp_path / "p.pt", weights_only=False))
    assert ok is True and payload_sha256(back) == payload_sha256(payload)
    raw = bytearray((tmp_path / "p.pt").read_bytes())
    at = raw.index(struct.pack("<f", 5.0))
    raw[at] ^= 0x01  # torch's zip reader checks no CRC: this loads
    (tmp_path / "p.pt").write_bytes(bytes(raw))
    assert unseal(torch.load(tmp_path / "p.pt", weights_only=False))[1] is False
    assert unseal({"x": 1})[1] is None  # an older file without a digest


# --- failed writes -----------------------------------------------------------------------------
def test_storage_errors_are_found_through_wrappers() -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError:
            raise RuntimeError("unexpected pos 704 vs 598") from None
    except RuntimeError as exc:
        wrapped = exc
    wrapped.__context__ = full
    assert storage_errno(wrapped) == errno.ENOSPC
    rust = Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    assert storage_errno(rust) == errno.ENOSPC
    import sqlite3

    assert storage_errno(sqlite3.OperationalError("database or disk is full")) == errno.ENOSPC
    assert storage_errno(RuntimeError("something else")) is None
    assert storage_errno(OSError(errno.ENOENT, "missing")) is None


def test_storage_line_says_where_what_and_how_to_go_on(tmp_path: Path) -> None:
    target = tmp_path / "outputs" / "classifier" / "resume" / "job" / "state.pt"
    line = storage_line(OSError(errno.ENOSPC, "No space left on device", str(target)), "rerun")
    assert line.startswith("no space left on the file system at ")
    assert f"while writing {target} (the classifier's resume checkpoint); free space and rerun" in (
        line
    )
    line = storage_line(OSError(errno.EACCES, "Permission denied", str(target)), "rerun")
    assert line.startswith(f"permission denied on {target.parent} while writing")
    line = storage_line(OSError(errno.EROFS, "Read-only file system", str(target)), "rerun")
    assert line.startswith("read-only file system at ")


def test_a_cohort_write_that_runs_out_of_space_leaves_the_old_cache_intact(
    cohort_file: Path, tiny_cohort, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = cohort_file.read_bytes()
    bigger = PreparedCohort(
        images=tiny_cohort.images + 0.5,
        masks=tiny_cohort.masks,
        labels=tiny_cohort.labels,
        table=tiny_cohort.table,
    )
    import thyroaug.data.cohort as cohort_module

    def save_file_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(cohort_module, "save_file", save_file_full)
    with pytest.raises(OSError) as info:
        bigger.save(cohort_file)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(cohort_file)
    assert cohort_file.read_bytes() == before
    assert [p.name for p in cohort_file.parent.iterdir()] == [COHORT_FILE]
    assert torch.equal(PreparedCohort.load(cohort_file).images, tiny_cohort.images)


def test_the_cli_names_a_full_disk_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import thyroaug.data.cohort as cohort_module
    from thyroaug.jobs.commands import main

    manifest = write_cohort(tmp_path / "data", centers="ABG", per_class=2, size=16)

    def save_file_full(tensors, filename, metadata=None):
        raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(cohort_module, "save_file", save_file_full)
    argv = ["prepare", "--manifest", str(manifest), "--out", str(tmp_path / "out"), "--size", "16"]
    assert main([*argv, "--no-mlflow", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("thyroaug prepare: error: no space left on the file system at ")
    assert f"while writing {tmp_path / 'out' / COHORT_FILE} (the prepared cohort cache)" in err
    assert err.strip().endswith("free space and rerun the command")
    assert not any((tmp_path / "out").iterdir())  # nothing half-written


# --- generator checkpoints --------------------------------------------------------------------
def test_a_flipped_byte_in_the_fm_checkpoint_is_one_line(tmp_path: Path) -> None:
    from thyroaug.errors import ConfigError
    from thyroaug.generators.flow_matching.train import read_checkpoint

    path = tmp_path / "checkpoint.pt"
    torch.save(seal({"model": {"w": torch.arange(16.0) + 0.5}, "epoch": 2}), path)
    assert read_checkpoint(path)["epoch"] == 2
    raw = bytearray(path.read_bytes())
    raw[raw.index(struct.pack("<f", 7.5))] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ConfigError) as info:
        read_checkpoint(path)
    assert str(info.value).startswith(
        f"{path} (the flow-matching checkpoint) is damaged: its bytes do not match the digest"
    )
    assert "`thyroaug train-fm`" in str(info.value)


def test_every_file_of_an_sd_checkpoint_is_checked(tmp_path: Path) -> None:
    from thyroaug.errors import ConfigError
    from thyroaug.generators.stable_diffusion.checkpoint import (
        TRAINER_STATE_FILE,
        save_checkpoint,
        verify_checkpoint,
    )

    class Accelerator:
        is_main_process = True

        def wait_for_everyone(self) -> None:
            pass

        def save_state(self, folder: str) -> None:
            (Path(folder) / "model.safetensors").write_bytes(bytes(range(256)) * 4)
            (Path(folder) / "optimizer.bin").write_bytes(b"adam" * 64)

    save_checkpoint(Accelerator(), tmp_path, 4, [0.5], keep=2)
    folder = tmp_path / "checkpoint-4"
    state = verify_checkpoint(folder)
    assert state["step"] == 4 and set(state["files"]) == {"model.safetensors", "optimizer.bin"}
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[500] ^= 0x01
    (folder / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ConfigError) as info:
        verify_checkpoint(folder)
    assert str(info.value).startswith(
        f"{folder / 'model.safetensors'} (a Stable Diffusion training checkpoint) is damaged: its "
        f"bytes do not match the sha256 in {TRAINER_STATE_FILE}; delete {folder}"
    )
    (folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="is damaged: it is missing"):
        verify_checkpoint(folder)


def test_log_records_of_a_storage_failure_lose_their_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sqlite3

    from thyroaug.jobs import commands

    saved = logging.getLogRecordFactory()
    monkeypatch.setattr(logging, "setLogRecordFactory", lambda f: setattr(commands, "_f", f))
    commands._quiet_storage_tracebacks()
    factory = commands._f
    try:
        raise sqlite3.OperationalError("database or disk is full")
    except sqlite3.OperationalError:
        import sys

        exc_info = sys.exc_info()
    record = factory("mlflow.store", 40, "f", 1, "SQL error:\n%s", ("details",), exc_info, None)
    assert record.exc_info is None and record.getMessage() == "SQL error: (No space left on device)"
    other = factory("x", 40, "f", 1, "boom %s", ("a",), (ValueError, ValueError("v"), None), None)
    assert other.exc_info is not None and other.getMessage() == "boom a"
    assert logging.getLogRecordFactory() is saved
