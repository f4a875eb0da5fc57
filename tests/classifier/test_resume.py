"""`train-classifier --resume`: per-epoch checkpoints give the numbers of an uninterrupted run."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch

from thyroaug.classifier.config import ClassifierConfig
from thyroaug.classifier.resume import STATE_FILE, RunCheckpoint, checkpoint_dir, run_identity
from thyroaug.classifier.train import fit
from thyroaug.config import resolve, to_dict
from thyroaug.data.cohort import PreparedCohort
from thyroaug.errors import ConfigError
from thyroaug.jobs.classifier_resume import Checkpointing
from thyroaug.jobs.train_classifier import scenario_data, train_and_evaluate

TIMING = {"epoch_time_s", "train_images_per_s", "eval_time_s"}
FINAL_TIMING = {"train_time_s", "mean_epoch_time_s", "mean_train_images_per_s"}


class Crash(RuntimeError):
    """Stands in for a kill between two epochs."""


def _untimed(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """What ``torch.save`` + ``torch.load(weights_only=True)`` make of a state (as on disk)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=True)


def test_fit_resumed_after_two_epochs_equals_four_uninterrupted(
    tiny_cohort: PreparedCohort,
) -> None:
    cfg = resolve(ClassifierConfig, "smoke", epochs=4, lr_patience=0, init="random")
    data = scenario_data(tiny_cohort, "O", cfg, progress=False)
    args = (data.train.images, data.train.labels, data.val.images, data.val.labels, cfg)
    full = fit(*args, progress=False)

    saved: dict[str, Any] = {}

    def stop_after_two(state: dict[str, Any]) -> None:
        saved.update(_roundtrip(state))
        if state["epoch"] == 2:
            raise Crash

    with pytest.raises(Crash):
        fit(*args, progress=False, on_state=stop_after_two)
    assert saved["epoch"] == 2
    resumed = fit(*args, progress=False, resume_state=saved)

    assert _untimed(resumed.history) == _untimed(full.history)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.best_epoch == full.best_epoch and resumed.best_val_loss == full.best_val_loss
    # lr_patience=0: the plateau scheduler's state (lr cuts) must carry over too
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in full.history]
    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    with pytest.raises(ConfigError, match="at least as many epochs"):
        fit(*args[:4], resolve(ClassifierConfig, "smoke", epochs=1), resume_state=saved)


def test_checkpoint_folder_follows_the_job_identity(tmp_path: Path) -> None:
    ident = run_identity("O+FM", "smoke", 0, "s", "abc", {"FM": ("runs:/r/synthetic/FM", "f00")})
    folder = checkpoint_dir(tmp_path, ident)
    assert folder == checkpoint_dir(tmp_path, dict(ident))
    assert folder.name.startswith("O-FM-smoke-s0-")
    other = run_identity("O+FM", "smoke", 0, "s", "abc", {"FM": ("runs:/q/synthetic/FM", "f00")})
    assert checkpoint_dir(tmp_path, other) != folder
    assert checkpoint_dir(tmp_path, {**ident, "seed": 1}) != folder


def test_checkpoint_refusals(tmp_path: Path) -> None:
    cfg = to_dict(resolve(ClassifierConfig, "smoke"))
    ident = run_identity("O", "smoke", 0, "s", "abc")
    ckpt = RunCheckpoint.open(tmp_path / "job", ident, cfg, resume=True)
    assert ckpt.saved is None  # --resume without a checkpoint starts afresh
    ckpt.save({"epoch": 1}, [(1, {"train_loss": 1.0})])
    assert [p.name for p in (tmp_path / "job").iterdir()] == [STATE_FILE]  # no temp file left

    with pytest.raises(ConfigError, match="pass --resume") as err:
        RunCheckpoint.open(tmp_path / "job", ident, cfg, resume=False)
    assert str(tmp_path / "job") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"other settings \(lr: 0.0001 -> 0.001\)") as err:
        RunCheckpoint.open(tmp_path / "job", ident, {**cfg, "lr": 1e-3}, resume=True)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="another job"):
        RunCheckpoint.open(tmp_path / "job", {**ident, "seed": 1}, cfg, resume=True)

    again = RunCheckpoint.open(tmp_path / "job", ident, {**cfg, "epochs": 9}, resume=True)
    assert again.train_state == {"epoch": 1} and again.pending == [(1, {"train_loss": 1.0})]
    again.finish()
    assert not (tmp_path / "job").exists()

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / STATE_FILE).write_bytes(b"truncated")
    with pytest.raises(ConfigError, match="unreadable"):
        RunCheckpoint.open(tmp_path / "bad", ident, cfg, resume=True)


