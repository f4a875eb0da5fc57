"""Fault injection: killed and signalled runs end, nothing is left RUNNING forever.

Every scenario is a real ``python -m thyroaug.cli`` subprocess on smoke settings, killed where it
hurts (SIGKILL: no handler runs) and run again: the rerun succeeds, nothing half-written is picked
up, no run stays RUNNING. The tracking-server test kills and restarts a real `mlflow server` under
a training classifier and prints how long the client blocked per failed logging call (``-s``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_tiny_cohort
from mlflow import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.integration]

EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "THYROAUG_"))}
    env.update({"THYROAUG_HOME": str(home), "THYROAUG_TRACKING": "local", **extra})
    return env


def _cli(home: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "thyroaug.cli", *argv]
    return subprocess.Popen(cmd, env=env or _env(home), cwd=home, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return out


def _run_cli(home: Path, *argv: str, timeout: float = 300, **kw: Any) -> tuple[int, str]:
    proc = _cli(home, *argv, **kw)
    out = _finish(proc, timeout)
    return proc.returncode, out


def _sigkill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _classifier_argv(home: Path, epochs: int, *extra: str) -> list[str]:
    return ["train-classifier", "--scenario", "O", "--profile", "smoke", "--cohort",
            str(home / "cohort"), "--epochs", str(epochs), "--no-progress", "--no-model",
            *extra]  # fmt: skip


def _start_classifier(home: Path, epochs: int = 30, *extra: str) -> subprocess.Popen:
    return _cli(home, *_classifier_argv(home, epochs, *extra))


def _client(home: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{home / 'mlflow.db'}")


def _runs(client: MlflowClient, where: str = "") -> list[Any]:
    try:
        ids = [e.experiment_id for e in client.search_experiments()]
        return client.search_runs(ids, where, max_results=500) if ids else []
    except Exception:  # the store is not there yet, or is being migrated by the child
        return []


def _wait_for(what: str, check: Callable[[], Any], proc: subprocess.Popen | None = None,
              timeout: float = 180) -> Any:  # fmt: skip
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended first:\n{_finish(proc)[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _wait_for_running(client: MlflowClient, timeout: float = 120) -> str:
    def training() -> str | None:
        runs = _runs(client, "attributes.status = 'RUNNING'")
        if runs and "train_loss" in runs[0].data.metrics:  # training is under way
            return runs[0].info.run_id
        return None

    return _wait_for("a RUNNING classifier run", training, timeout=timeout)


def _assert_nothing_running(client: MlflowClient) -> None:
    running = [(r.info.run_name, r.info.run_id) for r in _runs(client)
               if r.info.status == "RUNNING"]  # fmt: skip
    assert running == [], running


def _assert_one_clear_error(out: str, *needles: str) -> None:
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if ": error: " in line]
    assert len(errors) == 1, out[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


def _leftovers(home: Path) -> list[Path]:
    """Hidden staging copies (``.<name>.tmp-*`` / ``.<name>.old-*``) anywhere under ``home``."""
    return [p for p in home.rglob(".*") if re.search(r"\.(tmp|old)-", p.name)]


def _checkpoints(home: Path, prefix: str = "") -> list[Path]:
    root = home / "outputs" / "classifier" / "resume"
    return sorted(root.glob(f"{prefix}*/state.pt")) if root.exists() else []


def _epoch_steps(client: MlflowClient, run_id: str) -> dict[str, list[int]]:
    return {k: sorted(m.step for m in client.get_metric_history(run_id, k)) for k in EPOCH_METRICS}


# --- signals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signalled_run_ends_failed(tmp_path: Path, sig: signal.Signals) -> None:
    make_tiny_cohort().save(tmp_path / "cohort")
    client = _client(tmp_path)
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
    client = _client(tmp_path)
    proc = _start_classifier(tmp_path)
    try:
        run_id = _wait_for_running(client)
        _sigkill(proc)  # no handler can run
    finally:
        proc.kill()
    assert client.get_run(run_id).info.status == "RUNNING"
    code, out = _run_cli(  # another job (seed 1): it has no checkpoint of its own to resume
        tmp_path, "train-classifier", "--scenario", "O", "--profile", "smoke", "--cohort",
        str(tmp_path / "cohort"), "--epochs", "1", "--seed", "1", "--no-progress", "--no-model",
    )  # fmt: skip
    assert code == 0, out[-2000:]
    killed = client.get_run(run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags["thyroaug.ended_by"].startswith("stale-run sweep")


# --- prepare ------------------------------------------------------------------------------------


def test_prepare_killed_mid_write_then_rerun(tmp_path: Path) -> None:
    from thyroaug.data.cohort import PreparedCohort

    out = tmp_path / "outputs" / "cohort"
    argv = ["prepare", "--phantom-scale", "0.1", "--out", str(out), "--no-progress"]
    proc = _cli(tmp_path, *argv)
    try:  # killed while the phantom cohort is being written into its staging folder
        staging = _wait_for("phantom staging", lambda: _leftovers(tmp_path), proc, timeout=120)
        time.sleep(0.5)
        _sigkill(proc)
    finally:
        proc.kill()
    assert staging and not (out / "cohort.safetensors").exists()
    # a kill while the cohort file itself was being written leaves its temporary sibling
    out.mkdir(parents=True, exist_ok=True)
    (out / ".cohort.safetensors.tmp-killed").write_bytes(b"half a cohort")

    code, log = _run_cli(tmp_path, *argv)
    assert code == 0, log[-3000:]
    assert "staging leftover" in log
    assert _leftovers(tmp_path) == []
    cohort = PreparedCohort.load(out)
    assert len(cohort) > 200 and set(cohort.table["split"]) == {"train", "val", "external"}
    _assert_nothing_running(_client(tmp_path))


# --- train-fm and synthesize ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fm_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """train-fm (smoke, 5 epochs) SIGKILLed after its first checkpoint, then run with --resume."""
    home = tmp_path_factory.mktemp("fm")
    make_tiny_cohort().save(home / "cohort")
    argv = ["train-fm", "--profile", "smoke", "--cohort", str(home / "cohort"), "--epochs", "5",
            "--output", str(home / "fm"), "--register", "--no-progress"]  # fmt: skip
    client = _client(home)
    proc = _cli(home, *argv)
    try:
        _wait_for("an FM checkpoint", (home / "fm" / "checkpoint.pt").exists, proc)
        killed = _wait_for(
            "the RUNNING train-fm run", lambda: _runs(client, "tags.step = 'train_fm'")
        )
        _sigkill(proc)
    finally:
        proc.kill()
    resumed = _cli(home, *argv, "--resume")
    log = _finish(resumed)
    yield {"home": home, "client": client, "killed": killed[0].info.run_id, "code":
           resumed.returncode, "log": log, "pid": resumed.pid}  # fmt: skip


def test_train_fm_killed_then_resumed(fm_home: dict[str, Any]) -> None:
    client, killed = fm_home["client"], fm_home["killed"]
    assert fm_home["code"] == 0, fm_home["log"][-3000:]
    runs = _runs(client, "tags.step = 'train_fm'")
    assert 1 <= len(runs) <= 2, [r.info.run_id for r in runs]  # resumed in place, or one new run
    status = client.get_run(killed).info.status
    assert status == ("FINISHED" if len(runs) == 1 else "KILLED"), status
    assert [r.info.status for r in runs if r.info.run_id != killed] in ([], ["FINISHED"])
    _assert_nothing_running(client)
    final = max(runs, key=lambda r: r.info.start_time if r.info.run_id != killed else 0)
    steps = sorted(m.step for m in client.get_metric_history(final.info.run_id, "train_loss"))
    assert steps == [1, 2, 3, 4, 5], steps  # every epoch once (checkpoint, then log)


def test_resumed_train_fm_run_is_tagged_with_its_own_process(fm_home: dict[str, Any]) -> None:
    runs = _runs(fm_home["client"], "tags.step = 'train_fm'")
    final = max(runs, key=lambda r: r.info.start_time)
    resumed = fm_home["client"].get_run(fm_home["killed"]) if len(runs) == 1 else final
    assert resumed.data.tags.get("thyroaug.pid") == str(fm_home["pid"])


def test_train_sd_killed_then_resumed_in_the_same_run(tmp_path: Path) -> None:
    """SIGKILL after an SD checkpoint; --resume continues that run, every step's loss once."""
    make_tiny_cohort().save(tmp_path / "cohort")
    argv = ["train-sd", "--profile", "smoke", "--cohort", str(tmp_path / "cohort"), "--output",
            str(tmp_path / "sd"), "--max-steps", "48", "--set", "checkpointing_steps=4",
            "--no-progress"]  # fmt: skip
    client = _client(tmp_path)
    env = _env(tmp_path, THYROAUG_SD_BASE="", THYROAUG_WEIGHTS_DIR="")
    proc = _cli(tmp_path, *argv, env=env)
    try:
        _wait_for("an SD checkpoint", (tmp_path / "sd" / "checkpoints" / "checkpoint-8").exists,
                  proc)  # fmt: skip
        (killed,) = _runs(client, "tags.step = 'train_sd'")
        _sigkill(proc)
    finally:
        proc.kill()
    code, out = _run_cli(tmp_path, *argv, "--resume", env=env)
    assert code == 0, out[-3000:]
    (run,) = _runs(client, "tags.step = 'train_sd'")
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["thyroaug.pid"] != killed.data.tags["thyroaug.pid"]
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert steps == list(range(1, 49)), steps
    _assert_nothing_running(client)


