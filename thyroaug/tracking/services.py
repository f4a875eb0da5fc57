"""The `server` tracking profile's services on 127.0.0.1: PostgreSQL and ``mlflow server``.

``python -m thyroaug.tracking.services`` (``main``) supervises them (``mlruns_config/README.md``):
secrets in ``credentials.env`` (0600) in a private state dir outside the working tree; PostgreSQL
with scram-sha-256 passwords (MLflow's role gets its password via ``PGPASSWORD``, never argv);
artifacts on disk or a real S3/MinIO, proxied by ``mlflow server --serve-artifacts`` behind basic
auth (user store ``basic_auth.db``, 0600). SIGTERM, SIGHUP and Ctrl-C share one shutdown path:
``pg_ctl stop -m fast``, the server's process group (uvicorn, huey consumers) ended, leftover
tagged children killed. The moto S3 test stack is in ``tests/integration/service_doubles.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from thyroaug.errors import TrackingError

log = logging.getLogger(__name__)
HOST = "127.0.0.1"
STATE_DIR_ENV = "THYROAUG_SERVICES_DIR"
CHILD_TAG_ENV = "THYROAUG_SERVICES_TAG"
CREDENTIALS_FILE = "credentials.env"
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
Check = Callable[[], bool]


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = HOST) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def wait_until(
    check: Check, what: str, timeout: float, proc: subprocess.Popen | None = None
) -> None:
    """Poll ``check`` until it returns True.

    Raises:
        TrackingError: ``proc`` exited first, or ``timeout`` seconds passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise TrackingError(f"{what} exited with code {proc.returncode} before it was ready")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.3)
    raise TrackingError(f"{what} did not become ready within {timeout:.0f} s")


def http_ok(url: str) -> bool:
    """True when ``url`` answers with a status below 500."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500


def stop_session(proc: subprocess.Popen, timeout: float = 15) -> None:
    """End ``proc``'s whole process group (it was started in its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):  # a worker that outlived its parent
        os.killpg(proc.pid, signal.SIGKILL)


def default_state_dir() -> Path:
    """``$THYROAUG_SERVICES_DIR``, else ``$XDG_STATE_HOME``/thyroaug/services (~/.local/state)."""
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser() / "thyroaug" / "services"


def prepare_state_dir(path: Path) -> Path:
    """Create the state directory with mode 0700; its absolute path (warns inside a git tree)."""
    path = Path(path).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    tree = next((p for p in (path, *path.parents) if (p / ".git").exists()), None)
    if tree is not None:
        log.warning("state dir %s is inside the git tree %s: move it out", path, tree)
    return path


@dataclass
class Credentials:
    """Generated secrets of one state directory (their names in the file: ``_KEYS``)."""

    admin_username: str
    admin_password: str
    pg_user: str
    pg_password: str
    pg_superuser_password: str
    flask_secret_key: str

    @classmethod
    def generate(cls) -> Credentials:
        """Fresh random secrets."""
        token = secrets.token_urlsafe
        return cls("admin", token(24), "mlflow", token(24), token(24), token(32))


_KEYS = {
    "admin_username": "MLFLOW_TRACKING_USERNAME",
    "admin_password": "MLFLOW_TRACKING_PASSWORD",
    "pg_user": "THYROAUG_PG_USER",
    "pg_password": "THYROAUG_PG_PASSWORD",
    "pg_superuser_password": "THYROAUG_PG_SUPERUSER_PASSWORD",
    "flask_secret_key": "THYROAUG_FLASK_SECRET_KEY",
}


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, mode 0600 from the first byte."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create_credentials(state_dir: Path) -> tuple[Credentials, Path]:
    """Read ``<state_dir>/credentials.env`` (0600), creating it with new secrets if absent."""
    path = Path(state_dir) / CREDENTIALS_FILE
    if not path.exists():
        creds = Credentials.generate()
        lines = [f"{_KEYS[f.name]}={getattr(creds, f.name)}" for f in fields(creds)]
        _write_private(path, "# generated secrets: keep private (0600)\n" + "\n".join(lines) + "\n")
        return creds, path
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise TrackingError(f"{path} belongs to uid {st.st_uid}: run the services as its owner")
    if st.st_mode & 0o077:
        log.warning("%s was readable by others: reset to 0600 (consider new secrets)", path)
        os.chmod(path, 0o600)
    lines = path.read_text().splitlines()
    values = dict(ln.split("=", 1) for ln in lines if "=" in ln and not ln.startswith("#"))
    missing = [key for key in _KEYS.values() if not values.get(key)]
    if missing:
        raise TrackingError(
            f"{path} lacks {', '.join(missing)}: restore the file from a backup, or start over "
            "with an empty --state-dir (the old database's passwords are then unknown)"
        )
    return Credentials(**{name: values[key] for name, key in _KEYS.items()}), path


