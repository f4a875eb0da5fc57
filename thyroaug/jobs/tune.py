"""`thyroaug tune`: an Optuna search over the classifier's key hyperparameters.

Each trial is a nested MLflow run under one parent ``tune`` run; trials are pruned on validation
loss (MedianPruner, reported per epoch). The Optuna storage is the tracking profile's database when
it is a SQL database (SQLite file locally, PostgreSQL on the server profile), so workers on several
machines share one study by pointing at the same storage; ``--storage`` overrides it. The best
parameters are logged as ``tune/best_params.json``; ``thyroaug train-classifier --params-from
<that file or run id>`` reuses them. ``--n-trials`` is the study's total: running the same
command again after a kill (or with a larger ``--n-trials``) tops the study up to it; trials of a
killed process end FAIL through Optuna's heartbeat.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import optuna
from optuna.trial import TrialState

from thyroaug.classifier.config import ClassifierConfig
from thyroaug.config import resolve
from thyroaug.contract import STEP_TUNE, STEP_TUNE_TRIAL, TAG_SCENARIO, TAG_STEP, TAG_TRIAL
from thyroaug.data.cohort import PreparedCohort
from thyroaug.jobs.common import add_cohort, add_profile, cohort_path
from thyroaug.jobs.train_classifier import train_and_evaluate
from thyroaug.tracking.runs import BEST_PARAMS_ARTIFACT
from thyroaug.tracking.setup import configure_tracking, resolve_uris, start_run

log = logging.getLogger(__name__)


def default_storage() -> str | None:
    """The Optuna storage URL derived from the tracking profile (None -> in memory)."""

    uri, _ = resolve_uris()
    if uri.startswith("sqlite:///"):
        return uri.replace("mlflow.db", "optuna.db") if uri.endswith("mlflow.db") else None
    if uri.startswith("postgresql"):
        return uri
    return os.environ.get("THYROAUG_OPTUNA_STORAGE")


HEARTBEAT_S = 30
"""A trial whose process stops beating for 4 x this is marked FAIL (a killed tune)."""


def _storage(url: str | None) -> Any:
    """The Optuna storage with a heartbeat, so trials of a killed tune end FAIL, not RUNNING."""

    if not url:
        return None
    with warnings.catch_warnings():  # heartbeat_interval is flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=HEARTBEAT_S, grace_period=4 * HEARTBEAT_S
        )


def _finished_trials(study: Any) -> int:
    """Trials that count toward ``--n-trials``: complete or pruned (a rerun tops up to it)."""

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def suggest(trial: Any) -> dict[str, Any]:
    """The search space: learning rate, weight decay, batch size, dropout."""
    return {
        "lr": trial.suggest_float("lr", 1e-5, 1e-3, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64]),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
    }


def _objective(
    cohort: PreparedCohort, scenario: str, profile: str, seed: int, synthetic: dict[str, str]
) -> Callable[[optuna.Trial], float]:
    """One trial: a nested classifier run with the trial's settings, pruned on val loss."""

    def objective(trial: optuna.Trial) -> float:
        cfg = resolve(ClassifierConfig, profile, seed=seed, **suggest(trial))

        def report(epoch: int, values: dict[str, float]) -> None:
            trial.report(float(values["val_loss"]), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        out = train_and_evaluate(
            cohort,
            scenario,
            cfg,
            synthetic_sets=synthetic,
            evaluate_external=False,
            log_model=False,
            run_name=f"trial-{trial.number}",
            progress=False,
            tags={TAG_STEP: STEP_TUNE_TRIAL, TAG_TRIAL: str(trial.number)},
            on_epoch=report,
        )
        return float(out["best_val_loss"])

    return objective


def tune(
    cohort_dir: str | Path,
    scenario: str = "O",
    profile: str = "smoke",
    n_trials: int = 20,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
    synthetic: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the search; returns {best_params, best_value, run_id, study_name}."""

    configure_tracking()
    cohort = PreparedCohort.load(cohort_dir)
    storage = storage or default_storage()
    study_name = study_name or f"thyroaug-{scenario}-{profile}"
    study = optuna.create_study(
        study_name=study_name,
        storage=_storage(storage),
        load_if_exists=True,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    with start_run(
        run_name=f"tune-{scenario}", tags={TAG_STEP: STEP_TUNE, TAG_SCENARIO: scenario}
    ) as parent:
        mlflow.log_params(
            {
                "scenario": scenario,
                "profile": profile,
                "n_trials": n_trials,
                "study_name": study_name,
                "storage": "sql" if storage else "memory",
            }
        )
        objective = _objective(cohort, scenario, profile, seed, synthetic or {})
        finished = _finished_trials(study)
        if finished:
            log.info("study %s already has %d finished trial(s)", study_name, finished)
        study.optimize(objective, n_trials=max(0, n_trials - finished), catch=())
        best = {
            "params": study.best_params,
            "value": study.best_value,
            "trial": study.best_trial.number,
            "study_name": study_name,
        }
        mlflow.log_dict(best, BEST_PARAMS_ARTIFACT)
        mlflow.log_metric("best_val_loss", study.best_value)
        return {
            "best_params": study.best_params,
            "best_value": study.best_value,
            "run_id": parent.info.run_id,
            "study_name": study_name,
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `thyroaug tune`."""
    add_cohort(parser)
    parser.add_argument("--scenario", default="O")
    add_profile(parser)
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default: profile DB)")
    parser.add_argument("--study-name", default=None)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """`thyroaug tune`."""
    out = tune(
        cohort_path(args),
        args.scenario,
        args.profile,
        args.n_trials,
        args.storage,
        args.study_name,
        args.seed,
    )
    print(f"best val loss {out['best_value']:.4f} with {json.dumps(out['best_params'])}")
    print(f"run {out['run_id']}: artifact {BEST_PARAMS_ARTIFACT}")
    return 0
