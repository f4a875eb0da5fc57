"""`mlflow run . -e train_classifier` through MLflow Projects (--env-manager local), read back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]


def test_mlflow_run_train_classifier_smoke(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("MLproject", "conda.yaml", "python_env.yaml"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "projects", project / "projects")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "THYROAUG_"))}
    env.update(
        MLFLOW_TRACKING_URI=uri,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        THYROAUG_HOME=str(project),
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(project),
            "-e",
            "train_classifier",
            "-P",
            "scenario=O+CA",
            "-P",
            "profile=smoke",
            "--env-manager",
            "local",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("Default")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["scenario"] == "O+CA" and run.data.tags["profile"] == "smoke"
    assert run.data.tags["mlflow.project.entryPoint"] == "train_classifier"
    for key in ("external_f1_macro", "external_auc_micro", "external_precision_DG"):
        assert key in run.data.metrics
    assert "cohort_hash" in run.data.params
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "bootstrap" in top
    assert (project / "outputs" / "cohort" / "cohort.safetensors").exists()  # made on demand


def _mlflow_run(entry: str, params: dict[str, str], env: dict[str, str], local: bool) -> str:
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", entry]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    if local:
        cmd += ["--env-manager", "local"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, f"mlflow run -e {entry}:\n{out.stdout[-2000:]}{out.stderr[-4000:]}"
    return out.stdout + out.stderr


@pytest.mark.skipif(
    shutil.which("pyenv") is None, reason="pyenv (MLflow's virtualenv manager) absent"
)
def test_user_path_through_plain_mlflow_run(tmp_path: Path) -> None:
    """The issue's user path, as typed: train_fm without --env-manager (python_env.yaml, built by
    MLflow's virtualenv manager offline), then O+FM and O with defaults (the FM set is found from
    the champion), compare over those runs, and synthesize with its defaults."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "THYROAUG_"))}
    env.update(
        MLFLOW_TRACKING_URI=uri,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        THYROAUG_HOME=str(tmp_path),
    )
    _mlflow_run("train_fm", {"profile": "smoke"}, env, local=False)
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("thyroaug-fm", "champion")
    assert str(champion.version) == "1"
    _mlflow_run("train_classifier", {"scenario": "O+FM", "profile": "smoke"}, env, local=True)
    _mlflow_run("train_classifier", {"scenario": "O", "profile": "smoke"}, env, local=True)

    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.step = 'train_classifier'"
    )
    by_scenario = {r.data.tags["scenario"]: r for r in runs}
    assert set(by_scenario) == {"O", "O+FM"}
    ofm = by_scenario["O+FM"]
    assert ofm.info.run_name == "O+FM-smoke-s0"  # not a random name
    assert ofm.data.tags["mlflow.note.content"].startswith("ResNet18 (smoke profile")
    assert "" not in ofm.data.params.values()  # no empty -P defaults
    nested = client.search_runs(
        [ofm.info.experiment_id], f"tags.mlflow.parentRunId = '{ofm.info.run_id}'"
    )
    assert [r.data.tags["step"] for r in nested] == ["synthesize"]  # made from the champion
    contexts = {i.tags[0].value for i in ofm.inputs.dataset_inputs if i.tags}
    assert {"training", "synthetic-FM"} <= contexts

    text = _mlflow_run("compare", {}, env, local=True)
    assert "compared 2 scenario(s)" in text
    (cmp,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.step = 'compare'"
    )
    assert "compare/significance_heatmap.png" in {
        a.path for a in client.list_artifacts(cmp.info.run_id, "compare")
    }
    text = _mlflow_run("synthesize", {"per_class": "4"}, env, local=True)
    assert "synthetic set: runs:/" in text
