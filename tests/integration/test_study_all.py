"""`thyroaug study --profile smoke --scenarios all` as a user types it: all 18 scenarios."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from thyroaug.jobs.commands import main
from thyroaug.scenarios import PAPER_SCENARIOS

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_all_18_scenarios_complete_on_the_smoke_profile(tracking_home: Path, capsys) -> None:
    code = main(["study", "--profile", "smoke", "--scenarios", "all", "--study-id", "all18"])
    printed = capsys.readouterr().out
    assert code == 0, printed[-2000:]
    assert "report:" in printed and "mlflow ui --backend-store-uri" in printed

    client = MlflowClient()
    parent = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.study_id = 'all18' and tags.step = 'study'",
    )[0]
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    classifiers = [r for r in children if r.data.tags.get("step") == "train_classifier"]
    assert sorted(r.data.tags["scenario"] for r in classifiers) == sorted(PAPER_SCENARIOS)
    assert all(r.info.status == "FINISHED" for r in classifiers)
    steps = {r.data.tags.get("study_step") for r in children}
    assert {
        "train_fm",
        "train_sd",
        *(f"synthesize_{m}" for m in ("FM", "SD1", "SD2", "SD3", "SD4")),
    } <= steps

    (compare,) = [r for r in children if r.data.tags.get("study_step") == "compare"]
    names = {a.path for a in client.list_artifacts(compare.info.run_id, "compare")}
    assert {"compare/significance_heatmap.png", "compare/paired_tests.csv"} <= names
    paired = pd.read_csv(
        client.download_artifacts(
            compare.info.run_id, "compare/paired_tests.csv", str(tracking_home)
        )
    )
    pairs = paired[paired["metric"] == paired["metric"].iloc[0]]
    assert len(pairs) == 18 * 17 // 2  # every pair of the 18 scenarios: an 18 x 18 heatmap
    table3 = pd.read_csv(
        client.download_artifacts(compare.info.run_id, "compare/table3.csv", str(tracking_home))
    )
    header = (
        " ".join(map(str, table3.columns))
        + " "
        + " ".join(map(str, table3.iloc[:2].values.ravel()))
    )
    for method in ("FM", "SD1", "SD2", "SD3", "SD4"):
        assert method in header
