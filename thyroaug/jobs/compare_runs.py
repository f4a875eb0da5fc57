"""Reading a study's runs back from the tracking store, for ``thyroaug compare``.

``find_runs`` searches every experiment (or one named, which must exist) for a study's finished
runs by the ``study_id`` tag: the latest classifier run per (scenario, training seed) - the
``seed`` param - the synthesis runs and the generator training runs. Per scenario one run is
``chosen`` for Table 2, the paired tests and the paper method: the run of the primary seed (the
study's base seed), else of its first seed; ``by_seed`` holds every seed's run.
``download_csvs`` fetches one artifact of many runs under a single progress bar (MLflow's
per-file bars off); ``seed_frames`` the external predictions of every (scenario, training seed).
Lining the predictions up is ``thyroaug.evaluation.alignment``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from tqdm.auto import tqdm

from thyroaug.contract import (
    PREDICTIONS_ARTIFACT,
    STEP_CLASSIFIER,
    STEP_PREPARE,
    STEP_STUDY,
    STEP_SYNTHESIZE,
    TAG_METHOD,
    TAG_SCENARIO,
    TAG_STEP,
    TAG_STUDY_ID,
    synthetic_artifact,
)
from thyroaug.errors import ThyroaugError, TrackingError
from thyroaug.evaluation.alignment import CompareError, external_rows
from thyroaug.generators import registry
from thyroaug.scenarios import canonical
from thyroaug.tracking.runs import tag_clause
from thyroaug.utils.env import scoped_env

log = logging.getLogger(__name__)


@dataclass
class StudyRuns:
    """The runs a comparison is built from."""

    chosen: dict[str, Any] = field(default_factory=dict)  # scenario -> mlflow Run (one seed)
    superseded: dict[str, list[str]] = field(default_factory=dict)  # scenario -> run ids
    by_seed: dict[str, dict[str, Any]] = field(default_factory=dict)  # scenario -> seed -> Run
    seeds: list[str] = field(default_factory=list)  # training seeds found, primary first
    primary_seed: str = ""  # the seed of the chosen runs (the study's base seed if present)
    missing: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)  # axis order of the heatmaps
    expected_source: str = ""
    synth: dict[str, Any] = field(default_factory=dict)  # method -> mlflow Run
    generators: dict[str, Any] = field(default_factory=dict)  # train_<family> step -> mlflow Run
    prepare: Any = None  # the study's prepare_data run, if any


def _experiment_ids(client: Any, experiment: str | None) -> list[str]:
    """The named experiment (an error when it does not exist; never created), else all."""
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise TrackingError(
                f"experiment {experiment!r} not found in the tracking store; leave out "
                "--experiment to search every experiment for the study's runs"
            )
        return [exp.experiment_id]
    ids, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        ids += [e.experiment_id for e in page]
        token = getattr(page, "token", None)
        if not token:
            return ids


def _search(client: Any, ids: list[str], query: str) -> list[Any]:
    """Every run matching ``query`` (all pages), most recently finished first."""
    if not ids:
        return []
    out, token = [], None
    while True:
        page = client.search_runs(
            ids, query, max_results=1000, order_by=["attributes.end_time DESC"], page_token=token
        )
        out += list(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def _study_params(client: Any, ids: list[str], study_id: str) -> dict[str, str]:
    """The params of the study's latest parent run ({} when there is none)."""
    for run in _search(
        client, ids, f"{tag_clause(TAG_STUDY_ID, study_id)} and {tag_clause(TAG_STEP, STEP_STUDY)}"
    ):
        return dict(run.data.params)
    return {}


def seed_key(value: Any) -> str:
    """A training seed as compared: ``"3"`` for 3, "3" or "3.0"; "" when not recorded."""
    text = "" if value is None else str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _seed_order(seeds: set[str], primary: str) -> list[str]:
    def key(s: str) -> tuple[int, float, str]:
        try:
            return (s != primary, float(s), s)
        except ValueError:
            return (s != primary, float("inf"), s)

    return sorted(seeds, key=key)


def _classifier_runs(
    client: Any, ids: list[str], base: str, seeds: Sequence[Any] | None, out: StudyRuns
) -> None:
    """``out.by_seed`` (latest run per scenario and seed) and ``out.superseded``."""
    wanted = None if seeds is None else {seed_key(s) for s in seeds}
    for run in _search(client, ids, f"{base} and {tag_clause(TAG_STEP, STEP_CLASSIFIER)}"):
        try:
            scenario = canonical(run.data.tags.get(TAG_SCENARIO, ""))
        except ThyroaugError as exc:
            log.warning("run %s: unusable scenario tag (%s), skipped", run.info.run_id, exc)
            continue
        seed = seed_key(run.data.params.get("seed"))
        if wanted is not None and seed not in wanted:
            log.info("run %s: seed %r not among the seeds compared", run.info.run_id, seed)
            continue
        per_seed = out.by_seed.setdefault(scenario, {})
        if seed in per_seed:
            out.superseded.setdefault(scenario, []).append(run.info.run_id)
        else:
            per_seed[seed] = run


