"""The comparison job: read a study's scenario runs back from the tracking server and compare them.

For a study id it searches the tracking store for finished ``train_classifier`` runs (every
experiment, or only ``--experiment``), keeps one run per scenario and training seed (the ``seed``
param; ``--seeds`` restricts them), downloads each run's per-case predictions
(``predictions/predictions.csv``) and bootstrap file, analyses them
(``thyroaug.evaluation.comparison``, ``thyroaug.evaluation.seeds``; methods in
``docs/statistics.md``) and logs as its own run:

- ``compare/paired_tests.csv``: the default comparison, valid paired tests on the same external
  cases (``thyroaug.evaluation.paired.paired_comparisons``: exact McNemar for accuracy, paired
  bootstrap for macro-F1, DeLong for macro-AUC, Benjamini-Hochberg within each metric), columns
  ``a, b, metric, diff, ci_low, ci_high, test, p, p_adj, significant, ...``;
- ``compare/significance_heatmap.png``: the paired difference (row minus column) with its 95 % CI
  in every cell, only what the paired test calls significant marked;
- ``compare/paper_method.csv`` + ``compare/paper_method_heatmap.png``: the paper's method,
  Wilcoxon rank-sum on bootstrap replicates + one BH correction (shown for comparison only);
- with several training seeds (``thyroaug study --seeds``; ``thyroaug.evaluation.seeds``):
  ``compare/seed_table2.csv`` (mean ± sd over seeds of every Table 2 number, mean per-seed case
  CI), ``compare/seed_table2_by_seed.csv`` and ``compare/seed_tests.csv`` (per pair and metric
  the per-seed paired differences combined by ``paired.seed_combined_test``, columns ``a, b,
  metric, diff, sd_seeds, ci_low, ci_high, test, p, p_adj, significant, n_seeds, ...``, BH
  within each metric), shown in the report's "Training seeds" section;
- Table 2 with a 95 % CI on every number (``table2.csv``, ``table2_ci.csv``, ``table2.md``),
  Table 3 (FID / KID / KID std per extractor) when synthesis runs have fidelity metrics, and one
  self-contained HTML report that opens with the deviations from the paper the runs record (also
  set as ``deviation.<key>`` tags on the compare run).

Rules:
- Duplicate runs per (scenario, seed): the most recently *finished* run wins (largest
  ``end_time``); the others are listed as superseded. Only runs with status FINISHED count. No
  run at all: an error.
- Table 2, ``paired_tests.csv``, both heatmaps and the paper method use one seed per scenario:
  the primary seed (the study's base seed, the first of ``--seeds``; else the smallest found),
  else that scenario's first seed. The report and the ``paired_seed`` param say which.
- Missing scenarios are relative to the study's own list: ``expected`` (the study passes it), else
  the ``scenarios`` param of the study's parent run, else the scenarios found (nothing missing).
  The report says which. Missing scenarios are grey rows / columns in both heatmaps.
- A scenario without predictions stays in Table 2 and is listed as "not tested (no
  predictions)"; one without a bootstrap file is listed as not in the paper method.
- Two runs scored on different external case sets: an error (paired tests need the same cases).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient

from thyroaug.contract import (
    BOOTSTRAP_ARTIFACT,
    GRADCAM_ARTIFACT,
    PREDICTIONS_ARTIFACT,
    STEP_COMPARE,
    TAG_MISSING_SCENARIOS,
    TAG_NOT_TESTED,
    TAG_PROFILE,
    TAG_STEP,
    TAG_STUDY_ID,
    deviation_tag,
)
from thyroaug.errors import ConfigError
from thyroaug.evaluation import metrics as M
from thyroaug.evaluation import plots
from thyroaug.evaluation.alignment import AlignedPredictions, CompareError, align_predictions
from thyroaug.evaluation.comparison import PAIRED_NAME, Comparison, Settings, analyse
from thyroaug.evaluation.deviations import RunFacts, find_deviations
from thyroaug.evaluation.findings import Findings, StudyFacts, find, findings_markdown
from thyroaug.evaluation.gradcam import comparison_panel, load_pair
from thyroaug.evaluation.memorisation import audit_notes, audit_summary
from thyroaug.evaluation.paper_method import PAPER_METHOD_NAME
from thyroaug.evaluation.report import ReportInputs, html_report, table2_cells
from thyroaug.evaluation.seeds import SeedAnalysis, analyse_seeds
from thyroaug.evaluation.table2 import seed_table
from thyroaug.evaluation.table3 import fidelity_long, table3, table3_markdown, table3_notes
from thyroaug.generators import registry
from thyroaug.jobs.compare_runs import (
    StudyRuns,
    download_csvs,
    download_grids,
    find_runs,
    has_several_seeds,
    seed_frames,
)
from thyroaug.tracking.runs import describe_run
from thyroaug.tracking.setup import configure_tracking, resolve_uris, start_run

__all__ = [
    "AlignedPredictions",
    "CompareError",
    "Comparison",
    "StudyRuns",
    "align_predictions",
    "analyse",
    "compare_study",
    "find_runs",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# the job
# --------------------------------------------------------------------------------------------
def _facts(run: Any) -> RunFacts:
    return RunFacts(dict(run.data.params), dict(run.data.tags), dict(run.data.metrics))


def _doc_link() -> str:
    # a path inside the project, not this checkout's absolute path: the report is read elsewhere
    return "docs/deviations.md"


def _tracking_experiment(client: Any, runs: StudyRuns, experiment: str | None) -> str | None:
    """Where the compare run is logged: ``experiment``, else where most scenario runs are."""
    if experiment:
        return experiment
    ids = [r.info.experiment_id for r in runs.chosen.values()]
    top = max(set(ids), key=ids.count)
    return client.get_experiment(top).name


def _write_tables(tmp: Path, cmp: Comparison, t3_long: pd.DataFrame, t3: Any) -> list[Path]:
    """Paired tests, paper method, Table 2 and Table 3 files under ``tmp``."""
    files = []
    if cmp.paired is not None:
        cmp.paired.to_csv(tmp / "paired_tests.csv", index=False)
        files.append(tmp / "paired_tests.csv")
    if cmp.paper is not None:
        cmp.paper.to_long().to_csv(tmp / "paper_method.csv", index=False)
        cmp.paper.p_adj.to_csv(tmp / "paper_method_p_adjusted.csv")
        files += [tmp / "paper_method.csv", tmp / "paper_method_p_adjusted.csv"]
    if cmp.t2 is not None:
        cmp.t2.to_csv(tmp / "table2.csv")
        cmp.t2_long.to_csv(tmp / "table2_ci.csv", index=False)
        (tmp / "table2.md").write_text(
            M.to_markdown(cmp.t2_ci)
            + "\n\n"
            + M.to_markdown(M.format_table2(cmp.t2))
            + "\n\n"
            + M.to_markdown(cmp.t2, ".3f")
        )
        files += [tmp / "table2.csv", tmp / "table2_ci.csv", tmp / "table2.md"]
    if t3 is not None:
        t3.to_csv(tmp / "table3.csv")
        t3_long.to_csv(tmp / "table3_long.csv", index=False)
        (tmp / "table3.md").write_text(table3_markdown(t3_long))
        files += [tmp / "table3.csv", tmp / "table3_long.csv", tmp / "table3.md"]
    return files


def _figures(
    tmp: Path,
    cmp: Comparison,
    runs: StudyRuns,
    settings: Settings,
    seed_tests: pd.DataFrame | None = None,
) -> tuple[Path | None, Path | None]:
    """The pairwise heatmap (seed-combined tests when given, else the paired tests of one seed)
    and the paper-method heatmap (None when not computed)."""
    heatmap = paper_heatmap = None
    missing = dict.fromkeys(runs.missing, "missing")
    pairs = seed_tests if seed_tests is not None else cmp.paired
    if pairs is not None:
        heatmap = plots.plot_paired_heatmap(
            pairs,
            tmp / "significance_heatmap.png",
            names=runs.expected,
            metric=settings.metric,
            alpha=settings.alpha,
            status={**missing, **dict.fromkeys(cmp.not_tested, "not tested")},
        )
    if cmp.paper is not None:
        lo, hi = cmp.resamples
        count = f"{lo}" if lo == hi else f"{lo}-{hi}"
        paper_heatmap = plots.plot_significance_heatmap(
            cmp.paper,
            tmp / "paper_method_heatmap.png",
            title=f"Study {settings.study_id}: {PAPER_METHOD_NAME} (B = {count}), BH-adjusted p",
            order=runs.expected,
            status={
                **missing,
                **dict.fromkeys(set(runs.chosen) - set(cmp.bootstrapped), "no bootstrap"),
            },
        )
    return heatmap, paper_heatmap


def compare_study(
    study_id: str = "default",
    experiment: str | None = None,
    metric: str = "accuracy",
    expected: list[str] | None = None,
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
    progress: bool = True,
    seeds: Sequence[int | str] | None = None,
) -> dict[str, Any]:
    """Build and log the comparison run.

    Args:
        study_id: the ``study_id`` tag of the runs.
        experiment: search only this experiment (must exist; never created here); default: all
            experiments. The compare run is logged there, or where most scenario runs are.
        metric: metric of the heatmaps: ``accuracy``, ``macro_f1`` / ``f1_macro``,
            ``macro_auc`` / ``auc_macro``.
        expected: the study's scenario list (missing scenarios are relative to it).
        alpha: FDR level of both methods.
        n_resamples: paired bootstrap and Table 2 CI resamples.
        seed: seed of those resamples.
        progress: one progress bar per multi-file download.
        seeds: compare only classifier runs with these training seeds (the first: the seed of
            Table 2 and the paired tests); default: every seed found.

    Returns:
        {run_id, report, missing, compared, not_tested, deviations, seeds, n_seeds}.

    Raises:
        TrackingError: ``experiment`` does not exist.
        CompareError: no finished classifier run of the study, or runs on different cases.
        ConfigError: an unknown ``metric``.
    """
    if metric not in PAIRED_NAME:
        raise ConfigError(f"metric {metric!r}: choose one of {sorted(PAIRED_NAME)}")
    settings = Settings(study_id, PAIRED_NAME[metric], alpha, n_resamples, seed)
    mlflow.set_tracking_uri(resolve_uris()[0])  # search first: create nothing before that
    client = MlflowClient()
    runs = find_runs(client, study_id, experiment, expected, seeds)
    if not runs.chosen:
        where = f"experiment {experiment!r}" if experiment else "any experiment"
        raise CompareError(
            f"no finished train_classifier run with study_id {study_id!r} in {where} of "
            f"{mlflow.get_tracking_uri()}; check --study-id (and THYROAUG_TRACKING / "
            "MLFLOW_TRACKING_URI)"
        )
    log.info("study %s: %d scenario runs, missing %s", study_id, len(runs.chosen), runs.missing)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        preds = download_csvs(runs.chosen, PREDICTIONS_ARTIFACT, tmp / "p", "predictions", progress)
        boots = download_csvs(
            runs.chosen, BOOTSTRAP_ARTIFACT, tmp / "b", "bootstrap files", progress
        )
        cmp = analyse(
            {s: dict(r.data.metrics) for s, r in runs.chosen.items()},
            preds,
            boots,
            {s: r.info.run_id for s, r in runs.chosen.items()},
            settings.metric,
            alpha,
            n_resamples,
            seed,
        )
        by_seed = _seed_analysis(runs, preds, tmp / "s", settings, progress)
        order = {m: i for i, m in enumerate(registry.generator_methods())}
        synth = dict(sorted(runs.synth.items(), key=lambda kv: order.get(kv[0], len(order))))
        grids = download_grids(client, synth, tmp / "grids")
        deviations = _deviations(runs)
        t3_long = fidelity_long({m: dict(r.data.metrics) for m, r in runs.synth.items()})
        found = _findings(runs, cmp, by_seed, t3_long, settings)
        panel = _gradcam_panel(runs, found, cmp, tmp / "gradcam")
        files = _outputs(
            tmp, runs, cmp, grids, deviations, settings, by_seed, found, t3_long, panel
        )
        configure = _tracking_experiment(client, runs, experiment)
        return _log_run(runs, cmp, files, deviations, settings, configure)


def _panel_scenario(runs: StudyRuns, found: Findings | None, cmp: Comparison) -> str | None:
    """The scenario Grad-CAM is shown for beside O: O+FM as in the paper's Figure 2, else the
    best macro-F1 of the scenarios that are not one-class predictors."""
    if "O+FM" in runs.chosen:
        return "O+FM"
    flagged = set()
    if found is not None:
        flagged = set(found.sanity.loc[found.sanity["top_share"] >= 0.95, "scenario"])
    scores = {
        s: m.get("f1_macro", float("nan"))
        for s, m in cmp.points.items()
        if s != "O" and s not in flagged
    }
    scores = {s: v for s, v in scores.items() if v == v}
    return max(scores, key=scores.get) if scores else None


def _gradcam_panel(
    runs: StudyRuns, found: Findings | None, cmp: Comparison, dst: Path
) -> tuple[Path | None, str]:
    """(panel PNG or None, note): the same external cases under O and the panel scenario."""
    other = _panel_scenario(runs, found, cmp)
    if "O" not in runs.chosen or other is None:
        return None, "Grad-CAM panel: needs the O run and one other scenario."
    paths = {}
    for scenario in ("O", other):
        run_id = runs.chosen[scenario].info.run_id
        try:
            paths[scenario] = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=GRADCAM_ARTIFACT, dst_path=str(dst / scenario)
            )
        except Exception:  # runs logged before the maps were saved as data
            return None, (
                f"Grad-CAM panel: run {run_id} ({scenario}) has no {GRADCAM_ARTIFACT} (logged "
                "before the maps were kept as data); retrain it to see the panel."
            )
    try:
        a, b = load_pair(paths["O"], paths[other])
        panel = comparison_panel(a, b, dst / "gradcam_panel.png")
    except ValueError as exc:
        return None, f"Grad-CAM panel not drawn: {exc}"
    text = (
        f"The same external cases (the first of each class by case id) under O and {other}: "
        f"maps of the predicted class at {a.layer} ({a.map_size[0]}x{a.map_size[1]}), "
        "upsampled bilinearly; each map is scaled to its own maximum."
    )
    return panel, " ".join(filter(None, [text, a.note or b.note]))


def _train_sizes(runs: StudyRuns) -> dict[str, tuple[int, int]]:
    """{scenario: (training images, original cases among them)} from the runs' params."""
    out = {}
    for scenario, run in runs.chosen.items():
        params = run.data.params
        total = int(float(params.get("n_train", 0) or 0))
        out[scenario] = (total, int(float(params.get("train_count_O", 0) or 0)))
    return out


