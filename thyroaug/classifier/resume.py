"""Per-epoch checkpoints of one classifier run, so that a killed `train-classifier` continues.

The folder is named after the job's identity (``checkpoint_dir``); its ``state.pt``, written
atomically after every epoch, holds the training state of ``classifier.train.fit``, the resolved
config, the MLflow run id and the metrics the tracking server has not received yet.
``RunCheckpoint.open`` refuses, before any MLflow run exists, an existing checkpoint without
``resume`` and one of other settings (only ``RESUMABLE_CHANGES`` may differ), and one whose
bytes do not match the digest saved in it (``utils.digest.seal``). The folder is removed when the
run finishes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from thyroaug.errors import ConfigError
from thyroaug.utils.atomic import atomic_path
from thyroaug.utils.digest import MISMATCH, damaged, seal, unseal

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
WHAT = "the classifier's resume checkpoint"
FORMAT = 1
RESUMABLE_CHANGES = (
    "epochs",
    "num_threads",
    "device",
    "eval_batch_size",
    "bootstrap",
    "gradcam_per_class",
)
"""Config fields a resumed run may change (they do not change what was trained so far)."""

Pending = list[tuple[int, dict[str, float]]]


def run_identity(
    scenario: str,
    profile: str,
    seed: int,
    study_id: str,
    cohort_hash: str,
    synthetic: Mapping[str, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """What makes two classifier runs "the same job" (``synthetic``: method -> (ref, sha256))."""
    return {
        "scenario": scenario,
        "profile": profile,
        "seed": int(seed),
        "study_id": study_id,
        "cohort_hash": cohort_hash,
        "synthetic": {m: list(v) for m, v in sorted((synthetic or {}).items())},
    }


def checkpoint_dir(root: str | Path, identity: Mapping[str, Any]) -> Path:
    """``<root>/<scenario>-<profile>-s<seed>-<12 hex of the identity>`` (stable across runs)."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    scenario = str(identity["scenario"]).replace("+", "-")
    return Path(root) / f"{scenario}-{identity['profile']}-s{identity['seed']}-{digest}"


def _differences(saved: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    keys = sorted((set(saved) | set(config)) - set(RESUMABLE_CHANGES))
    return [
        f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in keys if saved.get(k) != config.get(k)
    ]


@dataclass
class RunCheckpoint:
    """The checkpoint folder of one classifier job and what was found in it.

    Attributes:
        folder: the job's folder (``checkpoint_dir``).
        identity: ``run_identity`` of the job.
        config: the resolved classifier config (``to_dict``).
        saved: the checkpoint being resumed (None: a new run).
        keep: keep the folder after the run finished.
    """

    folder: Path
    identity: dict[str, Any]
    config: dict[str, Any]
    saved: dict[str, Any] | None = None
    keep: bool = False
    run_id: str | None = field(default=None, init=False)
    last_epoch: int | None = field(default=None, init=False)
    """The epoch of the state on disk (None: none written or resumed)."""

    @property
    def path(self) -> Path:
        return self.folder / STATE_FILE

    @classmethod
    def open(
        cls,
        folder: str | Path,
        identity: dict[str, Any],
        config: dict[str, Any],
        *,
        resume: bool,
        keep: bool = False,
    ) -> RunCheckpoint:
        """The job's checkpoint: the saved state with ``resume``, else a fresh one.

        Raises:
            ConfigError: a checkpoint exists and ``resume`` is off; it is unreadable; or it was
                made by another job or with other settings.
        """
        ckpt = cls(Path(folder), identity, config, keep=keep)
        if not ckpt.path.exists():
            if resume:
                log.info("no checkpoint in %s: starting a new run", ckpt.folder)
            return ckpt
        if not resume:
            raise ConfigError(
                f"an unfinished run of this job left a checkpoint in {ckpt.folder}: pass --resume "
                "to continue it, or delete that folder to start over"
            )
        ckpt.saved = ckpt._load()
        ckpt.run_id = ckpt.saved.get("run_id")
        ckpt.last_epoch = int(ckpt.saved["train"]["epoch"])
        return ckpt

    def _load(self) -> dict[str, Any]:
        fix = f"delete {self.folder} and run the command without --resume to start over"
        try:
            loaded = torch.load(self.path, map_location="cpu", weights_only=True)
            saved, sound = unseal(loaded)
        except Exception as exc:  # truncated by a full disk, another torch, ...
            why = f"it is unreadable ({type(exc).__name__})"
            raise ConfigError(damaged(self.path, WHAT, why, fix)) from exc
        if sound is False:
            raise ConfigError(damaged(self.path, WHAT, MISMATCH, fix))
        if sound is None:
            log.info("%s has no digest (an older thyroaug wrote it): not checked", self.path)
        if saved.get("format") != FORMAT or saved.get("identity") != self.identity:
            raise ConfigError(
                f"cannot resume: {self.path} belongs to another job or format; delete "
                f"{self.folder} to start over"
            )
        diff = _differences(saved.get("config", {}), self.config)
        if diff:
            raise ConfigError(
                f"cannot resume: the checkpoint in {self.folder} was trained with other settings "
                f"({'; '.join(diff)}); use the same settings or delete that folder to start over"
            )
        done, epochs = int(saved["train"]["epoch"]), int(self.config.get("epochs", 0))
        if done > epochs:
            raise ConfigError(
                f"cannot resume: the checkpoint in {self.folder} has {done} epochs done but "
                f"--epochs is {epochs}; give at least {done}"
            )
        log.info("resuming from %s: %d epoch(s) done", self.path, done)
        return saved

    @property
    def train_state(self) -> dict[str, Any] | None:
        """The ``fit`` state to resume from (None for a new run)."""
        return self.saved["train"] if self.saved else None

    @property
    def pending(self) -> Pending:
        """Per-epoch metrics the tracking server had not received when the state was saved."""
        return [(int(s), dict(m)) for s, m in (self.saved or {}).get("pending", [])]

    def save(self, train_state: dict[str, Any], pending: Pending) -> None:
        """Write the state after an epoch atomically (with config, identity, run id, pending and
        the payload's digest)."""
        payload = {
            "format": FORMAT,
            "identity": self.identity,
            "config": self.config,
            "run_id": self.run_id,
            "train": train_state,
            "pending": [(int(s), dict(m)) for s, m in pending],
        }
        with atomic_path(self.path) as tmp, open(tmp, "wb") as fh:  # closed even on a full disk
            torch.save(seal(payload), fh)
        self.last_epoch = int(train_state["epoch"])

    def finish(self) -> None:
        """The run finished: remove the folder (unless ``keep``)."""
        if self.keep:
            log.info("checkpoint kept in %s", self.folder)
        elif self.folder.exists():
            shutil.rmtree(self.folder)
