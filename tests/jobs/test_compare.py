"""The compare job on a local store filled with fake scenario runs (no classifier training).

The fake study: scenarios O and O+FM are scored on the same 101 external cases and differ on two
of them (O+FM gets two more right), CA has a bootstrap file but no predictions, O+FM+CA has no
run at all. Two more cases right out of 101 is well inside chance: the paired McNemar test says
p = 0.5, while the paper's method (Wilcoxon rank-sum on 1000 bootstrap replicates of each run)
calls the same difference overwhelmingly "significant" (p_adj < 1e-6), because it treats the
replicates as independent observations.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from thyroaug.contract import CLASSES
from thyroaug.errors import TrackingError
from thyroaug.evaluation.bootstrap import bootstrap
from thyroaug.evaluation.metrics import compute_metrics
from thyroaug.evaluation.paired import COMPARISON_COLUMNS
from thyroaug.jobs.commands import main
from thyroaug.jobs.compare import (
    CompareError,
    align_predictions,
    compare_study,
    find_runs,
)

N_EXTERNAL = 101
EXPECTED = ["O", "CA", "O+FM", "O+FM+CA"]
CLASSIFIER_PARAMS = {
    "pretrained": "False",
    "image_size": 32,
    "epochs": 2,
    "bootstrap": 1000,
    "per_class_synthetic": 8,
    "seed": 0,
    "profile": "smoke",
}


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _external_set() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, probabilities of O, probabilities of O+FM: two of O's errors fixed)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, N_EXTERNAL)
    logits = rng.normal(size=(N_EXTERNAL, 4))
    logits[np.arange(N_EXTERNAL), y] += 1.6
    p_o = _softmax(logits)
    p_fm = p_o.copy()
    for k in np.flatnonzero(p_o.argmax(1) != y)[:2]:
        p_fm[k] = 0.05
        p_fm[k, y[k]] = 0.85
    return y, p_o, p_fm


def _predictions(y: np.ndarray, prob: np.ndarray, case_ids: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "case_id": case_ids,
            "center": "G",
            "split": "external",
            "true": [CLASSES[i] for i in y],
            "pred": [CLASSES[i] for i in prob.argmax(1)],
        }
    )
    for k, c in enumerate(CLASSES):
        df[f"prob_{c}"] = prob[:, k]
    val = df.head(3).assign(split="val", case_id=[f"V{k}" for k in range(3)])
    return pd.concat([val, df])


def _log_run(
    client: MlflowClient,
    exp_id: str,
    tags: dict[str, str],
    tmp: Path,
    params: dict | None = None,
    metrics: dict | None = None,
    files: dict[str, pd.DataFrame] | None = None,
) -> str:
    run = client.create_run(exp_id, tags=tags)
    rid = run.info.run_id
    now = int(time.time() * 1000)
    client.log_batch(
        rid,
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
    )
    for artifact, frame in (files or {}).items():
        folder, name = artifact.split("/")
        local = tmp / rid / name
        local.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(local, index=False)
        client.log_artifact(rid, str(local), folder)
    client.set_terminated(rid, "FINISHED")
    return rid


def _classifier(
    client: MlflowClient,
    exp_id: str,
    tmp: Path,
    scenario: str,
    y: np.ndarray,
    prob: np.ndarray,
    study: str = "s1",
    predictions: bool = True,
) -> str:
    case_ids = [f"G{k:03d}" for k in range(len(y))]
    # as the classifier writes it: every Table 2 metric, 1000 resamples (the paper's B)
    boot = bootstrap(y, prob, n_resamples=1000, seed=0, metrics="all")
    files = {"bootstrap/bootstrap.csv": boot}
    if predictions:
        files["predictions/predictions.csv"] = _predictions(y, prob, case_ids)
    tags = {"step": "train_classifier", "scenario": scenario, "study_id": study}
    metrics = {f"external_{k}": v for k, v in compute_metrics(y, prob).items()}
    return _log_run(client, exp_id, tags, tmp, CLASSIFIER_PARAMS, metrics, files)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A store with the fake study s1 in experiment 'studies' (not the default one), compared
    once (search over all experiments)."""
    tmp = tmp_path_factory.mktemp("compare")
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
        y, p_o, p_fm = _external_set()
        rng = np.random.default_rng(5)
        p_ca = _softmax(rng.normal(size=(N_EXTERNAL, 4)) + 1.2 * np.eye(4)[y])
        old_o = _classifier(client, exp_id, tmp, "O", y, p_fm)
        time.sleep(0.01)
        new_o = _classifier(client, exp_id, tmp, "O", y, p_o)
        _classifier(client, exp_id, tmp, "FM+O", y, p_fm)  # any order: canonical O+FM
        _classifier(client, exp_id, tmp, "CA", y, p_ca, predictions=False)
        _classifier(client, exp_id, tmp, "CA", y, p_ca, study="other")
        fidelity = {}
        for group in (*CLASSES, "overall"):
            fidelity[f"fid_resnet18-O_{group}"] = 1.5
            fidelity[f"kid_resnet18-O_{group}"] = 0.02
            fidelity[f"kid_std_resnet18-O_{group}"] = 0.004
        _log_run(
            client,
            exp_id,
            {"step": "synthesize", "method": "FM", "study_id": "s1"},
            tmp,
            metrics=fidelity,
        )
        _log_run(client, exp_id, {"step": "train_sd", "study_id": "s1", "source": "scratch"}, tmp)
        out = compare_study("s1", None, expected=EXPECTED, n_resamples=500, progress=False)
        local = Path(
            mlflow.artifacts.download_artifacts(run_id=out["run_id"], artifact_path="compare")
        )
        yield {
            "out": out,
            "local": local,
            "client": client,
            "uri": uri,
            "old_o": old_o,
            "new_o": new_o,
            "exp_id": exp_id,
        }
        while mlflow.active_run() is not None:
            mlflow.end_run()