def _claims_fidelity(t3_long: pd.DataFrame) -> pd.DataFrame | None:
    """The Table 3 long frame of the extractor the claims use: Inception when the runs have it
    (the paper's), else the O classifier's features, else the first one."""
    if t3_long is None or t3_long.empty:
        return None
    names = list(dict.fromkeys(t3_long["extractor"].astype(str)))
    pick = next((n for n in names if n.startswith("inception")), None)
    pick = pick or next((n for n in names if "random" not in n), names[0])
    return t3_long[t3_long["extractor"] == pick].reset_index(drop=True)


def _findings(
    runs: StudyRuns,
    cmp: Comparison,
    by_seed: SeedAnalysis | None,
    t3_long: pd.DataFrame,
    settings: Settings,
) -> Findings | None:
    """Claims, key contrasts, sanity flags and per-center results (None without predictions)."""
    if cmp.aligned is None:
        return None
    several = by_seed is not None and by_seed.tests is not None and not by_seed.tests.empty
    long = cmp.t2_long
    auc = {}
    if long is not None:
        rows = long[long["metric"] == "auc_macro"]
        auc = {r.scenario: (r.value, r.ci_low, r.ci_high) for r in rows.itertuples()}
    values = {s: dict(m) for s, m in (cmp.points or {}).items()}
    if several and by_seed.summary is not None:
        for r in by_seed.summary.itertuples():
            values.setdefault(r.scenario, {})[r.metric] = float(r.mean)
    methods = [m for m in registry.generator_methods() if m in runs.synth or any(
        m in s.split("+") for s in runs.chosen)]  # fmt: skip
    return find(
        y=cmp.aligned.y,
        probas=cmp.aligned.probas,
        centers=cmp.aligned.centers,
        values=values,
        paired=cmp.paired,
        auc_intervals=auc,
        train_sizes=_train_sizes(runs),
        methods=methods,
        fidelity=_claims_fidelity(t3_long),
        seed_probas=by_seed.probas if several else None,
        seed_tests=by_seed.tests if several else None,
        per_seed_paired=by_seed.per_seed_diffs if several else None,
        alpha=settings.alpha,
        n_resamples=settings.n_resamples,
        seed=settings.seed,
    )


