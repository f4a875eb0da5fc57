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
    for name in ("MLproject", "conda.yaml"):
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