def test_find_runs_latest_per_scenario_and_missing(study: dict) -> None:
    runs = find_runs(study["client"], "s1", None, EXPECTED)
    assert list(runs.chosen) == ["O", "CA", "O+FM"]
    assert runs.chosen["O"].info.run_id == study["new_o"]  # latest finished run wins
    assert runs.superseded == {"O": [study["old_o"]]}
    assert runs.missing == ["O+FM+CA"]
    assert runs.expected_source == "the study's scenario list"
    found = find_runs(study["client"], "s1")  # no list recorded: relative to the found ones
    assert found.missing == []
    assert found.expected_source.startswith("the scenarios found")
    assert set(runs.synth) == {"FM"} and set(runs.generators) == {"train_sd"}


def test_default_comparison_is_paired_and_not_fooled_by_two_cases(study: dict) -> None:
    local, out = study["local"], study["out"]
    paired = pd.read_csv(local / "paired_tests.csv")
    assert list(paired.columns[: len(COMPARISON_COLUMNS)]) == list(COMPARISON_COLUMNS)
    assert set(paired["metric"]) == {"accuracy", "macro_f1", "macro_auc"}
    assert set(zip(paired["a"], paired["b"])) == {("O", "O+FM")}  # CA has no predictions
    acc = paired.set_index("metric").loc["accuracy"]
    assert acc["diff"] == pytest.approx(2 / N_EXTERNAL)
    assert acc["test"] == "McNemar exact" and acc["p"] == pytest.approx(0.5)
    assert not paired["significant"].any()  # 2 of 101 cases: not significant
    # The paper method on the same runs: p tiny, because its p shrinks with the resamples.
    paper = pd.read_csv(local / "paper_method.csv").set_index(["a", "b"])
    assert paper.loc[("O", "O+FM"), "p_adj"] < 1e-6
    assert set(paper.index.get_level_values(0)) | set(paper.index.get_level_values(1)) == {
        "O",
        "CA",
        "O+FM",
    }
    assert out["not_tested"] == {"CA": "no predictions"}
    assert out["missing"] == ["O+FM+CA"]
    for name in ("significance_heatmap.png", "paper_method_heatmap.png", "report.html"):
        assert (local / name).is_file()


