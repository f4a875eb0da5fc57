"""Arguments every command spells the same way, with one default each."""

from __future__ import annotations

import argparse
from pathlib import Path

from thyroaug.config import PROFILE_NAMES
from thyroaug.contract import DEFAULT_COHORT_DIR, EXPERIMENT
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
    """The cohort a command reads: ``--cohort`` or the default location."""
    value = getattr(args, "cohort", None)
    return Path(value).expanduser() if value else project_home() / DEFAULT_COHORT_DIR


def add_experiment(parser: argparse.ArgumentParser) -> None:
    """``--experiment`` (default: ``$MLFLOW_EXPERIMENT_NAME`` or ``thyroaug``)."""
    parser.add_argument("--experiment", help=f"MLflow experiment (default {EXPERIMENT})")