def postgres_available() -> str | None:
    """None when PostgreSQL can be started here, else the reason it cannot."""
    missing = [tool for tool in ("initdb", "pg_ctl") if shutil.which(tool) is None]
    if missing:
        return f"{missing[0]} not on PATH (install Debian's postgresql package)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


@dataclass
class PostgresDB:
    """A running database; ``uri`` has no password: give a client ``PGPASSWORD=password``."""

    port: int
    database: str
    user: str
    password: str

    @property
    def uri(self) -> str:
        """SQLAlchemy URI without the password (libpq reads ``PGPASSWORD``)."""
        return f"postgresql+psycopg2://{self.user}@{HOST}:{self.port}/{self.database}"


def _run_as_postgres(data_dir: Path, state_dir: Path | None) -> list[str]:
    """As root: give ``data_dir`` to the postgres user and let it reach it; the command prefix."""
    if os.geteuid() != 0:
        return []
    entry = pwd.getpwnam("postgres")
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    os.chmod(data_dir, 0o700)
    for parent in data_dir.parents:
        st = parent.stat()
        bit = 0o100 if st.st_uid == entry.pw_uid else 0o010 if st.st_gid == entry.pw_gid else 1
        if parent == Path("/") or st.st_mode & bit:
            continue
        if parent == state_dir:  # private: only the postgres group may traverse it
            os.chown(parent, -1, entry.pw_gid)
            os.chmod(parent, 0o710)
        else:
            log.warning("granting search (o+x) on %s so PostgreSQL can reach its data", parent)
            os.chmod(parent, parent.stat().st_mode | 0o001)
    return ["runuser", "-u", "postgres", "--"]


def _pg_ctl(prefix: list[str], pgdata: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [*prefix, "pg_ctl", "-D", str(pgdata), *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def _initdb(pgdata: Path, prefix: list[str], superuser_password: str) -> None:
    pwfile = pgdata.parent / ".initdb-pw"
    _write_private(pwfile, superuser_password + "\n")
    if prefix:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
    cmd = [*prefix, "initdb", "-D", str(pgdata), "-U", "postgres", "--auth=scram-sha-256"]
    try:
        done = subprocess.run([*cmd, f"--pwfile={pwfile}"], capture_output=True, text=True)
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode:
        raise TrackingError(f"initdb failed for {pgdata}: {done.stderr.strip()[-500:]}")


def _check_hba(pgdata: Path) -> None:
    rules = [ln.split() for ln in (pgdata / "pg_hba.conf").read_text().splitlines()]
    if any(rule and rule[-1] == "trust" and not rule[0].startswith("#") for rule in rules):
        raise TrackingError(
            f"{pgdata} allows `trust` logins (anyone local reads every run): use an empty "
            "--state-dir, or give roles passwords and set pg_hba.conf methods to scram-sha-256"
        )


def _ensure_role_and_db(db: PostgresDB, superuser_password: str) -> None:
    """Create (or re-password) MLflow's role and its database, closed to other roles."""
    import psycopg2  # optional: the dev extra's psycopg2-binary; only the server profile needs it
    from psycopg2 import sql

    login = {"user": "postgres", "password": superuser_password, "dbname": "postgres"}
    conn = psycopg2.connect(host=HOST, port=db.port, **login)
    conn.autocommit = True
    role, name = sql.Identifier(db.user), sql.Identifier(db.database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (db.user,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(role), (db.password,))
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db.database,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(name, role))
            cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(name))
    finally:
        conn.close()


def _pg_stop(prefix: list[str], pgdata: Path) -> None:
    """``pg_ctl stop -m fast``; if that fails (e.g. a parent lost o+x), SIGINT the postmaster."""
    done = _pg_ctl(prefix, pgdata, "stop", "-m", "fast")
    pidfile = pgdata / "postmaster.pid"
    if done.returncode == 0 or not pidfile.exists():
        return
    log.warning("pg_ctl stop failed (%s); signalling the postmaster", done.stderr.strip())
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pidfile.read_text().split()[0]), signal.SIGINT)  # = fast shutdown
        deadline = time.monotonic() + 20
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.2)


