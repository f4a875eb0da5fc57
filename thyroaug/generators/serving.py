"""MLflow pyfunc wrappers: registry entries and `mlflow models serve` for the generators.

``GeneratorModel`` is the reusable base every generator family subclasses (flow matching in
``flow_matching/pyfunc.py``, Stable Diffusion in ``stable_diffusion/pyfunc.py``): it loads a
generator folder logged as the artifact ``generator`` (``load_generator`` is the one method a
subclass writes), validates requests and formats the answer. Request (one row per request, as
``{"inputs": [...]}`` / ``dataframe_records`` or a pandas DataFrame in Python):

  ``label``  class name (DG / NG / NL / TI) or index, required;
  ``count``  images for this row (default 1); all rows together at most ``max_count``;
  ``seed``   integer >= 0 (default 0); image j of the row uses seed + j, so a row with
             (seed=s+j, count=1) reproduces it;
  ``mask``   optional S x S nested list (> 0.5 = thyroid) for mask-conditioned generators.

Params (``{"params": {...}}``): subclass-specific sampling settings (``sample_kwargs`` hook).
Answer: a DataFrame (JSON records when served) with ``request`` (row number), ``index`` (j),
``label``, ``seed``, ``source_id`` (case id of the mask drawn, ``request`` for a given mask) and
``image`` (S x S float32 array in [0, 1]). Invalid requests raise ``MlflowException`` with
``INVALID_PARAMETER_VALUE``, which the scoring server returns as HTTP 400 with the message.

Over JSON, send the same fields on every row (``null`` for an absent array does not pass): MLflow's
schema enforcement converts each column before ``predict`` sees it, so a column that is present
on some rows only can be refused by MLflow with its own message rather than ours.

Serving needs the ``thyroaug`` package importable in the serving environment
(``--env-manager local`` from this project's virtualenv).

``log_generator`` logs a generator folder (one logged model per family, named e.g.
``generator-fm``) and, when it registers it, writes the family's model card (``model_card``: the
cohort's content hash and training-case count - never patient ids, pixels or report text -,
profile, training metrics, intended use and what it must not be used for) as the description of
the registered model and of the new version, which is what the MLflow UI shows.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from thyroaug.contract import CLASSES
from thyroaug.errors import GeneratorError
from thyroaug.generators.base import Generator, label_index

log = logging.getLogger(__name__)

ARTIFACT_KEY = "generator"
REQUEST_FIELDS: tuple[str, ...] = ("label", "count", "seed", "mask")
TYPE_HINT_WARNING = "Add type hints to the `predict` method"
"""Start of the UserWarning MLflow 3 raises for a ``predict`` without type hints."""


def _invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


@dataclass
class Request:
    """One validated request row."""

    label: int
    count: int
    seed: int
    mask: np.ndarray | None = None


def _missing(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, float) and math.isnan(value)


def _as_int(value: Any, name: str, row: int, minimum: int) -> int:
    if isinstance(value, bool):
        raise _invalid(f"row {row}: {name}={value!r} must be an integer")
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if not isinstance(value, (int, np.integer)):
        raise _invalid(f"row {row}: {name}={value!r} must be an integer")
    if int(value) < minimum or int(value) >= 2**63:
        raise _invalid(f"row {row}: {name}={int(value)} must be >= {minimum}")
    return int(value)


@contextmanager
def _without_type_hint_warning() -> Iterator[None]:
    """Drop MLflow's "Add type hints to the `predict` method" UserWarning; pass on all others.

    MLflow warns (with raw ANSI colour codes) when a ``PythonModel`` subclass defines ``predict``
    without type hints, i.e. whenever this module is imported - on every model load in a new
    process. Ours are unannotated on purpose: with type hints MLflow validates inputs itself
    (before our 400 messages) and may derive a schema of its own. A plain
    ``warnings.filterwarnings("ignore", ...)`` does not reach that warning (MLflow checks inside
    its own ``simplefilter("once")``), so the warnings of the block are recorded, that one is
    dropped and every other one is shown as usual.
    """
    with warnings.catch_warnings(record=True) as caught:
        yield
    for item in caught:
        if TYPE_HINT_WARNING not in str(item.message):
            warnings.showwarning(
                item.message, item.category, item.filename, item.lineno, item.file, item.line
            )


class _UntypedPythonModel(mlflow.pyfunc.PythonModel):
    """A ``PythonModel`` whose subclasses may define an unannotated ``predict`` without warning."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        with _without_type_hint_warning():
            super().__init_subclass__(**kwargs)


