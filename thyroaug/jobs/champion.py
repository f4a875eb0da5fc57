"""Synthetic sets a scenario needs, found (or made) without the user naming them.

For a generator method (``FM``, ``SD2``...) with no ``--synthetic`` given: the newest FINISHED
``synthesize`` run of the family's registered ``@champion`` version made for this cohort (tags
``generator.name``, ``generator.version``, ``cohort.content_hash``), in any experiment; if there is
none, a synthesize step is run now from the champion (a nested run of the current one); if no
champion is registered, the error names the exact `mlflow run` command that trains one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from thyroaug.contract import (
    CHAMPION,
    STEP_SYNTHESIZE,
    TAG_COHORT_HASH,
    TAG_GENERATOR_NAME,
    TAG_GENERATOR_VERSION,
    TAG_METHOD,
    TAG_STEP,
    synthetic_artifact,
)
from thyroaug.errors import ScenarioError
from thyroaug.generators import registry
from thyroaug.jobs.commands import run_command
from thyroaug.tracking.runs import tag_clause
from thyroaug.utils.env import scoped_env

log = logging.getLogger(__name__)


def champion_version(family: registry.GeneratorFamily, profile: str) -> str:
    """The registered version behind ``@champion``.

    Raises:
        ScenarioError: none registered; the message gives the command that trains one.
    """

    try:
        return str(
            MlflowClient().get_model_version_by_alias(family.registered_name, CHAMPION).version
        )
    except Exception:  # the registry raises several types for a missing model / alias
        raise ScenarioError(
            f"no {family.registered_name}@{CHAMPION} is registered in "
            f"{_tracking_uri()}; train one with `mlflow run . -e {family.entry_point} "
            f"-P profile={profile}` (registers and aliases it), then run this again"
        ) from None


def _tracking_uri() -> str:

    return mlflow.get_tracking_uri()


def newest_set(method: str, name: str, version: str, cohort_hash: str) -> str | None:
    """``runs:/<id>/synthetic/<METHOD>`` of the newest matching finished synthesize run."""

    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        ids,
        " and ".join(
            [
                tag_clause(TAG_STEP, STEP_SYNTHESIZE),
                tag_clause(TAG_METHOD, method),
                tag_clause(TAG_GENERATOR_NAME, name),
                tag_clause(TAG_GENERATOR_VERSION, version),
                tag_clause(TAG_COHORT_HASH, cohort_hash),
                "attributes.status = 'FINISHED'",
            ]
        ),
        max_results=1,
        order_by=["attributes.end_time DESC"],
    )
    return f"runs:/{runs[0].info.run_id}/{synthetic_artifact(method)}" if runs else None


@contextmanager
def _nested_env() -> Iterator[None]:
    """Run a step as a child of the current `mlflow run` run (same experiment), not continuing it.

    The child must land in the experiment of the run `mlflow run` made (Default unless
    ``--experiment-name``), and MLflow's active experiment is restored afterwards, or the parent
    run could not be continued.
    """

    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        yield
        return
    client = MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    env = {
        "MLFLOW_EXPERIMENT_NAME": client.get_experiment(experiment_id).name,
        "MLFLOW_PARENT_RUN_ID": run_id,
        "MLFLOW_RUN_ID": None,
    }
    try:
        with scoped_env(env):
            yield
    finally:
        mlflow.set_experiment(experiment_id=experiment_id)


def resolve_generator_sets(
    methods: Sequence[str], cohort: Path, cohort_hash: str, profile: str, per_class: int, seed: int
) -> dict[str, str]:
    """{method: set reference} for every method, found or synthesized now from the champion."""

    out: dict[str, str] = {}
    for method in methods:
        fam = registry.family_of(method)
        version = champion_version(fam, profile)
        ref = newest_set(method, fam.registered_name, version, cohort_hash)
        if ref is None:
            log.info(
                "no %s set of %s v%s for this cohort: synthesizing it now",
                method,
                fam.registered_name,
                version,
            )
            argv = ["synthesize", "--generator", fam.champion_uri(), *fam.mode_args(method)]
            argv += ["--per-class", str(per_class), "--cohort", str(cohort), "--seed", str(seed)]
            with _nested_env():
                run_command(argv)
            ref = newest_set(method, fam.registered_name, version, cohort_hash)
            if ref is None:
                raise ScenarioError(
                    f"synthesizing {method} from {fam.champion_uri()} left no set for cohort "
                    f"{cohort_hash}: the champion was trained on another cohort; retrain it "
                    f"with `mlflow run . -e {fam.entry_point} -P profile={profile}`"
                )
        log.info("synthetic set %s: %s", method, ref)
        out[method] = ref
    return out