def test_synthesize_killed_then_rerun(fm_home: dict[str, Any]) -> None:
    home, client = fm_home["home"], fm_home["client"]
    assert fm_home["code"] == 0, "needs the generator of test_train_fm_killed_then_resumed"
    argv = ["synthesize", "--per-class", "150", "--seed", "3", "--no-fidelity", "--no-progress"]
    proc = _cli(home, *argv)
    try:  # killed while sampling, before the set is complete
        (run,) = _wait_for("a RUNNING synthesize run",
                           lambda: _runs(client, "tags.step = 'synthesize' and "
                                         "attributes.status = 'RUNNING'"), proc)  # fmt: skip
        time.sleep(1.0)
        _sigkill(proc)
    finally:
        proc.kill()
    killed = run.info.run_id
    code, out = _run_cli(home, "train-classifier", "--scenario", "O+FM", "--profile", "smoke",
                         "--cohort", str(home / "cohort"), "--synthetic", f"FM={killed}",
                         "--no-progress", "--no-model")  # fmt: skip
    assert code != 0
    _assert_one_clear_error(out, killed)
    assert _runs(client, "tags.step = 'train_classifier'") == []  # refused before any run

    code, out = _run_cli(home, *argv)
    assert code == 0, out[-3000:]
    sets = _runs(client, "tags.step = 'synthesize'")
    assert len(sets) == 2
    assert {r.info.run_id: r.info.status for r in sets}[killed] == "KILLED"
    assert [r.info.status for r in sets if r.info.run_id != killed] == ["FINISHED"]
    _assert_nothing_running(client)


