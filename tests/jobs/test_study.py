"""The study job on the smoke profile: nested runs, restart after a kill, compare at the end."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

import thyroaug.jobs.train_classifier as classifier_cli
from thyroaug.jobs.study import methods_needed, parse_scenarios, run_study

pytestmark = pytest.mark.slow


def test_parse_scenarios_and_methods() -> None:
    assert parse_scenarios("default") == parse_scenarios("all")
    assert len(parse_scenarios("all")) == 18
    assert parse_scenarios("CA+O, O+CA,FM") == ["O+CA", "FM"]
    assert methods_needed(["O", "O+SD2+CA", "FM"]) == ["SD2", "FM"]  # registry order
    assert methods_needed(["O", "CA"]) == []


def test_killed_study_restarts_where_it_stopped(
    tracking_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run = classifier_cli.run
    calls: list[str] = []

    def crash_on_ca(args):  # the process "dies" during the second classifier run
        calls.append(args.scenario)
        if args.scenario == "CA" and calls.count("CA") == 1:
            raise KeyboardInterrupt("simulated kill")
        return real_run(args)

    monkeypatch.setattr(classifier_cli, "run", crash_on_ca)
    with pytest.raises(KeyboardInterrupt):
        run_study("smoke", "O,CA", study_id="t1", echo=lambda _: None)

    client = MlflowClient()
    exp = client.get_experiment_by_name("thyroaug")
    finished = client.search_runs(
        [exp.experiment_id], "tags.study_id = 't1' and attributes.status = 'FINISHED'"
    )
    assert {r.data.tags.get("study_step") for r in finished} == {"prepare_data", "classifier_O"}

    out = run_study("smoke", "O,CA", study_id="t1", echo=lambda _: None)
    assert out["reused"] == ["prepare_data", "classifier_O"]
    assert out["steps_run"] == ["classifier_CA"]
    assert out["missing"] == []
    assert calls == ["O", "CA", "CA"]  # O was not trained again

    parent = client.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["step"] == "study"
    children = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{out['parent_run_id']}'"
    )
    steps = {r.data.tags.get("study_step") for r in children if r.info.status == "FINISHED"}
    assert {"prepare_data", "classifier_O", "classifier_CA", "compare"} <= steps
    compare = client.get_run(out["compare_run_id"])
    files = {a.path for a in client.list_artifacts(compare.info.run_id, "compare")}
    assert {"compare/significance_heatmap.png", "compare/report.html"} <= files
