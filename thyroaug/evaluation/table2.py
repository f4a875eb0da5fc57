"""Table 2 with an interval on every number, over one training seed or several.

- ``format_ci`` / ``table2_ci``: every Table 2 number as ``0.782 [0.70, 0.85]`` (point estimate on
  all external cases, 95 % percentile bootstrap interval over external cases).
- ``format_mean_sd`` / ``seed_table``: with several training seeds, every Table 2 number as
  ``0.782 ± 0.015 [0.70, 0.85]`` (mean ± sd over seeds, mean per-seed case interval).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from thyroaug.contract import CLASSES
from thyroaug.evaluation import metrics as M


# --------------------------------------------------------------------------------------------
def format_ci(value: float, low: float, high: float, digits: int = 3, ci_digits: int = 2) -> str:
    """``0.782 [0.70, 0.85]``; ``NA`` for a NaN value, ``0.782 [no CI]`` for a NaN interval."""
    if value is None or not np.isfinite(value):
        return "NA"
    point = f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.00"
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return f"{point} [no CI]"
    lo, hi = round(low, ci_digits) + 0.0, round(high, ci_digits) + 0.0
    return f"{point} [{lo:.{ci_digits}f}, {hi:.{ci_digits}f}]"


def table2_keys(classes: Sequence[str] = CLASSES) -> list[tuple[str, str]]:
    """(column label, metric key) of the CI table: accuracy, then Table 2's 24 columns."""
    return [("Accuracy", "accuracy")] + [
        (f"{g} {i}", key) for g, i, key in M.table2_columns(classes)
    ]


def table2_ci(
    points: Mapping[str, Mapping[str, float]],
    intervals: Mapping[str, pd.DataFrame | None],
    level: float = 0.95,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 with a confidence interval on every number.

    Args:
        points: {scenario: ``compute_metrics`` dict on all external cases}.
        intervals: {scenario: ``bootstrap.summarize`` frame (index metric, columns lower / upper)
            or None}; metrics without a row get ``[no CI]``.
        level: the intervals' coverage (for the long frame).

    Returns:
        (formatted, long): ``formatted`` has one row per scenario and string cells
        ``0.782 [0.70, 0.85]`` for accuracy and Table 2's columns; ``long`` has one row per
        (scenario, metric) with ``scenario, column, metric, value, ci_low, ci_high, level``.
    """
    keys = table2_keys()
    cells: dict[str, dict[str, str]] = {}
    rows = []
    for scenario, metrics in points.items():
        summary = intervals.get(scenario)
        cells[scenario] = {}
        for label, key in keys:
            value = float(metrics.get(key, math.nan))
            low = high = math.nan
            if summary is not None and key in summary.index:
                low, high = float(summary.loc[key, "lower"]), float(summary.loc[key, "upper"])
            cells[scenario][label] = format_ci(value, low, high)
            rows.append(
                {
                    "scenario": scenario,
                    "column": label,
                    "metric": key,
                    "value": value,
                    "ci_low": low,
                    "ci_high": high,
                    "level": level,
                }
            )
    formatted = pd.DataFrame.from_dict(cells, orient="index")
    formatted = formatted.reindex(columns=[label for label, _ in keys])
    formatted.index.name = "Method"
    return formatted, pd.DataFrame(rows)


def format_mean_sd(mean: float, sd: float, low: float, high: float, digits: int = 3) -> str:
    """``0.782 ± 0.015 [0.70, 0.85]``; ``± NA`` for one seed, ``NA`` for a NaN mean."""
    cell = format_ci(mean, low, high, digits)
    if cell == "NA":
        return cell
    spread = f"{round(sd, digits) + 0.0:.{digits}f}" if np.isfinite(sd) else "NA"
    point, _, rest = cell.partition(" ")
    return f"{point} ± {spread} {rest}"


def seed_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Table 2 over training seeds: one row per scenario, ``format_mean_sd`` cells, ``seeds``.

    Args:
        summary: one row per (scenario, metric) with ``scenario, metric, mean, sd, n_seeds,
            ci_low, ci_high`` (``thyroaug.evaluation.seeds.seed_summary``).
    """
    cells: dict[str, dict[str, str]] = {}
    for row in summary.itertuples(index=False):
        cells.setdefault(row.scenario, {"seeds": ""})
        cells[row.scenario]["seeds"] = str(max(int(row.n_seeds), 0))
        label = dict((k, lab) for lab, k in table2_keys()).get(row.metric)
        if label is not None:
            cells[row.scenario][label] = format_mean_sd(row.mean, row.sd, row.ci_low, row.ci_high)
    out = pd.DataFrame.from_dict(cells, orient="index")
    out = out.reindex(columns=["seeds", *(label for label, _ in table2_keys())])
    out.index.name = "Method"
    return out