def _study_facts(runs: StudyRuns, cmp: Comparison, settings: Settings) -> StudyFacts:
    """The data and design the findings open with, from the runs' params."""
    params = [r.data.params for r in runs.chosen.values()]
    kinds = {p.get("data_source", "") for p in params} - {""}
    kind = kinds.pop() if len(kinds) == 1 else "unknown"
    detail = {"phantom": "simulated scans, reports and masks"}.get(kind, "")
    if (
        kind == "unknown"
        and runs.prepare is not None
        and "phantom_scale" in runs.prepare.data.params
    ):
        kind = "phantom"
        detail = f"scale {runs.prepare.data.params['phantom_scale']}"
    first = params[0] if params else {}

    def count(key: str) -> int:
        return int(float(first.get(key, 0) or 0))

    profile = next(iter({r.data.tags.get(TAG_PROFILE, "") for r in runs.chosen.values()}), "")
    return StudyFacts(
        study_id=settings.study_id,
        profile=profile,
        data_kind=kind,
        data_detail=detail,
        n_train=count("train_count_O") or count("n_train"),
        n_val=count("n_val"),
        n_external=len(cmp.aligned.y) if cmp.aligned is not None else count("n_external"),
        seeds=tuple(runs.seeds),
        mdd_accuracy=float(cmp.mdd.get("psi_based", cmp.mdd.get("acc_based", float("nan")))),
    )


