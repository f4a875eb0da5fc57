"""The `server` tracking profile end to end: PostgreSQL + S3 (moto) + a real `mlflow server`.

``service_doubles.server_stack`` is the S3 code path's test stack: PostgreSQL with a generated
password, and moto's S3 server, a TEST DOUBLE that accepts any credentials and keeps objects in
memory. The supervised production stack (disk artifacts, basic auth, credentials outside the
working tree) is tested in ``tests/integration/test_services_security.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from service_doubles import server_stack

from thyroaug.tracking import services

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    reason = services.postgres_available()
    if reason:
        pytest.skip(f"PostgreSQL cannot run here: {reason}")
    workdir = tmp_path_factory.mktemp("server-stack")
    with server_stack(workdir) as (url, s3):
        yield url, s3, workdir


@pytest.fixture
def server_profile(stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    url, s3, _ = stack
    monkeypatch.setenv("THYROAUG_TRACKING", "server")
    monkeypatch.setenv("THYROAUG_TRACKING_URI", url)
    monkeypatch.setenv("THYROAUG_HOME", str(tmp_path))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "AWS_ACCESS_KEY_ID"):
        monkeypatch.delenv(var, raising=False)
    return url, s3


def test_profile_resolves_to_server(server_profile) -> None:
    from thyroaug.tracking.setup import configure_tracking

    url, _ = server_profile
    assert configure_tracking(experiment="profile-check") == url


def test_run_lands_in_postgres_and_bucket(server_profile, tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    from thyroaug.tracking.setup import configure_tracking, start_run

    url, s3 = server_profile
    configure_tracking(experiment="server-smoke")
    note = tmp_path / "note.txt"
    note.write_text("hello")
    with start_run(run_name="smoke", tags={"step": "check"}) as run:
        mlflow.log_param("profile", "smoke")
        mlflow.log_metric("external_f1_macro", 0.5)
        mlflow.log_artifact(str(note), artifact_path="notes")
    client = MlflowClient(url)
    got = client.get_run(run.info.run_id)
    assert got.data.metrics["external_f1_macro"] == 0.5
    assert got.data.tags["step"] == "check"
    keys = s3.keys("artifacts/")
    assert any(k.endswith(f"{run.info.run_id}/artifacts/notes/note.txt") for k in keys), keys


def test_smoke_classifier_run_through_the_server(server_profile, tmp_path: Path) -> None:
    """A real train_classifier run (smoke) logged through the server: metrics back, files in S3."""
    from conftest import make_tiny_cohort
    from mlflow import MlflowClient

    from thyroaug.cli import main

    url, s3 = server_profile
    cohort = make_tiny_cohort(per_class_center=2).save(tmp_path / "cohort")
    code = main(
        [
            "train-classifier",
            "--scenario",
            "O+CA",
            "--profile",
            "smoke",
            "--cohort",
            str(cohort),
            "--experiment",
            "server-classifier",
            "--no-progress",
        ]
    )
    assert code == 0
    client = MlflowClient(url)
    exp = client.get_experiment_by_name("server-classifier")
    (run,) = client.search_runs([exp.experiment_id], "tags.step = 'train_classifier'")
    assert run.data.tags["scenario"] == "O+CA"
    assert "external_f1_macro" in run.data.metrics
    keys = s3.keys(f"artifacts/{exp.experiment_id}/{run.info.run_id}/")
    assert any(k.endswith("bootstrap/bootstrap.csv") for k in keys), keys
    assert any("gradcam" in k and k.endswith(".png") for k in keys), keys
    logged_models = s3.keys(f"artifacts/{exp.experiment_id}/models/")
    assert logged_models, "the logged model's files should be in the bucket too"