@contextlib.contextmanager
def postgres(
    data_dir: Path,
    port: int | None = None,
    database: str = "mlflow",
    credentials: Credentials | None = None,
    state_dir: Path | None = None,
    stop_stale: bool = False,
) -> Iterator[PostgresDB]:
    """Run a password-protected PostgreSQL cluster in ``data_dir``; yields MLflow's database.

    ``stop_stale`` (under the supervisor lock only) stops a server left running on ``data_dir``.
    """
    reason = postgres_available()
    if reason:
        raise TrackingError(f"cannot start PostgreSQL: {reason}")
    creds, port = credentials or Credentials.generate(), port or free_port()
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    prefix = _run_as_postgres(data_dir, state_dir)
    pgdata = data_dir / "pgdata"
    if not (pgdata / "PG_VERSION").exists():
        _initdb(pgdata, prefix, creds.pg_superuser_password)
    _check_hba(pgdata)
    if _pg_ctl(prefix, pgdata, "status").returncode == 0:
        if not stop_stale:
            stop = shlex.join([*prefix, "pg_ctl", "-D", str(pgdata), "stop", "-m", "fast"])
            raise TrackingError(f"PostgreSQL already runs on {pgdata}: stop it with `{stop}`")
        log.warning("stopping a PostgreSQL left running on %s", pgdata)
        _pg_stop(prefix, pgdata)
    opts = f"-p {port} -k {shlex.quote(str(data_dir))} -c listen_addresses={HOST}"
    logfile = str(data_dir / "postgres.log")
    db = PostgresDB(port=port, database=database, user=creds.pg_user, password=creds.pg_password)
    try:
        started = _pg_ctl(prefix, pgdata, "-l", logfile, "-o", opts, "-w", "start")
        if started.returncode:
            raise TrackingError(f"PostgreSQL did not start; see {logfile}: {started.stderr}")
        _ensure_role_and_db(db, creds.pg_superuser_password)
        yield db
    finally:
        _pg_stop(prefix, pgdata)


def basic_auth_env(state_dir: Path, creds: Credentials) -> dict[str, str]:
    """Write the auth config (user store ``basic_auth.db``, 0600) in ``state_dir``; its env."""
    state_dir = Path(state_dir).resolve()
    store = state_dir / "basic_auth.db"
    os.close(os.open(store, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(store, 0o600)
    ini = state_dir / "basic_auth.ini"
    text = (
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{store}\n"
        f"admin_username = {creds.admin_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # a password check costs ~1 s of scrypt: cache good ones per worker (1 worker here)
        "auth_cache_ttl_seconds = 60\n"
    )
    _write_private(ini, text)
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": creds.admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": creds.flask_secret_key,
    }


@contextlib.contextmanager
def mlflow_server(
    backend_store_uri: str,
    artifacts_destination: str,
    port: int | None = None,
    env: dict[str, str] | None = None,
    auth: bool = False,
    log_file: Path | None = None,
    workers: int = 1,
    cwd: Path | None = None,
) -> Iterator[str]:
    """Run ``mlflow server`` with proxied artifacts; yields its http URL.

    With ``auth`` the ``env`` must hold ``basic_auth_env(...)``. Secrets travel in ``env`` only
    (argv is world-readable); the server runs in its own session with umask 077.
    """
    port = port or free_port()
    if port_in_use(port):
        raise TrackingError(f"port {port} on {HOST} is in use: pass another --port or free it")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port)]
    cmd += ["--artifacts-destination", artifacts_destination, "--serve-artifacts"]
    cmd += ["--workers", str(workers)] + (["--app-name", "basic-auth"] if auth else [])
    proc_env = {**os.environ, **(env or {}), "MLFLOW_BACKEND_STORE_URI": backend_store_uri}
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        proc_env.pop(var, None)
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    opts = {"stdout": out, "stderr": subprocess.STDOUT, "start_new_session": True}
    proc = subprocess.Popen(cmd, env=proc_env, umask=0o077, cwd=cwd, **opts)
    try:
        url, what = f"http://{HOST}:{port}", f"mlflow server (log: {log_file})"
        wait_until(lambda: http_ok(f"{url}/health"), what, 120, proc)
        yield url
    finally:
        stop_session(proc)
        if log_file:
            out.close()  # type: ignore[union-attr]


@dataclass
class ServiceInfo:
    """What a client needs to know about a running stack (no secrets)."""

    tracking_uri: str
    postgres_port: int
    credentials_file: Path
    artifacts: str


def _artifacts_destination(spec: str, state_dir: Path) -> str:
    """``disk``: ``<state_dir>/artifacts``; else an ``s3://`` URI reached with ``AWS_*`` env."""
    if spec == "disk":
        (state_dir / "artifacts").mkdir(mode=0o700, exist_ok=True)
        return str(state_dir / "artifacts")
    if not spec.startswith("s3://") or not os.environ.get("AWS_SECRET_ACCESS_KEY"):
        raise TrackingError(
            "--artifacts takes `disk` or s3://BUCKET/PREFIX with AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY (and MLFLOW_S3_ENDPOINT_URL for MinIO) set for the supervisor"
        )
    return spec


