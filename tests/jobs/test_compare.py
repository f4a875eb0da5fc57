"""The compare job on a local store filled with scenario runs (no classifier training needed)."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from thyroaug.evaluation.metrics import compute_metrics
from thyroaug.evaluation.stats import bootstrap
from thyroaug.jobs.compare import compare_study, find_runs
from thyroaug.tracking.setup import configure_tracking


def _fake_scenario_run(scenario: str, skill: float, study: str, tmp: Path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 120)
    logits = rng.normal(size=(120, 4))
    logits[np.arange(120), y] += skill
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    with mlflow.start_run(
        tags={"step": "train_classifier", "scenario": scenario, "study_id": study}
    ) as run:
        mlflow.log_metrics({f"external_{k}": v for k, v in compute_metrics(y, prob).items()})
        path = tmp / f"boot-{seed}" / "bootstrap.csv"
        path.parent.mkdir()
        bootstrap(y, prob, n_resamples=200, seed=0).to_csv(path, index=False)
        mlflow.log_artifact(str(path), "bootstrap")
    return run.info.run_id


def test_compare_lists_missing_and_draws_the_rest(tracking_home: Path) -> None:
    configure_tracking(experiment="thyroaug")
    old = _fake_scenario_run("O", 0.5, "s1", tracking_home, 1)
    time.sleep(0.02)
    newest_o = _fake_scenario_run("O", 1.0, "s1", tracking_home, 2)
    _fake_scenario_run("FM+O", 3.0, "s1", tracking_home, 3)  # any order: canonical O+FM
    _fake_scenario_run("CA", 2.0, "s1", tracking_home, 4)
    _fake_scenario_run("CA", 2.0, "other-study", tracking_home, 5)
    expected = ["O", "CA", "O+FM", "O+FM+CA"]

    runs = find_runs(MlflowClient(), "s1", "thyroaug", expected)
    assert list(runs.chosen) == ["O", "CA", "O+FM"]
    assert runs.chosen["O"].info.run_id == newest_o  # latest finished run wins
    assert runs.superseded == {"O": [old]}
    assert runs.missing == ["O+FM+CA"]

    out = compare_study("s1", "thyroaug", expected=expected)
    assert out["missing"] == ["O+FM+CA"]
    client = MlflowClient()
    run = client.get_run(out["run_id"])
    assert run.data.tags["step"] == "compare"
    assert run.data.tags["missing_scenarios"] == "O+FM+CA"
    files = {a.path for a in client.list_artifacts(out["run_id"], "compare")}
    for name in (
        "significance_heatmap.png",
        "table2.csv",
        "table2.md",
        "report.html",
        "p_adjusted.csv",
        "pairwise.csv",
    ):
        assert f"compare/{name}" in files
    local = Path(mlflow.artifacts.download_artifacts(run_id=out["run_id"], artifact_path="compare"))
    p_adj = pd.read_csv(local / "p_adjusted.csv", index_col=0)
    assert list(p_adj.index) == ["O", "CA", "O+FM"]
    assert p_adj.loc["O+FM", "O"] < 0.05  # a much better scenario is significantly different
    report = (local / "report.html").read_text()
    assert "O+FM+CA" in report and "data:image/png;base64," in report
    t2 = pd.read_csv(local / "table2.csv", index_col=0)
    assert t2.loc["O+FM", "F1-score mac"] > t2.loc["O", "F1-score mac"]
