"""The study on a local Ray instance: independent steps as parallel tasks under one parent run."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = [pytest.mark.slow]


def test_two_classifier_steps_run_as_parallel_ray_tasks(tracking_home: Path) -> None:
    pytest.importorskip("ray")
    from thyroaug.jobs.executors import RayExecutor
    from thyroaug.jobs.study import run_study

    executor = RayExecutor(num_cpus=2)
    try:
        assert executor.capacity()["CPU"] == 2
        out = run_study(
            "smoke", "O,CA,O+CA", study_id="ray", echo=lambda _: None, executor=executor
        )
    finally:
        executor.shutdown()
    assert out["missing"] == []
    client = MlflowClient()
    exp = client.get_experiment_by_name("thyroaug")
    children = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{out['parent_run_id']}'"
    )
    by_step = {r.data.tags.get("study_step"): r for r in children}
    assert {"prepare_data", "classifier_O", "classifier_CA", "classifier_O+CA", "compare"} <= set(
        by_step
    )
    assert all(r.info.status == "FINISHED" for r in children)
    # the two classifier steps were submitted together and ran in two worker processes
    assert ["classifier_CA", "classifier_O+CA"] in executor.batches
    workers = {
        by_step[k].data.tags["executor.worker"] for k in ("classifier_CA", "classifier_O+CA")
    }
    assert len(workers) == 2
    parent = client.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["executor"] == "ray"