class GeneratorModel(_UntypedPythonModel):
    """Base pyfunc for thyroaug generators: count cap, seeds, masks, output format.

    Args:
        max_count: most images one ``predict`` call may return (sum over rows).
    """

    def __init__(self, max_count: int = 64) -> None:
        if int(max_count) < 1:
            raise GeneratorError(f"max_count={max_count} must be >= 1")
        self.max_count = int(max_count)
        self.generator: Generator | None = None

    # --- to override -----------------------------------------------------------------------------
    def load_generator(self, folder: Path, device: str) -> Generator:
        """Build the generator from the logged artifact folder (subclasses implement)."""
        raise NotImplementedError

    def sample_kwargs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validated keyword arguments for ``Generator.sample`` from request params."""
        return {}

    # --- pyfunc ----------------------------------------------------------------------------------
    def load_context(self, context: Any) -> None:
        """Load the generator from ``context.artifacts["generator"]`` (CUDA if available)."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.generator = self.load_generator(Path(context.artifacts[ARTIFACT_KEY]), device)

    def predict(self, context, model_input, params=None):
        """Images for the requested rows (see the module docstring): a pandas DataFrame.

        (Left without type hints on purpose: MLflow would read them as a schema of its own.)

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE for any invalid request.
        """
        if self.generator is None:
            raise MlflowException("generator not loaded (load the model with mlflow.pyfunc)")
        requests = self.parse_requests(model_input)
        kwargs = self.sample_kwargs(params or {})
        labels, seeds, masks, rows = [], [], [], []
        for r, req in enumerate(requests):
            for j in range(req.count):
                labels.append(req.label)
                seeds.append(req.seed + j)
                masks.append(req.mask)
                rows.append((r, j))
        given = [m is not None for m in masks]
        if any(given) and not all(given):
            raise _invalid("give a mask on every row or on none (mixed requests: split them)")
        mask_tensor = None
        if all(given) and masks:
            mask_tensor = torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))
        try:
            out = self.generator.sample(labels, seeds, mask_tensor, **kwargs)
        except GeneratorError as exc:
            raise _invalid(str(exc)) from exc
        images = out.images.float().cpu().numpy()[:, 0]
        source = out.columns.get("source_id", [""] * len(labels))
        return pd.DataFrame(
            {
                "request": [r for r, _ in rows],
                "index": [j for _, j in rows],
                "label": [CLASSES[i] for i in labels],
                "seed": seeds,
                "source_id": [str(s) for s in source],
                "image": list(images.astype(np.float32)),
            }
        )

    def parse_requests(self, model_input: Any) -> list[Request]:
        """Validate the request rows; MlflowException (400) naming the row and field if bad."""
        if isinstance(model_input, Mapping):
            label = model_input.get("label")
            if "label" in model_input and not isinstance(label, (list, tuple, np.ndarray)):
                model_input = [dict(model_input)]  # one row
            else:  # columns
                try:
                    model_input = pd.DataFrame(dict(model_input)).to_dict("records")
                except ValueError as exc:
                    raise _invalid(f"cannot read the request as rows: {exc}") from exc
        if isinstance(model_input, pd.DataFrame):
            records = model_input.to_dict("records")
        elif isinstance(model_input, (list, tuple)) and all(
            isinstance(r, Mapping) for r in model_input
        ):
            records = [dict(r) for r in model_input]
        else:
            raise _invalid(
                "request must be rows with fields label, count, seed[, mask], e.g. "
                '{"inputs": [{"label": "DG", "count": 2, "seed": 0}]}'
            )
        if not records:
            raise _invalid("empty request: give at least one row with a label")
        size = int(getattr(self.generator, "image_size", 0))
        requests, total = [], 0
        for r, rec in enumerate(records):
            unknown = sorted(set(rec) - set(REQUEST_FIELDS))
            if unknown:
                raise _invalid(f"row {r}: unknown field(s) {unknown}; allowed: {REQUEST_FIELDS}")
            if _missing(rec.get("label")):
                raise _invalid(f"row {r}: label is required (one of {', '.join(CLASSES)})")
            try:
                label = label_index(rec["label"])
            except GeneratorError as exc:
                raise _invalid(f"row {r}: {exc}") from exc
            count = 1 if _missing(rec.get("count")) else _as_int(rec["count"], "count", r, 1)
            seed = 0 if _missing(rec.get("seed")) else _as_int(rec["seed"], "seed", r, 0)
            mask = None
            raw = rec.get("mask")
            if raw is not None and not (isinstance(raw, float) and math.isnan(raw)):
                try:
                    mask = np.asarray(
                        [np.asarray(row, dtype=np.float64) for row in raw], dtype=np.float64
                    )
                except (TypeError, ValueError) as exc:
                    raise _invalid(f"row {r}: mask is not a numeric S x S array ({exc})") from exc
                if mask.shape != (size, size):
                    raise _invalid(
                        f"row {r}: mask has shape {list(mask.shape)}, this generator needs "
                        f"[{size}, {size}]"
                    )
                if not np.isfinite(mask).all():
                    raise _invalid(f"row {r}: mask contains NaN or inf")
            total += count
            if total > self.max_count:
                raise _invalid(
                    f"the request asks for {sum(q.count for q in requests) + count} or more "
                    f"images; at most {self.max_count} per request (split it into several)"
                )
            requests.append(Request(label=label, count=count, seed=seed, mask=mask))
        return requests


