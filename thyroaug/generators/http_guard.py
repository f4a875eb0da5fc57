"""`thyroaug serve`: MLflow's scoring app for a generator behind a small hardening middleware.

``build_app(model)`` wraps MLflow's FastAPI scoring app in ``GuardMiddleware``, a pure ASGI
middleware: only /ping, /health and JSON /invocations are answered (404, 415), body size, body
time and concurrent predictions are capped (413, 408, 503 with ``Retry-After``), an /invocations
body is screened before MLflow parses it (``screen_body``: nesting depth, JSON, top-level keys,
the model's params; 400) and every error body becomes a short ``{"error_code", "message"}``
without tracebacks, paths or versions. ``GuardedH11Protocol`` gives uvicorn's answer to malformed
HTTP framing the same JSON form. The rules in full: docs/generators.md, "The HTTP guard".
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
import mlflow
import numpy as np
import uvicorn
from h11._connection import (  # the default uvicorn's own H11Protocol imports
    DEFAULT_MAX_INCOMPLETE_EVENT_SIZE as H11_MAX_INCOMPLETE_EVENT_SIZE,
)
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server
from uvicorn.protocols.http.h11_impl import H11Protocol

from thyroaug.errors import GeneratorError
from thyroaug.generators.request_rows import kind, unknown_names

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MB = 1024 * 1024
INVOCATIONS = "/invocations"
PATHS = frozenset({"/ping", "/health", INVOCATIONS})
"""The only paths answered; /version (MLflow's version) and FastAPI's /docs are 404s."""
JSON_TYPE = "application/json"
INTERNAL_MESSAGE = "internal error (see the server log)"
ERROR_BODY_CAP = 64 * 1024
"""Bytes of an error body read for rewriting (MLflow may echo a whole request back)."""
MODEL_MESSAGE_CAP = 1000  # longest kept message raised by the model (ours: inputs already cut)
OTHER_MESSAGE_CAP = 300  # longest kept message of MLflow's own errors (these may quote input)

_TRACE = re.compile(
    r"Traceback \(most recent call last\)|File \"|\.py\", line|[\\/](?:site|dist)-packages[\\/]"
)
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.@+-]+){2,}[\\/]?")
_VERSION = re.compile(r"\bv?\d+\.\d+\.\d+[\w.+-]*")
_QUOTED = re.compile(r"'([^']{40})[^']{20,}'|\"([^\"]{40})[^\"]{20,}\"")
_CODE = re.compile(r"^[A-Z][A-Z_]{0,63}$")
_STATUS_CODES = {413: "REQUEST_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE", 504: "REQUEST_TIMEOUT"}

MAX_JSON_DEPTH = 32
"""Deepest JSON nesting accepted; a generator request nests 5: {"inputs": [{"mask": [[...]]}]}."""
DATA_KEYS = tuple(sorted(scoring_server.SUPPORTED_FORMATS, key=lambda k: (k != "inputs", k)))
"""MLflow's data keys (inputs, dataframe_records, dataframe_split, instances): one per request."""
REQUEST_KEYS = (*DATA_KEYS, scoring_server.SERVING_PARAMS_KEY)
EXAMPLE = '{"inputs": [{"label": "DG", "count": 2}], "params": {...}}'


@dataclass(frozen=True)
class Limits:
    """What one server accepts.

    Attributes:
        max_body_bytes: largest request body (413 above it).
        max_concurrent: predictions run at the same time.
        queue_timeout: seconds a request waits for a free prediction slot before its 503.
        body_timeout: seconds the whole body may take to arrive (408 after them).
    """

    max_body_bytes: int = 8 * MB
    max_concurrent: int = 1
    queue_timeout: float = 5.0
    body_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_concurrent < 1 or self.queue_timeout < 0:
            raise ValueError(f"invalid limits {self}")
        if not self.body_timeout > 0:
            raise ValueError(f"invalid limits {self}")


class _Slot:
    """One granted prediction slot, given back when the request and its prediction both end."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release, self._lock, self._holders = release, threading.Lock(), 1
        self.error: tuple[str, str] | None = None  # (error_code, message) of a model 4xx

    def hold(self) -> bool:
        """Hold the slot for a prediction; False if the request already ended (timed out)."""
        with self._lock:
            if self._holders == 0:
                return False
            self._holders += 1
            return True

    def drop(self) -> None:
        """One holder is done; the last one releases the slot."""
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            self._release()


_current: contextvars.ContextVar[_Slot | None] = contextvars.ContextVar(
    "thyroaug_slot", default=None
)


def guard_predict(model: Any) -> None:
    """Wrap ``model.predict`` so it holds the request's slot, records a model 4xx's message (MLflow
    would prefix it with the whole input) and turns an unexpected error into a logged 500."""
    predict = model.predict

    def guarded(data: Any, params: dict[str, Any] | None = None) -> Any:
        slot = _current.get()
        if slot is not None and not slot.hold():
            raise MlflowException("request abandoned before the prediction started")
        try:
            return predict(data, params=params)
        except MlflowException as exc:
            if slot is not None and exc.get_http_status_code() < 500:
                slot.error = (str(exc.error_code), str(exc.message))
            raise
        except Exception as exc:
            log.exception("prediction failed")
            raise MlflowException(INTERNAL_MESSAGE) from exc
        finally:
            if slot is not None:
                slot.drop()

    model.predict = guarded


def clean_message(message: str, cap: int = OTHER_MESSAGE_CAP) -> str:
    """``message`` without MLflow's input echo, traceback lines, paths and versions; at most
    ``cap`` characters."""
    if "Failed to predict data" in message and "\nError: " in message:
        message = message.rpartition("\nError: ")[2]
    message = _QUOTED.sub(
        lambda m: f"'{m.group(1) or m.group(2)}...'", message.split("\nInput:")[0]
    )
    lines = [ln.strip() for ln in message.splitlines() if ln.strip() and not _TRACE.search(ln)]
    text = " ".join(lines)
    text = _VERSION.sub("<version>", _PATH.sub("<path>", text))
    return text if len(text) <= cap else text[: cap - 3] + "..."


def json_depth(body: bytes) -> int:
    """Deepest nesting of ``[`` / ``{`` in UTF-8 JSON text, brackets inside strings skipped: read
    without parsing (vectorised, linear, no recursion), so that no parser meets a 100 000-deep
    body. A quote is escaped after an odd run of backslashes."""
    text = np.frombuffer(body, dtype=np.uint8)
    special = np.flatnonzero((text == ord('"')) | (text == ord("\\")))
    backslash = text[special] == ord("\\")
    starts = np.ones(len(special), dtype=bool)  # a new run of adjacent backslashes (and quote)
    starts[1:] = (np.diff(special) != 1) | ~backslash[:-1]
    index = np.arange(len(special))
    escaped = (index - np.maximum.accumulate(np.where(starts, index, 0))) % 2 == 1
    quotes = special[~backslash & ~escaped]
    opening = (text == ord("[")) | (text == ord("{"))
    brackets = np.flatnonzero(opening | (text == ord("]")) | (text == ord("}")))
    brackets = brackets[np.searchsorted(quotes, brackets) % 2 == 0]  # outside strings
    if not len(brackets):
        return 0
    steps = np.where(opening[brackets], 1, -1)
    return max(0, int(np.cumsum(steps).max()))


def screen_body(
    body: bytes, check_params: Callable[[Any], Any] | None = None
) -> tuple[str, str] | None:
    """(error_code, message) refusing an /invocations JSON body before MLflow parses it, else
    None: nesting deeper than ``MAX_JSON_DEPTH`` (counted before parsing), text that is not UTF-8
    JSON, anything but an object with exactly one of ``DATA_KEYS`` and optional ``params``, and
    params that ``check_params`` (``GeneratorModel.check_params``) refuses."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        return "BAD_REQUEST", "the body is not valid JSON: it is not UTF-8 text"
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        return "BAD_REQUEST", f"JSON nested {depth} levels deep; at most {MAX_JSON_DEPTH}"
    try:
        request = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        return "BAD_REQUEST", f"the body is not valid JSON: {exc.msg} ({where})"
    except (ValueError, RecursionError):
        return "BAD_REQUEST", "the body is not valid JSON"
    if not isinstance(request, dict):
        return "BAD_REQUEST", f"a request is a JSON object such as {EXAMPLE}, not {kind(request)}"
    unknown = {str(key): "" for key in request if key not in REQUEST_KEYS}
    if unknown:
        return "BAD_REQUEST", unknown_names("key", unknown, REQUEST_KEYS)
    if sum(key in request for key in DATA_KEYS) != 1:
        keys = ", ".join(DATA_KEYS)
        return "BAD_REQUEST", f"a request needs exactly one of {keys}, e.g. {EXAMPLE}"
    if check_params is not None:
        try:
            check_params(request.get(scoring_server.SERVING_PARAMS_KEY))
        except MlflowException as exc:  # our own message: it quotes the client's values only
            return str(exc.error_code), " ".join(str(exc.message).split())[:MODEL_MESSAGE_CAP]
    return None


def params_check(model: Any) -> Callable[[Any], Any] | None:
    """The loaded pyfunc ``model``'s check of request params against the params its signature
    declares (``GeneratorModel.check_params``), or None for a model without one."""
    try:
        python_model = model.unwrap_python_model()
    except Exception:  # MLflow raises for pyfuncs that are not a PythonModel
        return None
    check = getattr(python_model, "check_params", None)
    if check is None:
        return None
    schema = model.metadata.get_params_schema()
    specs = schema.params if schema is not None else []
    declared = {p.name: p.dtype.name + ("[]" if p.shape else "") for p in specs}
    return functools.partial(check, declared=declared)


def _parse_error(raw: bytes) -> tuple[str | None, str]:
    """(error_code, message) read from an error body (JSON, truncated JSON or text)."""
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        code, message = body.get("error_code"), body.get("message", body.get("detail", ""))
        return (code if isinstance(code, str) else None), str(message)
    if body is not None:
        return None, str(body)
    code = re.search(r'"error_code":\s*"(\w+)"', text)
    message = re.search(r'"message":\s*"((?:[^"\\]|\\.){0,2000})', text)
    if message is None:
        return None, "" if text.lstrip().startswith("{") else text[:2000]
    try:
        found = json.loads(f'"{message.group(1)}"')
    except ValueError:
        found = message.group(1)
    return (code.group(1) if code else None), found


def error_body(status: int, raw: bytes, model_error: tuple[str, str] | None = None) -> bytes:
    """The rewritten JSON body of an error answer with ``status`` and original body ``raw``."""
    if status >= 500 and status != 504:
        return _json("INTERNAL_ERROR", INTERNAL_MESSAGE)
    if status == 504:
        return _json("REQUEST_TIMEOUT", "the request took longer than the server's time limit")
    if model_error is not None:
        code, message = model_error[0], clean_message(model_error[1], MODEL_MESSAGE_CAP)
    else:
        code, message = _parse_error(raw)
        message = clean_message(message)
    try:
        phrase = HTTPStatus(status).phrase
        default = _STATUS_CODES.get(status, HTTPStatus(status).name)
    except ValueError:
        phrase, default = "error", "BAD_REQUEST"
    code = code if code and _CODE.match(code) else default
    return _json(code, message or phrase)


def _json(code: str, message: str) -> bytes:
    return json.dumps({"error_code": code, "message": message}).encode()


async def _send_json(
    send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    length = str(len(body)).encode()
    headers = [*headers, (b"content-type", JSON_TYPE.encode()), (b"content-length", length)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _Rewriter:
    """The ``send`` of the wrapped app: 2xx / 3xx pass, error bodies are buffered and rewritten."""

    KEEP = (b"allow", b"retry-after")

    def __init__(self, send: Send, slot: _Slot | None) -> None:
        self.send, self.slot, self.started = send, slot, False
        self.error_start: Message | None = None
        self.buffer = bytearray()

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            if int(message["status"]) >= 400:
                self.error_start = message
                return
        elif kind == "http.response.body" and self.error_start is not None:
            room = ERROR_BODY_CAP - len(self.buffer)
            self.buffer += bytes(message.get("body", b""))[: max(room, 0)]
            if not message.get("more_body", False):
                await self.flush()
            return
        await self.send(message)

    async def flush(self) -> None:
        """Send the rewritten error answer (once)."""
        start, self.error_start = self.error_start, None
        if start is None:
            return
        status = int(start["status"])
        error = self.slot.error if self.slot is not None else None
        keep = [(k, v) for k, v in start.get("headers", []) if bytes(k).lower() in self.KEEP]
        body = error_body(status, bytes(self.buffer), error if 400 <= status < 500 else None)
        await _send_json(self.send, status, body, keep)


class _Disconnected(Exception):
    """The client left while sending its body."""


class GuardMiddleware:
    """Body-size, body-time, content-type, request-screening, concurrency and error-body limits
    around an ASGI app.

    Args:
        app: the wrapped ASGI app (MLflow's scoring app).
        limits: what is accepted (default ``Limits()``).
        check_params: refuses request params (``params_check``); None: params go unchecked.
    """

    def __init__(
        self,
        app: ASGIApp,
        limits: Limits | None = None,
        check_params: Callable[[Any], Any] | None = None,
    ) -> None:
        self.app, self.limits, self.check_params = app, limits or Limits(), check_params
        self.slots = threading.BoundedSemaphore(self.limits.max_concurrent)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        refused = self._refusal(scope, path)
        try:
            body = None if refused else await self._read_body_in_time(receive)
        except _Disconnected:
            return
        except TimeoutError:
            late = f"the request body did not arrive within {self.limits.body_timeout:g} s"
            body = _json("REQUEST_TIMEOUT", late + " (is Content-Length larger than the body?)")
            await _send_json(send, 408, body, [(b"connection", b"close")])
            return
        if body is None:
            status, code, message = refused or (413, "REQUEST_TOO_LARGE", self._too_large())
            await _send_json(send, status, _json(code, message))
            return
        slot = None
        if path == INVOCATIONS and scope.get("method") == "POST":
            screened = await asyncio.to_thread(screen_body, body, self.check_params)
            if screened is not None:
                await _send_json(send, 400, _json(*screened))
                return
            slot = await self._acquire()
            if slot is None:
                retry = str(max(1, math.ceil(self.limits.queue_timeout))).encode()
                busy = f"the server is busy ({self.limits.max_concurrent} request(s) running)"
                body = _json("TEMPORARILY_UNAVAILABLE", busy + "; retry later")
                await _send_json(send, 503, body, [(b"retry-after", retry)])
                return
        await self._run(scope, _replay(body, receive), send, slot)

    async def _run(self, scope: Scope, receive: Receive, send: Send, slot: _Slot | None) -> None:
        rewriter = _Rewriter(send, slot)
        token = _current.set(slot)
        try:
            await self.app(scope, receive, rewriter)
            await rewriter.flush()
        except Exception:
            log.exception("request to %s failed", scope.get("path"))
            try:
                if rewriter.error_start is not None:
                    await rewriter.flush()
                elif not rewriter.started:
                    await _send_json(send, 500, _json("INTERNAL_ERROR", INTERNAL_MESSAGE))
            except Exception:  # the client may be gone
                log.debug("could not send the error answer", exc_info=True)
        finally:
            _current.reset(token)
            if slot is not None:
                slot.drop()

    def _too_large(self) -> str:
        size = self.limits.max_body_bytes
        return f"request body over the limit of {size / MB:g} MB ({size} bytes)"

    def _refusal(self, scope: Scope, path: str) -> tuple[int, str, str] | None:
        """(status, error_code, message) for a request refused on its path and headers."""
        if path not in PATHS:
            return 404, "NOT_FOUND", f"no such endpoint; use {', '.join(sorted(PATHS))}"
        content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if path == INVOCATIONS and scope.get("method") == "POST" and content_type != JSON_TYPE:
            return 415, "UNSUPPORTED_MEDIA_TYPE", f"/invocations accepts only {JSON_TYPE}"
        length = _header(scope, b"content-length")
        if length is not None and not length.isdigit():
            return 400, "BAD_REQUEST", "invalid Content-Length"
        if length is not None and int(length) > self.limits.max_body_bytes:
            return 413, "REQUEST_TOO_LARGE", self._too_large()
        return None

    async def _read_body_in_time(self, receive: Receive) -> bytes | None:
        """``_read_body`` within ``body_timeout`` seconds (TimeoutError after them)."""
        return await asyncio.wait_for(self._read_body(receive), self.limits.body_timeout)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it passes the limit (the rest is never read)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Disconnected
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _acquire(self) -> _Slot | None:
        """A prediction slot, waiting up to ``queue_timeout`` (polled: no thread waits)."""
        deadline = time.monotonic() + self.limits.queue_timeout
        while not self.slots.acquire(blocking=False):
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.02)
        return _Slot(self.slots.release)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if bytes(key).lower() == name:
            return bytes(value).decode("latin-1").strip()
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` giving the already read body once, then the client's own messages."""
    done = False

    async def replay() -> Message:
        nonlocal done
        if not done:
            done = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _Connection(h11.Connection):
    """h11's server connection, remembering why it refused the peer's bytes."""

    refusal: tuple[str, int] = ("invalid HTTP request", 400)

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.refusal = (str(exc), exc.error_status_hint)
            raise


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol answering malformed framing (bad Content-Length or chunks,
    header syntax, a body the client ends early) with the guard's JSON 400 and h11's reason,
    where uvicorn writes plain text; such a request never reaches an ASGI app."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        size = self.config.h11_max_incomplete_event_size
        self.conn = _Connection(h11.SERVER, size or H11_MAX_INCOMPLETE_EVENT_SIZE)

    def eof_received(self) -> None:
        """The client stopped sending: a body shorter than announced is refused now (uvicorn
        would only close the connection)."""
        if self.conn.their_state is h11.SEND_BODY:
            self.conn.receive_data(b"")
            self.handle_events()

    def send_400_response(self, msg: str) -> None:
        """The JSON answer to bytes h11 refused; the request's app, if any, sees a disconnect."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if cycle is not None and cycle.response_started:
            self.transport.close()
            return
        reason, hint = getattr(self.conn, "refusal", (msg, 400))
        status = hint if 400 <= hint < 500 else 400
        code = "BAD_REQUEST" if status == 400 else HTTPStatus(status).name
        body = _json(code, f"malformed HTTP request: {' '.join(reason.split())[:200]}")
        headers = [(b"content-type", JSON_TYPE.encode()), (b"content-length", b"%d" % len(body))]
        response = h11.Response(status_code=status, headers=[*headers, (b"connection", b"close")])
        try:
            for event in (response, h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # an answer was already under way
            log.debug("no answer to malformed framing", exc_info=True)
        self.transport.close()


def build_app(model: Any, limits: Limits | None = None) -> GuardMiddleware:
    """MLflow's scoring app for a loaded pyfunc ``model`` (``predict`` wrapped by
    ``guard_predict``; timeout from ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``) behind the guard,
    which checks request params with the model's own ``params_check``."""
    check = params_check(model)
    guard_predict(model)
    return GuardMiddleware(scoring_server.init(model), limits, check)


def serve(
    model_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5001,
    limits: Limits | None = None,
    max_connections: int = 32,
) -> None:
    """Load ``model_uri`` and serve it with uvicorn (one worker) until SIGINT / SIGTERM.

    ``max_connections`` bounds open connections (uvicorn answers 503 above it), so at most that
    many bodies of ``max_body_bytes`` are held in memory at once.

    Raises:
        GeneratorError: the model cannot be loaded.
    """
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:  # MLflow raises many types for a missing / unreadable model
        raise GeneratorError(f"cannot load the model {model_uri}: {exc}") from exc
    app = build_app(model, limits)
    log.info("serving %s on http://%s:%d (%s)", model_uri, host, port, app.limits)
    uvicorn.run(app, host=host, port=port, log_level="info", **server_options(max_connections))


def server_options(max_connections: int = 32) -> dict[str, Any]:
    """uvicorn's options of ``serve`` besides host, port and log level (tests start the same):
    one worker, ``max_connections`` open connections, no server header, ``GuardedH11Protocol``."""
    return {
        "workers": 1,
        "limit_concurrency": max_connections,
        "server_header": False,
        "http": GuardedH11Protocol,
    }