@contextlib.contextmanager
def serve(
    state_dir: Path, port: int | None = None, auth: bool = True, artifacts: str = "disk"
) -> Iterator[ServiceInfo]:
    """The server profile's stack on a prepared ``state_dir``: PostgreSQL + MLflow (+ auth)."""
    creds, cred_file = load_or_create_credentials(state_dir)
    destination = _artifacts_destination(artifacts, state_dir)
    (state_dir / "logs").mkdir(mode=0o700, exist_ok=True)
    log_file = state_dir / "logs" / "mlflow-server.log"
    pg_dir = state_dir / "postgres"
    with postgres(pg_dir, credentials=creds, state_dir=state_dir, stop_stale=True) as db:
        env = {"PGPASSWORD": db.password, **(basic_auth_env(state_dir, creds) if auth else {})}
        opts = {"env": env, "auth": auth, "log_file": log_file, "cwd": state_dir}
        with mlflow_server(db.uri, destination, port, **opts) as url:
            yield ServiceInfo(url, db.port, cred_file, destination)


@contextlib.contextmanager
def _supervisor_lock(state_dir: Path) -> Iterator[None]:
    """One supervisor per state dir (an flock released when the process dies)."""
    fd = os.open(state_dir / "supervisor.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            msg = f"another supervisor runs on {state_dir}: stop it or pass another --state-dir"
            raise TrackingError(msg) from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _tracked_children() -> Iterator[None]:
    """Tag every child's environment; on exit kill any tagged process still alive."""
    tag = os.environ[CHILD_TAG_ENV] = uuid.uuid4().hex
    try:
        yield
    finally:
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError, ValueError):
                mine = int(proc.name) != os.getpid()
                if mine and tag.encode() in (proc / "environ").read_bytes():
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ")[:200]
                    log.warning("killing leftover child process %s: %s", proc.name, cmd)
                    os.kill(int(proc.name), signal.SIGKILL)


def _handle_shutdown_signals(handler: Callable | signal.Handlers) -> None:
    for sig in SHUTDOWN_SIGNALS:
        signal.signal(sig, handler)


def _shutdown_signal(signum: int, _frame: object) -> None:
    """SIGTERM/SIGHUP/SIGINT: ignore repeats, then unwind like Ctrl-C (KeyboardInterrupt)."""
    _handle_shutdown_signals(signal.SIG_IGN)
    log.info("%s received: stopping services", signal.Signals(signum).name)
    raise KeyboardInterrupt


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=main.__doc__)
    where = f"${STATE_DIR_ENV}, else $XDG_STATE_HOME/thyroaug/services"
    parser.add_argument("--state-dir", type=Path, help=f"private data + secrets (default: {where})")
    parser.add_argument("--port", type=int, default=5000, help="mlflow server port on 127.0.0.1")
    on_off = argparse.BooleanOptionalAction
    parser.add_argument("--auth", action=on_off, default=True, help="MLflow basic auth (on)")
    parser.add_argument("--artifacts", default="disk", help="disk (default) or s3://BUCKET/PREFIX")
    return parser.parse_args(argv)


def _print_ready(info: ServiceInfo, auth: bool) -> None:
    print(f"export THYROAUG_TRACKING=server THYROAUG_TRACKING_URI={info.tracking_uri}")
    print(f"# tracking URI: {info.tracking_uri} (basic auth: {'on' if auth else 'OFF'})")
    print(f"# credentials: {info.credentials_file} (0600; `set -a; . FILE; set +a` for clients)")
    print(f"# postgres: {HOST}:{info.postgres_port} (password auth); artifacts: {info.artifacts}")
    print("# ready; SIGTERM, SIGHUP or Ctrl-C stops everything", flush=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m thyroaug.tracking.services`: run the server profile's stack until stopped."""
    _handle_shutdown_signals(_shutdown_signal)
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        state_dir = prepare_state_dir(args.state_dir or default_state_dir())
        with (
            _supervisor_lock(state_dir),
            _tracked_children(),
            serve(state_dir, args.port, args.auth, args.artifacts) as info,
        ):
            try:
                _print_ready(info, args.auth)
                while True:
                    time.sleep(3600)
            finally:  # whatever ends the loop, no later signal may cut the cleanup short
                _handle_shutdown_signals(signal.SIG_IGN)
    except KeyboardInterrupt:
        print("# stopped", flush=True)
        return 0
    except TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
