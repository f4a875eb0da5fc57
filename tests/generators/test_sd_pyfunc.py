"""`thyroaug train-sd` -> registered `thyroaug-sd` pyfunc -> predict / synthesize / serve."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import make_tiny_cohort

from thyroaug.cli import main
from thyroaug.contract import CLASSES

URI = "models:/thyroaug-sd@champion"
JSON = "application/json"


@pytest.fixture(scope="module", autouse=True)
def _isolated():
    """No local SD weights: scratch by default (one torch thread comes from conftest)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("THYROAUG_SD_BASE", raising=False)
        mp.delenv("THYROAUG_WEIGHTS_DIR", raising=False)
        yield


@pytest.fixture(scope="module")
def sd_home(tmp_path_factory: pytest.TempPathFactory):
    """A private tracking home where `thyroaug train-sd --register --alias champion` ran once."""
    import mlflow

    home = tmp_path_factory.mktemp("sdhome")
    cohort_dir = make_tiny_cohort().save(home / "cohort").parent
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("THYROAUG_HOME", str(home))
        mp.setenv("THYROAUG_TRACKING", "local")
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(var, raising=False)
        mp.delenv("MLFLOW_PARENT_RUN_ID", raising=False)
        mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
        rc = main(
            [
                "train-sd",
                "--profile",
                "smoke",
                "--cohort",
                str(cohort_dir),
                "--output",
                str(home / "sd"),
                "--register",
                "--alias",
                "champion",
                "--no-progress",
            ]
        )
        assert rc == 0
        yield home
        while mlflow.active_run() is not None:
            mlflow.end_run()


def test_train_sd_cli_logs_the_run_and_registers(sd_home: Path):
    from mlflow import MlflowClient

    client = MlflowClient()
    version = client.get_model_version_by_alias("thyroaug-sd", "champion")
    run = client.get_run(version.run_id)
    assert run.data.tags["step"] == "train_sd" and run.data.tags["source"] == "scratch"
    assert run.data.params["learning_rate"] == "0.001"  # the smoke profile's value
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == list(range(1, 25))
    samples = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert {f"samples/final_{c}.png" for c in CLASSES} <= set(samples)
    assert version.tags["method"] == "SD"
    assert (sd_home / "sd" / "model" / "model_index.json").exists()


def test_pyfunc_round_trip_and_synthesize(sd_home: Path):
    import mlflow

    from thyroaug.generators.base import open_generator, synthesize

    model = mlflow.pyfunc.load_model(URI)
    mask = np.zeros((32, 32))
    mask[8:24, 8:24] = 1
    rows = [
        {"label": "DG", "mode": "SD2", "prompt": "thyroid scan, dg", "count": 2},
        {"label": "TI", "mode": "SD1", "seed": 4},
        {"label": "NG", "mode": "SD4", "mask": mask.tolist(), "prompt": "ng"},
        {"label": "NL", "mode": "SD3", "image": np.full((32, 32), 0.4).tolist()},
    ]
    # mixed rows: every field on every row (None where not given), as MLflow's schema needs
    fields = {"prompt": None, "image": None, "mask": None, "count": 1, "seed": 0}
    request = pd.DataFrame([{**fields, **row} for row in rows])
    out = model.predict(request, params={"steps": 2})
    assert list(out["request"]) == [0, 0, 1, 2, 3]
    assert list(out["mode"]) == ["SD2", "SD2", "SD1", "SD4", "SD3"]
    assert all(np.asarray(im).shape == (32, 32) for im in out["image"])
    assert list(out["source_id"]) == ["request", "request", "", "request", "request"]  # no case id
    assert list(out["prompt"])[2:4] == ["", "ng"]  # a bank prompt is not returned, the caller's is
    again = model.predict(request, params={"steps": 2})
    assert np.array_equal(np.stack(out["image"]), np.stack(again["image"]))
    operator = mlflow.pyfunc.load_model(URI, model_config={"reveal_sources": True})
    shown = operator.predict(request, params={"steps": 2})
    assert shown["source_id"].iloc[2][1:3] == "TI" and shown["prompt"].iloc[2]
    assert np.array_equal(np.stack(out["image"]), np.stack(shown["image"]))

    handle = open_generator(URI)
    assert handle.version == "1"
    synth, grids = synthesize(handle, 1, seed=0, mode="SD1", progress=False, steps=2)
    assert (
        synth.method == "SD1" and len(synth.images) == len(CLASSES) and set(grids) == set(CLASSES)
    )