def _seed_analysis(
    runs: StudyRuns, preds: dict[str, pd.DataFrame], tmp: Path, settings: Settings, progress: bool
) -> SeedAnalysis | None:
    """The training-seed analysis of a study (None when no scenario has two seeds)."""
    if not has_several_seeds(runs):
        return None
    frames, run_ids = seed_frames(runs, preds, tmp, progress)
    return analyse_seeds(
        frames, run_ids, runs.seeds, list(runs.chosen), runs.primary_seed, settings
    )


def _write_seed_tables(tmp: Path, analysis: SeedAnalysis | None) -> list[Path]:
    """``seed_table2.csv``, ``seed_table2_by_seed.csv`` and ``seed_tests.csv`` under ``tmp``."""
    if analysis is None or analysis.summary is None:
        return []
    files = [tmp / "seed_table2.csv", tmp / "seed_table2_by_seed.csv"]
    analysis.summary.to_csv(files[0], index=False)
    analysis.per_seed.to_csv(files[1], index=False)
    if analysis.tests is not None:
        analysis.tests.to_csv(tmp / "seed_tests.csv", index=False)
        files.append(tmp / "seed_tests.csv")
    return files


def _deviations(runs: StudyRuns) -> dict[str, str]:
    """Deviations from the paper that the study's runs record."""
    return find_deviations(
        {s: _facts(r) for s, r in runs.chosen.items()},
        {k: _facts(r) for k, r in runs.generators.items()},
        {m: _facts(r) for m, r in runs.synth.items()},
        seeds_per_scenario={s: len(runs.by_seed.get(s, {})) for s in runs.chosen},
    )