def _job(cohort: PreparedCohort, root: Path, resume: bool, **kw: Any) -> dict[str, Any]:
    cfg = resolve(ClassifierConfig, "smoke", epochs=4, bootstrap=5, init="random")
    return train_and_evaluate(
        cohort,
        "O",
        cfg,
        log_model=False,
        progress=False,
        checkpoint=Checkpointing(resume=resume, root=root),
        **kw,
    )


@pytest.mark.slow
@pytest.mark.parametrize("outage", [(2,), (2, 3)], ids=["sent-then-killed", "unsent-then-killed"])
def test_resumed_run_continues_the_same_mlflow_run(
    tracking_home: Path,
    tiny_cohort: PreparedCohort,
    monkeypatch: pytest.MonkeyPatch,
    outage: tuple[int, ...],
) -> None:
    """Killed after epoch 3 (checkpoint of epoch 2): the same run finishes, every epoch once."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from thyroaug.tracking.setup import configure_tracking

    cfg = resolve(ClassifierConfig, "smoke", epochs=4, bootstrap=5, init="random")
    reference = train_and_evaluate(
        tiny_cohort, "O", cfg, tracking=False, log_model=False, progress=False,
        out_dir=tracking_home / "ref",
    )  # fmt: skip
    configure_tracking()
    root = tracking_home / "resume"
    real_log = mlflow.log_metrics
    logging_epoch = {"n": 1}  # the epoch whose metrics are being logged

    def flaky_log(metrics: dict[str, float], step: int | None = None, **kw: Any) -> None:
        if logging_epoch["n"] in outage:  # the server is away while this epoch is logged
            raise MlflowException("connection refused")
        return real_log(metrics, step=step, **kw)

    def after_epoch(epoch: int, _metrics: dict[str, float]) -> None:
        logging_epoch["n"] = epoch + 1
        if epoch == 3:
            raise Crash  # epoch 3 was logged (or buffered), its checkpoint is not written

    monkeypatch.setattr(mlflow, "log_metrics", flaky_log)
    with pytest.raises(Crash):
        _job(tiny_cohort, root, False, on_epoch=after_epoch)
    client = MlflowClient()
    (killed,) = client.search_runs([mlflow.get_experiment_by_name("thyroaug").experiment_id])
    assert killed.info.status == "FAILED"
    (folder,) = root.iterdir()
    assert torch.load(folder / STATE_FILE, weights_only=True)["train"]["epoch"] == 2

    with pytest.raises(ConfigError, match="pass --resume"):
        _job(tiny_cohort, root, False)
    assert len(client.search_runs([killed.info.experiment_id])) == 1  # refused before a run

    logging_epoch["n"] = 0
    out = _job(tiny_cohort, root, True)
    assert out["run_id"] == killed.info.run_id
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["thyroaug.resumed_after_epoch"] == "2"
    for key in ("train_loss", "val_loss", "lr", "epoch_time_s"):
        steps = sorted(m.step for m in client.get_metric_history(out["run_id"], key))
        assert steps == [1, 2, 3, 4], (key, steps)
    assert _untimed(out["history"]) == _untimed(reference["history"])
    final = {k: v for k, v in out["metrics"].items() if k not in FINAL_TIMING}
    assert final == {k: v for k, v in reference["metrics"].items() if k not in FINAL_TIMING}
    assert not folder.exists()  # removed once the run finished


@pytest.mark.slow
def test_resume_after_the_run_was_deleted_goes_to_a_new_run(
    tracking_home: Path, tiny_cohort: PreparedCohort
) -> None:
    """The checkpoint's run is gone: a new run gets every epoch (replayed from the checkpoint)."""
    import mlflow
    from mlflow import MlflowClient

    from thyroaug.tracking.setup import configure_tracking

    configure_tracking()
    root = tracking_home / "resume"

    def crash(epoch: int, _metrics: dict[str, float]) -> None:
        if epoch == 3:
            raise Crash

    with pytest.raises(Crash):
        _job(tiny_cohort, root, False, on_epoch=crash)
    client = MlflowClient()
    experiment = mlflow.get_experiment_by_name("thyroaug").experiment_id
    (killed,) = client.search_runs([experiment])
    client.delete_run(killed.info.run_id)

    out = _job(tiny_cohort, root, True)
    assert out["run_id"] != killed.info.run_id
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "val_accuracy", "lr"):
        steps = sorted(m.step for m in client.get_metric_history(out["run_id"], key))
        assert steps == [1, 2, 3, 4], (key, steps)