# ----------------------------------------------------------------------------------------------
# Logging and registration
# ----------------------------------------------------------------------------------------------
def request_signature(params: list[tuple[str, str, Any]] | None = None) -> Any:
    """The shared input/output signature (plus optional ``(name, type, default)`` params)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import AnyType, Array

    inputs = Schema(
        [
            ColSpec("string", "label"),
            # count / seed are AnyType so that rows may omit them (pandas turns a missing
            # integer into NaN, which a "long" column refuses); predict checks them.
            ColSpec(AnyType(), "count", required=False),
            ColSpec(AnyType(), "seed", required=False),
            ColSpec(Array(Array("double")), "mask", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("long", "request"),
            ColSpec("long", "index"),
            ColSpec("string", "label"),
            ColSpec("long", "seed"),
            ColSpec("string", "source_id"),
            ColSpec(Array(Array("float")), "image"),
        ]
    )
    param_schema = None
    if params:
        param_schema = ParamSchema([ParamSpec(n, t, d) for n, t, d in params])
    return ModelSignature(inputs=inputs, outputs=outputs, params=param_schema)


def pip_requirements(*packages: str) -> list[str]:
    """Pinned requirements for the logged model (installed versions; no inference pass)."""
    out = []
    for name in ("mlflow", "torch", "numpy", "pandas", "safetensors", *packages):
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out


INTENDED_USE = (
    "research data augmentation for thyroid scintigraphy classifiers; synthetic images are not "
    "for diagnosis"
)
MUST_NOT = (
    "diagnosis, treatment decisions or any other clinical use; presenting its images as real "
    "patients' scans; evaluating a classifier in place of real external cases"
)
MAX_DESCRIPTION = 5000
"""Characters of a registry description MLflow's SQL stores keep."""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "unknown" if value is None or value == "" else str(value)


