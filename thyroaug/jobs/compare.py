"""The comparison job: read a study's scenario runs back from the tracking server and compare them.

For a study id it searches the experiment (MlflowClient) for finished ``train_classifier`` runs,
keeps one run per scenario, downloads their bootstrap distributions, runs pairwise Wilcoxon
rank-sum tests with one Benjamini-Hochberg correction (``thyroaug.evaluation.stats``), and logs as
its own run:
the significance heatmap (paper Figure 3 style), Table 2 (CSV + Markdown), Table 3 (FID/KID) when
synthesis runs with fidelity metrics exist, and one self-contained HTML report.

Rules:
- Duplicate runs per scenario: the most recently *finished* run wins (largest ``end_time``); the
  others are listed in the report as superseded. Only runs with status FINISHED count.
- Missing scenarios (of the study's requested list, or of the paper's 18 when none is recorded) are
  listed in the report and logged as a tag; they are never fatal. Fewer than two scenarios with
  bootstraps -> no heatmap (stated in the report), tables still written.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from thyroaug.contract import (
    BOOTSTRAP_ARTIFACT,
    STEP_COMPARE,
    TAG_STEP,
    TAG_STUDY_ID,
    synthetic_artifact,
)
from thyroaug.errors import TrackingError
from thyroaug.evaluation.report import html_report, table3

log = logging.getLogger(__name__)

METRIC_PREFIX = "external_"


@dataclass
class StudyRuns:
    """The runs a comparison is built from."""

    chosen: dict[str, Any] = field(default_factory=dict)  # scenario -> mlflow Run
    superseded: dict[str, list[str]] = field(default_factory=dict)  # scenario -> run ids
    missing: list[str] = field(default_factory=list)
    synth: dict[str, Any] = field(default_factory=dict)  # method -> mlflow Run


def _experiment_ids(client: Any, experiment: str | None) -> list[str]:
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise TrackingError(f"experiment {experiment!r} not found in the tracking store")
        return [exp.experiment_id]
    return [e.experiment_id for e in client.search_experiments()]


def find_runs(
    client: Any, study_id: str, experiment: str | None = None, expected: list[str] | None = None
) -> StudyRuns:
    """Latest finished run per scenario (and per synthesis method) of a study."""
    from thyroaug.scenarios import PAPER_SCENARIOS, canonical

    ids = _experiment_ids(client, experiment)
    base = f"tags.study_id = '{study_id}' and attributes.status = 'FINISHED'"
    runs = client.search_runs(
        ids,
        f"{base} and tags.step = 'train_classifier'",
        max_results=5000,
        order_by=["attributes.end_time DESC"],
    )
    out = StudyRuns()
    for run in runs:
        scenario = canonical(run.data.tags.get("scenario", ""))
        if scenario in out.chosen:
            out.superseded.setdefault(scenario, []).append(run.info.run_id)
        else:
            out.chosen[scenario] = run
    wanted = [canonical(s) for s in (expected or list(PAPER_SCENARIOS))]
    out.missing = [s for s in wanted if s not in out.chosen]
    order = {s: i for i, s in enumerate(wanted)}
    out.chosen = dict(sorted(out.chosen.items(), key=lambda kv: (order.get(kv[0], 99), kv[0])))
    for run in client.search_runs(
        ids,
        f"{base} and tags.step = 'synthesize'",
        max_results=1000,
        order_by=["attributes.end_time DESC"],
    ):
        method = run.data.tags.get("method", "")
        if method and method not in out.synth:
            out.synth[method] = run
    return out


def compare_study(
    study_id: str = "default",
    experiment: str | None = None,
    metric: str = "accuracy",
    expected: list[str] | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Build and log the comparison run; returns {run_id, report, missing, compared}."""
    import mlflow
    from mlflow import MlflowClient

    from thyroaug.evaluation import metrics as M
    from thyroaug.evaluation import plots, stats
    from thyroaug.tracking.setup import configure_tracking, start_run

    configure_tracking(experiment=experiment)
    client = MlflowClient()
    runs = find_runs(client, study_id, experiment, expected)
    log.info("study %s: %d scenario runs, missing %s", study_id, len(runs.chosen), runs.missing)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rows: dict[str, dict[str, float]] = {}
        boots: dict[str, pd.DataFrame] = {}
        for scenario, run in runs.chosen.items():
            rows[scenario] = {
                k[len(METRIC_PREFIX) :]: v
                for k, v in run.data.metrics.items()
                if k.startswith(METRIC_PREFIX)
            }
            try:
                path = mlflow.artifacts.download_artifacts(
                    run_id=run.info.run_id,
                    artifact_path=BOOTSTRAP_ARTIFACT,
                    dst_path=str(tmp / scenario),
                )
                boots[scenario] = pd.read_csv(path)
            except Exception as exc:  # report it; never fail the comparison
                log.warning(
                    "scenario %s (run %s): no bootstrap artifact (%s)",
                    scenario,
                    run.info.run_id,
                    exc,
                )
        t2 = None
        complete = {s: m for s, m in rows.items() if m}
        if complete:
            try:
                t2 = M.table2(complete)
            except M.MetricInputError as exc:
                log.warning("Table 2 incomplete: %s", exc)
        heatmap = summary = None
        result = None
        if len(boots) >= 2:
            result = stats.compare_bootstraps(boots, metric=metric, alpha=alpha)
            heatmap = plots.plot_significance_heatmap(
                result,
                tmp / "significance_heatmap.png",
                title=f"Study {study_id}: Wilcoxon rank-sum + BH on bootstrap {metric}",
            )
            summary = result.summary()
        t3 = table3(runs.synth)
        grids: list[Path] = []
        for method, run in runs.synth.items():
            for art in client.list_artifacts(run.info.run_id, synthetic_artifact(method)):
                if art.path.endswith(".png"):
                    local = mlflow.artifacts.download_artifacts(
                        run_id=run.info.run_id, artifact_path=art.path, dst_path=str(tmp / "grids")
                    )
                    grids.append(Path(local))
        report = html_report(
            study_id,
            len(runs.chosen),
            runs.missing,
            runs.superseded,
            t2,
            t3,
            heatmap,
            summary,
            grids,
            metric,
        )
        with start_run(
            run_name=f"compare-{study_id}", tags={TAG_STEP: STEP_COMPARE, TAG_STUDY_ID: study_id}
        ) as run:
            mlflow.log_params(
                {
                    "study_id": study_id,
                    "metric": metric,
                    "alpha": alpha,
                    "n_scenarios": len(runs.chosen),
                }
            )
            mlflow.set_tag("missing_scenarios", ",".join(runs.missing) or "none")
            mlflow.log_dict({s: r.info.run_id for s, r in runs.chosen.items()}, "compare/runs.json")
            if t2 is not None:
                t2.to_csv(tmp / "table2.csv")
                (tmp / "table2.md").write_text(
                    M.to_markdown(M.format_table2(t2)) + "\n\n" + M.to_markdown(t2, ".3f")
                )
                mlflow.log_artifact(str(tmp / "table2.csv"), "compare")
                mlflow.log_artifact(str(tmp / "table2.md"), "compare")
            if result is not None:
                result.p_adj.to_csv(tmp / "p_adjusted.csv")
                result.to_long().to_csv(tmp / "pairwise.csv", index=False)
                mlflow.log_artifact(str(tmp / "p_adjusted.csv"), "compare")
                mlflow.log_artifact(str(tmp / "pairwise.csv"), "compare")
                mlflow.log_artifact(str(heatmap), "compare")
            if t3 is not None:
                t3.to_csv(tmp / "table3.csv")
                flat = t3.copy()
                flat.columns = [f"{m} {k}" for m, k in flat.columns]
                (tmp / "table3.md").write_text(M.to_markdown(flat, ".3f"))
                mlflow.log_artifact(str(tmp / "table3.csv"), "compare")
                mlflow.log_artifact(str(tmp / "table3.md"), "compare")
            (tmp / "report.html").write_text(report)
            mlflow.log_artifact(str(tmp / "report.html"), "compare")
            run_id = run.info.run_id
            artifact_uri = mlflow.get_artifact_uri("compare/report.html")
    return {
        "run_id": run_id,
        "report": artifact_uri,
        "missing": runs.missing,
        "compared": list(runs.chosen),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `thyroaug compare`."""
    parser.add_argument("--study-id", default="default", help="tag study_id of the runs")
    parser.add_argument("--experiment", default=None, help="experiment name (default: all)")
    parser.add_argument("--metric", default="accuracy", help="bootstrap column to compare")
    parser.add_argument(
        "--scenarios",
        default=None,
        help="comma-separated expected scenarios (default: the paper's 18)",
    )
    parser.add_argument("--alpha", type=float, default=0.05)


def run(args: argparse.Namespace) -> int:
    """`thyroaug compare`."""
    expected = [s for s in args.scenarios.split(",") if s] if args.scenarios else None
    out = compare_study(args.study_id, args.experiment, args.metric, expected, args.alpha)
    print(f"compared {len(out['compared'])} scenario(s): {', '.join(out['compared'])}")
    if out["missing"]:
        print(f"missing (no finished run): {', '.join(out['missing'])}")
    print(f"report: {out['report']}  (run {out['run_id']})")
    return 0