def test_report_banner_cis_missing_and_not_tested(study: dict) -> None:
    report = (study["local"] / "report.html").read_text()
    findings, table2 = report.index("<h2>Findings</h2>"), report.index("<section id='table2'>")
    assert findings < report.index("Deviations from the paper") < table2  # findings first
    assert "ResNet18 from random init, not ImageNet" in report
    assert "deviations.md" in report
    assert "CA: not tested (no predictions)" in report
    assert "Missing scenarios" in report and "O+FM+CA" in report
    assert "paper method: rank-sum on bootstrap replicates" in report and "B = 1000" in report
    assert "80 % power" in report
    assert re.search(r"0\.\d{3} \[0\.\d{2}, 0\.\d{2}\]", report)
    ci = pd.read_csv(study["local"] / "table2_ci.csv")
    o_rows = ci[ci["scenario"] == "O"]
    assert len(o_rows) == 25 and o_rows[["ci_low", "ci_high"]].notna().all().all()
    ca = ci[ci["scenario"] == "CA"]  # no predictions: the CIs come from its bootstrap file
    assert len(ca) == 25 and ca[["ci_low", "ci_high"]].notna().all().all()
    acc = ca[ca["metric"] == "accuracy"].iloc[0]
    assert acc["ci_low"] < acc["value"] < acc["ci_high"]
    t2 = pd.read_csv(study["local"] / "table2.csv", index_col=0)
    assert list(t2.index) == ["O", "CA", "O+FM"]  # CA stays in Table 2


def test_deviation_tags_and_table3(study: dict) -> None:
    run = study["client"].get_run(study["out"]["run_id"])
    tags = run.data.tags
    assert run.info.experiment_id == study["exp_id"]  # logged where the study's runs are
    assert tags["missing_scenarios"] == "O+FM+CA" and tags["not_tested"] == "CA"
    for key in (
        "classifier_init",
        "image_size",
        "epochs",
        "per_class_synthetic",
        "single_seed",
        "sd_source",
        "fidelity_no_inception",
        "statistics",
    ):
        assert f"deviation.{key}" in tags, key
    assert "deviation.bootstrap" not in tags  # 1000 resamples, as the paper
    assert "128" in tags["deviation.image_size"]
    t3 = pd.read_csv(study["local"] / "table3.csv", header=[0, 1, 2], index_col=0)
    extractors = set(t3.columns.get_level_values(0))
    assert extractors == {"resnet18-O"} and not any("std_" in e for e in extractors)
    columns = set(t3.columns.get_level_values(2))
    assert {"FID", "KID x10^3", "KID x10^3 std", "n real", "n fake", "FID low"} <= columns
    # KID is laid out x10^3 (the scale is in the column name): 0.004 as logged -> 4.0
    assert t3[("resnet18-O", "FM", "KID x10^3 std")].tolist() == pytest.approx([4.0] * 5)


def test_zero_runs_is_an_error_with_exit_code(study: dict) -> None:
    with pytest.raises(CompareError, match="no finished train_classifier run"):
        compare_study("no-such-study", progress=False)
    assert main(["compare", "--study-id", "no-such-study", "--no-progress"]) != 0


def test_typo_experiment_is_an_error_and_creates_nothing(study: dict) -> None:
    with pytest.raises(TrackingError, match="not found"):
        compare_study("s1", "studeis", progress=False)
    assert study["client"].get_experiment_by_name("studeis") is None
    assert main(["compare", "--study-id", "s1", "--experiment", "studeis"]) != 0
    assert study["client"].get_experiment_by_name("studeis") is None


def test_runs_on_different_external_cases_are_refused() -> None:
    y, p_o, p_fm = _external_set()
    ids = [f"G{k:03d}" for k in range(N_EXTERNAL)]
    a = _predictions(y, p_o, ids).query("split == 'external'")
    b = _predictions(y, p_fm, ids).query("split == 'external'")
    aligned = align_predictions({"O": a, "O+FM": b.iloc[::-1]})  # row order does not matter
    assert aligned.case_ids == sorted(ids)
    np.testing.assert_allclose(aligned.probas["O+FM"], p_fm, atol=1e-12)
    shifted = b.assign(case_id=[f"H{k:03d}" if k < 3 else c for k, c in enumerate(ids)])
    with pytest.raises(CompareError, match="different external cases: 3 only in O"):
        align_predictions({"O": a, "O+FM": shifted}, {"O": "r1", "O+FM": "r2"})
