"""The compare job on a fake study with several training seeds (no classifier training).

The fake study s3: scenarios O and CA, each trained with seeds 0, 1 and 2, scored on the same 120
external cases. For seed s, CA is O of that seed with k_s of O's errors fixed, k = 3, 9, 15: the
per-seed accuracy difference varies (3, 9, 15 cases), so the seed-to-seed spread is known
exactly: mean 9/120, sd 6/120. An older duplicate run of (CA, seed 1) must be superseded.
The helpers below are the minimal logging code of ``tests/jobs/test_compare.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from test_compare import _log_run, _softmax

from thyroaug.contract import CLASSES
from thyroaug.evaluation.deviations import SINGLE_SEED
from thyroaug.evaluation.metrics import compute_metrics
from thyroaug.evaluation.paired import seed_combined_test
from thyroaug.evaluation.seeds import SEED_TEST_COLUMNS
from thyroaug.jobs.compare import compare_study, find_runs

N_EXTERNAL = 120
FIXED = {0: 3, 1: 9, 2: 15}  # seed -> O's errors CA gets right
PARAMS = {"pretrained": "False", "image_size": 32, "epochs": 2, "bootstrap": 1000}


def _fake_study() -> tuple[np.ndarray, dict[tuple[str, int], np.ndarray]]:
    """(y, {(scenario, seed): probabilities})."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, N_EXTERNAL)
    base = rng.normal(size=(N_EXTERNAL, 4))
    base[np.arange(N_EXTERNAL), y] += 1.4
    out = {}
    for seed, k in FIXED.items():
        p_o = _softmax(base + 0.6 * np.random.default_rng(100 + seed).normal(size=base.shape))
        p_ca = p_o.copy()
        for i in np.flatnonzero(p_o.argmax(1) != y)[:k]:
            p_ca[i] = 0.05
            p_ca[i, y[i]] = 0.85
        out[("O", seed)], out[("CA", seed)] = p_o, p_ca
    return y, out


def _predictions(y: np.ndarray, prob: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "case_id": [f"G{k:03d}" for k in range(len(y))],
            "split": "external",
            "true": [CLASSES[i] for i in y],
        }
    )
    for k, c in enumerate(CLASSES):
        df[f"prob_{c}"] = prob[:, k]
    return df


def _classifier(client, exp_id, tmp, scenario, seed, y, prob, study="s3") -> str:
    tags = {"step": "train_classifier", "scenario": scenario, "study_id": study}
    metrics = {f"external_{k}": v for k, v in compute_metrics(y, prob).items()}
    params = {**PARAMS, "seed": seed, "per_class_synthetic": 8}
    files = {"predictions/predictions.csv": _predictions(y, prob)}
    return _log_run(client, exp_id, tags, tmp, params=params, metrics=metrics, files=files)