# --- train-classifier --resume ------------------------------------------------------------------


def test_train_classifier_killed_then_resumed(tmp_path: Path) -> None:
    make_tiny_cohort().save(tmp_path / "cohort")
    client = _client(tmp_path)
    proc = _start_classifier(tmp_path, 6)
    try:  # killed after an epoch checkpoint, mid-training
        run_id = _wait_for_running(client)
        _wait_for("a checkpoint", lambda: _checkpoints(tmp_path), proc)
        _sigkill(proc)
    finally:
        proc.kill()
    (state,) = _checkpoints(tmp_path)

    code, out = _run_cli(tmp_path, *_classifier_argv(tmp_path, 6))
    assert code != 0
    _assert_one_clear_error(out, "--resume", str(state.parent))
    assert len(_runs(client)) == 1  # refused before any run was made
    killed = client.get_run(run_id)  # the refusal ended the dead run: nothing left RUNNING
    assert killed.info.status == "KILLED", killed.info.status
    assert killed.data.tags["thyroaug.ended_by"].startswith("stale-run sweep")

    code, out = _run_cli(tmp_path, *_classifier_argv(tmp_path, 6), "--resume")
    assert code == 0, out[-3000:]
    assert f"run {run_id}" in out  # the killed run, continued
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and len(_runs(client)) == 1
    assert all(s == [1, 2, 3, 4, 5, 6] for s in _epoch_steps(client, run_id).values())
    assert "external_accuracy" in run.data.metrics
    assert not state.parent.exists()
    _assert_nothing_running(client)


