"""`thyroaug tune`: Optuna trials as nested MLflow runs and a reusable best-params artifact."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from conftest import make_tiny_cohort
from mlflow import MlflowClient

from thyroaug.jobs.tune import tune
from thyroaug.tracking.runs import BEST_PARAMS_ARTIFACT, load_best_params

pytestmark = pytest.mark.slow


def test_three_smoke_trials_nested_with_best_params(tracking_home: Path) -> None:
    cohort_dir = make_tiny_cohort(per_class_center=2).save(tracking_home / "cohort")
    out = tune(cohort_dir, scenario="O", profile="smoke", n_trials=3, seed=0)

    client = MlflowClient()
    parent = client.get_run(out["run_id"])
    assert parent.data.tags["step"] == "tune"
    exp = parent.info.experiment_id
    trials = client.search_runs([exp], f"tags.mlflow.parentRunId = '{out['run_id']}'")
    assert len(trials) == 3
    assert all(t.data.tags["step"] == "tune_trial" for t in trials)
    assert all("lr" in t.data.params for t in trials)
    best_losses = sorted(t.data.metrics["best_val_loss"] for t in trials)
    assert out["best_value"] == pytest.approx(best_losses[0])

    path = mlflow.artifacts.download_artifacts(
        run_id=out["run_id"], artifact_path=BEST_PARAMS_ARTIFACT
    )
    saved = json.loads(Path(path).read_text())
    assert saved["params"] == out["best_params"]
    assert load_best_params(out["run_id"]) == out["best_params"]
    # the optuna study lives in the tracking profile's SQL database, so workers can share it
    assert (tracking_home / "optuna.db").exists()
    # the same command again tops the study up to --n-trials: a rerun after a kill resumes it
    again = tune(cohort_dir, scenario="O", profile="smoke", n_trials=4, seed=0)
    new = client.search_runs([exp], f"tags.mlflow.parentRunId = '{again['run_id']}'")
    assert len(new) == 1


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_trials_of_a_killed_tune_end_failed(tracking_home: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    from thyroaug.jobs.tune import _finished_trials, _storage

    url = f"sqlite:///{tracking_home / 'optuna.db'}"
    storage = _storage(url)
    study = optuna.create_study(study_name="s", storage=storage)
    orphan = study.ask()  # a trial whose process died: RUNNING, no heartbeat any more
    storage.record_heartbeat(orphan._trial_id)
    with storage.engine.begin() as conn:  # its last heartbeat long ago
        conn.exec_driver_sql("UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00'")
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == TrialState.FAIL and _finished_trials(study) == 0
