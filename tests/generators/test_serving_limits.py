"""Serving limits of ``GeneratorModel``: unknown fields, compute budget, seed range, raw inputs.

The fast tests call the python model directly (and once through ``mlflow.pyfunc.load_model``); the
slow integration test starts a real ``mlflow models serve`` and also records what MLflow's own
scoring server answers for bodies it cannot parse itself (printed, run with ``-s`` to read them).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from test_fm_pyfunc import _free_port, generator_folder, mask_bank  # noqa: F401  (fixtures)

from thyroaug.generators.base import GeneratedBatch, Generator, label_index
from thyroaug.generators.flow_matching.pyfunc import FMGeneratorModel
from thyroaug.generators.pyfunc_base import DEFAULT_MAX_WORK, GeneratorModel, log_generator
from thyroaug.generators.request_rows import MAX_SEED, as_int, invalid


class CountingGenerator:
    """Constant images; counts ``sample`` calls (a refused request must not reach it)."""

    def __init__(self, size: int = 8, steps: int = 10) -> None:
        self.image_size = size
        self.steps = steps
        self.calls = 0

    def method(self, mode: str | None = None) -> str:
        return "CONST"

    def describe(self) -> dict:
        return {"image_size": self.image_size, "default_steps": self.steps}

    def sample(self, labels, seeds, masks=None, **kwargs) -> GeneratedBatch:
        self.calls += 1
        level = torch.tensor([label_index(lab) / 4 for lab in labels], dtype=torch.float32)
        images = level[:, None, None, None].expand(-1, 1, self.image_size, self.image_size)
        return GeneratedBatch(images.clone(), {"source_id": [""] * len(labels)})


class StepsModel(GeneratorModel):
    """A family with a ``steps`` param (1..1000), as FM and SD have."""

    def load_generator(self, folder: Path, device: str) -> Generator:
        raise NotImplementedError

    def sample_kwargs(self, params):
        steps = params.get("steps")
        return {} if steps is None else {"steps": as_int(steps, "steps", 0, 1)}


class OwnPredictModel(StepsModel):
    """A family with its own ``predict`` and an extra field, as SD has (``mode``)."""

    extra_fields = ("mode",)

    def predict(self, context, model_input, params=None):
        self.seen = model_input
        rows = [{k: v for k, v in r.items() if k != "mode"} for r in model_input]
        return super().predict(context, rows, params)


def _model(cls=StepsModel, max_count: int = 64, max_work: int | None = None, **gen):
    model = cls(max_count=max_count, max_work=max_work)
    model.generator = CountingGenerator(**gen)
    return model


def _refused(model: GeneratorModel, rows, params=None) -> str:
    with pytest.raises(MlflowException) as info:
        model.predict(None, rows, params)
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "Traceback" not in info.value.message
    return info.value.message


# --- unknown fields ------------------------------------------------------------------------------
def test_misspelled_fields_are_named_with_a_suggestion() -> None:
    model = _model()
    message = _refused(model, [{"label": "DG", "counts": 5}, {"label": "NG", "seeed": 1}])
    assert "unknown field(s) 'counts' (row 0, did you mean 'count'?)" in message
    assert "'seeed' (row 1, did you mean 'seed'?)" in message
    assert "allowed fields: label, count, seed, mask" in message
    long_name = "x" * 10_000
    message = _refused(model, [{"label": "DG", long_name: 1}])
    assert len(message) < 300  # a huge field name is not echoed back in full
    assert model.generator.calls == 0


def test_a_family_predict_is_screened_and_its_extra_fields_allowed() -> None:
    model = _model(OwnPredictModel, max_work=3 * 10 * 64)  # 3 images x 10 steps x 8 x 8 px
    out = model.predict(None, [{"label": "DG", "mode": "SD2", "count": 2}])
    assert len(out) == 2 and model.generator.calls == 1
    assert _refused(model, [{"label": "DG", "mode": "SD2", "count": 4}]).count("budget") == 1
    assert "'modes' (row 0, did you mean 'mode'?)" in _refused(model, [{"label": "DG", "modes": 1}])
    assert "allowed fields: label, count, seed, mask, mode" in _refused(
        model, [{"label": "DG", "x": 1}]
    )
    assert model.generator.calls == 1


# --- request params ------------------------------------------------------------------------------
def test_params_a_family_declares_are_the_only_ones_accepted() -> None:
    model = _model()
    declared = {"steps": "long"}
    message = _refused_params(model, {"stepz": 3, "x" * 5000: 1}, declared)
    assert message.startswith("unknown param(s) 'stepz' (did you mean 'steps'?), 'xxxxxxxx")
    assert message.endswith("; allowed params: steps") and len(message) < 300
    assert "this model takes no params" in _refused_params(model, {"steps": 3}, {})
    assert model.check_params({"steps": 3}, declared) == {"steps": 3}
    assert model.check_params(None, declared) == {} and model.check_params({"x": 1}) == {}
    assert "must be a JSON object" in _refused_params(model, [1], declared)


def test_declared_types_hold_where_the_family_checks_less() -> None:
    """StepsModel's own check takes "3"; MLflow would refuse text for a long, so we do first."""
    model = _model()
    declared = {"steps": "long", "scale": "double", "name": "string", "flag": "boolean"}
    cases = [
        ({"steps": "3"}, "params.steps='3' (text) must be an integer"),
        ({"scale": "nan"}, "params.scale='nan' (text) must be a number"),
        ({"scale": float("nan")}, "params.scale=nan must be a finite number"),
        ({"scale": True}, "params.scale=True (a boolean) must be a number"),
        ({"name": 3}, "params.name=3 (a number) must be text"),
        ({"flag": 1}, "params.flag=1 (a number) must be true or false"),
        ({"flag": {"a": 1}}, "params.flag={'a': 1} (an object) must be true or false"),
    ]
    for params, message in cases:
        assert _refused_params(model, params, declared) == message
    ok = {"steps": 3, "scale": 2, "name": "x", "flag": False}
    assert model.check_params(ok, declared) == {"steps": 3}
    assert model.check_params({"steps": None, "scale": None}, declared) == {}  # null: default