# --- study --------------------------------------------------------------------------------------


def test_study_killed_mid_way_then_rerun(tmp_path: Path) -> None:
    argv = ["study", "--profile", "smoke", "--scenarios", "O,O+FM"]
    client = _client(tmp_path)
    proc = _cli(tmp_path, *argv)

    def last_classifier_training() -> Any:
        runs = _runs(client, "tags.study_step = 'classifier_O+FM' and attributes.status = "
                     "'RUNNING'")  # fmt: skip
        return runs if runs and _checkpoints(tmp_path, "O-FM-") else None

    try:  # killed in its last classifier, after generator training and synthesis
        (run,) = _wait_for("classifier_O+FM training", last_classifier_training, proc, 300)
        _sigkill(proc)
    finally:
        proc.kill()
    code, out = _run_cli(tmp_path, *argv, timeout=400)
    assert code == 0, out[-3000:]
    reused = re.search(r"reused finished steps: (.*)", out)
    assert reused, out[-3000:]
    assert set(reused.group(1).split(", ")) == {
        "prepare_data", "classifier_O", "train_fm", "synthesize_FM"
    }  # fmt: skip
    assert client.get_run(run.info.run_id).info.status == "FINISHED"  # resumed in place
    steps = [r.data.tags.get("study_step") for r in _runs(client, "tags.study_step != ''")]
    assert sorted(steps) == sorted(
        ["prepare_data", "classifier_O", "train_fm", "synthesize_FM", "classifier_O+FM", "compare"]
    ), steps  # one run per step: nothing was made twice
    _assert_nothing_running(client)
    assert _checkpoints(tmp_path) == []


