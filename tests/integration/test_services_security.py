"""Security and lifecycle of ``python -m thyroaug.tracking.services`` (the server profile).

The supervisor runs as a real subprocess on a private state dir under pytest's tmp dir. Checked:
every store refuses anonymous access (MLflow API and proxied artifacts: 401; PostgreSQL over TCP
and its socket: password required), secrets stay in a 0600 file outside the working tree and off
stdout, artifacts survive a restart, and SIGTERM / SIGHUP / Ctrl-C leave nothing listening.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from thyroaug.tracking import services

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 120
STOP_TIMEOUT = 30


def _skip_reason() -> str | None:
    reason = services.postgres_available()
    if reason:
        return f"PostgreSQL cannot run here: {reason}"
    try:
        import flask_wtf  # noqa: F401  (mlflow[auth])
    except ImportError:
        return "mlflow[auth] (Flask-WTF) is not installed"
    return None


@dataclass
class Supervisor:
    """A running supervisor subprocess and what it printed."""

    proc: subprocess.Popen
    lines: list[str] = field(default_factory=list)

    def _pump(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self, stderr: Path) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not any("ready" in ln for ln in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"supervisor not ready: {self.lines}\n{stderr.read_text()[-3000:]}")
            time.sleep(0.2)

    def value(self, prefix: str) -> str:
        line = next(ln for ln in self.lines if ln.startswith(prefix))
        return line[len(prefix) :].split()[0]

    @property
    def url(self) -> str:
        return self.value("# tracking URI: ")

    @property
    def pg_port(self) -> int:
        return int(self.value("# postgres: ").rsplit(":", 1)[1])

    def stop(self, sig: signal.Signals) -> float:
        """Send ``sig``; the seconds it took to exit (fails the test past STOP_TIMEOUT)."""
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"supervisor still running {STOP_TIMEOUT} s after {sig.name}")
        assert code == 0, (code, self.lines)
        return time.monotonic() - start


@contextlib.contextmanager
def supervisor(state_dir: Path, port: int, tmp: Path) -> Iterator[Supervisor]:
    """Start ``python -m thyroaug.tracking.services`` in an empty cwd; kill it if a test fails."""
    cwd = tmp / f"cwd-{port}-{time.monotonic_ns()}"
    cwd.mkdir()
    stderr = cwd.with_suffix(".stderr")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "thyroaug.tracking.services"]
    cmd += ["--state-dir", str(state_dir), "--port", str(port)]
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True
        )
    sup = Supervisor(proc)
    threading.Thread(target=sup._pump, daemon=True).start()
    try:
        sup.wait_ready(stderr)
        yield sup
        assert not list(cwd.iterdir()), "the supervisor wrote into its working directory"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()


def _status(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _listening(port: int) -> bool:
    return services.port_in_use(port)


def _assert_all_stopped(sup: Supervisor, state_dir: Path) -> None:
    ports = {"mlflow": int(sup.url.rsplit(":", 1)[1]), "postgres": sup.pg_port}
    assert not [name for name, port in ports.items() if _listening(port)], ports
    leftovers = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if str(state_dir).encode() in cmdline.read_bytes():
                leftovers.append(cmdline.read_bytes().replace(b"\0", b" ")[:200])
    assert not leftovers, leftovers


def _credentials(state_dir: Path) -> services.Credentials:
    return services.load_or_create_credentials(state_dir)[0]


def _assert_postgres_refuses_anonymous(port: int, state_dir: Path) -> None:
    import psycopg2

    for password in (None, "wrong-password"):
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(
                host="127.0.0.1", port=port, user="postgres", password=password, dbname="mlflow"
            )
    psql = shutil.which("psql")
    if psql and os.geteuid() == 0:  # the old `-A trust` hole: the socket, as the postgres user
        socket_dir = str(state_dir / "postgres")
        cmd = ["runuser", "-u", "postgres", "--", psql, "-w", "-h", socket_dir, "-p", str(port)]
        done = subprocess.run([*cmd, "-U", "postgres", "-c", "SELECT 1"], capture_output=True)
        assert done.returncode != 0 and b"password" in done.stderr, done


def _log_run_with_artifact(url: str, tmp: Path) -> tuple[str, str]:
    from mlflow import MlflowClient

    client = MlflowClient(url)
    exp = client.create_experiment(f"security-{time.time_ns()}")
    run = client.create_run(exp)
    note = tmp / "note.txt"
    note.write_text("kept on disk")
    client.log_artifact(run.info.run_id, str(note))
    client.set_terminated(run.info.run_id)
    return exp, run.info.run_id


@pytest.fixture(scope="module")
def state_dir() -> Iterator[Path]:
    """A fresh state dir in /tmp, not under pytest's tmp root: every pytest session resets
    /tmp/pytest-of-USER to 0700, which would cut the postgres user off its data mid-test."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    parent = Path(tempfile.mkdtemp(prefix="thyroaug-services-"))
    yield parent / "state"
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def admin_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    return monkeypatch