def test_registered_model_holds_no_training_pixels_ids_or_prompts(sd_home: Path):
    """The registry copy is weights + config; the bank is the training run's artifact only."""
    import mlflow

    from thyroaug.data.cohort import PreparedCohort
    from thyroaug.generators.stable_diffusion.components import to_unit

    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("thyroaug-sd", "champion")
    files = Path(mlflow.artifacts.download_artifacts(f"models:/thyroaug-sd/{version.version}"))
    paths = [p for p in files.rglob("*") if p.is_file()]
    assert not {p.name for p in paths} & {"sources.safetensors", "sources.csv", "bank.json"}
    blob = b"".join(p.read_bytes() for p in paths)
    train = PreparedCohort.load(sd_home / "cohort").subset("train")
    pixels = to_unit(train.images).float().numpy()
    rows = [image[0, 16].tobytes() for image in pixels]  # the middle row of each, as stored
    assert not any(r in blob for r in rows)
    bank = Path(mlflow.artifacts.download_artifacts(f"runs:/{version.run_id}/condition_bank"))
    assert all(r in (bank / "sources.safetensors").read_bytes() for r in rows)  # the probe works
    assert not any(c.encode() in blob for c in train.table["case_id"].astype(str))
    assert not any(t.encode() in blob for t in train.table["prompt"].astype(str) if len(t) > 20)
    assert version.tags["embedded_sources"] == "false"
    assert (bank / "bank.json").exists()


def test_a_training_case_cannot_be_read_back_through_a_tiny_strength(sd_home: Path):
    import mlflow

    model = mlflow.pyfunc.load_model(URI)
    low = {"steps": 2, "strength": 1e-6}
    assert "below this model's 0.8" in _error(model, [{"label": "TI", "mode": "SD1"}], low)
    assert "below this model's 0.8" in _error(model, [{"label": "TI", "mode": "SD4"}], low)
    own = np.full((32, 32), 0.4).tolist()
    row = {"label": "TI", "mode": "SD1", "image": own}
    assert len(model.predict(pd.DataFrame([row]), params=low)) == 1  # the caller's own image
    ok = model.predict(pd.DataFrame([{"label": "TI", "mode": "SD1"}]), params={"steps": 2})
    assert len(ok) == 1


def test_without_run_access_conditions_must_come_with_the_request(sd_home: Path):
    import mlflow

    blind = mlflow.pyfunc.load_model(URI, model_config={"condition_bank": "none"})
    assert "no source bank loaded" in _error(blind, [{"label": "TI", "mode": "SD1"}])
    start = np.full((32, 32), 0.4).tolist()
    row = {"label": "NL", "mode": "SD1", "image": start, "prompt": "nl"}
    out = blind.predict(pd.DataFrame([row]), params={"steps": 2})
    assert list(out["source_id"]) == ["request"]


def _error(model, rows, params=None) -> str:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as info:
        model.predict(pd.DataFrame(rows), params=params)
    return str(info.value)


def test_requests_are_validated(sd_home: Path):
    import mlflow

    model = mlflow.pyfunc.load_model(URI)
    assert "mode=" in _error(model, [{"label": "DG", "mode": "SD7"}])
    assert "77-token limit" in _error(
        model, [{"label": "DG", "mode": "SD2", "prompt": " ".join(["word"] * 100)}]
    )
    assert "empty prompt" in _error(model, [{"label": "DG", "mode": "SD3", "prompt": "x"}])
    assert "at most 16" in _error(model, [{"label": "DG", "mode": "SD2", "count": 17}])
    assert "[32, 32]" in _error(
        model, [{"label": "DG", "mode": "SD1", "image": np.zeros((8, 8)).tolist()}]
    )
    assert "[0, 1]" in _error(
        model, [{"label": "DG", "mode": "SD1", "image": np.full((32, 32), 3.0).tolist()}]
    )
    assert "SD4 only" in _error(
        model, [{"label": "DG", "mode": "SD2", "mask": np.zeros((32, 32)).tolist()}]
    )
    assert "unknown label" in _error(model, [{"label": "XX", "mode": "SD2"}])
    assert "strength" in _error(model, [{"label": "DG", "mode": "SD1"}], {"strength": 0.0})


