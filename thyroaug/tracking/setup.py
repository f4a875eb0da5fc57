"""Choose and configure the MLflow tracking store.

Profiles (``mlruns_config/<name>.toml``), chosen by ``THYROAUG_TRACKING`` (default ``local``):
  ``local``  SQLite file ``mlflow.db`` + artifacts in ``mlartifacts/`` under ``THYROAUG_HOME``
             (default: the current directory, i.e. the repository when run from it). No server.
  ``server`` an ``mlflow server`` (PostgreSQL backend, S3 artifacts proxied by the server) at
             ``THYROAUG_TRACKING_URI`` (default in the profile file); credentials only from
             ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, never from params.
An explicit ``MLFLOW_TRACKING_URI`` always wins: `mlflow run` passes the client's store to the
entry point this way, and the run it created must be continued in that same store.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from thyroaug.contract import (
    EXPERIMENT,
    TAG_ENDED_BY,
    TAG_HOST,
    TAG_MLFLOW_PARENT_RUN,
    TAG_MLFLOW_RUN_NAME,
    TAG_PID,
)
from thyroaug.errors import TrackingError
from thyroaug.tracking.runs import tag_clause

log = logging.getLogger(__name__)

RUN_TAGS_ENV = "THYROAUG_RUN_TAGS"
CONFIG_DIR = Path(__file__).resolve().parents[2] / "mlruns_config"


def project_home() -> Path:
    """Folder that holds the local store and outputs: ``$THYROAUG_HOME`` or the cwd."""
    return Path(os.environ.get("THYROAUG_HOME") or os.getcwd()).resolve()


BUILTIN_PROFILES: dict[str, dict[str, Any]] = {
    "local": {"kind": "local", "database": "mlflow.db", "artifacts": "mlartifacts"},
}


def _profile_file(name: str) -> dict[str, Any]:
    path = Path(name)
    if not path.suffix and not (CONFIG_DIR / f"{name}.toml").exists() and name in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[name]  # installed without the repository's mlruns_config/
    if not path.suffix:
        path = CONFIG_DIR / f"{name}.toml"
    if not path.exists():
        choices = sorted(p.stem for p in CONFIG_DIR.glob("*.toml")) if CONFIG_DIR.exists() else []
        raise TrackingError(
            f"tracking profile {name!r} not found (looked for {path}); known: {choices}"
        )
    with path.open("rb") as fh:
        return tomllib.load(fh)


def resolve_uris(profile: str | None = None) -> tuple[str, str | None]:
    """(tracking URI, default artifact location or None) for a profile."""
    explicit = os.environ.get("MLFLOW_TRACKING_URI")
    if explicit:
        if explicit.startswith("sqlite:///"):  # keep artifacts beside a local database file
            return explicit, (Path(explicit[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
        return explicit, None
    name = profile or os.environ.get("THYROAUG_TRACKING", "local")
    cfg = _profile_file(name)
    home = project_home()
    if cfg.get("kind", name) == "local":
        db = home / cfg.get("database", "mlflow.db")
        artifacts = home / cfg.get("artifacts", "mlartifacts")
        return f"sqlite:///{db}", artifacts.as_uri()
    uri = os.environ.get("THYROAUG_TRACKING_URI") or cfg.get("tracking_uri")
    if not uri:
        raise TrackingError(f"profile {name!r} needs THYROAUG_TRACKING_URI or tracking_uri")
    return uri, None


def configure_tracking(profile: str | None = None, experiment: str | None = None) -> str:
    """Point MLflow at the profile's store, make sure the experiment exists, return the URI.

    Also sets bounded HTTP retries so that a server going away mid-run fails with a clear error
    after backing off instead of hanging.
    """

    uri, artifact_location = resolve_uris(profile)
    # bounded: a server that goes away costs a call at most ~30 s (3 tries, 1-2-4 s backoff, 10 s
    # timeout each) instead of MLflow's default of minutes; per-epoch metrics are buffered
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    mlflow.set_tracking_uri(uri)
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    if os.environ.get("MLFLOW_RUN_ID"):
        chosen = os.environ.get("THYROAUG_TRACKING")
        if chosen and chosen != "local" and os.environ.get("THYROAUG_TRACKING_URI", uri) != uri:
            log.warning(
                "THYROAUG_TRACKING=%s is ignored under `mlflow run`, which logs to its own store "
                "(%s): set MLFLOW_TRACKING_URI=<server URI> before `mlflow run` instead",
                chosen,
                uri,
            )
        return uri  # `mlflow run` already created the run (and chose its experiment)
    try:
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            mlflow.create_experiment(name, artifact_location=artifact_location)
        mlflow.set_experiment(name)
    except Exception as exc:  # MLflow raises many types for an unreachable store
        raise TrackingError(f"tracking store {uri} is not usable: {exc}") from exc
    log.info("MLflow tracking at %s (experiment %s)", uri, name)
    return uri


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_runs() -> list[str]:
    """End RUNNING runs of this host whose process is gone (SIGKILL, power loss) as KILLED.

    Every run started here is tagged with ``thyroaug.host`` / ``thyroaug.pid``; a run still
    RUNNING whose process no longer exists can never finish. Returns the ids it ended.
    """

    try:
        client = MlflowClient()
        ids = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(
            ids,
            f"attributes.status = 'RUNNING' and {tag_clause(TAG_HOST, socket.gethostname())}",
            max_results=200,
        )
    except Exception:  # the sweep is housekeeping: never block a run on it
        return []
    ended = []
    for run in runs:
        pid = run.data.tags.get(TAG_PID, "")
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            client.set_tag(run.info.run_id, TAG_ENDED_BY, "stale-run sweep (process gone)")
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    if ended:
        log.warning("ended %d run(s) left RUNNING by killed processes: %s", len(ended), ended)
    return ended


@contextmanager
def _signals_end_the_run() -> Iterator[None]:
    """SIGTERM / SIGHUP end the run like Ctrl-C does (FAILED, not RUNNING forever)."""

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    saved = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextmanager
def start_run(
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    nested: bool = False,
    resume_run_id: str | None = None,
    **kwargs: Any,
) -> Iterator[Any]:
    """``mlflow.start_run`` that continues the run `mlflow run` made (MLFLOW_RUN_ID) if any, or
    ``resume_run_id`` (a killed run a checkpoint belongs to: it is RUNNING again, tagged with this
    process, and gets the same signal handlers as a new run).

    A parent study run is picked up through ``MLFLOW_PARENT_RUN_ID`` (set by ``thyroaug study``)
    so that steps become its nested runs, and extra tags (the study's step config hash) through
    ``THYROAUG_RUN_TAGS`` (a JSON object).
    """

    all_tags = dict(tags or {})
    extra = os.environ.get(RUN_TAGS_ENV)
    if extra:
        all_tags.update(json.loads(extra))
    parent = os.environ.get("MLFLOW_PARENT_RUN_ID")
    if parent and not nested and mlflow.active_run() is None:
        all_tags.setdefault(TAG_MLFLOW_PARENT_RUN, parent)
    run_id = os.environ.get("MLFLOW_RUN_ID") if mlflow.active_run() is None else None
    run_id = run_id or resume_run_id
    sweep_stale_runs()
    all_tags.update({TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())})
    with (
        _signals_end_the_run(),
        mlflow.start_run(
            run_id=run_id,
            run_name=None if run_id else run_name,
            nested=nested,
            tags=all_tags,
            **kwargs,
        ) as run,
    ):
        if run_id:  # `mlflow run` made the run: give it the name and tags a CLI run gets
            if run_name:
                mlflow.set_tag(TAG_MLFLOW_RUN_NAME, run_name)
            if all_tags:
                mlflow.set_tags(all_tags)
        yield run
