"""A classifier run on a full (or forbidden) disk: one line saying so, its run ended FAILED, the
checkpoint on disk intact and resumable; checkpoints checked against their digest when read.

Faults are injected (a Python file whose writes fail with ``ENOSPC`` / ``EACCES`` after a byte
budget, an SQLite store answering "database or disk is full"); the real thing, a full tmpfs under
a ``thyroaug`` subprocess, is in ``tests/integration/test_faults.py``.
"""

from __future__ import annotations

import builtins
import errno
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from thyroaug.classifier.config import ClassifierConfig
from thyroaug.classifier.resume import STATE_FILE, RunCheckpoint, run_identity
from thyroaug.classifier.train import load_checkpoint, save_checkpoint
from thyroaug.config import resolve, to_dict
from thyroaug.data.cohort import PreparedCohort
from thyroaug.errors import ConfigError, StorageError
from thyroaug.jobs.classifier_resume import Checkpointing
from thyroaug.jobs.train_classifier import train_and_evaluate


class _Failing:
    """A writable file whose writes raise ``code`` once the shared byte budget is spent."""

    def __init__(self, fh: Any, budget: list[int], code: int) -> None:
        self._fh, self._budget, self._code = fh, budget, code

    def write(self, data: Any) -> int:
        self._budget[0] -= len(data)
        if self._budget[0] < 0:
            raise OSError(self._code, os.strerror(self._code))
        return self._fh.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _Failing:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._fh.close()


def fail_writes_under(
    monkeypatch: pytest.MonkeyPatch, folder: Path, budget: int, code: int = errno.ENOSPC
) -> list[int]:
    """Writes to files under ``folder`` through ``open`` fail with ``code`` after ``budget``
    bytes (a full disk as a Python writer sees it); returns the budget left (mutable)."""
    left = [budget]
    real = builtins.open

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real(file, mode, *args, **kwargs)
        inside = isinstance(file, (str, Path)) and Path(file).resolve().is_relative_to(folder)
        return _Failing(fh, left, code) if inside and ("w" in mode or "a" in mode) else fh

    monkeypatch.setattr(builtins, "open", fake_open)
    return left


def _job(cohort: PreparedCohort, home: Path, resume: bool, **kw: Any) -> dict[str, Any]:
    cfg = resolve(ClassifierConfig, "smoke", epochs=3, bootstrap=5, init="random")
    return train_and_evaluate(
        cohort,
        "O",
        cfg,
        out_dir=home / "out",
        log_model=False,
        progress=False,
        checkpoint=Checkpointing(resume=resume, root=home / "resume"),
        **kw,
    )


def _only_run(status: str | None = None) -> Any:
    import mlflow
    from mlflow import MlflowClient

    experiment = mlflow.get_experiment_by_name("thyroaug").experiment_id
    (run,) = MlflowClient().search_runs([experiment])
    assert status is None or run.info.status == status, run.info.status
    return run


@pytest.mark.slow
def test_a_full_disk_after_a_checkpoint_is_one_line_and_the_run_ends_failed(
    tracking_home: Path, tiny_cohort: PreparedCohort, monkeypatch: pytest.MonkeyPatch
) -> None:
    from thyroaug.tracking.setup import configure_tracking

    configure_tracking()
    saves = {"n": 0}
    real_save = RunCheckpoint.save

    def save_then_fill(self: RunCheckpoint, *args: Any) -> None:
        saves["n"] += 1
        if saves["n"] == 2:  # the disk fills up while epoch 2's state is written
            fail_writes_under(monkeypatch, tracking_home / "resume", 1000)
        real_save(self, *args)

    monkeypatch.setattr(RunCheckpoint, "save", save_then_fill)
    real_open = builtins.open
    with pytest.raises(StorageError) as info:
        _job(tiny_cohort, tracking_home, False)
    monkeypatch.setattr(builtins, "open", real_open)  # space is back
    monkeypatch.setattr(RunCheckpoint, "save", real_save)
    (folder,) = (tracking_home / "resume").iterdir()
    message = str(info.value)
    assert message.startswith("no space left on the file system at ")
    assert f"while writing {folder / STATE_FILE} (the classifier's resume checkpoint)" in message
    assert message.endswith(
        f"free space and rerun with --resume: the checkpoint of epoch 1 in {folder} is intact"
    )
    assert "\n" not in message and "Traceback" not in message
    run = _only_run("FAILED")
    assert sorted(p.name for p in folder.iterdir()) == [STATE_FILE]  # no half-written sibling
    configure_tracking()
    out = _job(tiny_cohort, tracking_home, True)  # space freed: --resume finishes the run
    assert out["run_id"] == run.info.run_id and _only_run("FINISHED")