def model_card(
    title: str,
    *,
    method: str,
    profile: str,
    content_hash: str,
    train_cases: int | str | None,
    metrics: Mapping[str, Any] | None = None,
    details: Sequence[str] = (),
) -> str:
    """Markdown for the registry: data, profile, training metrics, intended use and limits.

    Only aggregates go in: the cohort's content hash and case count - never patient or case ids,
    pixels or report text (the caller passes nothing else).

    Args:
        title: heading, e.g. ``thyroaug flow-matching generator (FM)``.
        method: the augmentation method(s) it serves, e.g. ``FM`` or ``SD1-SD4``.
        profile: the config profile it was trained with.
        content_hash: the prepared cohort's content hash (its MLflow dataset digest).
        train_cases: number of training cases it saw.
        metrics: training metrics at registration (``None`` values are left out).
        details: further Markdown bullet texts (architecture, sampling defaults...).
    """
    lines = [
        f"# {title}",
        "",
        f"**Intended use:** {INTENDED_USE}.",
        "",
        f"**Must not be used for:** {MUST_NOT}.",
        "",
        "## Training data",
        f"- prepared cohort, content hash `{_fmt(content_hash)}` (the digest of the cohort "
        "dataset `thyroaug prepare` logs)",
        f"- training cases: {_fmt(train_cases)}",
        "- no patient or case ids, images or report text are part of this description",
        "",
        "## Training",
        f"- method: {method}; profile: `{_fmt(profile)}`",
        *(f"- {k}: {_fmt(v)}" for k, v in (metrics or {}).items() if v is not None),
        *(f"- {d}" for d in details),
    ]
    return "\n".join(lines) + "\n"


@dataclass
class LoggedGenerator:
    """Where a logged generator went."""

    model_uri: str
    registered_name: str | None = None
    version: str | None = None
    alias: str | None = None

    @property
    def registry_uri(self) -> str | None:
        """``models:/name@alias`` (or ``models:/name/version``) if registered."""
        if not self.registered_name:
            return None
        if self.alias:
            return f"models:/{self.registered_name}@{self.alias}"
        return f"models:/{self.registered_name}/{self.version}"


def log_generator(
    python_model: GeneratorModel,
    folder: str | Path,
    *,
    name: str = "generator",
    card: str | None = None,
    registered_name: str | None = None,
    alias: str | None = None,
    params: list[tuple[str, str, Any]] | None = None,
    requirements: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    signature: Any = None,
    input_example: Any = None,
) -> LoggedGenerator:
    """Log a generator folder as a pyfunc model in the active run; optionally register + alias.

    Args:
        python_model: a ``GeneratorModel`` subclass instance (small: settings only).
        folder: the generator folder (becomes the ``generator`` artifact).
        name: logged model name within the run (one per family, e.g. ``generator-fm``).
        card: model card (``model_card``); with ``registered_name`` it becomes the description
            of the registered model and of the new version.
        registered_name: register under this name (e.g. ``thyroaug-fm``).
        alias: set this alias (e.g. ``champion``) on the new version; needs ``registered_name``.
        params: inference params ``(name, type, default)`` for the signature.
        requirements: pip requirements (default: ``pip_requirements()``).
        metadata: stored in the MLmodel file.
        tags: tags set on the new registered model version.
        signature: model signature (default: ``request_signature(params)``).
        input_example: request example (default: one DG image, seed 0).
    """
    from mlflow import MlflowClient

    if alias and not registered_name:
        raise GeneratorError("an alias needs a registered model name (pass --register)")
    if input_example is None:
        input_example = pd.DataFrame([{"label": CLASSES[0], "count": 1, "seed": 0}])
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=python_model,
        artifacts={ARTIFACT_KEY: str(folder)},
        signature=signature if signature is not None else request_signature(params),
        input_example=input_example,
        pip_requirements=requirements or pip_requirements(),
        metadata=metadata,
        registered_model_name=registered_name,
    )
    out = LoggedGenerator(model_uri=info.model_uri)
    if registered_name:
        out.registered_name = registered_name
        out.version = str(info.registered_model_version)
        client = MlflowClient()
        if card:
            _describe(client, registered_name, out.version, card)
        for key, value in (tags or {}).items():
            client.set_model_version_tag(registered_name, out.version, key, str(value))
        if alias:
            client.set_registered_model_alias(registered_name, alias, out.version)
            out.alias = alias
        log.info(
            "registered %s version %s%s", registered_name, out.version, f" @{alias}" * bool(alias)
        )
    return out


def _describe(client: Any, name: str, version: str, card: str) -> None:
    """Set the version's and the registered model's description (what the MLflow UI shows)."""
    note = (
        f"\n_This describes version {version}, the latest registered; every version's own "
        "description describes that version._\n"
    )
    client.update_model_version(name, version, description=card[:MAX_DESCRIPTION])
    client.update_registered_model(name, description=card[: MAX_DESCRIPTION - len(note)] + note)
