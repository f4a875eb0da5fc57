"""Fault injection: killed and signalled runs end, nothing is left RUNNING forever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_tiny_cohort
from mlflow import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _start_classifier(home: Path, epochs: int = 30) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(THYROAUG_HOME=str(home), THYROAUG_TRACKING="local")
    cmd = [sys.executable, "-m", "thyroaug.cli", "train-classifier", "--scenario", "O",
           "--profile", "smoke", "--cohort", str(home / "cohort"), "--epochs", str(epochs),
           "--no-progress", "--no-model"]  # fmt: skip
    return subprocess.Popen(cmd, env=env, cwd=home, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _wait_for_running(client: MlflowClient, timeout: float = 120) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            ids = [e.experiment_id for e in client.search_experiments()]
            runs = client.search_runs(ids, "attributes.status = 'RUNNING'")
        except Exception:
            runs = []
        if runs and "train_loss" in runs[0].data.metrics:  # training is under way
            return runs[0].info.run_id
        time.sleep(1)
    raise AssertionError("no RUNNING classifier run appeared")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signalled_run_ends_failed(tmp_path: Path, sig: signal.Signals) -> None:
    make_tiny_cohort().save(tmp_path / "cohort")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = _start_classifier(tmp_path)
    try:
        run_id = _wait_for_running(client)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert client.get_run(run_id).info.status == "FAILED"


def test_a_sigkilled_run_is_ended_killed_on_the_next_start(tmp_path: Path) -> None:
    make_tiny_cohort().save(tmp_path / "cohort")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    proc = _start_classifier(tmp_path)
    try:
        run_id = _wait_for_running(client)
        proc.kill()  # SIGKILL: no handler can run
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert client.get_run(run_id).info.status == "RUNNING"
    nxt = _start_classifier(tmp_path, epochs=1)
    out, _ = nxt.communicate(timeout=300)
    assert nxt.returncode == 0, out[-2000:]
    killed = client.get_run(run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags["thyroaug.ended_by"].startswith("stale-run sweep")