# --- tracking server outage ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(home: Path, port: int) -> subprocess.Popen:
    """`mlflow server` (SQLite store, served artifacts) in its own process group."""
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe), "server", "--backend-store-uri", f"sqlite:///{home / 'server.db'}",
           "--artifacts-destination", str(home / "server-artifacts"), "--serve-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    log = (home / "server.log").open("a")
    proc = subprocess.Popen(cmd, cwd=home, env=_env(home), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    _wait_for("the tracking server", healthy, proc, timeout=120)
    return proc


def _kill_server(proc: subprocess.Popen) -> None:
    """SIGKILL the server and its workers (its own process group), as a crash would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _blocked_seconds(log: str) -> tuple[list[float], list[float]]:
    """Seconds each failed epoch-logging call blocked, and each call that got through again."""
    failed = re.findall(r"metrics buffered \(the call blocked ([\d.]+) s", log)
    recovered = re.findall(
        r"tracking reachable again: \d+ buffered epoch\(s\) sent \(([\d.]+) s", log
    )
    return [float(x) for x in failed], [float(x) for x in recovered]


def _report_outage(what: str, outage: float, log: str, code: int | None) -> list[float]:
    failed, recovered = _blocked_seconds(log)
    total = sum(failed) + sum(recovered)
    print(
        f"\n[tracking outage: {what}] server away {outage:.1f} s; {len(failed)} failed "
        f"epoch-logging call(s) blocked {', '.join(f'{b:.1f}' for b in failed) or '-'} s; the call "
        f"that got through again blocked {', '.join(f'{b:.1f}' for b in recovered) or '-'} s; "
        f"client blocked {total:.1f} s in total while the server was away; exit code {code}"
    )
    return failed


@contextlib.contextmanager
def _classifier_under_server(home: Path, epochs: int, **env_extra: str) -> Iterator[dict[str, Any]]:
    """A smoke classifier training against a real `mlflow server`; yields once it is under way
    (``argv``, ``env``, ``client``, ``port``, ``proc``, ``run_id``, ``servers`` to append
    restarts to); every server and the classifier are killed afterwards."""
    make_tiny_cohort().save(home / "cohort")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    env = _env(home, THYROAUG_TRACKING="server", THYROAUG_TRACKING_URI=uri, **env_extra)
    argv = _classifier_argv(home, epochs)
    client = MlflowClient(uri)
    servers = [_start_server(home, port)]
    proc = _cli(home, *argv, env=env)
    try:
        run_id = _wait_for_running(client)
        yield {"argv": argv, "env": env, "client": client, "port": port, "proc": proc,
               "run_id": run_id, "servers": servers}  # fmt: skip
    finally:
        proc.kill()
        for server in servers:
            _kill_server(server)


def test_tracking_server_killed_mid_run_then_restarted(tmp_path: Path) -> None:
    with _classifier_under_server(tmp_path, 10) as job:
        argv, env, client, proc, run_id = (job[k] for k in ("argv", "env", "client", "proc",
                                                           "run_id"))  # fmt: skip
        _kill_server(job["servers"][-1])
        down = time.monotonic()
        time.sleep(4)  # away for a few seconds, then the same store comes back on the same port
        job["servers"].append(_start_server(tmp_path, job["port"]))
        outage = time.monotonic() - down
        log = _finish(proc, timeout=300)
        code = proc.returncode
        if code != 0:  # away longer than the retry budget: one clear line, then --resume
            _assert_one_clear_error(log, "--resume")
            code, log2 = _run_cli(tmp_path, *argv, "--resume", env=env)
            assert code == 0, log2[-3000:]
            log += log2
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED", log[-3000:]
        steps = _epoch_steps(client, run_id)
        assert all(s == list(range(1, 11)) for s in steps.values()), steps
        _assert_nothing_running(client)
    failed = _report_outage("restarted after a few seconds", outage, log, proc.returncode)
    assert failed, "the outage hit no epoch-logging call: " + log[-3000:]


def test_tracking_server_away_longer_than_the_retry_budget(tmp_path: Path) -> None:
    """Still away when training ends: one clear line, non-zero; --resume completes the run.

    With a short retry budget (one retry, 2 s timeout; the default is ~30 s a call): what is
    checked is what happens once the budget is spent, not how long the default lasts."""
    budget = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    with _classifier_under_server(tmp_path, 3, **budget) as job:
        argv, env, client, proc, run_id = (job[k] for k in ("argv", "env", "client", "proc",
                                                           "run_id"))  # fmt: skip
        _kill_server(job["servers"][-1])
        down = time.monotonic()
        log = _finish(proc, timeout=300)
        outage = time.monotonic() - down
        assert proc.returncode == 2, log[-3000:]
        _assert_one_clear_error(log, "tracking", "--resume")
        assert len(_checkpoints(tmp_path)) == 1  # kept for --resume
        job["servers"].append(_start_server(tmp_path, job["port"]))
        code, log2 = _run_cli(tmp_path, *argv, "--resume", env=env)
        assert code == 0, log2[-3000:]
        assert f"run {run_id}" in log2
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED", log2[-3000:]
        assert all(s == [1, 2, 3] for s in _epoch_steps(client, run_id).values())
        assert "external_accuracy" in run.data.metrics
        _assert_nothing_running(client)
        assert _checkpoints(tmp_path) == []
    _report_outage("away until the end of training", outage, log, proc.returncode)


# --- storage: every byte checked, every failure named ---------------------------------------------
# Faults injected here (a real tmpfs filling up, flipped bytes in every cached file kind, a
# synthesize killed after its --out copy) must each end in one clear line, leave nothing RUNNING
# and lose nothing already written; tests/classifier/test_storage_faults.py injects the same
# storage failures in-process where no tmpfs can be mounted.


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` (needs root and a kernel that allows it)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip()[:120]
        pytest.skip(f"cannot mount a tmpfs here ({why}); test_storage_faults.py injects the same")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def _fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system holding ``folder`` up to ``leave`` free bytes; returns the filler."""
    filler, block = folder / "filler", b"\0" * (1 << 20)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, block)
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def _sha(path: Path) -> str:
    from thyroaug.utils.digest import file_sha256

    return file_sha256(path)


