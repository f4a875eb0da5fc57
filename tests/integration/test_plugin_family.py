"""docs/adding-a-generator.md, walked as a user walks it: a plug-in family kept outside the
package (``tests/generators/plugin_mean.py``), registered through ``THYROAUG_PLUGINS``, trained by
its own MLproject entry point under `mlflow run --env-manager local`, found by the champion lookup
of `train_classifier --synthetic auto`, and run in a smoke study - all against an `mlflow server`
whose artifacts are proxied (``mlflow-artifacts:``), so nothing may read the store as local files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from thyroaug.tracking import services

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]

ENTRY = """
  train_mean:
    parameters:
      profile: {type: string, default: "quick"}
      cohort: {type: string, default: "outputs/cohort"}
      seed: {type: float, default: 0}
      register: {type: string, default: "true"}
      alias: {type: string, default: "champion"}
      resume: {type: string, default: "false"}
      sigma: {type: string, default: "auto"}
    command: >-
      python -m projects.train_mean --profile {profile} --cohort {cohort} --seed {seed}
      --register {register} --alias "{alias}" --resume {resume} --sigma "{sigma}"
"""
SCRIPT = '''"""MLflow entry point `train_mean` -> `thyroaug train-mean`."""

from projects._entry import run

if __name__ == "__main__":
    run("train-mean")
'''


def _project(tmp_path: Path) -> Path:
    """The project with what the doc says a family adds: one MLproject entry, one script."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("MLproject", "conda.yaml", "python_env.yaml"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "projects", project / "projects")
    mlproject = project / "MLproject"
    mlproject.write_text(mlproject.read_text().rstrip("\n") + "\n" + ENTRY)
    (project / "projects" / "train_mean.py").write_text(SCRIPT)
    return project


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> str:
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{' '.join(cmd[:6])}:\n{out.stdout[-2000:]}{out.stderr[-4000:]}"
    return out.stdout + out.stderr


def test_a_plugin_family_takes_the_documented_user_path(tmp_path: Path) -> None:
    project = _project(tmp_path)
    mlflow_run = [sys.executable, "-m", "mlflow", "run", str(project)]
    thyroaug = str(Path(sys.executable).with_name("thyroaug"))
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    with services.mlflow_server(
        backend, str(tmp_path / "artifacts"), log_file=tmp_path / "server.log"
    ) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "THYROAUG_"))}
        env.update(
            MLFLOW_TRACKING_URI=url,
            THYROAUG_HOME=str(project),
            THYROAUG_PLUGINS="plugin_mean",
            PYTHONPATH=str(ROOT / "tests" / "generators"),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        )
        _run([*mlflow_run, "-e", "train_mean", "-P", "profile=smoke", "--env-manager", "local"],
             env, project)  # fmt: skip
        client = MlflowClient(url)
        champion = client.get_model_version_by_alias("thyroaug-mean", "champion")
        train = client.get_run(champion.run_id)
        assert train.info.status == "FINISHED" and train.data.tags["step"] == "train_mean"
        assert train.data.tags["mlflow.project.entryPoint"] == "train_mean"
        assert train.info.artifact_uri.startswith("mlflow-artifacts:")  # no local file path
        assert train.data.params["sigma"] == "auto" and train.data.params["sigma_resolved"]
        bank = {a.path for a in client.list_artifacts(train.info.run_id, "condition_bank")}
        assert "condition_bank/images.safetensors" in bank
        model_files = _model_files(url, champion.source)
        assert "images.safetensors" not in model_files and "cases.csv" not in model_files

        cls_args = ["-P", "scenario=O+MEAN", "-P", "profile=smoke", "--env-manager", "local"]
        _run([*mlflow_run, "-e", "train_classifier", *cls_args], env, project)
        exps = [e.experiment_id for e in client.search_experiments()]
        (clf,) = client.search_runs(exps, "tags.step = 'train_classifier'")
        assert clf.info.status == "FINISHED" and clf.data.tags["scenario"] == "O+MEAN"
        (synth,) = client.search_runs(
            exps, f"tags.mlflow.parentRunId = '{clf.info.run_id}' and tags.step = 'synthesize'"
        )  # no set of this cohort yet: made now from the champion, as a nested run
        assert synth.data.tags["generator.version"] == str(champion.version)
        assert synth.data.tags["cohort.content_hash"] == clf.data.params["cohort_hash"]
        assert clf.data.params["synthetic_MEAN"].startswith(f"runs:/{synth.info.run_id}/")

        study = [thyroaug, "study", "--profile", "smoke", "--scenarios", "O,O+MEAN"]
        text = _run(study, env, project)
        assert "study smoke-s0 finished" in text
        exps = [e.experiment_id for e in client.search_experiments()]  # the study's own too
        steps = {
            r.data.tags.get("study_step"): r.info.status
            for r in client.search_runs(exps, "tags.study_id = 'smoke-s0'")
        }
    for step in ("train_mean", "synthesize_MEAN", "classifier_O", "classifier_O+MEAN", "compare"):
        assert steps.get(step) == "FINISHED", steps


def _model_files(url: str, source: str) -> set[str]:
    """Every file name of a logged model, read through the tracking server."""
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(url)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
    finally:
        mlflow.set_tracking_uri(before)
    return {p.name for p in local.rglob("*") if p.is_file()}
