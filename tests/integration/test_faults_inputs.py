"""Fault injection, second half: damaged files, bad arguments and abusive serving requests.

Every case goes through the user's path (a ``python -m thyroaug.cli`` subprocess, or HTTP against
``thyroaug serve``) and must end in one clear line (exit 2) or a short JSON error: no traceback,
no run created for a refused argument, nothing left RUNNING, no patient data in the registry.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_tiny_cohort
from test_faults import (
    _assert_nothing_running,
    _assert_one_clear_error,
    _cli,
    _client,
    _finish,
    _run_cli,
    _runs,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny cohort, a registered smoke FM generator and one synthetic FM set on disk."""
    import mlflow

    home = tmp_path_factory.mktemp("inputs")
    make_tiny_cohort().save(home / "cohort")
    code, out = _run_cli(home, "train-fm", "--profile", "smoke", "--cohort", str(home / "cohort"),
                         "--epochs", "1", "--register", "--no-progress")  # fmt: skip
    assert code == 0, out[-3000:]
    code, out = _run_cli(home, "synthesize", "--per-class", "2", "--cohort", str(home / "cohort"),
                         "--no-fidelity", "--no-progress")  # fmt: skip
    assert code == 0, out[-3000:]
    run_id = out.split("run id: ")[1].split()[0]
    client = _client(home)
    local = client.download_artifacts(run_id, "synthetic/FM", str(home))
    shutil.copytree(local, home / "good-set")
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    yield home


def _damaged(home: Path, name: str, how: str) -> Path:
    folder = home / name
    if not folder.exists():
        shutil.copytree(home / "good-set", folder)
        images, info = folder / "images.safetensors", folder / "set.json"
        if how == "truncated":
            images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])
        elif how == "no set.json":
            info.unlink()
        elif how == "tampered":
            data = bytearray(images.read_bytes())
            data[-8:] = b"\x00\x00\x80\x3f" * 2  # two pixels set to 1.0
            images.write_bytes(bytes(data))
        elif how == "other cohort":  # a sound set, as a generator of another cohort writes it
            from thyroaug.utils.digest import DIGEST_KEY, json_sha256

            meta = json.loads(info.read_text())
            meta["cohort_hash"] = "0" * 32
            meta[DIGEST_KEY] = json_sha256(meta)
            info.write_text(json.dumps(meta))
    return folder


def _classifier(home: Path, *extra: str) -> list[str]:
    return ["train-classifier", "--profile", "smoke", "--cohort", str(home / "cohort"),
            "--epochs", "1", "--no-progress", "--no-model", *extra]  # fmt: skip


CASES: list[tuple[str, Any, tuple[str, ...]]] = [
    ("truncated synthetic images", ("set", "truncated"), ("images.safetensors",)),
    ("set without provenance", ("set", "no set.json"), ("set.json",)),
    ("set whose pixels changed", ("set", "tampered"), ("does not match the hash",)),
    ("set made for another cohort", ("set", "other cohort"), ("cohort", "--allow-other-cohort")),
    ("truncated cohort", ("cohort", "truncate"), ("cohort.safetensors",)),
    ("garbage cohort header", ("cohort", "garbage"), ("cohort.safetensors",)),
    ("unknown scenario", ("argv", ["--scenario", "O+GAN"]), ("O+GAN",)),
    ("zero epochs", ("argv", ["--scenario", "O", "--epochs", "0"]), ("epochs",)),
    ("negative synthesize seed", ("synthesize", ["--seed", "-1"]), ("seed",)),
    ("formula-like case id", ("prepare", "=HYPERLINK(1)"), ("HYPERLINK",)),
    ("image path outside the manifest folder", ("prepare", "../outside.png"), ("outside",)),
]


