"""Phantom cohort: a simulator of anterior 99mTc-pertechnetate thyroid scintigraphy for the paper's
nine centers (private data stand-in). Design and data flow: ``docs/phantom.md``.

This package file only re-exports.
"""

from thyroaug.phantom.planning import plan_cohort, planned_counts
from thyroaug.phantom.scanners import CENTERS, EXTERNAL_CENTERS, TRAINING_CENTERS
from thyroaug.phantom.simulate import PHANTOM_VERSION, simulate_case, simulate_cohort

__all__ = [
    "CENTERS",
    "EXTERNAL_CENTERS",
    "PHANTOM_VERSION",
    "TRAINING_CENTERS",
    "plan_cohort",
    "planned_counts",
    "simulate_case",
    "simulate_cohort",
]
