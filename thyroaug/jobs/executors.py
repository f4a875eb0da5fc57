"""How the study runs its steps: one after another in this process, or as Ray tasks.

A step is one ``thyroaug <command>`` invocation plus the environment that makes it a nested run of
the study (``MLFLOW_PARENT_RUN_ID``, the step tags in ``THYROAUG_RUN_TAGS``, the tracking URI).
The study hands an executor a *batch* of steps that do not depend on each other; the executor runs
them and reports, per step, ``None`` (finished) or the step's own error message. What to skip or
reuse is the study's business, so resuming works the same with either executor.

* ``SequentialExecutor``: in this process, in order (the default; what a laptop wants).
* ``RayExecutor``: each step is a Ray task with its own resources (``num_cpus``, ``num_gpus``) in a
  worker process of a local Ray instance (started on first use, using this machine's cores and
  GPUs) or of an existing cluster (``address``). Workers log to the same tracking store, so the
  store must be reachable from them (a local SQLite store only from this machine).
"""

from __future__ import annotations

import json
import logging
import logging as _logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from thyroaug.contract import TAG_EXECUTOR_WORKER
from thyroaug.errors import ConfigError
from thyroaug.jobs.commands import CommandError, run_command
from thyroaug.tracking.setup import RUN_TAGS_ENV
from thyroaug.utils.env import scoped_env

log = logging.getLogger(__name__)

EXECUTORS: tuple[str, ...] = ("sequential", "ray")


@dataclass(frozen=True)
class StepSpec:
    """One step to run: its key, command line, environment and resource needs.

    Attributes:
        key: the study step name (``classifier_O+FM``).
        argv: ``thyroaug`` arguments (``["train-classifier", "--scenario", ...]``).
        env: environment variables the step needs (tracking URI, parent run, step tags).
        num_cpus: CPU cores the step uses (Ray reserves them; torch uses as many threads).
        num_gpus: GPUs (fractions allowed) the step needs on a Ray cluster.
    """

    key: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    num_cpus: float = 1.0
    num_gpus: float = 0.0


class Executor(Protocol):
    """Runs a batch of independent steps; returns {key: None if finished else error message}."""

    name: str

    def run(self, steps: Sequence[StepSpec]) -> dict[str, str | None]: ...


def run_step(argv: list[str], env: dict[str, str]) -> str | None:
    """Run one step in this process with ``env`` set; ``None`` or the step's error message."""

    try:
        with scoped_env(env):
            run_command(argv)
        return None
    except CommandError as exc:
        return exc.message


class SequentialExecutor:
    """Runs the steps in this process, in order; stops at the first failure."""

    name = "sequential"

    def run(self, steps: Sequence[StepSpec]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for step in steps:
            log.info("step %s -> thyroaug %s", step.key, " ".join(step.argv))
            out[step.key] = run_step(step.argv, step.env)
            if out[step.key] is not None:
                break
        return out


def _ray_worker_step(argv: list[str], env: dict[str, str], threads: int) -> str | None:
    """Body of a Ray task (a worker process): torch threads = reserved CPUs, then ``run_step``."""

    _logging.basicConfig(
        level=_logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    torch.set_num_threads(max(1, threads))
    tags = json.loads(env.get(RUN_TAGS_ENV, "{}"))
    tags[TAG_EXECUTOR_WORKER] = f"{socket.gethostname()}:{os.getpid()}"
    return run_step(argv, {**env, RUN_TAGS_ENV: json.dumps(tags)})


class RayExecutor:
    """Runs the steps of a batch concurrently as Ray tasks.

    Args:
        address: an existing Ray cluster (``ray://host:10001`` or ``auto``); None starts a local
            Ray instance on this machine.
        num_cpus: CPUs a local instance may use (default: all).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self._ray: Any = None
        self.batches: list[list[str]] = []

    def _init(self) -> Any:
        if self._ray is None:
            import ray  # optional dependency, ~1 s to import: only when a study uses it

            if not ray.is_initialized():
                kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
                if self.address:
                    ray.init(address=self.address, **kwargs)
                else:
                    ray.init(num_cpus=self.num_cpus, **kwargs)
            self._ray = ray
        return self._ray

    def capacity(self) -> dict[str, float]:
        """The cluster's CPU and GPU count."""
        resources = self._init().cluster_resources()
        return {"CPU": float(resources.get("CPU", 1)), "GPU": float(resources.get("GPU", 0))}

    def run(self, steps: Sequence[StepSpec]) -> dict[str, str | None]:
        ray = self._init()
        remote = ray.remote(_ray_worker_step)
        futures = {}
        self.batches.append([s.key for s in steps])
        for step in steps:
            log.info("ray task %s -> thyroaug %s", step.key, " ".join(step.argv))
            options = remote.options(num_cpus=step.num_cpus, num_gpus=step.num_gpus, name=step.key)
            futures[step.key] = options.remote(step.argv, step.env, int(step.num_cpus))
        out: dict[str, str | None] = {}
        for key, future in futures.items():
            try:
                out[key] = ray.get(future)
            except Exception as exc:  # a worker crash (killed, out of memory) surfaces here
                out[key] = f"the Ray task died: {type(exc).__name__}: {exc}"
        return out

    def shutdown(self) -> None:
        """Stop a local Ray instance this executor started."""
        if self._ray is not None and not self.address:
            self._ray.shutdown()
        self._ray = None


def make_executor(name: str, address: str | None = None) -> Executor:
    """``sequential`` or ``ray`` (local unless ``address``)."""

    if name == "sequential":
        return SequentialExecutor()
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise ConfigError("--executor ray needs the `ray` package: pip install ray") from exc
        return RayExecutor(address=address)
    raise ConfigError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