def test_a_40mb_home_filling_up_is_one_line_and_nothing_is_lost(tmp_path: Path) -> None:
    """The reviewer's setup: the smoke classifier's first checkpoint does not fit."""
    with _tmpfs(tmp_path / "disk", "40m") as home:
        make_tiny_cohort().save(home / "cohort")
        cohort = home / "cohort" / "cohort.safetensors"
        before = _sha(cohort)
        code, out = _run_cli(home, *_classifier_argv(home, 3))
        assert code == 2, out[-3000:]
        _assert_one_clear_error(out, f"no space left on the file system at {home} while writing",
                                "free space and rerun the command")  # fmt: skip
        error = out[out.index(": error: ") :]
        assert "unreachable" not in error and "is kept" not in error, error  # no false claims
        assert len(out.splitlines()) < 15, out
        client = _client(home)
        assert [r.info.status for r in _runs(client)] == ["FAILED"]  # the store survived too
        assert _sha(cohort) == before and _leftovers(home) == []


def test_a_disk_filling_up_mid_training_keeps_the_checkpoint_and_resumes(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "disk", "1g") as home:
        make_tiny_cohort().save(home / "cohort")
        cohort = home / "cohort" / "cohort.safetensors"
        before = _sha(cohort)
        client = _client(home)
        proc = _start_classifier(home, 20)
        try:
            run_id = _wait_for_running(client)
            (state,) = _wait_for("a checkpoint", lambda: _checkpoints(home), proc)
            filler = _fill(home, leave=2 << 20)  # the store can still end the run
            out = _finish(proc)
        finally:
            proc.kill()
        assert proc.returncode == 2, out[-3000:]
        _assert_one_clear_error(out, f"no space left on the file system at {home} while writing",
                                "rerun with --resume: the checkpoint of epoch",
                                f"in {state.parent} is intact")  # fmt: skip
        assert client.get_run(run_id).info.status == "FAILED"
        assert _sha(cohort) == before and _leftovers(home) == []
        filler.unlink()  # space freed: --resume finishes the same run, every epoch once
        code, out = _run_cli(home, *_classifier_argv(home, 20), "--resume")
        assert code == 0, out[-3000:]
        assert client.get_run(run_id).info.status == "FINISHED" and len(_runs(client)) == 1
        assert all(s == list(range(1, 21)) for s in _epoch_steps(client, run_id).values())
        _assert_nothing_running(client)


def _flip_tensor_byte(path: Path, tensor: str, byte: int) -> None:
    """Flip one bit of byte ``byte`` of the middle 4-byte element of a safetensors tensor."""
    raw = bytearray(path.read_bytes())
    size = int.from_bytes(raw[:8], "little")
    begin, end = json.loads(raw[8 : 8 + size])[tensor]["data_offsets"]
    at = 8 + size + begin + (end - begin) // 2 // 4 * 4
    while raw[at + 3] == 0:  # a pixel that is not 0.0
        at += 4
    raw[at + byte] ^= 0x01
    path.write_bytes(bytes(raw))


