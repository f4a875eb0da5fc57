"""`thyroaug serve`: serve a registered generator behind request limits (instead of
`mlflow models serve`).

Example:
    thyroaug serve -m models:/thyroaug-fm@champion --port 5001

MLflow's own scoring app (/ping, /health, /invocations) for the model, loaded with
``mlflow.pyfunc.load_model`` from the project's tracking store, behind
``thyroaug.generators.http_guard.GuardMiddleware``: bodies over ``--max-body-mb`` get 413, a body
that is not ``application/json`` gets 415, one that does not arrive within 30 s gets 408, a body
nested deeper than 32, not JSON, with keys other than one data key and ``params``, or with params
the model does not declare or of the wrong type / range gets 400 before MLflow parses it,
malformed HTTP framing gets a JSON 400, at most ``--max-concurrent`` predictions run (others
wait ``--queue-timeout`` s, then 503 with Retry-After), every error body is a short JSON
``{"error_code", "message"}`` without stack trace, paths, versions or echoed input, and /version
is a 404. One uvicorn worker on 127.0.0.1 unless ``--host`` says otherwise (there is no
authentication: put a proxy with auth / TLS in front before exposing it). SIGINT / SIGTERM stop it.
"""

from __future__ import annotations

import argparse
import logging
import os

import mlflow

from thyroaug.errors import ConfigError
from thyroaug.generators.http_guard import MB, Limits, serve
from thyroaug.tracking.setup import resolve_uris

log = logging.getLogger(__name__)

TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `thyroaug serve`."""
    parser.add_argument(
        "-m",
        "--model-uri",
        required=True,
        help="MLflow model URI of a generator (models:/NAME@ALIAS, models:/NAME/N, runs:/...)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=5001, help="port (default 5001; the MLflow UI takes 5000)"
    )
    parser.add_argument(
        "--max-body-mb", type=float, default=8.0, help="largest request body in MB (default 8)"
    )
    parser.add_argument(
        "--max-concurrent", type=int, default=1, help="predictions at the same time (default 1)"
    )
    parser.add_argument(
        "--queue-timeout",
        type=float,
        default=5.0,
        help="seconds a request waits for a free slot before its 503 (default 5)",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        help=f"seconds per request before a 504 (default ${TIMEOUT_ENV} or 60)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=32,
        help="open connections at most; uvicorn answers 503 above it (default 32)",
    )


def run(args: argparse.Namespace) -> int:
    """Load the model and serve it until interrupted."""

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: not a port number")
    if args.max_body_mb <= 0 or args.max_concurrent < 1 or args.queue_timeout < 0:
        raise ConfigError("--max-body-mb > 0, --max-concurrent >= 1, --queue-timeout >= 0")
    if args.max_connections < args.max_concurrent:
        raise ConfigError("--max-connections must be at least --max-concurrent")
    if args.timeout is not None:
        if args.timeout < 1:
            raise ConfigError(f"--timeout {args.timeout}: need at least 1 second")
        os.environ[TIMEOUT_ENV] = str(args.timeout)  # read by MLflow's scoring app
    if args.host not in LOOPBACK:
        log.warning("binding %s: no authentication here (put a proxy in front)", args.host)
    mlflow.set_tracking_uri(resolve_uris()[0])  # read the model only: create nothing
    limits = Limits(
        max_body_bytes=max(1, int(args.max_body_mb * MB)),
        max_concurrent=args.max_concurrent,
        queue_timeout=args.queue_timeout,
    )
    serve(
        args.model_uri,
        host=args.host,
        port=args.port,
        limits=limits,
        max_connections=args.max_connections,
    )
    return 0
