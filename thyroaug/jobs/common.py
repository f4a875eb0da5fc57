"""Arguments every command spells the same way, with one default each."""

from __future__ import annotations

import argparse
from pathlib import Path

from thyroaug.config import PROFILE_NAMES
from thyroaug.contract import DEFAULT_COHORT_DIR, EXPERIMENT
from thyroaug.data.cohort import COHORT_FILE
from thyroaug.errors import ConfigError, ThyroaugError
from thyroaug.jobs.commands import run_command
from thyroaug.tracking.setup import project_home

DEFAULT_PROFILE = "quick"
"""The CPU default of every command (``paper`` is for a GPU, ``smoke`` for tests)."""


def add_profile(parser: argparse.ArgumentParser) -> None:
    """``--profile`` (paper / quick / smoke; default quick)."""
    parser.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        choices=PROFILE_NAMES,
        help=f"settings profile: paper (GPU), quick (CPU demo), smoke (tests); "
        f"default {DEFAULT_PROFILE}",
    )


def add_cohort(parser: argparse.ArgumentParser, what: str = "prepared cohort folder/file") -> None:
    """``--cohort`` (default ``$THYROAUG_HOME/outputs/cohort``)."""
    parser.add_argument("--cohort", help=f"{what} (default $THYROAUG_HOME/{DEFAULT_COHORT_DIR})")


def cohort_path(args: argparse.Namespace) -> Path:
    """The cohort a command reads: ``--cohort`` or the default location.

    A relative path is taken from ``$THYROAUG_HOME`` (default: the current folder), where the
    study and ``prepare`` write, so MLproject's ``outputs/cohort`` means the same folder wherever
    `mlflow run` starts the entry point.
    """
    value = getattr(args, "cohort", None)
    path = Path(value).expanduser() if value else Path(DEFAULT_COHORT_DIR)
    return path if path.is_absolute() else project_home() / path


def add_experiment(parser: argparse.ArgumentParser) -> None:
    """``--experiment`` (default: ``$MLFLOW_EXPERIMENT_NAME`` or ``thyroaug``)."""
    parser.add_argument("--experiment", help=f"MLflow experiment (default {EXPERIMENT})")


PHANTOM_SCALE = {"paper": 1.0, "quick": 0.25, "smoke": 0.03}
"""Phantom cohort size per profile (1 = the paper's 2954 cases)."""


def ensure_default_cohort(cohort: Path, profile: str) -> None:
    """At the default location and missing: prepare the embedded default (phantom) cohort.

    So that every entry point works with its defaults on a fresh clone (`mlflow run . -e train_fm`);
    the phantom scale follows the profile. Not logged as a run of its own (`mlflow run . -e
    prepare_data` does that). Any other missing path is the caller's error to report.
    """

    folder = project_home() / DEFAULT_COHORT_DIR
    if cohort.expanduser().resolve() != folder.resolve() or (folder / COHORT_FILE).exists():
        return
    scale = PHANTOM_SCALE[profile]
    print(f"no cohort at {folder}: preparing the default phantom cohort (scale {scale})")
    argv = ["prepare", "--phantom-scale", str(scale), "--out", str(folder)]
    try:
        run_command([*argv, "--no-mlflow", "--no-progress"])
    except ThyroaugError as exc:
        raise ConfigError(f"could not prepare the default cohort in {folder}: {exc}") from exc