def _download(run_id: str) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="compare"))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Store with study s3 (2 scenarios x 3 seeds), compared with all seeds and with seed 1."""
    tmp = tmp_path_factory.mktemp("seeds")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("THYROAUG_HOME", str(tmp))
        mp.setenv("THYROAUG_TRACKING", "local")
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_PARENT_RUN_ID"):
            mp.delenv(var, raising=False)
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        exp_id = client.create_experiment("studies", artifact_location=(tmp / "art").as_uri())
        y, probas = _fake_study()
        tags = {"step": "study", "study_id": "s3"}
        _log_run(
            client, exp_id, tags, tmp, params={"seed": 0, "seeds": "0,1,2", "scenarios": "O,CA"}
        )
        old = _classifier(client, exp_id, tmp, "CA", 1, y, probas[("O", 1)])  # superseded
        time.sleep(0.01)
        ids = {key: _classifier(client, exp_id, tmp, *key, y, p) for key, p in probas.items()}
        out = compare_study("s3", n_resamples=300, progress=False)
        one = compare_study("s3", n_resamples=300, progress=False, seeds=[1])
        yield {
            "client": client,
            "y": y,
            "probas": probas,
            "ids": ids,
            "old": old,
            "out": out,
            "local": _download(out["run_id"]),
            "one": one,
            "one_local": _download(one["run_id"]),
        }
        while mlflow.active_run() is not None:
            mlflow.end_run()


def test_one_run_per_scenario_and_seed(study: dict) -> None:
    runs = find_runs(study["client"], "s3")
    assert runs.seeds == ["0", "1", "2"] and runs.primary_seed == "0"  # the study's base seed
    assert list(runs.by_seed) == ["O", "CA"]
    for (scenario, seed), rid in study["ids"].items():
        assert runs.by_seed[scenario][str(seed)].info.run_id == rid  # latest per pair
    assert runs.superseded == {"CA": [study["old"]]}
    assert runs.chosen["CA"].info.run_id == study["ids"][("CA", 0)]
    picked = find_runs(study["client"], "s3", seeds=[2, 0])
    assert picked.seeds == ["2", "0"] and picked.primary_seed == "2"
    assert picked.chosen["O"].info.run_id == study["ids"][("O", 2)]


def test_seed_tests_csv_combines_seeds_and_cases(study: dict) -> None:
    tests = pd.read_csv(study["local"] / "seed_tests.csv")
    assert tuple(tests.columns[: len(SEED_TEST_COLUMNS)]) == SEED_TEST_COLUMNS
    assert set(zip(tests["a"], tests["b"])) == {("O", "CA")}
    assert set(tests["metric"]) == {"accuracy", "macro_f1", "macro_auc"}
    assert (tests["n_seeds"] == 3).all() and (tests["seeds"] == "0,1,2").all()
    acc = tests.set_index("metric").loc["accuracy"]
    assert acc["diff"] == pytest.approx(9 / N_EXTERNAL)  # mean of 3, 9, 15 cases
    assert acc["sd_seeds"] == pytest.approx(6 / N_EXTERNAL)
    assert acc["ci_low"] < acc["diff"] < acc["ci_high"]
    assert acc["se"] ** 2 == pytest.approx(acc["se_seed"] ** 2 + acc["se_case"] ** 2)
    assert acc["se_case"] > 0 and acc["test"].startswith("seed-combined t")
    # the per-seed rows reproduce the combined row through seed_combined_test
    per_seed = pd.DataFrame(
        {"diff": [float(d) for d in acc["diff_by_seed"].split(",")], "se": acc["se_case"]}
    )
    assert seed_combined_test(per_seed)["diff"] == pytest.approx(acc["diff"], abs=1e-4)
    assert tests["p_adj"].to_numpy() == pytest.approx(tests["p"].to_numpy())  # one pair per BH
    # the seed-averaged difference carries its seed spread: wider than one seed's case CI
    paired = pd.read_csv(study["local"] / "paired_tests.csv").set_index("metric")
    assert paired.loc["accuracy", "diff"] == pytest.approx(3 / N_EXTERNAL)  # seed 0's runs
    assert study["out"]["n_seeds"] == 3


def test_report_shows_mean_and_sd_over_seeds(study: dict) -> None:
    y, probas = study["y"], study["probas"]
    acc = [float(np.mean(probas[("O", s)].argmax(1) == y)) for s in FIXED]
    table = pd.read_csv(study["local"] / "seed_table2.csv")
    row = table[(table["scenario"] == "O") & (table["metric"] == "accuracy")].iloc[0]
    assert row["mean"] == pytest.approx(np.mean(acc)) and row["n_seeds"] == 3
    assert row["sd"] == pytest.approx(np.std(acc, ddof=1))
    assert row["ci_low"] < row["mean"] < row["ci_high"]
    assert len(table[table["scenario"] == "CA"]) == 25  # every Table 2 number
    report = (study["local"] / "report.html").read_text()
    assert "<h2>Training seeds: per-seed tables</h2>" in report
    assert f"{np.mean(acc):.3f} ± {np.std(acc, ddof=1):.3f}" in report
    # with several seeds the headline table, heatmap and verdicts are the seed-combined ones
    table2 = report[report.index("<section id='table2'>") :]
    assert "mean ± sd over the training seeds" in table2[: table2.index("</section>")]
    assert "All pairs (seed-combined tests" in report
    assert "verdicts from the seed-combined tests" in report
    assert SINGLE_SEED not in report
    tags = study["client"].get_run(study["out"]["run_id"]).data.tags
    assert "deviation.single_seed" not in tags


def test_one_seed_says_so_in_the_banner(study: dict) -> None:
    report = (study["one_local"] / "report.html").read_text()
    banner = report[: report.index("<section id='table2'>")]
    assert "1 training seed: differences include training noise that this study cannot " in banner
    assert "Training seeds</h2>" not in report
    assert not (study["one_local"] / "seed_tests.csv").exists()
    assert study["one"]["n_seeds"] == 1 and study["one"]["seeds"] == ["1"]
    run = study["client"].get_run(study["one"]["run_id"])
    assert run.data.params["paired_seed"] == "1" and "deviation.single_seed" in run.data.tags
    paired = pd.read_csv(study["one_local"] / "paired_tests.csv").set_index("metric")
    assert paired.loc["accuracy", "diff"] == pytest.approx(9 / N_EXTERNAL)
