"""Registry and serving of the flow-matching generator; `train-fm` and `synthesize` commands."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_tiny_cohort
from mlflow.exceptions import MlflowException

from thyroaug.cli import main
from thyroaug.config import resolve
from thyroaug.generators.banks import log_bank, write_bank
from thyroaug.generators.base import open_generator, registry_version, sample_seed
from thyroaug.generators.flow_matching.config import FMConfig
from thyroaug.generators.flow_matching.model import VelocityNet
from thyroaug.generators.flow_matching.pipeline import load_generator, save_generator
from thyroaug.generators.flow_matching.pyfunc import (
    FM_REGISTERED_NAME,
    FMGeneratorModel,
    log_fm_generator,
)
from thyroaug.generators.flow_matching.train import prepare_training_data
from thyroaug.synthetic import SyntheticSet


@pytest.fixture(scope="module")
def mask_bank():
    """The tiny cohort's training masks (what the generator draws from)."""
    return prepare_training_data(make_tiny_cohort(), resolve(FMConfig, "smoke")).mask_bank()


@pytest.fixture(scope="module")
def generator_folder(tmp_path_factory, mask_bank) -> Path:
    """An (untrained) smoke generator folder: weights + config, no masks in it."""
    cfg = resolve(FMConfig, "smoke")
    torch.manual_seed(0)
    net = VelocityNet(cfg)
    folder = tmp_path_factory.mktemp("fm") / "generator"
    return save_generator(folder, net, mask_bank, {"content_hash": "tiny", "epochs_done": 0})


def log_smoke_fm(folder: Path, bank, scratch: Path, **kwargs):
    """In the active run: log the tiny cohort's mask bank, then the generator referring to it."""
    bank_dir = write_bank(bank, scratch / "bank", family="fm", cohort_hash="tiny")
    return log_fm_generator(folder, bank_uri=log_bank(bank_dir), **kwargs)


@pytest.fixture
def registered(tracking_home, generator_folder, mask_bank, tmp_path):
    import mlflow

    mlflow.set_experiment("pyfunc-test")
    with mlflow.start_run():
        return log_smoke_fm(
            generator_folder,
            mask_bank,
            tmp_path,
            registered_name=FM_REGISTERED_NAME,
            alias="champion",
            max_count=8,
        )


def test_pyfunc_roundtrip_through_the_registry(registered, generator_folder, mask_bank):
    import mlflow

    assert registered.registry_uri == "models:/thyroaug-fm@champion" and registered.version == "1"
    assert registry_version("models:/thyroaug-fm@champion") == "1"
    model = mlflow.pyfunc.load_model("models:/thyroaug-fm@champion")
    assert {p.name for p in model.metadata.signature.params.params} == {"solver", "steps"}
    request = pd.DataFrame([{"label": "DG", "count": 2, "seed": 5}, {"label": "TI", "seed": 0}])
    out = model.predict(request)
    assert list(out["label"]) == ["DG", "DG", "TI"] and list(out["seed"]) == [5, 6, 0]
    assert list(out["request"]) == [0, 0, 1] and list(out["index"]) == [0, 1, 0]
    direct = load_generator(generator_folder, device="cpu", mask_bank=mask_bank).sample(
        ["DG", "DG", "TI"], [5, 6, 0]
    )
    got = np.stack(out["image"])
    assert got.shape == (3, 32, 32) and got.dtype == np.float32
    assert np.array_equal(got, direct.images[:, 0].numpy())
    assert list(out["source_id"]) == ["", "", ""]  # case ids only if the operator opts in
    revealing = mlflow.pyfunc.load_model(
        "models:/thyroaug-fm@champion", model_config={"reveal_sources": True}
    )
    assert list(revealing.predict(request)["source_id"]) == direct.columns["source_id"]
    masked = model.predict(
        pd.DataFrame([{"label": "NG", "count": 1, "seed": 1, "mask": np.ones((32, 32)).tolist()}]),
        params={"solver": "midpoint", "steps": 2},
    )
    assert list(masked["source_id"]) == ["request"]
    handle = open_generator("models:/thyroaug-fm@champion")
    assert handle.version == "1" and handle.generator.method() == "FM"
    version = mlflow.MlflowClient().get_model_version(FM_REGISTERED_NAME, "1")
    assert version.tags["conditioning"] == "class+mask" and version.tags["method"] == "FM"
    assert version.tags["embedded_sources"] == "false"


