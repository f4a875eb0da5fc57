"""CSV files for people: cells a spreadsheet would run as a formula are escaped (CSV injection).

A text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (OWASP "CSV
Injection") gets a leading ``'``; numbers are left alone. Use ``to_csv_safe`` for every CSV a
person may open; files only the package reads back are written as they are. Ingest already
refuses such case ids (``thyroaug.data.manifest``): this is the second line of defence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

FORMULA_START: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet cell a formula (OWASP)."""


def needs_escape(value: Any) -> bool:
    """True for a string that a spreadsheet would read as a formula."""
    return isinstance(value, str) and value.startswith(FORMULA_START)


def escape_value(value: Any) -> Any:
    """``value`` with a leading ``'`` if it is a formula-like string, else unchanged."""
    return "'" + value if needs_escape(value) else value


def _is_text(dtype: Any) -> bool:
    return pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)


def _escape_index(index: pd.Index) -> pd.Index:
    if isinstance(index, pd.MultiIndex):
        return index.set_levels([_escape_index(level) for level in index.levels])
    if _is_text(index.dtype) and any(needs_escape(v) for v in index):
        return index.map(escape_value)
    return index


def escape_cells(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose formula-like text cells, column names and index labels get a ``'``.

    Only text is touched: numeric, boolean and datetime columns are returned as they are.
    """
    out = df.copy()
    for i in range(out.shape[1]):  # by position: column names may repeat
        series = out.iloc[:, i]
        if isinstance(series.dtype, pd.CategoricalDtype):
            text = series.astype(object)
        elif _is_text(series.dtype):
            text = series
        else:
            continue
        if text.map(needs_escape).any():
            out.isetitem(i, text.map(escape_value))
    out.columns = _escape_index(out.columns)
    out.index = _escape_index(out.index)
    return out


def to_csv_safe(df: pd.DataFrame, path: str | Path, **kwargs: Any) -> None:
    """``df.to_csv(path, **kwargs)`` after ``escape_cells``."""
    escape_cells(df).to_csv(path, **kwargs)