def _flip_at(path: Path, where: float) -> None:
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * where)] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("byte", [0, 3], ids=["pixel-low-order-byte", "pixel-high-order-byte"])
def test_a_flipped_byte_in_the_cohort_cache_is_one_line_and_no_run(tmp_path: Path,
                                                                    byte: int) -> None:  # fmt: skip
    make_tiny_cohort().save(tmp_path / "cohort")
    _flip_tensor_byte(tmp_path / "cohort" / "cohort.safetensors", "images", byte)
    code, out = _run_cli(tmp_path, *_classifier_argv(tmp_path, 1))
    assert code == 2, out[-3000:]
    _assert_one_clear_error(out, "cohort/cohort.safetensors (the prepared cohort cache) is "
                            "damaged: its bytes do not match the digest written with it; rebuild "
                            "it with `thyroaug prepare", "--force`")  # fmt: skip
    assert _runs(_client(tmp_path)) == []


def test_a_flipped_byte_in_the_resume_checkpoint_is_one_line(tmp_path: Path) -> None:
    make_tiny_cohort().save(tmp_path / "cohort")
    code, out = _run_cli(tmp_path, *_classifier_argv(tmp_path, 1, "--keep-checkpoint"))
    assert code == 0, out[-3000:]
    (state,) = _checkpoints(tmp_path)
    _flip_at(state, 0.5)
    code, out = _run_cli(tmp_path, *_classifier_argv(tmp_path, 1, "--resume"))
    assert code == 2, out[-3000:]
    _assert_one_clear_error(out, "state.pt (the classifier's resume checkpoint) is damaged: ",
                            f"delete {state.parent} and run the command without")  # fmt: skip
    _assert_nothing_running(_client(tmp_path))