def test_registered_model_holds_no_masks_and_needs_run_access(registered, mask_bank):
    """The registry copy has weights + config only; without the bank, label-only is a 400."""
    import mlflow

    files = Path(mlflow.artifacts.download_artifacts("models:/thyroaug-fm/1"))
    names = {p.name for p in files.rglob("*") if p.is_file()}
    assert not names & {"masks.safetensors", "masks.csv", "bank.json"}
    blob = b"".join(p.read_bytes() for p in files.rglob("*") if p.is_file())
    assert not any(case.encode() in blob for case in mask_bank.case_ids)
    blind = mlflow.pyfunc.load_model(
        "models:/thyroaug-fm@champion", model_config={"condition_bank": "none"}
    )
    with pytest.raises(MlflowException, match="no mask bank loaded"):
        blind.predict(pd.DataFrame([{"label": "DG"}]))
    mask = np.ones((32, 32)).tolist()
    assert len(blind.predict(pd.DataFrame([{"label": "DG", "mask": mask}]))) == 1


@pytest.fixture(scope="module")
def python_model(generator_folder, mask_bank) -> FMGeneratorModel:
    model = FMGeneratorModel(max_count=8)
    model.generator = load_generator(generator_folder, device="cpu", mask_bank=mask_bank)
    return model


@pytest.mark.parametrize(
    ("request_rows", "params", "message"),
    [
        ([{"label": "XX"}], None, "unknown label"),
        ([{"label": "DG", "count": 9}], None, "at most 8"),
        ([{"label": "DG", "count": 5}, {"label": "NG", "count": 4}], None, "at most 8"),
        ([{"label": "DG", "mask": [[0, 1], [1, 0]]}], None, "needs [32, 32]"),
        ([{"label": "DG", "mask": [[0, 1], [1]]}], None, "mask"),
        ([{"label": "DG", "mask": np.ones((32, 32)).tolist()}, {"label": "NG"}], None, "every"),
        ([{"label": "DG", "seed": -1}], None, "seed=-1"),
        ([{"label": "DG", "count": 0}], None, "count=0"),
        ([{"label": "DG", "count": 1.5}], None, "integer"),
        ([{"label": "DG", "colour": "red"}], None, "unknown field"),
        ([{"count": 1}], None, "label is required"),
        ([], None, "empty request"),
        ("DG please", None, "request must be rows"),
        ([{"label": "DG"}], {"solver": "heun"}, "params.solver"),
        ([{"label": "DG"}], {"steps": 5000}, "params.steps=5000 must be an integer from 1 to 1000"),
        ([{"label": "DG"}], {"stepz": 3}, "unknown param(s) 'stepz' (did you mean 'steps'?)"),
        ([{"label": "DG"}], {"steps": "3"}, "params.steps='3' (text) must be an integer from 1"),
        ([{"label": "DG"}], {"steps": True}, "params.steps=True (a boolean) must be an integer"),
        ([{"label": "DG"}], {"solver": 3}, "params.solver=3 (a number) must be one of euler"),
    ],
)
def test_invalid_requests_are_400s_with_a_reason(python_model, request_rows, params, message):
    with pytest.raises(MlflowException) as info:
        python_model.predict(None, request_rows, params)
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
    assert message in info.value.message


def test_valid_request_forms(python_model):
    as_dict = python_model.predict(None, {"label": "NL", "count": 2, "seed": 3})
    as_columns = python_model.predict(None, {"label": ["NL"], "count": [2], "seed": [3]})
    assert np.array_equal(np.stack(as_dict["image"]), np.stack(as_columns["image"]))
    one = python_model.predict(None, [{"label": "NL", "seed": 4}])
    assert np.allclose(one["image"][0], as_dict["image"][1], atol=1e-5)  # seed + j rule


