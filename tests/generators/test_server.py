"""`thyroaug serve`: body-size, content-type, concurrency and error-body limits around MLflow's
scoring app (``thyroaug.generators.http_guard``), in-process through Starlette's ``TestClient`` with
the smoke FM generator registered once per module; the slow test starts the real command."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from starlette.testclient import TestClient
from test_fm_pyfunc import (  # noqa: F401  (fixtures)
    _free_port,
    generator_folder,
    log_smoke_fm,
    mask_bank,
)

from thyroaug.generators.flow_matching.pyfunc import FM_REGISTERED_NAME
from thyroaug.generators.http_guard import (
    INTERNAL_MESSAGE,
    MB,
    GuardMiddleware,
    Limits,
    _Slot,
    build_app,
    clean_message,
    error_body,
)

JSON = "application/json"
VALID = {"inputs": [{"label": "DG", "count": 2, "seed": 5}]}
LEAKS = ("Traceback", "site-packages", 'File "', "stack_trace", sys.prefix, mlflow.__version__)


@pytest.fixture(scope="module")
def registered(tmp_path_factory, generator_folder, mask_bank) -> Iterator[tuple[str, Path]]:  # noqa: F811
    """(models:/thyroaug-fm@champion, store folder): the smoke FM generator, max 8 images."""
    home = tmp_path_factory.mktemp("serve-store")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    before = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_PARENT_RUN_ID"):
            mp.delenv(var, raising=False)
        mp.setenv("THYROAUG_HOME", str(home))
        mp.setenv("THYROAUG_TRACKING", "local")
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("serve-test")
        with mlflow.start_run():
            logged = log_smoke_fm(
                generator_folder,
                mask_bank,
                home,
                registered_name=FM_REGISTERED_NAME,
                alias="champion",
                max_count=8,
            )
        yield str(logged.registry_uri), home
    mlflow.set_tracking_uri(before)


@pytest.fixture
def model(registered: tuple[str, Path]) -> Any:
    return mlflow.pyfunc.load_model(registered[0])


@pytest.fixture
def client(model: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[..., TestClient]:
    """``client(**limits)``: a TestClient of ``build_app(model, Limits(**limits))``."""
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "false")  # init sets it; restored

    def make(**limits: Any) -> TestClient:
        return TestClient(build_app(model, Limits(**limits)), raise_server_exceptions=False)

    return make


def _clean(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, (leak, text[:300])


def _post(client: TestClient, body: Any, content_type: str = "application/json") -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/invocations", content=data, headers={"Content-Type": content_type})


def test_valid_request_returns_images_and_ping_answers(client) -> None:
    app = client()
    assert app.get("/ping").status_code == 200 and app.get("/health").status_code == 200
    answer = _post(app, VALID)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [p["seed"] for p in predictions] == [5, 6] and {p["label"] for p in predictions} == {
        "DG"
    }
    assert len(predictions[0]["image"]) == 32 and len(predictions[0]["image"][0]) == 32


def test_oversized_bodies_are_413_with_or_without_content_length(client) -> None:
    app = client(max_body_bytes=1000)
    pad = {"inputs": [{"label": "DG", "pad": "x" * 5000}]}
    answer = _post(app, pad)
    assert answer.status_code == 413
    assert answer.json() == {
        "error_code": "REQUEST_TOO_LARGE",
        "message": "request body over the limit of 0.000953674 MB (1000 bytes)",
    }
    chunks = (json.dumps(pad).encode()[i : i + 100] for i in range(0, 5100, 100))
    chunked = app.post("/invocations", content=chunks, headers={"Content-Type": JSON})
    assert chunked.status_code == 413 and chunked.json()["error_code"] == "REQUEST_TOO_LARGE"
    assert _post(app, VALID).status_code == 200  # under the limit


async def _asgi(app: Any, chunks: list[bytes], answered: asyncio.Event | None = None) -> dict:
    """POST ``chunks`` to /invocations of an ASGI ``app`` on this event loop (no client library):
    the answer's status and body, and how many body chunks the app read."""
    out: dict[str, Any] = {"reads": 0, "body": b""}
    done = answered or asyncio.Event()

    async def receive() -> dict:
        if out["reads"] == len(chunks):
            await done.wait()
            return {"type": "http.disconnect"}
        out["reads"] += 1
        more = out["reads"] < len(chunks)
        return {"type": "http.request", "body": chunks[out["reads"] - 1], "more_body": more}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")
            if not message.get("more_body", False):
                done.set()

    scope = {
        "type": "http", "http_version": "1.1", "method": "POST", "path": "/invocations",
        "raw_path": b"/invocations", "query_string": b"", "root_path": "", "scheme": "http",
        "headers": [(b"content-type", b"application/json; charset=utf-8")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }  # fmt: skip
    await app(scope, receive, send)
    return out


def test_a_streamed_body_stops_being_read_at_the_limit() -> None:
    """100-byte chunks, no Content-Length, a 250-byte limit: the third chunk is the last read."""
    reached: list[str] = []

    async def inner(scope, receive, send) -> None:
        reached.append(scope["path"])

    guard = GuardMiddleware(inner, Limits(max_body_bytes=250))
    out = asyncio.run(_asgi(guard, [b"x" * 100] * 10))
    assert out["reads"] == 3 and out["status"] == 413 and reached == []


def test_only_json_is_accepted_and_the_answer_leaks_nothing(client) -> None:
    app = client()
    for content_type in ("text/csv", "application/x-parquet", "text/plain", ""):
        answer = _post(app, b"label,count,seed\nDG,2,1\n", content_type)
        assert answer.status_code == 415, content_type
        assert answer.json()["error_code"] == "UNSUPPORTED_MEDIA_TYPE"
        assert "application/json" in answer.json()["message"]
        _clean(answer.text)
    answer = _post(app, b"{not json at all", JSON)  # MLflow's own 400 quotes the input
    assert answer.status_code == 400 and "not json" not in answer.text
    assert "valid JSON" in answer.json()["message"]
    _clean(answer.text)
    answer = _post(app, {"wrong_key": [{"label": "DG"}]})
    assert answer.status_code == 400 and set(answer.json()) == {"error_code", "message"}


def test_model_400s_keep_their_message_without_echoing_the_input(client) -> None:
    app = client()
    mask = [[0.5] * 32] * 32
    answer = _post(app, {"inputs": [{"label": "DG", "counts": 5, "mask": mask}]})
    assert answer.status_code == 400
    body = answer.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "'counts' (row 0, did you mean 'count'?)" in body["message"]
    assert "Failed to predict data" not in body["message"] and "0.5" not in body["message"]
    _clean(answer.text)
    answer = _post(app, {"inputs": [{"label": "DG", "count": 9}]})
    assert answer.status_code == 400 and "at most 8 per request" in answer.json()["message"]


def test_500s_say_only_internal_error(client, model, monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("boom in /secret/path/module.py")

    monkeypatch.setattr(model.unwrap_python_model().generator, "sample", broken)
    answer = _post(client(), VALID)  # GeneratorModel's own 500
    assert answer.status_code == 500
    assert answer.json() == {"error_code": "INTERNAL_ERROR", "message": INTERNAL_MESSAGE}
    monkeypatch.setattr(model, "predict", broken)  # a pyfunc raising anything (MLflow: 400)
    answer = _post(client(), VALID)
    assert answer.status_code == 500 and answer.json()["message"] == INTERNAL_MESSAGE
    assert "/secret" not in answer.text and "boom" not in answer.text
    assert "boom in /secret/path" in caplog.text  # the server log has it


def test_version_docs_and_other_paths_reveal_nothing(client) -> None:
    app = client()
    for path in ("/version", "/docs", "/openapi.json", "/redoc", "/"):
        answer = app.get(path)
        assert answer.status_code == 404 and answer.json()["error_code"] == "NOT_FOUND", path
        _clean(answer.text)
    answer = app.get("/invocations")
    assert answer.status_code == 405 and answer.json()["error_code"] == "METHOD_NOT_ALLOWED"
    assert "server" not in answer.headers


def test_a_held_slot_answers_503_with_retry_after(client) -> None:
    app = client(queue_timeout=0.2)
    guard: GuardMiddleware = app.app  # type: ignore[assignment]
    assert guard.slots.acquire(blocking=False)
    try:
        started = time.monotonic()
        answer = _post(app, VALID)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert answer.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert 0.2 <= time.monotonic() - started < 5
        assert app.get("/ping").status_code == 200  # health checks do not queue
    finally:
        guard.slots.release()
    assert _post(app, VALID).status_code == 200


def test_a_timed_out_prediction_keeps_its_slot_until_it_ends(client, model, monkeypatch) -> None:
    """MLflow's timeout answers 504 while the prediction thread runs on: no second one starts."""
    predict = model.predict

    def slow(data, params=None):
        time.sleep(2)
        return predict(data, params=params)

    monkeypatch.setattr(model, "predict", slow)
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "1")
    guard: GuardMiddleware = client(queue_timeout=0.05).app  # type: ignore[assignment]
    body = [json.dumps(VALID).encode()]

    async def scenario() -> tuple[dict, dict, float]:
        answered = asyncio.Event()
        first = asyncio.create_task(_asgi(guard, body, answered))
        await answered.wait()  # the 504, sent after 1 s
        second = await _asgi(guard, body)  # while the first prediction still runs
        started = time.monotonic()
        result = await first
        return result, second, time.monotonic() - started

    first, second, waited = asyncio.run(scenario())
    assert first["status"] == 504 and json.loads(first["body"])["error_code"] == "REQUEST_TIMEOUT"
    assert second["status"] == 503 and waited > 0.3
    assert guard.slots.acquire(blocking=False)  # given back once the prediction ended
    guard.slots.release()


def test_a_slot_is_released_once_by_its_last_holder() -> None:
    released: list[int] = []
    slot = _Slot(lambda: released.append(1))
    assert slot.hold()  # a prediction starts
    slot.drop()  # the request ends (e.g. timed out)
    assert released == []
    slot.drop()  # the prediction ends
    assert released == [1] and not slot.hold()  # a prediction after the end is refused


def test_error_messages_are_cleaned() -> None:
    trace = (
        "Failed to predict data '   label  pad\n0  DG  xxxxxxxx'. \nError: row 0: count=0 must be "
        'an integer\nTraceback (most recent call last):\n  File "/usr/lib/x.py", line 3, in f\n'
    )
    assert clean_message(trace) == "row 0: count=0 must be an integer"
    text = clean_message("bad thing at /opt/venv/lib/python3.11/x.py with mlflow 3.17.2 inside")
    assert text == "bad thing at <path> with mlflow <version> inside"
    assert len(clean_message("y" * 5000)) == 300
    quoted = clean_message("Failed to enforce schema of data '" + "x" * 500 + "' with schema 'y'")
    assert quoted == "Failed to enforce schema of data '" + "x" * 40 + "...' with schema 'y'"
    echo = b'{"error_code": "BAD_REQUEST", "message": "Ensure valid JSON\\nInput: \\n' + b"x" * 99
    assert json.loads(error_body(400, echo)) == {
        "error_code": "BAD_REQUEST",
        "message": "Ensure valid JSON",
    }  # a truncated body still gives its message
    assert json.loads(error_body(413, b"<html>too big</html>"))["error_code"] == "REQUEST_TOO_LARGE"
    assert json.loads(error_body(502, b"trace"))["message"] == INTERNAL_MESSAGE


# --- the real command ----------------------------------------------------------------------------
@contextlib.contextmanager
def _command(uri: str, home: Path, *extra: str) -> Iterator[tuple[int, subprocess.Popen]]:
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    cmd = [sys.executable, "-m", "thyroaug.cli", "serve", "-m", uri, "--port", str(port), *extra]
    proc = subprocess.Popen(
        cmd, env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while _request(port, "GET", "/ping")[0] != 200:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no /ping answer in 180 s"
            time.sleep(0.5)
        yield port, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _request(port: int, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"Content-Type": JSON}
        chunked = body is not None and not isinstance(body, bytes)
        conn.request(method, path, body, headers, encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, response.read()
    except (ConnectionError, OSError):
        return 0, b""
    finally:
        conn.close()


@pytest.mark.slow
def test_serve_command_answers_limits_and_stops_on_sigterm(registered) -> None:
    uri, home = registered
    with _command(uri, home, "--max-body-mb", "1") as (port, proc):
        status, raw = _request(port, "POST", "/invocations", json.dumps(VALID).encode())
        assert status == 200 and len(json.loads(raw)["predictions"]) == 2
        big = json.dumps({"inputs": [{"label": "DG", "pad": "x" * (MB + 10)}]}).encode()
        status, raw = _request(port, "POST", "/invocations", big)
        assert status == 413 and json.loads(raw)["error_code"] == "REQUEST_TOO_LARGE"
        chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
        status, raw = _request(port, "POST", "/invocations", chunks)  # no Content-Length
        assert status == 413
        status, raw = _request(port, "GET", "/version")
        assert status == 404 and mlflow.__version__.encode() not in raw
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        assert b"Finished server process" in err  # a graceful shutdown
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
            pass