def _served(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``post(body) -> (status, error or answer)`` against ``thyroaug serve``'s app of the SD
    champion, in-process."""
    import mlflow
    from starlette.testclient import TestClient

    from thyroaug.generators.http_guard import build_app

    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "false")  # init sets it; restored
    app = TestClient(build_app(mlflow.pyfunc.load_model(URI)), raise_server_exceptions=False)

    def post(body: dict | bytes) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        answer = app.post("/invocations", content=data, headers={"Content-Type": JSON})
        return answer.status_code, answer.json()

    return post


def test_served_sd_refuses_misspelled_and_mistyped_params(sd_home: Path, monkeypatch):
    post = _served(monkeypatch)
    row = {"inputs": [{"label": "DG", "mode": "SD2"}]}
    status, error = post({**row, "params": {"stepz": 3}})
    assert status == 400 and "unknown param(s) 'stepz' (did you mean 'steps'?)" in error["message"]
    assert "allowed params: steps, guidance_scale, strength" in error["message"]
    cases = [
        ({"guidance_scale": "nan"}, "params.guidance_scale='nan' (text) must be a number from 0 "
         "to 50"),
        ({"steps": "/etc/passwd"}, "params.steps='/etc/passwd' (text) must be an integer from 1 "
         "to 1000"),
        ({"strength": 0}, "params.strength=0 must be a number above 0 and at most 1"),
        ({"guidance_scale": -1}, "params.guidance_scale=-1 must be a number from 0 to 50"),
    ]  # fmt: skip
    for params, message in cases:
        status, error = post({**row, "params": params})
        assert (status, error) == (
            400,
            {"error_code": "INVALID_PARAMETER_VALUE", "message": message},
        )
    status, error = post(b'{"inputs": [{"label": "DG", "mode": "SD2"}], "params": '
                         b'{"guidance_scale": Infinity}}')  # fmt: skip
    assert status == 400
    assert error["message"] == "params.guidance_scale=inf must be a number from 0 to 50"


def test_img2img_settings_that_run_no_denoising_step_are_400s(sd_home: Path, monkeypatch):
    """img2img skips the first steps - int(steps x strength) timesteps (diffusers): a request
    left with none is the caller's mistake, and so is more steps than the scheduler has."""
    post = _served(monkeypatch)
    for mode in ("SD1", "SD3", "SD4"):
        status, error = post({"inputs": [{"label": "DG", "mode": mode}], "params": {"steps": 1}})
        assert status == 400, (mode, error)
        assert error["message"] == (
            f"row 0: {mode} runs no denoising step at steps 1 and strength 0.8 (img2img skips "
            "the first steps - int(steps x strength) = 1 of the scheduler's 1 timesteps); use "
            "steps >= 2 at strength 0.8, or strength 1 at steps 1"
        )
    rows = [{"label": "DG", "mode": "SD2"}, {"label": "DG", "mode": "SD3"}]
    status, error = post({"inputs": rows, "params": {"steps": 1}})
    assert status == 400 and error["message"].startswith("row 1: SD3 runs no denoising step")
    status, error = post({"inputs": [{"label": "DG", "mode": "SD2"}], "params": {"steps": 1000}})
    assert status == 400 and error["message"] == (
        "row 0: steps=1000 is more than this model's scheduler runs (PNDMScheduler, 1000 "
        "training timesteps); use steps <= 999"
    )
    status, _ = post({"inputs": [{"label": "DG", "mode": "SD3"}], "params": {"steps": 2}})
    assert status == 200  # int(2 x 0.8) = 1 step


def test_generator_refuses_settings_without_a_denoising_step(sd_home: Path):
    import mlflow

    from thyroaug.errors import GeneratorError
    from thyroaug.generators.stable_diffusion.pipeline import SDGenerator

    generator = mlflow.pyfunc.load_model(URI).unwrap_python_model().generator
    with pytest.raises(GeneratorError, match="SD3 runs no denoising step at steps 1"):
        generator.sample(["DG"], [0], mode="SD3", steps=1)
    assert generator.denoising_steps("SD2", 1) == 1
    assert generator.denoising_steps("SD1", 2, 1e-6) == 1  # PNDM keeps one more timestep
    ddim = SDGenerator(sd_home / "sd" / "model", scheduler="ddim", device="cpu")
    assert ddim.denoising_steps("SD3", 10, 0.5) == 5
    with pytest.raises(GeneratorError) as info:
        ddim.denoising_steps("SD4", 3, 0.3)
    assert str(info.value).endswith(
        "use steps >= 4 at strength 0.3, or strength >= 0.334 at steps 3"
    )
    with pytest.raises(GeneratorError, match=r"use strength >= 0\.5 at steps 2$"):
        ddim.denoising_steps("SD1", 2, 1e-6)  # no steps <= 999 would do at this strength


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, payload: dict) -> tuple[int, str]:
    req = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.integration
@pytest.mark.slow
def test_mlflow_models_serve_answers_and_rejects(sd_home: Path):
    import mlflow

    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)  # the server execs `uvicorn` from PATH
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow.get_tracking_uri())
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    mlflow_bin = str(Path(bin_dir) / "mlflow")
    cmd = [mlflow_bin, "models", "serve", "-m", URI, "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not start: {proc.stderr.read()[-2000:]}")
            time.sleep(1)
        ok = {
            "inputs": [{"label": "DG", "mode": "SD2", "prompt": "thyroid scan", "count": 2}],
            "params": {"steps": 2},
        }
        status, body = _post(f"{base}/invocations", ok)
        assert status == 200, body
        rows = json.loads(body)["predictions"]
        assert len(rows) == 2 and np.asarray(rows[0]["image"]).shape == (32, 32)
        status, body = _post(f"{base}/invocations", {"inputs": [{"label": "DG", "mode": "SD5"}]})
        assert status == 400 and "SD1, SD2, SD3, SD4" in body
        many = {"inputs": [{"label": "DG", "mode": "SD2", "count": 500}]}
        status, body = _post(f"{base}/invocations", many)
        assert status == 400 and "at most 16" in body
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
