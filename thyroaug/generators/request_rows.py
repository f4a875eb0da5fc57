"""Reading and checking generator request rows (the parts every family shares).

``request_rows`` turns what MLflow hands ``predict`` (a DataFrame, rows, one row, columns) into
plain dicts; ``count_and_seed``, ``as_int``, ``square`` and ``mask_array`` check one field each and
raise ``MlflowException`` with ``INVALID_PARAMETER_VALUE`` (HTTP 400) naming the row and field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

MAX_SEED = 2**63 - 1
"""Largest request seed (and answered seed): the answer's ``seed`` column is int64."""


def invalid(message: str) -> MlflowException:
    """The exception of an invalid request (MLflow answers it with HTTP 400 and ``message``)."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def show(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters (requests may carry megabytes in one field)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Request:
    """One validated request row."""

    label: int
    count: int
    seed: int
    mask: np.ndarray | None = None


def is_missing(value: Any) -> bool:
    """Whether a request field is absent (None, or NaN as pandas fills a missing cell)."""
    if value is None:
        return True
    return isinstance(value, float) and math.isnan(value)


def as_int(value: Any, name: str, row: int, minimum: int) -> int:
    """Field ``name`` of row ``row`` as an int from ``minimum`` to 2**63 - 1; 400 otherwise."""
    if isinstance(value, bool):
        raise invalid(f"row {row}: {name}={show(value)} must be an integer")
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 40:
        value = int(value.strip())
    if not isinstance(value, (int, np.integer)):
        raise invalid(f"row {row}: {name}={show(value)} must be an integer")
    if int(value) < minimum or int(value) > MAX_SEED:
        raise invalid(
            f"row {row}: {name}={show(int(value))} must be an integer from {minimum} to 2**63 - 1"
        )
    return int(value)


def count_and_seed(rec: Mapping[str, Any], row: int) -> tuple[int, int]:
    """A row's validated (count, seed); its last seed ``seed + count - 1`` must fit int64."""
    count = 1 if is_missing(rec.get("count")) else as_int(rec["count"], "count", row, 1)
    seed = 0 if is_missing(rec.get("seed")) else as_int(rec["seed"], "seed", row, 0)
    if seed + count - 1 > MAX_SEED:
        raise invalid(
            f"row {row}: seed={seed} with count={count} would answer seeds past 2**63 - 1 (the "
            f"largest seed); use seed <= {MAX_SEED - count + 1} or split the row"
        )
    return count, seed


def _plain(value: Any) -> Any:
    """Numpy scalars and 0-d arrays (what MLflow's JSON parsing makes of values) as Python."""
    scalar = isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0)
    return value.item() if scalar else value


def _is_column(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim >= 1)


ROWS_HELP = (
    "request must be rows with fields label, count, seed[, mask], e.g. "
    '{"inputs": [{"label": "DG", "count": 2, "seed": 0}]}'
)


def request_rows(model_input: Any) -> list[dict[str, Any]]:
    """The request as a list of plain dicts: a DataFrame, a list of dicts, one dict (one row), or
    a dict of equally long columns; MlflowException (400) for anything else."""
    if isinstance(model_input, pd.DataFrame):
        records: list[Mapping[Any, Any]] = model_input.to_dict("records")
    elif isinstance(model_input, Mapping):
        values = {str(k): _plain(v) for k, v in model_input.items()}
        if "label" in values and not _is_column(values["label"]):
            records = [values]  # one row
        else:
            lengths = {len(v) for v in values.values() if _is_column(v)}
            if len(lengths) != 1 or not all(_is_column(v) for v in values.values()):
                raise invalid(
                    "cannot read the request as rows: give rows, one row, or columns of equal "
                    f"length ({ROWS_HELP})"
                )
            n = lengths.pop()
            records = [{k: v[i] for k, v in values.items()} for i in range(n)]
    elif isinstance(model_input, (list, tuple)) and all(
        isinstance(r, Mapping) for r in model_input
    ):
        records = list(model_input)
    else:
        raise invalid(ROWS_HELP)
    return [{str(k): _plain(v) for k, v in rec.items()} for rec in records]


def square(raw: Any, name: str, row: int, size: int) -> np.ndarray:
    """A row's ``name`` field as a finite S x S float array from a nested list; 400 otherwise."""
    try:
        arr = np.asarray([np.asarray(r, dtype=np.float64) for r in raw], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise invalid(f"row {row}: {name} is not a numeric S x S array ({exc})") from exc
    if arr.shape != (size, size):
        raise invalid(
            f"row {row}: {name} has shape {list(arr.shape)}, this generator needs [{size}, {size}]"
        )
    if not np.isfinite(arr).all():
        raise invalid(f"row {row}: {name} contains NaN or inf")
    return arr


def mask_array(raw: Any, row: int, size: int) -> np.ndarray | None:
    """A row's mask as a finite S x S float array (None if absent); 400 otherwise."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None
    return square(raw, "mask", row, size)
