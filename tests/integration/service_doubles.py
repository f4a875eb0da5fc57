"""Test doubles of the `server` tracking profile: moto's S3 and a PostgreSQL + S3 + MLflow stack.

moto's S3 server accepts any credentials and keeps objects in memory: it stands in for S3 / MinIO
in tests only. The real supervisor is ``python -m thyroaug.tracking.services``.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3

from thyroaug.errors import TrackingError
from thyroaug.tracking.services import (
    HOST,
    Credentials,
    basic_auth_env,
    free_port,
    http_ok,
    mlflow_server,
    postgres,
    stop_session,
    wait_until,
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
        names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
        values = (self.access_key, self.secret_key, self.region, self.url)
        return dict(zip((*names, "MLFLOW_S3_ENDPOINT_URL"), values))

    def client(self):
        """A boto3 S3 client for this endpoint."""
        keys = {"aws_access_key_id": self.access_key, "aws_secret_access_key": self.secret_key}
        return boto3.client("s3", endpoint_url=self.url, region_name=self.region, **keys)

    def keys(self, prefix: str = "") -> list[str]:
        """All object keys in the bucket under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2")
        pages = pages.paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@contextlib.contextmanager
def moto_s3(port: int | None = None, bucket: str = "thyroaug") -> Iterator[S3Endpoint]:
    """Run moto's S3 server (no auth, in memory) and create ``bucket``."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(exe).exists():
        raise TrackingError("moto_server not found (pip install 'moto[server]')")
    port = port or free_port()
    out = subprocess.DEVNULL
    cmd = [exe, "-H", HOST, "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True)
    try:
        url = f"http://{HOST}:{port}"
        wait_until(lambda: http_ok(url), "moto S3 server", 30, proc)
        endpoint = S3Endpoint(url=url, bucket=bucket)
        endpoint.client().create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        stop_session(proc)


@contextlib.contextmanager
def server_stack(
    workdir: Path, auth: bool = False, credentials: Credentials | None = None
) -> Iterator[tuple[str, S3Endpoint]]:
    """PostgreSQL + moto S3 + MLflow server; yields (tracking URL, S3 endpoint)."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    creds = credentials or Credentials.generate()
    with postgres(workdir / "postgres", credentials=creds) as db, moto_s3() as s3:
        env = {
            **s3.env(),
            "PGPASSWORD": db.password,
            **(basic_auth_env(workdir, creds) if auth else {}),
        }
        log_file = workdir / "mlflow-server.log"
        artifacts = f"s3://{s3.bucket}/artifacts"
        with mlflow_server(db.uri, artifacts, env=env, auth=auth, log_file=log_file) as url:
            yield url, s3