def _write_findings(tmp: Path, found: Findings | None, facts: StudyFacts) -> list[Path]:
    """``findings.md``, ``claims.csv``, ``key_contrasts.csv``, ``sanity.csv``,
    ``per_center.csv`` and ``classwise_contrasts.csv`` under ``tmp``."""
    if found is None:
        return []
    frames = {
        "claims.csv": found.claims,
        "key_contrasts.csv": found.key_contrasts,
        "sanity.csv": found.sanity,
        "classwise_contrasts.csv": found.classwise,
    }
    if found.per_center is not None:
        frames["per_center.csv"] = found.per_center
    if found.unconfirmed is not None and not found.unconfirmed.empty:
        frames["unconfirmed_by_seeds.csv"] = found.unconfirmed
    files = []
    for name, frame in frames.items():
        frame.to_csv(tmp / name, index=False)
        files.append(tmp / name)
    (tmp / "findings.md").write_text(findings_markdown(facts, found))
    return [tmp / "findings.md", *files]


def _outputs(
    tmp: Path,
    runs: StudyRuns,
    cmp: Comparison,
    grids: dict[str, dict[str, Path]],
    deviations: dict[str, str],
    settings: Settings,
    by_seed: SeedAnalysis | None,
    found: Findings | None,
    t3_long: pd.DataFrame,
    panel: tuple[Path | None, str] = (None, ""),
) -> list[Path]:
    """Write tables, figures, findings and the HTML report under ``tmp``; the files to log."""
    t3 = table3(t3_long)
    synth_metrics = {m: dict(r.data.metrics) for m, r in runs.synth.items()}
    several = by_seed is not None and by_seed.tests is not None and not by_seed.tests.empty
    heatmap, paper_heatmap = _figures(tmp, cmp, runs, settings, by_seed.tests if several else None)
    facts = _study_facts(runs, cmp, settings)
    page = html_report(
        ReportInputs(
            study_id=settings.study_id,
            compared=list(runs.chosen),
            facts=facts,
            findings=found,
            table2=table2_cells(cmp.t2_long, by_seed.summary if several else None),
            expected_source=runs.expected_source,
            missing=runs.missing,
            not_tested=cmp.not_tested,
            no_bootstrap=[s for s in runs.chosen if s not in cmp.bootstrapped],
            superseded=runs.superseded,
            deviations=deviations,
            deviations_doc=_doc_link(),
            heatmap=heatmap,
            heatmap_source="seed-combined tests" if several else "paired tests",
            metric=settings.metric,
            alpha=settings.alpha,
            n_resamples=settings.n_resamples,
            paper_long=cmp.paper.to_long() if cmp.paper is not None else None,
            paper_heatmap=paper_heatmap,
            paper_resamples=cmp.resamples,
            paper_summary=cmp.paper_summary,
            t3=t3,
            t3_notes=table3_notes(t3_long) if t3 is not None else [],
            memorisation=audit_summary(synth_metrics),
            memorisation_notes=audit_notes(synth_metrics),
            grids=grids,
            gradcam=panel[0],
            gradcam_note=panel[1],
            seeds=runs.seeds,
            primary_seed=runs.primary_seed,
            seed_table=seed_table(by_seed.summary) if by_seed is not None else None,
            seed_tests=by_seed.tests if by_seed is not None else None,
        )
    )
    files = _write_tables(tmp, cmp, t3_long, t3) + _write_seed_tables(tmp, by_seed)
    files += _write_findings(tmp, found, facts)
    files += [p for p in (heatmap, paper_heatmap, panel[0]) if p is not None]
    (tmp / "report.html").write_text(page)
    return [*files, tmp / "report.html"]