def _argv(home: Path, tmp: Path, kind: str, what: Any) -> list[str]:
    if kind == "set":
        folder = _damaged(home, f"set-{what.replace(' ', '-')}", what)
        return _classifier(home, "--scenario", "O+FM", "--synthetic", f"FM={folder}")
    if kind == "cohort":
        cohort = tmp / "cohort"
        shutil.copytree(home / "cohort", cohort)
        data = next(cohort.glob("*.safetensors"))
        raw = data.read_bytes()
        data.write_bytes(raw[: len(raw) // 3] if what == "truncate" else b"\xff" * 64 + raw[64:])
        return ["train-classifier", "--scenario", "O", "--profile", "smoke", "--cohort",
                str(cohort), "--no-progress"]  # fmt: skip
    if kind == "argv":
        return _classifier(home, *what)
    if kind == "synthesize":
        return ["synthesize", "--per-class", "1", "--cohort", str(home / "cohort"), *what]
    (tmp / "img.png").write_bytes(b"")
    manifest = tmp / "manifest.csv"
    case, image = (what, "img.png") if what.startswith("=") else ("c1", what)
    manifest.write_text(f'case_id,patient_id,center,label,image\n"{case}",p1,A,DG,{image}\n')
    return ["prepare", "--manifest", str(manifest), "--out", str(tmp / "out"), "--no-progress"]


@pytest.mark.parametrize(("name", "case", "needles"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_no_run(
    home: Path, tmp_path: Path, name: str, case: Any, needles: tuple[str, ...]
) -> None:
    client = _client(home)
    before = {r.info.run_id for r in _runs(client)}
    code, out = _run_cli(home, *_argv(home, tmp_path, *case))
    assert code == 2, out[-3000:]
    _assert_one_clear_error(out)
    said = out[out.index(": error: ") :]
    assert all(n in said for n in needles), said
    new = [r for r in _runs(client) if r.info.run_id not in before]
    assert all(r.info.status == "FAILED" for r in new), [
        (r.info.run_name, r.info.status) for r in new
    ]
    if case[0] in ("argv", "synthesize", "prepare"):  # refused before any run was created
        assert new == [], [r.info.run_name for r in new]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    _assert_nothing_running(client)


# --- serving abuse --------------------------------------------------------------------------------


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: bytes, ctype: str = "application/json") -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (ConnectionError, urllib.error.URLError) as err:  # server closed an oversized upload
        return 413 if "reset" in str(err).lower() or "broken" in str(err).lower() else 0, str(err)


def _rows(*rows: dict[str, Any], params: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"inputs": list(rows), **({"params": params} if params else {})}).encode()


ABUSE = [
    ("9 MB body", lambda: b'{"inputs": [{"label": "DG", "x": "' + b"a" * (9 << 20) + b'"}]}',
     "application/json", 413, "REQUEST_TOO_LARGE"),
    ("csv body", lambda: b"label,count\nDG,1\n", "text/csv", 415, "application/json"),
    ("misspelled count", lambda: _rows({"label": "DG", "counts": 5}), "application/json", 400,
     "'counts'"),
    ("misspelled seed", lambda: _rows({"label": "DG", "seeed": 3}), "application/json", 400,
     "'seeed'"),
    ("over the image cap", lambda: _rows({"label": "DG", "count": 64}), "application/json", 400,
     "at most 8 per request"),
    ("too many steps", lambda: _rows({"label": "DG"}, params={"steps": 100000}),
     "application/json", 400, "from 1 to 1000"),
    ("misspelled param", lambda: _rows({"label": "DG"}, params={"stepz": 3}),
     "application/json", 400, "'stepz' (did you mean 'steps'?)"),
    ("steps as a path", lambda: _rows({"label": "DG"}, params={"steps": "/etc/passwd"}),
     "application/json", 400, "params.steps='/etc/passwd' (text) must be an integer"),
    ("misspelled inputs key", lambda: b'{"inputz": [{"label": "DG"}]}', "application/json", 400,
     "'inputz' (did you mean 'inputs'?)"),
    ("100k-deep JSON", lambda: b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     "application/json", 400, "levels deep; at most 32"),
    ("negative seed", lambda: _rows({"label": "DG", "seed": -1}), "application/json", 400,
     "seed=-1"),
    ("seed past int64", lambda: _rows({"label": "DG", "seed": 2**63}), "application/json", 400,
     "2**63 - 1"),
    ("broken JSON", lambda: b'{"inputs": [', "application/json", 400, ""),
]  # fmt: skip


@pytest.fixture(scope="module")
def served(home: Path) -> Iterator[str]:
    port = _port()
    proc = _cli(home, "serve", "-m", "models:/thyroaug-fm/1", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            assert proc.poll() is None, _finish(proc)[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield base
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{base}/ping", timeout=2)
    finally:
        proc.kill()


@pytest.mark.parametrize(("name", "body", "ctype", "status", "needle"), ABUSE,
                         ids=[a[0] for a in ABUSE])  # fmt: skip
def test_abusive_requests_get_a_short_error(served: str, name, body, ctype, status, needle) -> None:
    code, text = _post(f"{served}/invocations", body(), ctype)
    assert code == status, text[:500]
    if code != 413 or text.startswith("{"):
        error = json.loads(text)
        assert set(error) == {"error_code", "message"} and needle in error["message"], error
    for leak in ("Traceback", "site-packages", ".py", "mlflow==", "/tmp/", str(Path.home())):
        assert leak not in text, (leak, text[:500])
    assert len(text) < 2000


def test_malformed_http_framing_is_a_json_400(served: str) -> None:
    host, port = served.rsplit("/", 1)[1].split(":")
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    for length in (b"-5", b"abc"):
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(head + b"Content-Length: " + length + b"\r\n\r\n{}")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status, _, body = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 400 ") and b"application/json" in status, answer
        assert json.loads(body) == {
            "error_code": "BAD_REQUEST",
            "message": "malformed HTTP request: bad Content-Length",
        }


def test_valid_request_and_what_the_server_does_not_say(served: str, home: Path) -> None:
    import mlflow

    code, text = _post(f"{served}/invocations", _rows({"label": "NG", "count": 2, "seed": 1}))
    assert code == 200, text[:500]
    rows = json.loads(text)["predictions"]
    assert [r["seed"] for r in rows] == [1, 2] and {r["source_id"] for r in rows} == {""}
    for path in ("/version", "/docs", "/openapi.json"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{served}{path}", timeout=10)
        assert info.value.code == 404
    files = Path(mlflow.artifacts.download_artifacts("models:/thyroaug-fm/1"))
    names = {p.name for p in files.rglob("*") if p.is_file()}
    assert not names & {"masks.safetensors", "masks.csv", "bank.json"}  # no patient data there
    _assert_nothing_running(_client(home))


# --- storage: a sound set of a finished run is used, as it is ------------------------------------
def test_a_set_of_a_finished_synthesize_run_is_used_and_its_hash_logged(home: Path) -> None:
    """The positive control of the storage cases (test_faults.py): the real set of a FINISHED
    synthesize run passes every check, with its tensor hash (computed once) as the logged one."""
    client = _client(home)
    info = json.loads((home / "good-set" / "set.json").read_text())
    assert client.get_run(info["created_by_run"]).info.status == "FINISHED"
    code, out = _run_cli(home, *_classifier(home, "--scenario", "O+FM", "--synthetic",
                                            f"FM={home / 'good-set'}"))  # fmt: skip
    assert code == 0, out[-3000:]
    run = client.get_run(out.split("; run ")[1].split(";")[0])
    assert run.data.params["synthetic_FM_sha256"] == info["tensor_sha256"]
    assert "thyroaug.unfinished_sets" not in run.data.tags
    assert "is damaged" not in out and "--allow-unfinished-set" not in out
    _assert_nothing_running(client)
