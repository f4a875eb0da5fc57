"""The study job on the smoke profile: nested runs, restart after a kill, compare at the end;
training seeds (``--seeds``): step keys, unchanged single-seed hashes, one run per seed."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

import thyroaug.jobs.train_classifier as classifier_cli
from thyroaug.errors import ConfigError
from thyroaug.jobs.study import (
    StudyPlan,
    _hash,
    methods_needed,
    parse_scenarios,
    resolve_seeds,
    run_study,
)


def test_resolve_seeds() -> None:
    assert resolve_seeds() == (0, [0])
    assert resolve_seeds(5) == (5, [5])
    assert resolve_seeds(None, "0") == (0, [0])  # the MLproject default
    assert resolve_seeds(None, "0,1,2") == (0, [0, 1, 2])
    assert resolve_seeds(None, "3, 1,3") == (3, [3, 1])  # no --seed: the first is the base
    assert resolve_seeds(2, "0,1,2") == (2, [2, 0, 1])  # the base seed runs first
    with pytest.raises(ConfigError, match="does not contain --seed 5"):
        resolve_seeds(5, "0,1")
    with pytest.raises(ConfigError, match="integers"):
        resolve_seeds(None, "0,one")


def _plan(seeds: list[int]) -> StudyPlan:
    plan = StudyPlan("smoke", ["O", "CA", "O+FM"], "smoke-s0", 0, Path("/h/outputs/cohort"))
    plan.workdir, plan.seeds = Path("/h/outputs/smoke-s0"), seeds
    plan.synthetic["FM"], plan.method_hash["FM"] = "runs:/abc/synthetic-FM", "fmhash"
    return plan


def _step_hashes(plan: StudyPlan) -> dict[str, str]:
    return {
        key: _hash(
            {
                "argv": plan.classifier_argv(s, seed),
                "depends": plan.classifier_depends(s, "prep"),
                "profile": plan.profile,
            }
        )
        for key, s, seed in plan.classifier_steps()
    }


def test_default_seed_keeps_step_keys_and_config_hashes() -> None:
    # the hashes of a single-seed study before --seeds existed: such studies stay resumable
    before = {
        "classifier_O": "4f8416b9a6d3401b",
        "classifier_CA": "401743bc44236a86",
        "classifier_O+FM": "4c0227ded881fd13",
    }
    assert _step_hashes(_plan([0])) == before
    assert _step_hashes(_plan([])) == before  # no list: the base seed only


def test_several_seeds_add_one_step_per_scenario_and_seed() -> None:
    plan = _plan([0, 2])
    steps = plan.classifier_steps()
    assert [k for k, _, _ in steps] == [
        "classifier_O",
        "classifier_CA",
        "classifier_O+FM",
        "classifier_O_s2",
        "classifier_CA_s2",
        "classifier_O+FM_s2",
    ]
    argv = plan.classifier_argv("O+FM", 2)
    assert argv[argv.index("--seed") + 1] == "2" and "FM=runs:/abc/synthetic-FM" in argv
    hashes = _step_hashes(plan)
    assert len(set(hashes.values())) == 6
    assert {k: h for k, h in hashes.items() if not k.endswith("_s2")} == _step_hashes(_plan([0]))


@pytest.mark.slow
def test_parse_scenarios_and_methods() -> None:
    assert parse_scenarios("default") == parse_scenarios("all")
    assert len(parse_scenarios("all")) == 18
    assert parse_scenarios("CA+O, O+CA,FM") == ["O+CA", "FM"]
    assert methods_needed(["O", "O+SD2+CA", "FM"]) == ["SD2", "FM"]  # registry order
    assert methods_needed(["O", "CA"]) == []


@pytest.mark.slow
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


@pytest.mark.slow
def test_study_with_two_seeds_trains_each_scenario_twice(tracking_home: Path) -> None:
    out = run_study("smoke", "O,CA", study_id="seeds", echo=lambda _: None, seeds="0,1")
    assert out["missing"] == []
    client = MlflowClient()
    exp = client.get_experiment_by_name("thyroaug")
    children = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{out['parent_run_id']}'"
    )
    classifiers = {
        r.data.tags["study_step"]: r
        for r in children
        if r.data.tags.get("step") == "train_classifier" and r.info.status == "FINISHED"
    }
    assert set(classifiers) == {
        "classifier_O",
        "classifier_CA",
        "classifier_O_s1",
        "classifier_CA_s1",
    }
    assert {k: r.data.params["seed"] for k, r in classifiers.items()} == {
        "classifier_O": "0",
        "classifier_CA": "0",
        "classifier_O_s1": "1",
        "classifier_CA_s1": "1",
    }
    parent = client.get_run(out["parent_run_id"])
    assert parent.data.params["seeds"] == "0,1" and parent.data.params["seed"] == "0"
    files = {a.path for a in client.list_artifacts(out["compare_run_id"], "compare")}
    assert {"compare/seed_tests.csv", "compare/seed_table2.csv", "compare/report.html"} <= files
    assert client.get_run(out["compare_run_id"]).data.params["n_seeds"] == "2"
