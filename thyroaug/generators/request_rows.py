"""Reading and checking generator request rows and params (the parts every family shares).

``request_rows`` turns what MLflow hands ``predict`` (a DataFrame, rows, one row, columns) into
plain dicts; ``count_and_seed``, ``as_int``, ``square`` and ``mask_array`` check one field each,
``param_int``, ``param_number`` and ``param_choice`` one request param, ``declared_type_problem``
a param against its declared MLflow type. All raise ``MlflowException`` with
``INVALID_PARAMETER_VALUE`` (HTTP 400) naming the row or param, the value's kind and what is
allowed; ``unknown_names`` words the refusal of misspelled fields, params and keys.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
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
    """``repr(value)`` cut to ``limit`` characters (requests may carry megabytes in one field);
    a small numpy array (as MLflow makes of a JSON list) as a list, a large one by its shape."""
    if isinstance(value, np.ndarray) and value.size > 16:
        return f"<array of shape {list(value.shape)}>"
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def kind(value: Any) -> str:
    """A request value's JSON kind in words: text, a number, a boolean, a list, an object, null."""
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "a boolean"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "a list"
    return type(value).__name__


def unknown_names(what: str, unknown: Mapping[str, str], allowed: Sequence[str]) -> str:
    """The refusal of misspelled names: ``unknown <what>(s) 'x' (<where>, did you mean 'y'?);
    allowed <what>s: ...``.

    Args:
        what: ``field``, ``param`` or ``key``.
        unknown: each unknown name with where it was found ("" if nowhere in particular); the
            first 10 are named, each cut to 40 characters.
        allowed: the accepted names, in the order the message lists them.
    """
    parts = []
    for name, where in list(unknown.items())[:10]:
        close = difflib.get_close_matches(name[:100], list(allowed), n=1, cutoff=0.6)
        notes = [n for n in (where, f"did you mean {close[0]!r}?" if close else "") if n]
        parts.append(show(name) + (f" ({', '.join(notes)})" if notes else ""))
    more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
    known = f"allowed {what}s: {', '.join(allowed)}" if allowed else f"this model takes no {what}s"
    return f"unknown {what}(s) {', '.join(parts)}{more}; {known}"


def _wrong(name: str, value: Any, what: str, kind_ok: bool) -> MlflowException:
    """``params.<name>=<value> [(<kind>)] must be <what>``: the kind is said when it is wrong."""
    said = "" if kind_ok else f" ({kind(value)})"
    return invalid(f"params.{name}={show(value)}{said} must be {what}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, (float, np.floating))


def param_int(params: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    """Request param ``name`` as an integer from ``low`` to ``high``; None when absent or null
    (the model's default); 400 naming the param, its kind and the range otherwise."""
    value = params.get(name)
    if value is None:
        return None
    what = f"an integer from {low} to {high}"
    if not _is_int(value):
        raise _wrong(name, value, what, kind_ok=False)
    if not low <= int(value) <= high:
        raise _wrong(name, int(value), what, kind_ok=True)
    return int(value)


def param_number(
    params: Mapping[str, Any], name: str, low: float, high: float, *, low_open: bool = False
) -> float | None:
    """Request param ``name`` as a finite number in ``[low, high]`` (``(low, high]`` with
    ``low_open``); None when absent or null; 400 naming the param, its kind and the range."""
    value = params.get(name)
    if value is None:
        return None
    what = f"a number from {low:g} to {high:g}"
    if low_open:
        what = f"a number above {low:g} and at most {high:g}"
    if not _is_number(value):
        raise _wrong(name, value, what, kind_ok=False)
    x = float(value)
    if not (math.isfinite(x) and (x > low if low_open else x >= low) and x <= high):
        raise _wrong(name, value, what, kind_ok=True)
    return x


def param_choice(params: Mapping[str, Any], name: str, choices: Sequence[str]) -> str | None:
    """Request param ``name`` as one of ``choices``; None when absent, null or ""."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value not in choices:
        raise _wrong(name, value, f"one of {', '.join(choices)}", kind_ok=isinstance(value, str))
    return value


_TYPE_WORDS = {
    "long": "an integer",
    "integer": "an integer",
    "double": "a number",
    "float": "a number",
    "string": "text",
    "boolean": "true or false",
}


def declared_type_problem(name: str, value: Any, dtype: str) -> str | None:
    """Why request param ``name`` does not hold a value of its declared MLflow type ``dtype``
    (as strict as MLflow's own check, and numbers must be finite); None if it does, if it is
    null, or if ``dtype`` is not a scalar type checked here."""
    checks = {
        "long": _is_int,
        "integer": _is_int,
        "double": _is_number,
        "float": _is_number,
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, (bool, np.bool_)),
    }
    if value is None or dtype not in checks:
        return None
    if not checks[dtype](value):
        return f"params.{name}={show(value)} ({kind(value)}) must be {_TYPE_WORDS[dtype]}"
    if _is_number(value) and not math.isfinite(float(value)):
        return f"params.{name}={show(value)} must be a finite number"
    return None


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