def test_log_generator_records_the_declared_params(tracking_home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "generator"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    model = StepsModel()
    assert model.param_types is None  # a family that declares nothing in its class
    mlflow.set_experiment("declared-params")
    with mlflow.start_run():
        log_generator(model, folder, params=[("steps", "long", 10), ("mode", "string", "a")])
    assert model.param_types == {"steps": "long", "mode": "string"}
    model.generator = CountingGenerator()
    assert "'stepz' (did you mean 'steps'?)" in _refused(model, [{"label": "DG"}], {"stepz": 1})


def _refused_params(model: GeneratorModel, params, declared=None) -> str:
    with pytest.raises(MlflowException) as info:
        model.check_params(params, declared)
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
    return info.value.message


# --- compute budget ------------------------------------------------------------------------------
def test_budget_is_checked_before_any_work_and_says_how_to_split() -> None:
    assert DEFAULT_MAX_WORK == 64 * 50 * 128 * 128
    model = _model(max_work=4 * 10 * 64)  # 4 images at the default 10 steps, 8 px
    assert len(model.predict(None, [{"label": "DG", "count": 4}])) == 4
    message = _refused(model, [{"label": "DG", "count": 3}, {"label": "NG", "count": 2}])
    assert "5 image(s) x 10 steps x 8x8 px = 3,200 pixel-steps" in message
    assert "budget of 2,560 per request" in message
    assert "split it into requests of at most 4 image(s) each" in message
    message = _refused(model, [{"label": "DG"}], {"steps": 100})
    assert "1 image(s) x 100 steps" in message and "lower params.steps to at most 40" in message
    assert model.generator.calls == 1  # only the accepted request sampled


def test_budget_and_count_cap_defaults_and_bad_settings() -> None:
    model = StepsModel()
    assert model.max_work == DEFAULT_MAX_WORK and model.max_count == 64
    legacy = StepsModel.__new__(StepsModel)  # a model pickled before max_work existed
    assert legacy.max_work == DEFAULT_MAX_WORK
    with pytest.raises(Exception, match="max_work=0 must be >= 1"):
        StepsModel(max_work=0)
    assert "at most 2 per request" in _refused(_model(max_count=2), [{"label": "DG", "count": 3}])


def test_fm_budget_uses_the_generators_default_steps(generator_folder: Path) -> None:  # noqa: F811
    from thyroaug.generators.flow_matching.pipeline import load_generator

    model = FMGeneratorModel(max_count=8, max_work=2 * 10 * 32 * 32)  # smoke: 10 steps, 32 px
    model.generator = load_generator(generator_folder, device="cpu")
    assert model.default_steps() == 10
    assert "at most 2 image(s)" in _refused(model, [{"label": "DG", "count": 3}])
    assert "1 image(s) x 30 steps" in _refused(model, [{"label": "DG"}], {"steps": 30})


# --- seeds ---------------------------------------------------------------------------------------
def test_seed_range_is_the_same_on_input_and_output() -> None:
    model = _model()
    out = model.predict(None, [{"label": "DG", "seed": MAX_SEED - 1, "count": 2}])
    assert list(out["seed"]) == [MAX_SEED - 1, MAX_SEED] and out["seed"].dtype == np.int64
    again = model.predict(None, [{"label": "DG", "seed": int(out["seed"][1])}])  # answer -> input
    assert int(again["seed"][0]) == MAX_SEED
    message = _refused(model, [{"label": "DG", "seed": MAX_SEED, "count": 2}])
    assert "past 2**63 - 1" in message and f"seed <= {MAX_SEED - 1}" in message
    assert "seed=9223372036854775808 must be an integer from 0 to 2**63 - 1" in _refused(
        model, [{"label": "DG", "seed": 2**63}]
    )
    assert "from 0 to 2**63 - 1" in _refused(model, [{"label": "DG", "seed": -1}])
    assert "must be an integer" in _refused(model, [{"label": "DG", "seed": "9" * 5000}])


# --- raw inputs as MLflow hands them over without an input schema --------------------------------
def test_numpy_scalars_and_columns_are_read_as_rows() -> None:
    model = _model()
    rows = [{"label": np.array("NG"), "count": np.array(2), "seed": np.array(7, dtype=np.uint64)}]
    out = model.predict(None, rows)
    assert list(out["label"]) == ["NG", "NG"] and list(out["seed"]) == [7, 8]
    one = model.predict(None, {"label": np.array("TI"), "count": np.array(1)})
    assert list(one["label"]) == ["TI"]
    cols = model.predict(None, {"label": np.array(["DG", "NL"]), "seed": np.array([1, 2])})
    assert list(cols["label"]) == ["DG", "NL"] and list(cols["seed"]) == [1, 2]
    masks = {"label": ["DG", "NG"], "mask": np.zeros((2, 8, 8))}
    assert list(model.predict(None, masks)["source_id"]) == ["", ""]
    assert "columns of equal length" in _refused(model, {"label": ["DG"], "seed": [1, 2]})
    assert "label is required" in _refused(model, [{"label": np.array(None, dtype=object)}])


def test_invalid_helper_is_a_400() -> None:
    assert invalid("x").error_code == "INVALID_PARAMETER_VALUE"


def test_unexpected_errors_answer_without_trace_or_paths() -> None:
    model = _model(OwnPredictModel)

    def broken(*args, **kwargs):
        raise RuntimeError("boom in /secret/install/path/module.py")

    model.generator.sample = broken
    with pytest.raises(MlflowException) as info:
        model.predict(None, [{"label": "DG", "mode": "SD2"}])
    assert info.value.error_code == "INTERNAL_ERROR" and info.value.get_http_status_code() == 500
    assert "(RuntimeError)" in info.value.message and "/secret" not in info.value.message
    assert "stack_trace" not in info.value.serialize_as_json()
    assert isinstance(info.value.__cause__, RuntimeError)  # Python callers keep the cause


# --- logged model: no input schema, so MLflow passes unknown columns on ---------------------------
@pytest.fixture
def limited(tracking_home: Path, generator_folder: Path, mask_bank, tmp_path: Path) -> str:  # noqa: F811
    """The smoke FM generator registered with a 4-image budget (10 steps, 32 px)."""
    from thyroaug.generators.banks import bank_config, log_bank, write_bank

    mlflow.set_experiment("serving-limits")
    with mlflow.start_run():
        bank = log_bank(write_bank(mask_bank, tmp_path / "bank", family="fm", cohort_hash="tiny"))
        logged = log_generator(
            FMGeneratorModel(max_count=8, max_work=4 * 10 * 32 * 32),
            generator_folder,
            name="generator-fm",
            registered_name="thyroaug-fm-limited",
            alias="champion",
            params=[("solver", "string", "euler"), ("steps", "long", 10)],
            model_config=bank_config(bank, "tiny"),
        )
    return str(logged.registry_uri)


def test_logged_model_has_no_input_schema_and_refuses_unknown_columns(limited: str) -> None:
    model = mlflow.pyfunc.load_model(limited)
    assert model.metadata.signature.inputs is None
    assert {p.name for p in model.metadata.signature.params.params} == {"solver", "steps"}
    assert model.metadata.signature.outputs.input_names()[:2] == ["request", "index"]
    meta = model.metadata.metadata
    assert meta["request_fields"] == "label,count,seed,mask" and meta["max_work"] == 40960
    with pytest.raises(MlflowException, match="'counts' \\(row 0, did you mean 'count'\\?\\)"):
        model.predict(pd.DataFrame([{"label": "DG", "counts": 5}]))
    with pytest.raises(MlflowException, match="budget of 40,960"):
        model.predict(pd.DataFrame([{"label": "DG", "count": 5}]))
    assert len(model.predict(pd.DataFrame([{"label": "DG", "count": 2}]))) == 2


# --- a real `mlflow models serve` ----------------------------------------------------------------
@contextlib.contextmanager
def _served(uri: str, home: Path) -> Iterator[str]:
    port = _free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(
        cmd, env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not _alive(base):
            assert proc.poll() is None, "mlflow models serve exited early"
            assert time.monotonic() < deadline, "server did not answer /ping in 180 s"
            time.sleep(1)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _alive(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/ping", timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _send(base: str, body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
    req = urllib.request.Request(f"{base}/invocations", body, {"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _ask(base: str, payload: dict) -> tuple[int, dict]:
    status, raw = _send(base, json.dumps(payload).encode())
    return status, json.loads(raw or b"{}")


def _clean(body: dict) -> None:
    """Our 400s: a message, no stack trace, no install path, no library version."""
    text = json.dumps(body)
    assert "stack_trace" not in body and "Traceback" not in text
    assert sys.prefix not in text and "site-packages" not in text
    assert mlflow.__version__ not in text


@pytest.mark.slow
@pytest.mark.integration
def test_real_server_refuses_unknown_fields_budget_and_bad_seeds(limited: str, tracking_home):
    with _served(limited, tracking_home) as base:
        bad = [
            ({"inputs": [{"label": "DG", "counts": 5}]}, "'counts' (row 0, did you mean 'count'?)"),
            ({"inputs": [{"label": "DG", "seeed": 3}]}, "'seeed' (row 0, did you mean 'seed'?)"),
            ({"dataframe_records": [{"label": "DG", "counts": 5}]}, "'counts'"),
            ({"inputs": [{"label": "DG", "count": 5}]}, "at most 4 image(s) each"),
            ({"inputs": [{"label": "DG"}], "params": {"steps": 100}}, "lower params.steps"),
            ({"inputs": [{"label": "DG", "seed": MAX_SEED, "count": 2}]}, "past 2**63 - 1"),
            ({"inputs": [{"label": "DG", "seed": 2**63}]}, "from 0 to 2**63 - 1"),
        ]
        for payload, reason in bad:
            status, body = _ask(base, payload)
            assert status == 400 and reason in body.get("message", ""), (payload, body)
            _clean(body)
        status, body = _ask(base, {"inputs": [{"label": "DG", "seed": MAX_SEED - 1, "count": 2}]})
        assert status == 200 and [p["seed"] for p in body["predictions"]] == [
            MAX_SEED - 1,
            MAX_SEED,
        ]
        status, body = _ask(base, {"inputs": [{"label": "DG", "seed": MAX_SEED}]})
        assert status == 200 and body["predictions"][0]["seed"] == MAX_SEED
        status, body = _ask(base, {"inputs": {"label": "NG", "count": 2, "seed": 3}})
        assert status == 200 and [p["seed"] for p in body["predictions"]] == [3, 4]
        status, raw = _send(base, b"label,count,seed\nDG,2,1\n", "text/csv")
        assert status == 200 and len(json.loads(raw)["predictions"]) == 2
        status, raw = _send(base, b"label,counts\nDG,2\n", "text/csv")
        assert status == 400 and b"'counts'" in raw
        _record_mlflow_own_errors(base)
        assert _alive(base)  # still serving after all of it


def _record_mlflow_own_errors(base: str) -> None:
    """What MLflow's scoring server answers before our code runs (printed; not ours to fix)."""
    report = {}
    for name, body, ctype in [
        ("csv that fails to parse", b"label,count\nDG,1\nDG,1,2,3\n", "text/csv"),
        ("invalid json", b"{not json", "application/json"),
    ]:
        status, raw = _send(base, body, ctype)
        assert 400 <= status < 500
        report[name] = _describe(status, raw, 0.0, len(body))
    huge = 50 * 1024 * 1024
    for name, payload in [
        ("50 MB string in an unknown field", {"inputs": [{"label": "DG", "pad": "x" * huge}]}),
        ("50 MB mask", {"inputs": [{"label": "DG", "mask": [[0.5] * 1024] * (huge // 5120)}]}),
    ]:
        body = json.dumps(payload).encode()
        started = time.perf_counter()
        status, raw = _send(base, body)
        report[name] = _describe(status, raw, time.perf_counter() - started, len(body))
        assert status == 400
    print("\nMLflow scoring server, own answers:\n" + json.dumps(report, indent=2))


def _describe(status: int, raw: bytes, seconds: float, sent: int = 0) -> dict:
    text = raw.decode("utf-8", "replace")
    return {
        "status": status,
        "sent_bytes": sent,
        "answer_bytes": len(raw),
        "seconds": round(seconds, 1),
        "stack_trace": "stack_trace" in text or "Traceback" in text,
        "install_paths": "site-packages" in text,
        "echoes_input": "xxxxxxxxxx" in text or "DG,1,2,3" in text or "not json" in text,
        "start": text[:160],
    }
