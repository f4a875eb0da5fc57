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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import uvicorn
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
    server_options,
)

JSON = "application/json"
VALID = {"inputs": [{"label": "DG", "count": 2, "seed": 5}]}
MLFLOW_OWN = ("Failed to validate", "Invalid parameters found", "requirements file", "MLflow")
"""MLflow's own wording: a message with it was not written for this request."""
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


# --- strict requests: every client mistake is one short JSON 4xx ------------------------------
def _refused(app: TestClient, body: Any, status: int = 400) -> dict:
    answer = _post(app, body)
    assert answer.status_code == status, answer.text[:500]
    error = answer.json()
    assert set(error) == {"error_code", "message"} and "\n" not in error["message"], error
    _clean(answer.text)
    return error


def _deep(depth: int) -> bytes:
    """``{"inputs": [[[...]]]}`` nested ``depth`` levels deep."""
    return b'{"inputs": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_misspelled_params_are_refused_with_a_suggestion(client) -> None:
    app = client()
    error = _refused(app, {**VALID, "params": {"stepz": 3}})
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "unknown param(s) 'stepz' (did you mean 'steps'?)" in error["message"]
    assert "allowed params: solver, steps" in error["message"]
    error = _refused(app, {**VALID, "params": {"steps": 2, "solvr": "rk4", "x" * 5000: 1}})
    assert "'solvr' (did you mean 'solver'?)" in error["message"]
    assert len(error["message"]) < 300  # a huge name is not echoed back
    assert _post(app, {**VALID, "params": {"steps": 2, "solver": "rk4"}}).status_code == 200


def test_param_types_ranges_and_finiteness_get_our_messages(client) -> None:
    app = client()
    cases = [
        ({"steps": "/etc/passwd"}, "params.steps='/etc/passwd' (text) must be an integer from 1 to "
         "1000"),
        ({"steps": 2.5}, "params.steps=2.5 (a number) must be an integer from 1 to 1000"),
        ({"steps": True}, "params.steps=True (a boolean) must be an integer from 1 to 1000"),
        ({"steps": 0}, "params.steps=0 must be an integer from 1 to 1000"),
        ({"steps": [3]}, "params.steps=[3] (a list) must be an integer from 1 to 1000"),
        ({"solver": 3}, "params.solver=3 (a number) must be one of euler, midpoint, rk4, dopri5"),
        ({"solver": "heun"}, "params.solver='heun' must be one of euler, midpoint, rk4, dopri5"),
    ]  # fmt: skip
    for params, message in cases:
        error = _refused(app, {**VALID, "params": params})
        assert error["message"] == message, (params, error)
    for body in (
        b'{"inputs": [{"label": "DG"}], "params": {"steps": NaN}}',
        b'{"inputs": [{"label": "DG"}], "params": [1]}',
    ):
        error = _refused(app, body)
        assert "Failed to validate" not in error["message"] and "params" in error["message"]
    assert "JSON object" in _refused(app, {**VALID, "params": [1]})["message"]
    assert _post(app, {**VALID, "params": {"steps": None}}).status_code == 200  # null: default


def test_deep_json_is_refused_before_it_is_parsed(client) -> None:
    app = client()
    for depth in (33, 100_000):
        error = _refused(app, _deep(depth))
        assert error["error_code"] == "BAD_REQUEST"
        assert f"JSON nested {depth} levels deep; at most 32" in error["message"]
    inside_a_string = {**VALID, "params": {"solver": "[" * 1000}}
    assert "params.solver" in _refused(app, inside_a_string)["message"]  # not counted as depth
    mask = {"inputs": [{"label": "DG", "mask": [[0.5] * 32] * 32}]}
    assert _post(app, mask).status_code == 200


def test_unknown_top_level_keys_name_the_accepted_ones(client) -> None:
    app = client()
    accepted = "inputs, dataframe_records, dataframe_split, instances, params"
    error = _refused(app, {"inputz": [{"label": "DG"}]})
    assert "unknown key(s) 'inputz' (did you mean 'inputs'?)" in error["message"]
    assert accepted in error["message"] and "requirements file" not in error["message"]
    for body in ({}, {"params": {"steps": 2}}, {"inputs": [], "instances": []}):
        assert "exactly one of inputs, dataframe_records" in _refused(app, body)["message"]
    for body in ([{"label": "DG"}], "DG", 3):
        assert "a JSON object" in _refused(app, body)["message"]
    assert "valid JSON" in _refused(app, b'{"inputs": [')["message"]
    assert "valid JSON" in _refused(app, b'{"inputs": "\xff"}')["message"]