@pytest.mark.integration
@pytest.mark.slow
def test_supervisor_locks_every_store_and_stops_on_sigterm(
    state_dir: Path, admin_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = services.free_port()
    with supervisor(state_dir, port, tmp_path) as sup:
        creds = _credentials(state_dir)
        admin = (creds.admin_username, creds.admin_password)
        search = f"{sup.url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(search) == 401
        assert _status(search, (creds.admin_username, "wrong")) == 401
        assert _status(search, admin) == 200
        _assert_postgres_refuses_anonymous(sup.pg_port, state_dir)

        cred_file = state_dir / services.CREDENTIALS_FILE
        assert sup.value("# credentials: ") == str(cred_file)
        assert cred_file.stat().st_mode & 0o777 == 0o600
        assert (state_dir / "basic_auth.db").stat().st_mode & 0o777 == 0o600
        assert state_dir.stat().st_mode & 0o067 == 0  # root: group postgres may only traverse
        assert not state_dir.resolve().is_relative_to(REPO)
        printed = "\n".join(sup.lines)
        assert not [s for s in (creds.admin_password, creds.pg_password) if s in printed]

        admin_env.setenv("MLFLOW_TRACKING_USERNAME", creds.admin_username)
        admin_env.setenv("MLFLOW_TRACKING_PASSWORD", creds.admin_password)
        exp, run_id = _log_run_with_artifact(sup.url, tmp_path)
        on_disk = state_dir / "artifacts" / exp / run_id / "artifacts" / "note.txt"
        assert on_disk.read_text() == "kept on disk"
        download = f"{sup.url}/api/2.0/mlflow-artifacts/artifacts/{exp}/{run_id}/artifacts/note.txt"
        assert _status(download) == 401
        assert _status(download, admin) == 200

        assert sup.stop(signal.SIGTERM) < STOP_TIMEOUT
        _assert_all_stopped(sup, state_dir)

    from mlflow import MlflowClient

    with supervisor(state_dir, port, tmp_path) as again:
        got = MlflowClient(again.url).download_artifacts(run_id, "note.txt", str(tmp_path))
        assert Path(got).read_text() == "kept on disk"
        again.stop(signal.SIGINT)  # Ctrl-C takes the same path
        _assert_all_stopped(again, state_dir)


@pytest.mark.integration
@pytest.mark.slow
def test_sighup_stops_every_service(state_dir: Path, tmp_path: Path) -> None:
    with supervisor(state_dir, services.free_port(), tmp_path) as sup:
        assert _status(f"{sup.url}/api/2.0/mlflow/experiments/search?max_results=1") == 401
        sup.stop(signal.SIGHUP)
        _assert_all_stopped(sup, state_dir)


def test_default_state_dir_is_private_and_outside_the_repo(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(services.STATE_DIR_ENV, raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    default = services.default_state_dir()
    assert default.parts[-2:] == ("thyroaug", "services")
    assert not default.resolve().is_relative_to(REPO)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert services.default_state_dir() == tmp_path / "xdg" / "thyroaug" / "services"
    monkeypatch.setenv(services.STATE_DIR_ENV, str(tmp_path / "mine"))
    made = services.prepare_state_dir(services.default_state_dir())
    assert made == (tmp_path / "mine").resolve() and made.stat().st_mode & 0o777 == 0o700


def test_credentials_file_is_0600_and_stable(tmp_path: Path) -> None:
    creds, path = services.load_or_create_credentials(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert services.load_or_create_credentials(tmp_path)[0] == creds
    os.chmod(path, 0o644)
    services.load_or_create_credentials(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert len({creds.admin_password, creds.pg_password, creds.pg_superuser_password}) == 3


def test_free_port_is_not_listening() -> None:
    port = services.free_port()
    assert not _listening(port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert _listening(port)
