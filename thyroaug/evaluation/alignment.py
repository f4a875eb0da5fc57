"""External predictions of several classifier runs lined up on one common list of cases.

The paired tests need every model scored on the same external cases: ``external_rows`` keeps
the usable external rows of a run's ``predictions.csv``, ``align_predictions`` orders several
runs' rows by ``case_id`` and refuses runs scored on different cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from thyroaug.contract import CLASSES
from thyroaug.errors import ThyroaugError


class CompareError(ThyroaugError):
    """The study's runs cannot be compared (none found, different external case sets, ...)."""


@dataclass
class AlignedPredictions:
    """External predictions of several runs on one common, sorted list of cases."""

    case_ids: list[str]
    y: np.ndarray  # class indices [n]
    probas: dict[str, np.ndarray]  # scenario -> [n, K]
    centers: np.ndarray | None = None  # external center of each case, when recorded


def external_rows(frame: pd.DataFrame) -> pd.DataFrame | None:
    """The external rows of a predictions.csv, or None without them or without the columns
    ``case_id``, ``split``, ``true`` and ``prob_<class>``."""
    need = ["case_id", "split", "true", *(f"prob_{c}" for c in CLASSES)]
    if any(c not in frame.columns for c in need):
        return None
    ext = frame[frame["split"].astype(str) == "external"]
    return ext if len(ext) else None


def _case_list(ids: set[str]) -> str:
    shown = sorted(ids)[:5]
    return ", ".join(shown) + (" ..." if len(ids) > 5 else "")


def align_predictions(
    frames: dict[str, pd.DataFrame], run_ids: dict[str, str] | None = None
) -> AlignedPredictions:
    """Align several runs' external predictions by ``case_id`` (cases sorted by id).

    Args:
        frames: {name: external rows of its predictions.csv (``external_rows``)}.
        run_ids: {name: run id}, only to name the runs in error messages.

    Returns:
        AlignedPredictions; each probability row is renormalised to sum to 1 (CSV rounding).

    Raises:
        CompareError: two runs' external case sets differ, a case id repeats, or the runs
            disagree on a case's true class.
    """
    run_ids = run_ids or {}
    names = list(frames)
    ref = names[0]
    ref_ids = set(frames[ref]["case_id"].astype(str))
    for name in names:
        ids = frames[name]["case_id"].astype(str)
        if ids.duplicated().any():
            dup = set(ids[ids.duplicated()])
            raise CompareError(f"{name}: external case id(s) repeat in its predictions: {dup}")
        if set(ids) != ref_ids:
            only_ref, only_this = ref_ids - set(ids), set(ids) - ref_ids
            raise CompareError(
                f"runs {ref} ({run_ids.get(ref, '?')}) and {name} ({run_ids.get(name, '?')}) "
                f"were scored on different external cases: {len(only_ref)} only in {ref} "
                f"({_case_list(only_ref)}), {len(only_this)} only in {name} "
                f"({_case_list(only_this)}); paired tests need the same cases - compare runs "
                "of one prepared cohort"
            )
    order = sorted(ref_ids)
    truth = frames[ref].set_index(frames[ref]["case_id"].astype(str))["true"].loc[order]
    probas = {}
    cols = [f"prob_{c}" for c in CLASSES]
    for name in names:
        df = frames[name].set_index(frames[name]["case_id"].astype(str)).loc[order]
        if not (df["true"].astype(str).to_numpy() == truth.astype(str).to_numpy()).all():
            raise CompareError(f"{ref} and {name} disagree on the true class of some cases")
        p = df[cols].to_numpy(dtype=np.float64)
        probas[name] = p / p.sum(axis=1, keepdims=True)  # undo CSV rounding of the row sums
    y = np.array([CLASSES.index(str(t)) for t in truth], dtype=np.int64)
    centers = None
    if "center" in frames[ref].columns:
        by_id = frames[ref].set_index(frames[ref]["case_id"].astype(str))["center"]
        centers = by_id.loc[order].astype(str).to_numpy()
    return AlignedPredictions(order, y, probas, centers)


__all__ = ["AlignedPredictions", "CompareError", "align_predictions", "external_rows"]