def _run_params(runs: StudyRuns, cmp: Comparison, settings: Settings) -> dict[str, Any]:
    """The compare run's params: its settings and what was compared."""
    return {
        "study_id": settings.study_id,
        "metric": settings.metric,
        "alpha": settings.alpha,
        "n_scenarios": len(runs.chosen),
        "n_external": len(cmp.aligned.y) if cmp.aligned is not None else 0,
        "n_resamples": settings.n_resamples,
        "seed": settings.seed,
        "expected_source": runs.expected_source,
        "training_seeds": ",".join(runs.seeds),
        "n_seeds": _n_seeds(runs),
        "paired_seed": runs.primary_seed,
    }


def _log_run(
    runs: StudyRuns,
    cmp: Comparison,
    files: list[Path],
    deviations: dict[str, str],
    settings: Settings,
    experiment: str | None,
) -> dict[str, Any]:
    """Log the compare run: params, tags (one ``deviation.<key>`` per deviation), artifacts."""
    configure_tracking(experiment=experiment)
    tags = {TAG_STEP: STEP_COMPARE, TAG_STUDY_ID: settings.study_id}
    with start_run(run_name=f"compare-{settings.study_id}", tags=tags) as run:
        mlflow.log_params(_run_params(runs, cmp, settings))
        mlflow.set_tags(
            {
                TAG_MISSING_SCENARIOS: ",".join(runs.missing) or "none",
                TAG_NOT_TESTED: ",".join(cmp.not_tested) or "none",
                **{deviation_tag(k): v for k, v in deviations.items()},
            }
        )
        mlflow.log_dict({s: r.info.run_id for s, r in runs.chosen.items()}, "compare/runs.json")
        by_seed = {s: {k: r.info.run_id for k, r in d.items()} for s, d in runs.by_seed.items()}
        mlflow.log_dict(by_seed, "compare/seed_runs.json")
        mlflow.log_dict(deviations, "compare/deviations.json")
        n_sig = int(cmp.paired["significant"].sum()) if cmp.paired is not None else 0
        describe_run(
            f"Comparison of study {settings.study_id}: {len(runs.chosen)} scenario(s) on "
            f"{len(cmp.aligned.y) if cmp.aligned is not None else 0} external cases, "
            f"training seed(s) {','.join(runs.seeds) or '-'}; {n_sig} paired test(s) significant "
            f"after Benjamini-Hochberg; {len(deviations)} deviation(s) from the paper listed. "
            "Open compare/report.html."
        )
        for path in files:
            mlflow.log_artifact(str(path), "compare")
        run_id = run.info.run_id
        artifact_uri = mlflow.get_artifact_uri("compare/report.html")
    return {
        "run_id": run_id,
        "report": artifact_uri,
        "missing": runs.missing,
        "compared": list(runs.chosen),
        "not_tested": dict(cmp.not_tested),
        "deviations": deviations,
        "seeds": list(runs.seeds),
        "n_seeds": _n_seeds(runs),
    }


