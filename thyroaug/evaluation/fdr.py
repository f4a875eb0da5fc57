"""Benjamini-Hochberg false discovery rate control (Benjamini & Hochberg 1995).

``benjamini_hochberg`` adjusts one family of p-values (``scipy.stats.false_discovery_control``,
method ``"bh"``); ``benjamini_hochberg_within`` adjusts each family of a long table separately
(the paired tests and the seed-combined tests: one family per metric). NaN p-values (a test that
could not be run) stay NaN and do not count as tests.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from thyroaug.evaluation.metrics import MetricInputError


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values of one family.

    Args:
        p: raw p-values (any shape); NaN entries are left NaN and not counted as tests.

    Returns:
        Adjusted p-values, same shape as ``p``.

    Raises:
        MetricInputError: a finite p-value outside [0, 1].
    """
    arr = np.asarray(p, dtype=np.float64)
    out = np.full(arr.shape, np.nan)
    finite = np.isfinite(arr)
    if finite.any():
        vals = arr[finite]
        if vals.min() < 0 or vals.max() > 1:
            raise MetricInputError(
                f"p-values must lie in [0, 1], got [{vals.min():.3g}, {vals.max():.3g}]"
            )
        out[finite] = false_discovery_control(vals, method="bh")
    return out


def benjamini_hochberg_within(df: pd.DataFrame, family: str, p: str = "p") -> pd.Series:
    """Benjamini-Hochberg adjusted p-values, one correction per value of ``df[family]``.

    Args:
        df: one row per test.
        family: the column naming each row's family (e.g. ``"metric"``).
        p: the column of raw p-values.

    Returns:
        float Series aligned with ``df.index`` (NaN where ``df[p]`` is NaN).
    """
    out = pd.Series(np.nan, index=df.index, dtype=np.float64)
    for _, sub in df.groupby(family, sort=False):
        out.loc[sub.index] = benjamini_hochberg(sub[p].to_numpy(dtype=np.float64))
    return out


__all__ = ["benjamini_hochberg", "benjamini_hochberg_within"]
