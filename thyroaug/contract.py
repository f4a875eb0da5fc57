"""Names every layer agrees on: scenario parts, run tags, artifact paths, registered models, dirs.

A value that two modules must spell the same way lives here and nowhere else. Generator *methods*
(FM, SD1..SD4, ...) are not listed: they come from ``thyroaug.generators.registry``.
"""

from __future__ import annotations

from pathlib import PurePosixPath

CLASSES: tuple[str, ...] = ("DG", "NG", "NL", "TI")
"""Class names in index order: diffuse goiter, nodular goiter, normal, thyroiditis."""

CLASS_NAMES: dict[str, str] = {
    "DG": "diffuse goiter",
    "NG": "nodular goiter",
    "NL": "normal",
    "TI": "thyroiditis",
}

ORIGINAL = "O"
"""Scenario part: the original training cases."""
CA = "CA"
"""Scenario part and synthetic-set method: conventional augmentation."""

EXPERIMENT = "thyroaug"
"""Default MLflow experiment of every job."""
CHAMPION = "champion"
"""Registry alias a registered generator gets unless told otherwise."""


def registered_name(family: str) -> str:
    """Registered-model name of a generator family (``fm`` -> ``thyroaug-fm``)."""
    return f"thyroaug-{family}"


# --- run tags ----------------------------------------------------------------------------------
TAG_STEP = "step"
"""What a run did: one of the ``STEP_*`` values (or ``train_step(family)``)."""
TAG_STUDY_ID = "study_id"
TAG_STUDY_STEP = "study_step"
"""The study's key of a step run (``classifier_O+FM``, ``synthesize_SD1``...)."""
TAG_CONFIG_HASH = "config_hash"
"""Hash of a study step's command line and of the steps it consumes (resume key)."""
TAG_SCENARIO = "scenario"
TAG_METHOD = "method"
TAG_PROFILE = "profile"
TAG_SEEDS = "seeds"
"""A study run's training seeds (comma-separated)."""
TAG_TRIAL = "trial"
TAG_COHORT_HASH = "cohort.content_hash"
TAG_COHORT_REUSED = "cohort.reused_cache"
TAG_CLASSIFIER_COHORT_HASH = "cohort_hash"
"""The same hash as ``TAG_COHORT_HASH``, under the name classifier runs have always carried."""
TAG_GENERATOR_NAME = "generator.name"
TAG_GENERATOR_VERSION = "generator.version"
TAG_REGISTERED_VERSION = "registered_version"
TAG_PARAMS_FROM = "params_from"
TAG_PRETRAINED = "pretrained"
TAG_SOURCE = "source"
TAG_TEXT_ENCODER = "text_encoder"
TAG_RESUMED_AFTER_EPOCH = "thyroaug.resumed_after_epoch"
TAG_RESUMED_WITH = "resumed_with"
"""JSON of the settings a resumed run was continued with where they differ from its params."""
TAG_HOST = "thyroaug.host"
"""Host and process of the run's writer: the stale-run sweep ends runs whose process is gone."""
TAG_PID = "thyroaug.pid"
TAG_ENDED_BY = "thyroaug.ended_by"
TAG_EXECUTOR_WORKER = "executor.worker"
TAG_SANITY = "sanity.flags"
"""A classifier run's sanity flags (one-class predictor, AUC below chance...), or "none"."""
TAG_ONE_CLASS = "sanity.one_class_predictor"
TAG_MISSING_SCENARIOS = "missing_scenarios"
TAG_NOT_TESTED = "not_tested"
DEVIATION_TAG_PREFIX = "deviation."
# MLflow's own reserved tags (``mlflow.utils.mlflow_tags``), spelled here so that importing the
# contract does not import MLflow
TAG_MLFLOW_PARENT_RUN = "mlflow.parentRunId"
TAG_MLFLOW_RUN_NAME = "mlflow.runName"
TAG_MLFLOW_NOTE = "mlflow.note.content"


def deviation_tag(key: str) -> str:
    """Run tag of a recorded deviation from the paper (``deviation.<key>``)."""
    return f"{DEVIATION_TAG_PREFIX}{key}"


STEP_PREPARE = "prepare_data"
STEP_SYNTHESIZE = "synthesize"
STEP_CLASSIFIER = "train_classifier"
STEP_COMPARE = "compare"
STEP_STUDY = "study"
STEP_TUNE = "tune"
STEP_TUNE_TRIAL = "tune_trial"


def train_step(family: str) -> str:
    """Step tag of a generator family's training run (``fm`` -> ``train_fm``)."""
    return f"train_{family}"


# --- artifact paths (inside a run) -------------------------------------------------------------
SYNTHETIC_DIR = "synthetic"
BOOTSTRAP_ARTIFACT = "bootstrap/bootstrap.csv"
PREDICTIONS_ARTIFACT = "predictions/predictions.csv"
GRADCAM_ARTIFACT = "gradcam/cams.npz"
"""Grad-CAM maps of a classifier run's fixed external cases (``evaluation.gradcam.CamSet``)."""


def synthetic_artifact(method: str) -> str:
    """Artifact path of a synthesize run's set: ``synthetic/<METHOD>``."""
    return str(PurePosixPath(SYNTHETIC_DIR) / method)


# --- default folders (relative to THYROAUG_HOME, the project folder by default) -------------------
OUTPUTS_DIR = "outputs"
DEFAULT_COHORT_DIR = "outputs/cohort"


def generator_workdir(family: str, profile: str) -> str:
    """Default checkpoint + generator folder of a family's training (``outputs/fm/quick``)."""
    return f"{OUTPUTS_DIR}/{family}/{profile}"


# --- memorisation audit of a synthetic set (docs/memorisation.md) -----------------------------
TAG_MEMORISATION = "memorisation_audit"
"""Outcome of the memorisation audit: on a synthesize run ``MEMORISATION_NEAR_COPIES`` or
``MEMORISATION_PASSED``; on the registered generator version a flagged set came from,
``MEMORISATION_NEAR_COPIES`` (a clean set leaves the version as it is)."""
MEMORISATION_NEAR_COPIES = "near-copies"
MEMORISATION_PASSED = "passed"
MEMORISATION_ARTIFACT_DIR = "memorisation"
"""Run artifacts of the audit: ``closest_pairs.csv`` and ``closest_pairs.png`` (training images
and case ids: patient data, kept as run artifacts only)."""


# --- sets of runs that did not finish ---------------------------------------------------------
TAG_UNFINISHED_SETS = "thyroaug.unfinished_sets"
"""Synthetic sets a classifier run used with --allow-unfinished-set, each with why its creating
run is not known to have finished ("FM: run <id> is KILLED, not FINISHED"; ``; ``-joined)."""