def _n_seeds(runs: StudyRuns) -> int:
    """The most training seeds any scenario was compared with."""
    return max((len(d) for d in runs.by_seed.values()), default=0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `thyroaug compare`."""
    parser.add_argument("--study-id", default="default", help="tag study_id of the runs")
    parser.add_argument(
        "--experiment", default=None, help="only this experiment (default: search all)"
    )
    parser.add_argument(
        "--metric",
        default="accuracy",
        choices=sorted(PAIRED_NAME),
        help="metric of the heatmaps (default accuracy)",
    )
    parser.add_argument(
        "--scenarios",
        default=None,
        help="comma-separated expected scenarios (default: the study's own list, else the "
        "scenarios found)",
    )
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument(
        "--resamples", type=int, default=2000, help="paired / CI bootstrap resamples (2000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma-separated training seeds to compare, the first for Table 2 and the paired "
        "tests (default: every seed found; the study run's base seed first)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """`thyroaug compare`."""
    expected = [s for s in args.scenarios.split(",") if s] if args.scenarios else None
    out = compare_study(
        args.study_id,
        args.experiment,
        args.metric,
        expected,
        args.alpha,
        n_resamples=args.resamples,
        seed=args.seed,
        progress=not args.no_progress,
        seeds=[s for s in args.seeds.split(",") if s.strip()] if args.seeds else None,
    )
    print(f"compared {len(out['compared'])} scenario(s): {', '.join(out['compared'])}")
    if out["n_seeds"] > 1:
        print(f"training seeds: {', '.join(out['seeds'])} (see compare/seed_tests.csv)")
    if out["missing"]:
        print(f"missing (no finished run): {', '.join(out['missing'])}")
    if out["not_tested"]:
        print(f"not tested (no predictions): {', '.join(out['not_tested'])}")
    for key, text in out["deviations"].items():
        print(f"deviation {key}: {text}")
    print(f"report: {out['report']}  (run {out['run_id']})")
    return 0