def find_runs(
    client: Any,
    study_id: str,
    experiment: str | None = None,
    expected: list[str] | None = None,
    seeds: Sequence[Any] | None = None,
) -> StudyRuns:
    """Latest finished run per scenario and training seed (and per synthesis method /
    generator) of a study.

    ``seeds``: only classifier runs with these ``seed`` params (the first is the primary seed);
    default: every seed found, the primary one being the study run's ``seed`` param when runs
    with it exist, else the smallest.
    """
    if "'" in study_id or "\\" in study_id:
        raise CompareError(f"study id {study_id!r}: quotes and backslashes are not supported")
    ids = _experiment_ids(client, experiment)
    base = f"{tag_clause(TAG_STUDY_ID, study_id)} and attributes.status = 'FINISHED'"
    out = StudyRuns()
    _classifier_runs(client, ids, base, seeds, out)
    study = _study_params(client, ids, study_id)
    seen = {seed for per_seed in out.by_seed.values() for seed in per_seed}
    first = seed_key(seeds[0]) if seeds else seed_key(study.get("seed"))
    out.primary_seed = first if first in seen else (_seed_order(seen, "")[:1] or [""])[0]
    out.seeds = _seed_order(seen, out.primary_seed)
    for scenario, per_seed in out.by_seed.items():
        out.by_seed[scenario] = {s: per_seed[s] for s in out.seeds if s in per_seed}
        out.chosen[scenario] = next(iter(out.by_seed[scenario].values()))
    recorded = study.get("scenarios")
    if expected:
        wanted, out.expected_source = expected, "the study's scenario list"
    elif recorded:
        wanted = [s for s in recorded.split(",") if s]
        out.expected_source = "the study run's scenarios param"
    else:
        wanted = list(out.chosen)
        out.expected_source = "the scenarios found (no scenario list recorded for this study)"
    wanted = list(dict.fromkeys(canonical(s) for s in wanted))
    out.missing = [s for s in wanted if s not in out.chosen]
    out.expected = wanted + sorted(s for s in out.chosen if s not in wanted)
    order = {s: i for i, s in enumerate(out.expected)}
    out.chosen = dict(sorted(out.chosen.items(), key=lambda kv: order[kv[0]]))
    out.by_seed = {s: out.by_seed[s] for s in out.chosen}
    for run in _search(client, ids, f"{base} and {tag_clause(TAG_STEP, STEP_SYNTHESIZE)}"):
        method = run.data.tags.get(TAG_METHOD, "")
        if method and method not in out.synth:
            out.synth[method] = run
    prepared = _search(client, ids, f"{base} and {tag_clause(TAG_STEP, STEP_PREPARE)}")
    out.prepare = prepared[0] if prepared else None
    for step in (fam.entry_point for fam in registry.families()):
        found = _search(client, ids, f"{base} and {tag_clause(TAG_STEP, step)}")
        if found:
            out.generators[step] = found[0]
    return out


# --------------------------------------------------------------------------------------------
# downloads
# --------------------------------------------------------------------------------------------
@contextmanager
def _quiet_mlflow_downloads() -> Iterator[None]:
    """No per-file "Downloading artifacts" bars from MLflow (restored afterwards)."""
    with scoped_env({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
        yield


def download_csvs(
    runs: dict[str, Any], artifact: str, dst: Path, what: str, progress: bool
) -> dict[str, pd.DataFrame]:
    """``artifact`` of every run as a DataFrame (one progress bar for all); failures logged."""
    out: dict[str, pd.DataFrame] = {}
    with _quiet_mlflow_downloads():
        for scenario, run in tqdm(
            runs.items(), desc=f"downloading {what}", unit="run", disable=not progress
        ):
            try:
                path = mlflow.artifacts.download_artifacts(
                    run_id=run.info.run_id, artifact_path=artifact, dst_path=str(dst / scenario)
                )
                out[scenario] = pd.read_csv(path)
            except Exception as exc:  # reported in the comparison, never fatal here
                log.warning(
                    "scenario %s (run %s): no %s (%s)", scenario, run.info.run_id, what, exc
                )
    return out


def download_grids(client: Any, synth: dict[str, Any], dst: Path) -> dict[str, dict[str, Path]]:
    """{method: {class: grid PNG}} of every synthesis run, each method in its own folder under
    ``dst`` (MLflow writes a single-file download to ``dst/<file name>``: methods sharing one
    folder overwrote each other's ``grid_DG.png``)."""
    grids: dict[str, dict[str, Path]] = {}
    with _quiet_mlflow_downloads():
        for method, run in synth.items():
            for art in client.list_artifacts(run.info.run_id, synthetic_artifact(method)):
                name = Path(art.path).stem
                if art.path.endswith(".png") and name.startswith("grid_"):
                    local = mlflow.artifacts.download_artifacts(
                        run_id=run.info.run_id, artifact_path=art.path, dst_path=str(dst / method)
                    )
                    grids.setdefault(method, {})[name.removeprefix("grid_")] = Path(local)
    return grids


def has_several_seeds(runs: StudyRuns) -> bool:
    """Whether some scenario of the study has finished runs with two or more training seeds."""
    return any(len(per_seed) > 1 for per_seed in runs.by_seed.values())


def seed_frames(
    runs: StudyRuns, preds: dict[str, pd.DataFrame], dst: Path, progress: bool
) -> tuple[dict[tuple[str, str], pd.DataFrame], dict[tuple[str, str], str]]:
    """External predictions and run ids per (scenario, seed): the chosen runs' from ``preds``
    (already downloaded), every other seed's run downloaded to ``dst``."""
    chosen_ids = {r.info.run_id for r in runs.chosen.values()}
    others = {
        f"{scenario}__s{seed}": run
        for scenario, per_seed in runs.by_seed.items()
        for seed, run in per_seed.items()
        if run.info.run_id not in chosen_ids
    }
    fetched = download_csvs(others, PREDICTIONS_ARTIFACT, dst, "other seeds' predictions", progress)
    frames, run_ids = {}, {}
    for scenario, per_seed in runs.by_seed.items():
        for seed, run in per_seed.items():
            raw = preds.get(scenario) if run.info.run_id in chosen_ids else None
            raw = raw if raw is not None else fetched.get(f"{scenario}__s{seed}")
            ext = external_rows(raw) if raw is not None else None
            if ext is not None:
                frames[(scenario, seed)] = ext
                run_ids[(scenario, seed)] = run.info.run_id
    return frames, run_ids