@pytest.fixture(scope="module")
def fm_gen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A home with a tiny cohort and a registered smoke FM generator (one epoch)."""
    home = tmp_path_factory.mktemp("fm-gen")
    make_tiny_cohort().save(home / "cohort")
    code, out = _run_cli(home, "train-fm", "--profile", "smoke", "--cohort", str(home / "cohort"),
                         "--epochs", "1", "--register", "--no-progress")  # fmt: skip
    assert code == 0, out[-3000:]
    return {"home": home, "client": _client(home)}


def test_the_out_copy_of_a_killed_synthesize_is_refused_unless_allowed(fm_gen: dict[str, Any]
                                                                       ) -> None:  # fmt: skip
    home, client = fm_gen["home"], fm_gen["client"]
    copy = home / "set-out" / "FM"
    proc = _cli(home, "synthesize", "--per-class", "4", "--cohort", str(home / "cohort"), "--out",
                str(copy.parent), "--no-progress")  # fmt: skip
    try:  # killed after the --out copy, while its fidelity is being computed
        names = ("images.safetensors", "manifest.csv", "set.json")
        _wait_for("the --out copy", lambda: all((copy / n).exists() for n in names), proc)
        time.sleep(0.2)
        _sigkill(proc)
    finally:
        proc.kill()
    killed = json.loads((copy / "set.json").read_text())["created_by_run"]
    assert client.get_run(killed).info.status == "RUNNING"  # no handler ran
    argv = _classifier_argv(home, 1)
    argv[argv.index("O")] = "O+FM"
    argv += ["--synthetic", f"FM={copy}"]
    code, out = _run_cli(home, *argv)
    assert code == 2, out[-3000:]
    _assert_one_clear_error(out, f"its creating run {killed} is KILLED, not FINISHED",
                            "--allow-unfinished-set")  # fmt: skip
    assert _runs(client, "tags.step = 'train_classifier'") == []
    code, out = _run_cli(home, *argv, "--allow-unfinished-set")
    assert code == 0, out[-3000:]
    assert "--allow-unfinished-set" in out  # said in the log, not used silently
    (run,) = _runs(client, "tags.step = 'train_classifier'")
    assert run.data.tags["thyroaug.unfinished_sets"] == f"FM: run {killed} is KILLED, not FINISHED"
    _assert_nothing_running(client)


def test_a_flipped_byte_in_the_condition_bank_is_named(fm_gen: dict[str, Any]) -> None:
    home = fm_gen["home"]
    (bank,) = home.glob("mlartifacts/**/condition_bank/masks.safetensors")
    original = bank.read_bytes()
    try:
        _flip_at(bank, 0.9)
        code, out = _run_cli(home, "synthesize", "--per-class", "1", "--no-fidelity",
                             "--no-progress")  # fmt: skip
    finally:
        bank.write_bytes(original)
    assert code == 2, out[-3000:]
    named = [line for line in out.splitlines() if "is damaged" in line]
    assert len(named) == 1, out[-3000:]
    assert ("/condition_bank/masks.safetensors (a file of a 'fm' condition bank) is damaged: its "
            "bytes do not match the sha256 in bank.json") in named[0]  # fmt: skip
    assert "runs:/" in named[0] and "thyroaug-bank-" not in named[0]  # the artifact, not a temp
    _assert_one_clear_error(out)
    _assert_nothing_running(fm_gen["client"])


def test_a_flipped_byte_in_the_fm_checkpoint_is_one_line(fm_gen: dict[str, Any]) -> None:
    home = fm_gen["home"]
    ckpt = home / "outputs" / "fm" / "smoke" / "checkpoint.pt"
    original = ckpt.read_bytes()
    try:
        _flip_at(ckpt, 0.5)
        code, out = _run_cli(home, "train-fm", "--profile", "smoke", "--cohort",
                             str(home / "cohort"), "--epochs", "2", "--resume",
                             "--no-progress")  # fmt: skip
    finally:
        ckpt.write_bytes(original)
    assert code == 2, out[-3000:]
    _assert_one_clear_error(out, "checkpoint.pt (the flow-matching checkpoint) is damaged: ",
                            "`thyroaug train-fm`")  # fmt: skip
    _assert_nothing_running(fm_gen["client"])


def _good_set(home: Path) -> Path:
    """A valid FM set for the tiny cohort (made in-process; no creating run to look up)."""
    import pandas as pd

    from thyroaug.data.cohort import PreparedCohort
    from thyroaug.synthetic import SyntheticSet

    folder = home / "good-set" / "FM"
    if not folder.exists():
        cohort = PreparedCohort.load(home / "cohort")
        train = cohort.subset("train")
        n = len(train)
        manifest = pd.DataFrame({"index": range(n), "label": train.table["label"], "method": "FM",
                                 "generator_uri": "models:/thyroaug-fm/1", "generator_version": "1",
                                 "seed": range(n), "source_id": ""})  # fmt: skip
        info = {"cohort_hash": cohort.content_hash}
        SyntheticSet(train.images.flip(-1), train.labels, manifest, info).save(folder)
    return folder


@pytest.mark.parametrize(("name", "where", "reason"), [
    ("images.safetensors", 0.9, "images.safetensors does not match the hash in set.json"),
    ("manifest.csv", 0.5, "manifest.csv does not match the hash in set.json"),
    ("set.json", None, "set.json does not match its own hash"),
], ids=["pixel", "manifest", "set.json"])  # fmt: skip
def test_a_flipped_byte_in_a_synthetic_set_is_one_line(fm_gen: dict[str, Any], tmp_path: Path,
                                                       name: str, where: float | None,
                                                       reason: str) -> None:  # fmt: skip
    import shutil

    home = fm_gen["home"]
    folder = tmp_path / "FM"
    shutil.copytree(_good_set(home), folder)
    path = folder / name
    if where is None:  # a digit of the recorded count: set.json stays valid JSON
        text = path.read_text()
        at = text.index('"count": ') + len('"count": ')
        path.write_text(text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1 :])
    else:
        _flip_at(path, where)
    argv = _classifier_argv(home, 1)
    argv[argv.index("O")] = "O+FM"
    before = len(_runs(fm_gen["client"]))
    code, out = _run_cli(home, *argv, "--synthetic", f"FM={folder}")
    assert code == 2, out[-3000:]
    _assert_one_clear_error(out, f"{folder} (a synthetic set) is damaged: {reason}",
                            "regenerate it with `thyroaug synthesize`")  # fmt: skip
    assert len(_runs(fm_gen["client"])) == before  # refused before any run