def test_a_full_disk_before_any_checkpoint_claims_none(
    tracking_home: Path, tiny_cohort: PreparedCohort, monkeypatch: pytest.MonkeyPatch
) -> None:
    from thyroaug.tracking.setup import configure_tracking

    configure_tracking()
    fail_writes_under(monkeypatch, tracking_home / "out" / "checkpoint", 0)
    with pytest.raises(StorageError) as info:
        _job(tiny_cohort, tracking_home, False)
    message = str(info.value)
    assert "(the classifier's best-weights checkpoint); free space and rerun the command" in message
    assert "--resume" not in message and "is kept" not in message
    _only_run("FAILED")


def test_a_forbidden_folder_is_named_as_such(
    tracking_home: Path, tiny_cohort: PreparedCohort, monkeypatch: pytest.MonkeyPatch
) -> None:
    from thyroaug.tracking.setup import configure_tracking

    configure_tracking()
    fail_writes_under(monkeypatch, tracking_home / "out" / "checkpoint", 0, errno.EACCES)
    with pytest.raises(StorageError, match=r"^permission denied on .*checkpoint while writing"):
        _job(tiny_cohort, tracking_home, False)
    _only_run("FAILED")


@pytest.mark.slow
def test_a_full_store_still_ends_the_run_failed(
    tracking_home: Path, tiny_cohort: PreparedCohort, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite full when the artifacts are logged and when MLflow ends the run: the run is ended
    FAILED once the failed write's space is back, or the line says it stays RUNNING."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from thyroaug.tracking.setup import configure_tracking

    configure_tracking()
    full = MlflowException("(sqlite3.OperationalError) database or disk is full")
    real_end = MlflowClient.set_terminated
    ends = {"n": 0}

    def end_once_full(self: MlflowClient, run_id: str, status: str | None = None, **kw: Any):
        ends["n"] += 1
        if ends["n"] == 1:
            raise full
        return real_end(self, run_id, status=status, **kw)

    def log_artifacts(*_args: Any, **_kw: Any) -> None:
        raise full

    monkeypatch.setattr(mlflow, "log_artifacts", log_artifacts)
    monkeypatch.setattr(MlflowClient, "set_terminated", end_once_full)
    with pytest.raises(StorageError) as info:
        _job(tiny_cohort, tracking_home, False)
    message = str(info.value)
    db = tracking_home / "mlflow.db"
    assert f"while writing {db} (the tracking store (SQLite))" in message, message
    assert "rerun with --resume: the checkpoint of epoch 3" in message
    _only_run("FAILED")

    ends["n"] = -10  # the store stays full: the line says what becomes of the run
    monkeypatch.setattr(MlflowClient, "set_terminated", lambda *a, **k: (_ for _ in ()).throw(full))
    configure_tracking()
    with pytest.raises(StorageError, match="stays RUNNING until the next thyroaug command"):
        _job(tiny_cohort, tracking_home / "second", False)


# --- checkpoints read back ------------------------------------------------------------------------
def _flip_float(path: Path, value: float) -> None:
    raw = bytearray(path.read_bytes())
    raw[raw.index(struct.pack("<f", value))] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_in_the_resume_checkpoint_is_one_line(tmp_path: Path) -> None:
    cfg = to_dict(resolve(ClassifierConfig, "smoke"))
    ident = run_identity("O", "smoke", 0, "s", "abc")
    ckpt = RunCheckpoint.open(tmp_path / "job", ident, cfg, resume=True)
    ckpt.save({"epoch": 1, "weights": torch.arange(64.0) + 0.5}, [])
    _flip_float(ckpt.path, 20.5)
    with pytest.raises(ConfigError) as info:
        RunCheckpoint.open(tmp_path / "job", ident, cfg, resume=True)
    assert str(info.value) == (
        f"{ckpt.path} (the classifier's resume checkpoint) is damaged: its bytes do not match "
        f"the digest written with it; delete {tmp_path / 'job'} and run the command without "
        "--resume to start over"
    )


def test_the_best_weights_checkpoint_is_checked_when_read(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "best.pt", {"state_dict": {"w": torch.arange(8.0) + 0.5}})
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.arange(8.0) + 0.5)
    _flip_float(path, 3.5)
    with pytest.raises(ConfigError, match=r"best\.pt \(the classifier's best-weights checkpoint\) "
                       "is damaged: its bytes do not match"):  # fmt: skip
        load_checkpoint(path)
    torch.save({"state_dict": {}}, path)  # written before digests: loads as it is
    assert load_checkpoint(path) == {"state_dict": {}}
