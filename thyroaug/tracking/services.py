"""Start the `server` tracking profile's services on 127.0.0.1: PostgreSQL, an S3 endpoint, MLflow.

Used by the integration tests and by ``python -m thyroaug.tracking.services`` (a team-style tracking
server on one machine; see ``mlruns_config/README.md``). Each service is a context manager that
starts a real process on a free port, waits until it answers, and stops it (process group) on exit.

- PostgreSQL: Debian's ``initdb`` / ``pg_ctl`` (they refuse to run as root, so as root they run as
  the ``postgres`` user on a data directory that user owns).
- S3: moto's server (``moto_server``), bucket created with boto3. Any S3-compatible endpoint (MinIO)
  works the same way through ``MLFLOW_S3_ENDPOINT_URL``.
- MLflow: ``mlflow server --backend-store-uri postgresql+psycopg2://... --artifacts-destination
  s3://BUCKET/artifacts --serve-artifacts``; AWS credentials go to the server process only, clients
  need none (artifacts are proxied). ``auth=True`` adds ``--app-name basic-auth``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from thyroaug.errors import TrackingError

log = logging.getLogger(__name__)
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait(check, what: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise TrackingError(f"{what} exited with code {proc.returncode} before it was ready")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.3)
    raise TrackingError(f"{what} did not become ready within {timeout:.0f} s")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500


def _stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def postgres_available() -> str | None:
    """None when PostgreSQL can be started here, else the reason it cannot."""
    for tool in ("initdb", "pg_ctl"):
        if shutil.which(tool) is None:
            return f"{tool} not on PATH (install Debian's postgresql package)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


@contextlib.contextmanager
def postgres(data_dir: Path, port: int | None = None, database: str = "mlflow") -> Iterator[str]:
    """Run a throw-away PostgreSQL cluster; yields a SQLAlchemy URI for ``database``."""
    reason = postgres_available()
    if reason:
        raise TrackingError(f"cannot start PostgreSQL: {reason}")
    port = port or free_port()
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    prefix: list[str] = []
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
        for parent in data_dir.parents:  # the postgres user must be able to reach its data dir
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
        prefix = ["runuser", "-u", "postgres", "--"]
    pgdata = data_dir / "pgdata"
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run(
            [*prefix, "initdb", "-D", str(pgdata), "-A", "trust", "-U", "postgres"],
            check=True,
            capture_output=True,
        )
    opts = f"-p {port} -k {data_dir} -c listen_addresses={HOST}"
    subprocess.run(
        [
            *prefix,
            "pg_ctl",
            "-D",
            str(pgdata),
            "-l",
            str(data_dir / "postgres.log"),
            "-o",
            opts,
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        import psycopg2

        def ready() -> bool:
            psycopg2.connect(host=HOST, port=port, user="postgres", dbname="postgres").close()
            return True

        _wait(ready, "PostgreSQL", 30)
        conn = psycopg2.connect(host=HOST, port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{database}"')
        conn.close()
        yield f"postgresql+psycopg2://postgres@{HOST}:{port}/{database}"
    finally:
        subprocess.run(
            [*prefix, "pg_ctl", "-D", str(pgdata), "stop", "-m", "fast"], capture_output=True
        )


@dataclass
class S3Endpoint:
    """An S3-compatible endpoint and the credentials to reach it."""

    url: str
    bucket: str
    access_key: str = "thyroaug-test"
    secret_key: str = "thyroaug-test-secret"
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """Environment for a process (the MLflow server) that talks to this endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "MLFLOW_S3_ENDPOINT_URL": self.url,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def keys(self, prefix: str = "") -> list[str]:
        """All object keys in the bucket under ``prefix``."""
        out: list[str] = []
        for page in (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        ):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out


@contextlib.contextmanager
def moto_s3(port: int | None = None, bucket: str = "thyroaug") -> Iterator[S3Endpoint]:
    """Run moto's S3 server and create ``bucket``."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(exe).exists():
        raise TrackingError("moto_server not found (pip install 'moto[server]')")
    port = port or free_port()
    proc = subprocess.Popen(
        [exe, "-H", HOST, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://{HOST}:{port}"
        _wait(lambda: _http_ok(url), "moto S3 server", 30, proc)
        endpoint = S3Endpoint(url=url, bucket=bucket)
        endpoint.client().create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        _stop(proc)


@contextlib.contextmanager
def mlflow_server(
    backend_store_uri: str,
    artifacts_destination: str,
    port: int | None = None,
    env: dict[str, str] | None = None,
    auth: bool = False,
    log_file: Path | None = None,
    workers: int = 1,
) -> Iterator[str]:
    """Run ``mlflow server`` with proxied artifacts; yields its http URL."""
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        artifacts_destination,
        "--serve-artifacts",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if auth:
        cmd += ["--app-name", "basic-auth"]
    proc_env = {**os.environ, **(env or {})}
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        proc_env.pop(var, None)
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, env=proc_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        url = f"http://{HOST}:{port}"
        _wait(lambda: _http_ok(f"{url}/health"), "mlflow server", 120, proc)
        yield url
    finally:
        _stop(proc)
        if log_file:
            out.close()  # type: ignore[union-attr]


@contextlib.contextmanager
def server_stack(workdir: Path, auth: bool = False) -> Iterator[tuple[str, S3Endpoint]]:
    """PostgreSQL + S3 + MLflow server together; yields (tracking URL, S3 endpoint)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with (
        postgres(workdir / "postgres") as db_uri,
        moto_s3() as s3,
        mlflow_server(
            db_uri,
            f"s3://{s3.bucket}/artifacts",
            env=s3.env(),
            auth=auth,
            log_file=workdir / "mlflow-server.log",
        ) as url,
    ):
        yield url, s3


def main(argv: list[str] | None = None) -> int:
    """`python -m thyroaug.tracking.services`: run the server profile's stack until Ctrl-C."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--workdir", default=".services", help="data folder for PostgreSQL/logs")
    parser.add_argument("--auth", action="store_true", help="enable MLflow basic auth")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with server_stack(Path(args.workdir), auth=args.auth) as (url, s3):
        print(f"export THYROAUG_TRACKING=server THYROAUG_TRACKING_URI={url}")
        print(f"# artifacts: s3://{s3.bucket}/artifacts via {s3.url}; Ctrl-C stops everything")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
