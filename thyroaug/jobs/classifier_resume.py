"""`train-classifier --resume`: the job's checkpoint, its MLflow run again, metrics sent once.

``open_checkpoint`` finds the job's per-epoch checkpoint (``thyroaug.classifier.resume``) from its
identity; ``open_run`` continues the checkpoint's MLflow run (set back to RUNNING, re-tagged with
this process) when the store still has it, else starts a new one; ``EpochLog`` sends per-epoch
metrics through ``BufferedMetrics`` (training goes on while the tracking server is away, and how
long each failed call blocked is logged) and, after a resume, replays the checkpointed epochs the
run lacks without sending any (metric, epoch) twice.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from thyroaug.classifier.config import ClassifierConfig
from thyroaug.classifier.resume import STATE_FILE, RunCheckpoint, checkpoint_dir, run_identity
from thyroaug.classifier.train import METRIC_ORDER
from thyroaug.config import to_dict
from thyroaug.data.cohort import PreparedCohort
from thyroaug.errors import ConfigError, StorageError, TrackingError
from thyroaug.scenarios import ScenarioData
from thyroaug.tracking.runs import BufferedMetrics
from thyroaug.tracking.setup import project_home, start_run, sweep_stale_runs
from thyroaug.utils.atomic import storage_errno, storage_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpointing:
    """Per-epoch checkpoints of a classifier job (`train-classifier` always makes them).

    Attributes:
        resume: continue from the job's checkpoint (``--resume``; none there: start afresh).
        keep: keep the folder after the run finished (``--keep-checkpoint``).
        root: where jobs' folders go (default ``$THYROAUG_HOME/outputs/classifier/resume``).
    """

    resume: bool = False
    keep: bool = False
    root: Path | None = None


def open_checkpoint(
    how: Checkpointing,
    data: ScenarioData,
    cohort: PreparedCohort,
    cfg: ClassifierConfig,
    study_id: str,
    tracking: bool = True,
) -> RunCheckpoint:
    """The job's ``RunCheckpoint`` (its folder follows from the job's identity).

    A plain rerun refused because a killed run left its checkpoint ends that run KILLED first
    (``sweep_stale_runs``, which otherwise runs only when a run starts) when ``tracking``.

    Raises:
        ConfigError: see ``RunCheckpoint.open``.
    """
    sets = {m: (item.ref, item.sha256) for m, item in data.synthetic.items()}
    identity = run_identity(
        data.scenario.name, cfg.profile, cfg.seed, study_id, cohort.content_hash, sets
    )
    root = how.root or project_home() / "outputs" / "classifier" / "resume"
    folder = checkpoint_dir(root, identity)
    try:
        return RunCheckpoint.open(folder, identity, to_dict(cfg), resume=how.resume, keep=how.keep)
    except ConfigError as exc:
        if how.resume or not tracking or not (folder / STATE_FILE).exists():
            raise
        ended = sweep_stale_runs()
        if not ended:
            raise
        raise ConfigError(
            f"{exc} (the killed run it belongs to, {', '.join(ended)}, is now ended KILLED; "
            "--resume continues it)"
        ) from exc


def tracking_errors() -> tuple[type[BaseException], ...]:
    """What MLflow raises when its server is away (after its bounded retries)."""

    return (MlflowException, requests.exceptions.RequestException, ConnectionError, TrackingError)


def _how_to_go_on(ckpt: RunCheckpoint | None) -> str:
    """How to finish the job: --resume from the checkpoint on disk, or a plain rerun (no claim
    about a checkpoint that was not written)."""
    if ckpt is not None and ckpt.last_epoch is not None and ckpt.path.exists():
        return (
            f"the checkpoint of epoch {ckpt.last_epoch} in {ckpt.folder} is kept: run the same "
            "command with --resume"
        )
    return "run the command again"


def unreachable(exc: BaseException, ckpt: RunCheckpoint | None) -> TrackingError:
    """One line for a tracking failure: its first cause and how to finish the run."""
    cause = exc
    while isinstance(cause.__context__, tracking_errors()):  # e.g. end_run failing after it
        cause = cause.__context__
    log.debug("tracking failure", exc_info=exc)
    then = _how_to_go_on(ckpt)
    if isinstance(cause, TrackingError):
        return TrackingError(f"{cause}; {then}")
    first = (str(cause).strip().splitlines() or [""])[0].split(" failed with exception")[0]
    return TrackingError(f"tracking server unreachable ({first[:160]}); {then}")


def storage_failure(
    exc: BaseException, ckpt: RunCheckpoint | None, run_id: str | None
) -> StorageError | None:
    """One line for a run stopped by a full / read-only / forbidden disk (None: not that), with
    its run ended FAILED (MLflow's own attempt fails when the store's disk was the full one; the
    failed write's temporary file is gone by now, so a second attempt may pass).

    ``no space left on the file system at <mount> while writing <file> (<what>); free space and
    rerun with --resume: the checkpoint of epoch N in <folder> is intact`` (or ``... rerun the
    command`` when no checkpoint was written).
    """
    if storage_errno(exc) is None:
        return None
    log.debug("storage failure", exc_info=exc)
    uri = mlflow.get_tracking_uri()
    store = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else None
    if ckpt is not None and ckpt.last_epoch is not None and ckpt.path.exists():
        then = (
            f"rerun with --resume: the checkpoint of epoch {ckpt.last_epoch} in {ckpt.folder} "
            "is intact"
        )
    else:
        then = "rerun the command"
    line = storage_line(exc, then, file=store if "database" in str(exc) else None) or str(exc)
    if run_id and not _ended_failed(run_id):
        line += f"; its run {run_id} stays RUNNING until the next thyroaug command ends it KILLED"
    return StorageError(line)


def _ended_failed(run_id: str) -> bool:
    """End ``run_id`` FAILED if it is still RUNNING; whether it is ended now."""
    client = MlflowClient()
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="FAILED")
        return True
    except Exception:  # the store is still full / away: the stale-run sweep ends it later
        return False


@contextmanager
def open_run(name: str, tags: dict[str, str], nested: bool, previous: str | None) -> Iterator[Any]:
    """``start_run``; with ``previous`` (a checkpoint's run) that run again when the store still
    has it in this experiment (else a new run), unless `mlflow run` or a parent chose the run."""

    if nested or os.environ.get("MLFLOW_RUN_ID"):
        previous = None
    with ExitStack() as stack:
        run = None
        if previous:
            try:
                with _environ("MLFLOW_RUN_ID", previous):  # start_run continues that run
                    run = stack.enter_context(start_run(run_name=name, tags=tags, nested=nested))
                log.info("continuing MLflow run %s", previous)
            except MlflowException as exc:
                first = (str(exc).splitlines() or [""])[0][:160]
                log.warning(
                    "run %s cannot be continued (%s): resuming in a new run", previous, first
                )
        if run is None:
            run = stack.enter_context(start_run(run_name=name, tags=tags, nested=nested))
        yield run


@contextmanager
def _environ(key: str, value: str) -> Iterator[None]:
    saved = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


class EpochLog:
    """Per-epoch metrics to the active run, each (metric, epoch) once.

    Buffered through a tracking outage (``BufferedMetrics``); a failed call logs how long it
    blocked. After a resume the checkpoint's epochs (and unsent metrics) the run lacks are replayed
    first, and metrics the run already has are not sent again.
    """

    def __init__(self, out: Path, run_id: str, ckpt: RunCheckpoint | None) -> None:
        self.buffered = BufferedMetrics(out / "metrics" / "unsent_epoch_metrics.json")
        self.have: set[tuple[str, int]] = set()
        state = ckpt.train_state if ckpt is not None else None
        if ckpt is not None and state is not None:
            self.have = _logged_steps(run_id)
            done = [(int(h["epoch"]), h) for h in state["history"]]
            self.buffered.pending = self._missing([*ckpt.pending, *done])
            if self.buffered.pending and self.buffered.flush():
                log.info("replayed the metrics of checkpointed epochs the run lacked")

    def _missing(self, items: list[tuple[int, dict[str, float]]]) -> list[tuple[int, dict]]:
        out = []
        for step, metrics in items:
            missing = {
                k: float(v)
                for k, v in metrics.items()
                if k in METRIC_ORDER and (k, step) not in self.have
            }
            self.have.update((k, step) for k in missing)
            if missing:
                out.append((step, missing))
        return out

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        fresh = {k: v for k, v in metrics.items() if (k, epoch) not in self.have}
        if not fresh:
            return
        waiting = len(self.buffered.pending)
        t0 = time.perf_counter()
        self.buffered.log(fresh, step=epoch)
        blocked = time.perf_counter() - t0
        if self.buffered.pending:
            log.warning(
                "epoch %d: tracking unreachable, metrics buffered (the call blocked %.1f s; "
                "%d epoch(s) waiting)",
                epoch,
                blocked,
                len(self.buffered.pending),
            )
        elif waiting:
            log.info(
                "tracking reachable again: %d buffered epoch(s) sent (%.1f s)", waiting + 1, blocked
            )

    def flush(self) -> None:
        """Send what is buffered.

        Raises:
            TrackingError: the server is still away (the metrics are saved beside the outputs).
        """
        if not self.buffered.flush():
            raise TrackingError(
                f"tracking unreachable: the metrics of {len(self.buffered.pending)} epoch(s) "
                f"were not sent (saved in {self.buffered.fallback})"
            )


def _logged_steps(run_id: str) -> set[tuple[str, int]]:
    """(metric, step) pairs of the per-epoch metrics the run already has."""

    client = MlflowClient()
    return {(k, int(m.step)) for k in METRIC_ORDER for m in client.get_metric_history(run_id, k)}