@pytest.mark.slow
def test_train_fm_register_synthesize_and_resume(tracking_home, tmp_path, capsys):
    import mlflow

    cohort_dir = make_tiny_cohort().save(tmp_path / "cohort")
    output = tmp_path / "fm"
    args = ["--profile", "smoke", "--cohort", str(cohort_dir), "--output", str(output)]
    assert main(["train-fm", *args, "--epochs", "1", "--register", "--alias", "champion"]) == 0
    printed = capsys.readouterr().out
    train_run = printed.split("run id: ")[1].split()[0]
    assert "models:/thyroaug-fm@champion (version 1)" in printed
    run = mlflow.get_run(train_run)
    assert run.data.tags["step"] == "train_fm" and run.data.params["conditioning"] == "class+mask"
    assert "train_loss" in run.data.metrics
    grids = [a.path for a in mlflow.MlflowClient().list_artifacts(train_run, "samples")]
    assert grids == ["samples/epoch_0001.png"]

    synth = ["synthesize", "--per-class", "3", "--seed", "4", "--batch-size", "5"]
    assert main([*synth, "--cohort", str(cohort_dir), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    synth_run = printed.split("run id: ")[1].split()[0]
    assert f"runs:/{synth_run}/synthetic/FM" in printed
    run = mlflow.get_run(synth_run)
    assert run.data.tags["step"] == "synthesize" and run.data.tags["method"] == "FM"
    assert "fid_resnet18-random_overall" in run.data.metrics
    local = mlflow.artifacts.download_artifacts(f"runs:/{synth_run}/synthetic/FM")
    sset = SyntheticSet.load(local)
    assert sset.class_counts() == {"DG": 3, "NG": 3, "NL": 3, "TI": 3}
    m = sset.manifest
    assert set(m["generator_version"].astype(str)) == {"1"} and set(m["solver"]) == {"euler"}
    assert int(m["seed"][4]) == sample_seed(4, 1, 1)
    bank = pd.read_csv(output / "condition_bank" / "masks.csv")
    assert not (output / "generator" / "masks.csv").exists()
    assert set(m["source_id"]) <= set(bank["case_id"])
    assert (Path(local) / "grid_TI.png").exists() and sset.info["cohort_hash"]

    assert main(["train-fm", *args, "--epochs", "2", "--resume", "--register"]) == 0
    printed = capsys.readouterr().out
    assert printed.split("run id: ")[1].split()[0] == train_run  # the same run continued
    assert "version 2" in printed
    history = mlflow.MlflowClient().get_metric_history(train_run, "train_loss")
    assert [h.step for h in history] == [1, 2]


@pytest.mark.slow
def test_load_by_alias_in_a_fresh_process(registered, tracking_home):
    code = (
        "import mlflow, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/thyroaug-fm@champion')\n"
        "out = m.predict(pd.DataFrame([{'label': 'TI', 'count': 2, 'seed': 1}]))\n"
        "print(len(out), out['image'][0].shape)\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tracking_home / 'mlflow.db'}"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("2 (32, 32)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.mark.slow
@pytest.mark.integration
def test_mlflow_models_serve_answers_and_rejects(registered, tracking_home):
    port = _free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tracking_home / 'mlflow.db'}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/thyroaug-fm@champion"]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=tracking_home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, "mlflow models serve exited early"
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "server did not answer /ping in 180 s"
            time.sleep(1)
        ok = json.dumps({"inputs": [{"label": "NG", "count": 2, "seed": 3}]}).encode()
        status, body = _post(f"{base}/invocations", ok)
        assert status == 200
        preds = body["predictions"]
        assert len(preds) == 2 and preds[1]["seed"] == 4
        image = np.asarray(preds[0]["image"])
        assert image.shape == (32, 32) and image.min() >= 0 and image.max() <= 1
        mask = {"label": "DG", "mask": np.ones((32, 32)).tolist()}
        status, body = _post(f"{base}/invocations", json.dumps({"inputs": [mask]}).encode())
        assert status == 200 and body["predictions"][0]["source_id"] == "request"
        bad = [
            ({"inputs": [{"label": "DG", "count": 100}]}, "at most 8"),
            ({"inputs": [{"label": "XX"}]}, "unknown label"),
            ({"inputs": [{"label": "DG", "mask": [[0, 1], [1, 0]]}]}, "needs [32, 32]"),
            ({"inputs": [{"label": "DG"}], "params": {"solver": "heun"}}, "params.solver"),
            ({"wrong": 1}, ""),
        ]
        for payload, reason in bad:
            status, body = _post(f"{base}/invocations", json.dumps(payload).encode())
            assert 400 <= status < 500, (payload, status)
            assert reason in body.get("message", ""), body
        status, _ = _post(f"{base}/invocations", b"{not json")
        assert 400 <= status < 500
        assert proc.poll() is None  # still serving after the bad requests
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