BAD_REQUESTS: list[tuple[str, Any]] = [
    ("misspelled param", {**VALID, "params": {"stepz": 3}}),
    ("misspelled solver param", {**VALID, "params": {"solvr": "rk4"}}),
    ("steps as a path", {**VALID, "params": {"steps": "/etc/passwd"}}),
    ("steps as a fraction", {**VALID, "params": {"steps": 2.5}}),
    ("steps as a boolean", {**VALID, "params": {"steps": True}}),
    ("steps zero", {**VALID, "params": {"steps": 0}}),
    ("steps too many", {**VALID, "params": {"steps": 100_000}}),
    ("steps NaN", b'{"inputs": [{"label": "DG"}], "params": {"steps": NaN}}'),
    ("steps Infinity", b'{"inputs": [{"label": "DG"}], "params": {"steps": Infinity}}'),
    ("unknown solver", {**VALID, "params": {"solver": "heun"}}),
    ("solver as a number", {**VALID, "params": {"solver": 3}}),
    ("params as a list", {**VALID, "params": [1, 2]}),
    ("params as text", {**VALID, "params": "steps=3"}),
    ("misspelled inputs", {"inputz": [{"label": "DG"}]}),
    ("no data key", {}),
    ("two data keys", {"inputs": [{"label": "DG"}], "instances": [{"label": "DG"}]}),
    ("body is a list", [{"label": "DG"}]),
    ("body is text", "DG"),
    ("broken JSON", b'{"inputs": ['),
    ("not UTF-8", b'{"inputs": [{"label": "\xff\xfe"}]}'),
    ("JSON 33 deep", _deep(33)),
    ("JSON 100k deep", _deep(100_000)),
    ("misspelled count", {"inputs": [{"label": "DG", "counts": 5}]}),
    ("no label", {"inputs": [{"count": 1}]}),
    ("unknown label", {"inputs": [{"label": "XX"}]}),
    ("count zero", {"inputs": [{"label": "DG", "count": 0}]}),
    ("over the image cap", {"inputs": [{"label": "DG", "count": 9}]}),
    ("negative seed", {"inputs": [{"label": "DG", "seed": -1}]}),
    ("seed past int64", {"inputs": [{"label": "DG", "seed": 2**63}]}),
    ("mask of the wrong shape", {"inputs": [{"label": "DG", "mask": [[0, 1], [1, 0]]}]}),
    ("mask with NaN", b'{"inputs": [{"label": "DG", "mask": [[NaN]]}]}'),
    ("no rows", {"inputs": []}),
    ("rows as text", {"inputs": "DG please"}),
]


def test_bad_requests_each_get_one_clear_4xx_line(client, capsys) -> None:
    """Every client mistake above: a 4xx whose body is exactly {error_code, message}, one line,
    no trace, path, version or echo; the count is printed (run with -s)."""
    app, unclear = client(), []
    for name, body in BAD_REQUESTS:
        answer = _post(app, body)
        try:
            error = answer.json()
            ok = 400 <= answer.status_code < 500 and set(error) == {"error_code", "message"}
            ok = ok and "\n" not in error["message"] and len(answer.text) < 1000
            ok = ok and not any(leak in answer.text for leak in LEAKS + MLFLOW_OWN)
        except ValueError:
            ok = False
        if not ok:
            unclear.append((name, answer.status_code, answer.text[:200]))
    with capsys.disabled():
        clear = len(BAD_REQUESTS) - len(unclear)
        print(
            f"\nbad requests: {len(BAD_REQUESTS)} tried, {clear} answered with one clear 4xx line"
        )
    assert unclear == []


@contextlib.contextmanager
def _live(app: Any) -> Iterator[int]:
    """``app`` served by uvicorn in a thread with ``thyroaug serve``'s options; its port."""
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            **server_options(max_connections=8))  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _raw(port: int, data: bytes, half_close: bool = False) -> tuple[int, dict, bytes]:
    """Send raw bytes; (status, headers, body) of the answer (0 if none came)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/"):
        return 0, {}, answer
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


HEAD = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
FRAMING = [
    ("negative Content-Length", HEAD + b"Content-Length: -5\r\n\r\n{}", "bad Content-Length"),
    ("non-numeric Content-Length", HEAD + b"Content-Length: abc\r\n\r\n{}", "bad Content-Length"),
    ("two Content-Lengths", HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
     "Content-Length"),
    ("bad chunk size", HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", "chunk"),
    ("unknown transfer coding", HEAD + b"Transfer-Encoding: gzip\r\n\r\n{}", "Transfer-Encoding"),
    ("header without a colon", HEAD + b"Bad Header\r\n\r\n", "header"),
    ("not HTTP", b"HELLO\r\n\r\n", "request line"),
]  # fmt: skip


def test_malformed_http_framing_is_a_json_400(model, capsys) -> None:
    """Answered by uvicorn before any ASGI app sees the request: still one JSON line."""
    clear = 0
    with _live(build_app(model)) as port:
        for name, data, reason in FRAMING:
            status, headers, body = _raw(port, data)
            assert status == 400 and headers["content-type"] == JSON, (name, status, body)
            error = json.loads(body)
            assert error["error_code"] == "BAD_REQUEST", (name, error)
            assert (
                error["message"].startswith("malformed HTTP request: ")
                and reason in error["message"]
            ), (name, error)
            clear += 1
        cut = HEAD + b'Content-Length: 100\r\n\r\n{"inputs": [{"label"'
        status, headers, body = _raw(port, cut, half_close=True)  # the body ends early
        assert status == 400 and "received 20 bytes, expected 100" in json.loads(body)["message"]
        clear += 1
        status, _, body = _raw(port, HEAD + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
        assert status == 400 and "exactly one of inputs" in json.loads(body)["message"]
    with capsys.disabled():
        print(f"\nmalformed framing: {len(FRAMING) + 1} tried, {clear} answered with one JSON 400")


def test_a_body_that_stops_coming_is_a_408(model) -> None:
    guard = build_app(model, Limits(body_timeout=0.3))
    stalled = asyncio.Event()  # never set: the client neither sends nor leaves

    async def scenario() -> dict:
        out: dict[str, Any] = {"body": b""}

        async def receive() -> dict:
            if "sent" not in out:
                out["sent"] = True
                return {"type": "http.request", "body": b'{"inputs": ', "more_body": True}
            await stalled.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            out.setdefault("status", message.get("status"))
            out["body"] += message.get("body", b"")

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/invocations",
            "headers": [(b"content-type", b"application/json")],
        }
        await asyncio.wait_for(guard(scope, receive, send), timeout=10)
        return out

    out = asyncio.run(scenario())
    assert out["status"] == 408
    assert json.loads(out["body"]) == {
        "error_code": "REQUEST_TIMEOUT",
        "message": "the request body did not arrive within 0.3 s (is Content-Length larger than "
        "the body?)",
    }


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
