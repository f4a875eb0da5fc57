"""MLflow pyfunc of a generator: the served model every family subclasses; logging, registration.

``GeneratorModel`` loads the logged ``generator`` folder (a family writes ``load_generator``),
screens and validates request rows (``label``, ``count``, ``seed``, ``mask`` and the family's
``extra_fields``; count cap and compute budget) and params (the names and types the signature
declares, then the family's ``sample_kwargs``) and formats the answer; an invalid request is an
HTTP 400 with its reason. ``log_generator`` logs a folder without an input schema and registers it
with its model card. Request and answer format, and why no schema: docs/generators.md, "Serving".
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import AnyType, Array

from thyroaug.contract import CLASSES
from thyroaug.errors import GeneratorError
from thyroaug.generators.banks import fetch_bank, reveal
from thyroaug.generators.base import MAX_DESCRIPTION, Generator, label_index
from thyroaug.generators.request_rows import (
    Request,
    count_and_seed,
    declared_type_problem,
    invalid,
    is_missing,
    kind,
    mask_array,
    request_rows,
    unknown_names,
)

log = logging.getLogger(__name__)

ARTIFACT_KEY = "generator"
REQUEST_FIELDS: tuple[str, ...] = ("label", "count", "seed", "mask")
DEFAULT_MAX_WORK = 64 * 50 * 128 * 128
"""Default compute budget per request: images x steps x pixels of 64 images, 50 steps, 128 px."""
TYPE_HINT_WARNING = "Add type hints to the `predict` method"
"""Start of the UserWarning MLflow 3 raises for a ``predict`` without type hints."""


def _screened(predict: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a ``predict``: ``screen_request`` runs on the raw request first, and an unexpected
    error becomes a 500 without stack trace or paths (MLflow would send its traceback; the
    server log keeps it)."""

    @functools.wraps(predict)
    def screened(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        try:
            if getattr(self, "generator", None) is not None:
                model_input = self.screen_request(model_input, params)
            return predict(self, context, model_input, params)
        except MlflowException:
            raise
        except Exception as exc:
            log.exception("generator request failed")
            raise MlflowException(
                f"the generator failed on this request ({type(exc).__name__}); the server log "
                "has the details"
            ) from exc

    screened._screens_requests = True  # type: ignore[attr-defined]
    return screened


@contextmanager
def _without_type_hint_warning() -> Iterator[None]:
    """Drop MLflow's "Add type hints to the `predict` method" UserWarning; pass on all others.

    ``predict`` is unannotated on purpose (docs/generators.md, "Logging without an input
    schema"); MLflow's own ``simplefilter("once")`` defeats a plain filter, so the block's
    warnings are recorded and all but that one shown again.
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
    """Base pyfunc for thyroaug generators: count cap, compute budget, seeds, masks, output format.

    Args:
        max_count: most images one ``predict`` call may return (sum over rows).
        max_work: compute budget per request, ``images x steps x S x S`` (default
            ``DEFAULT_MAX_WORK``: 64 images x 50 steps x 128 x 128).

    Attributes:
        extra_fields: request fields a family reads besides ``REQUEST_FIELDS`` (class attribute).
        param_types: request params the model accepts, name -> MLflow type (``"long"``,
            ``"double"``, ``"string"``, ``"boolean"``): a family may declare them in its class,
            ``log_generator`` records those of the logged signature; None (a model logged before
            they were recorded) leaves names and types to the HTTP guard, which reads the
            signature.
    """

    extra_fields: tuple[str, ...] = ()
    param_types: Mapping[str, str] | None = None
    bank_family: str = ""
    """Family name of the condition bank (``generators.banks``); "" if the family has none."""
    max_work: int = DEFAULT_MAX_WORK  # class default: also for models pickled before it existed
    reveal_sources: bool = False  # operator opt-in (model_config), never per request

    def __init__(self, max_count: int = 64, max_work: int | None = None) -> None:
        if int(max_count) < 1:
            raise GeneratorError(f"max_count={max_count} must be >= 1")
        if max_work is not None and int(max_work) < 1:
            raise GeneratorError(f"max_work={max_work} must be >= 1")
        self.max_count = int(max_count)
        if max_work is not None:
            self.max_work = int(max_work)
        self.generator: Generator | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("predict")
        if own is not None and not getattr(own, "_screens_requests", False):
            cls.predict = _screened(own)  # type: ignore[method-assign]

    # --- to override -----------------------------------------------------------------------------
    def load_generator(self, folder: Path, device: str, bank: Any = None) -> Generator:
        """Build the generator from the logged artifact folder (subclasses implement); families
        with a ``bank_family`` also get the condition bank (``None``: one embedded in the folder,
        if any)."""
        raise NotImplementedError

    def read_bank(self, folder: Path) -> Any:
        """Read the family's condition bank files from ``folder`` (families with a bank)."""
        raise NotImplementedError

    def sample_kwargs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validated keyword arguments for ``Generator.sample`` from request params."""
        return {}

    def default_steps(self) -> int:
        """Steps of a request without ``params.steps`` (for the compute budget): the generator's
        ``describe()`` ``default_steps`` / ``num_inference_steps`` / ``steps``, else 1."""
        described = self.generator.describe() if self.generator is not None else {}
        for key in ("default_steps", "num_inference_steps", "steps"):
            value = described.get(key)
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
                return int(value)
        return 1

    # --- pyfunc ----------------------------------------------------------------------------------
    def load_context(self, context: Any) -> None:
        """Load the generator from ``context.artifacts["generator"]`` (CUDA if available).

        The condition bank comes from ``model_config["condition_bank"]`` (the training run's
        artifact, fetched with the loader's own credentials; ``"none"`` skips it), see
        ``generators.banks``. ``model_config["reveal_sources"]`` lets answers carry source ids and
        bank prompts. Operators override both with ``model_config=`` at load or the
        ``MLFLOW_PYFUNC_INFERENCE_CONFIG`` environment variable.
        """
        device = "cuda" if torch.cuda.is_available() else "cpu"
        config = dict(getattr(context, "model_config", None) or {})
        self.reveal_sources = reveal(config)
        folder = Path(context.artifacts[ARTIFACT_KEY])
        if not self.bank_family:  # a family without a bank keeps the two-argument hook
            self.generator = self.load_generator(folder, device)
            return
        bank = fetch_bank(
            str(config.get("condition_bank") or "none"),
            self.read_bank,
            family=self.bank_family,
            cohort_hash=str(config.get("cohort_hash") or ""),
        )
        self.generator = self.load_generator(folder, device, bank)

    def public_sources(self, sources: Sequence[Any]) -> list[str]:
        """The answer's ``source_id``: ``request`` where the caller gave the condition; a bank
        case id only when the operator opted in (``reveal_sources``), else ""."""
        return [str(s) if str(s) == "request" or self.reveal_sources else "" for s in sources]

    def screen_request(self, model_input: Any, params: Mapping[str, Any] | None) -> list[dict]:
        """Checks before any work: rows readable, count / seed valid, at most ``max_count``
        images and ``max_work`` compute; returns the rows as plain dicts.

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE (HTTP 400) naming what to change.
        """
        rows = request_rows(model_input)
        total = sum(count_and_seed(rec, r)[0] for r, rec in enumerate(rows))
        if total > self.max_count:
            raise invalid(
                f"the request asks for {total} images; at most {self.max_count} per request "
                "(split it into several)"
            )
        kwargs = self.check_params(params)
        self.check_budget(total, kwargs)
        return rows

    def check_params(
        self, params: Any, declared: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Request params checked before any work: known names, values of the declared type
        (finite numbers), then the family's ranges (``sample_kwargs``). Null means the default.

        Args:
            params: the request's ``params`` (None: none given).
            declared: name -> MLflow type of the params the model's signature declares (default
                ``param_types``; None: names and types are not checked here).

        Returns:
            ``sample_kwargs(params)``.

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE (HTTP 400) naming the param, its kind and
                what is allowed (a misspelled name with a did-you-mean hint).
        """
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise invalid(f"params must be a JSON object of name: value pairs, not {kind(params)}")
        declared = self.param_types if declared is None else declared
        if declared is not None:
            unknown = {str(name): "" for name in params if name not in declared}
            if unknown:
                raise invalid(unknown_names("param", unknown, list(declared)))
        problems = [
            problem
            for name, value in params.items()
            if (problem := declared_type_problem(name, value, (declared or {}).get(name, "")))
        ]
        try:
            kwargs = self.sample_kwargs(params)
        except (TypeError, ValueError, ArithmeticError) as exc:  # a family trusting the type
            if problems:
                raise invalid(problems[0]) from exc
            raise
        if problems:
            raise invalid(problems[0])
        return kwargs

    def check_budget(self, count: int, kwargs: Mapping[str, Any]) -> None:
        """Refuse ``count`` images whose ``count x steps x S x S`` exceeds ``max_work``."""
        steps = kwargs.get("steps")
        steps = int(steps) if isinstance(steps, (int, np.integer)) else self.default_steps()
        size = max(1, int(getattr(self.generator, "image_size", 1) or 1))
        per_image = max(1, steps) * size * size
        work = count * per_image
        if work <= self.max_work:
            return
        fit = self.max_work // per_image
        how = (
            f"split it into requests of at most {fit} image(s) each"
            if fit >= 1
            else f"lower params.steps to at most {max(1, self.max_work // (size * size))}"
        )
        raise invalid(
            f"the request needs {count} image(s) x {steps} steps x {size}x{size} px = {work:,} "
            f"pixel-steps, over this server's budget of {self.max_work:,} per request; {how}"
        )

    @_screened
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
            raise invalid("give a mask on every row or on none (mixed requests: split them)")
        mask_tensor = None
        if all(given) and masks:
            mask_tensor = torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))
        try:
            out = self.generator.sample(labels, seeds, mask_tensor, **kwargs)
        except GeneratorError as exc:
            raise invalid(str(exc)) from exc
        images = out.images.float().cpu().numpy()[:, 0]
        source = self.public_sources(out.columns.get("source_id", [""] * len(labels)))
        return pd.DataFrame(
            {
                "request": [r for r, _ in rows],
                "index": [j for _, j in rows],
                "label": [CLASSES[i] for i in labels],
                "seed": np.asarray(seeds, dtype=np.int64),
                "source_id": [str(s) for s in source],
                "image": list(images.astype(np.float32)),
            }
        )

    def check_fields(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Refuse fields outside ``REQUEST_FIELDS + extra_fields``, all of them in one message."""
        allowed = (*REQUEST_FIELDS, *self.extra_fields)
        unknown: dict[str, str] = {}
        for r, rec in enumerate(records):
            for name in rec:
                if name not in allowed:
                    unknown.setdefault(name, f"row {r}")
        if unknown:
            raise invalid(unknown_names("field", unknown, allowed))

    def parse_requests(self, model_input: Any) -> list[Request]:
        """Validate the request rows; MlflowException (400) naming the row and field if bad."""
        records = request_rows(model_input)
        if not records:
            raise invalid("empty request: give at least one row with a label")
        self.check_fields(records)
        size = int(getattr(self.generator, "image_size", 0))
        requests, total = [], 0
        for r, rec in enumerate(records):
            if is_missing(rec.get("label")):
                raise invalid(f"row {r}: label is required (one of {', '.join(CLASSES)})")
            try:
                label = label_index(rec["label"])
            except GeneratorError as exc:
                raise invalid(f"row {r}: {exc}") from exc
            count, seed = count_and_seed(rec, r)
            mask = mask_array(rec.get("mask"), r, size)
            total += count
            if total > self.max_count:
                raise invalid(
                    f"the request asks for {total} or more images; at most {self.max_count} per "
                    "request (split it into several)"
                )
            requests.append(Request(label=label, count=count, seed=seed, mask=mask))
        return requests


# ----------------------------------------------------------------------------------------------
# Logging and registration
# ----------------------------------------------------------------------------------------------
def request_signature(params: list[tuple[str, str, Any]] | None = None) -> Any:
    """The shared input/output signature (plus optional ``(name, type, default)`` params).

    The input schema documents the request; ``log_generator`` logs the model without it and
    records its column names as ``request_fields`` metadata instead.
    """
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
    model_config: dict[str, Any] | None = None,
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
        model_config: load-time settings (``generators.banks.bank_config``: where the condition
            bank is, never the bank itself).

    Returns:
        Where the model went: its URI and, when registered, name, version and alias.

    Raises:
        GeneratorError: an alias without a registered name.
    """
    if alias and not registered_name:
        raise GeneratorError("an alias needs a registered model name (pass --register)")
    if input_example is None:
        input_example = pd.DataFrame([{"label": CLASSES[0], "count": 1, "seed": 0}])
    served, fields = _served_signature(
        signature if signature is not None else request_signature(params)
    )
    python_model.param_types = _declared_params(served)
    limits = {"max_count": python_model.max_count, "max_work": python_model.max_work}
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=python_model,
        artifacts={ARTIFACT_KEY: str(folder)},
        signature=served,
        input_example=input_example,
        pip_requirements=requirements or pip_requirements(),
        metadata={**(metadata or {}), "request_fields": ",".join(fields), **limits},
        registered_model_name=registered_name,
        model_config=model_config,
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


def _served_signature(signature: Any) -> tuple[Any, list[str]]:
    """``signature`` without its input schema, and the request columns that schema named.

    Without an input schema the raw rows reach ``GeneratorModel``, which refuses unknown fields
    (MLflow's scoring server would drop them silently); outputs and params are kept.
    """
    inputs = getattr(signature, "inputs", None)
    fields = list(inputs.input_names()) if inputs is not None and inputs.has_input_names() else []
    if signature.outputs is None and signature.params is None:
        return None, fields
    return ModelSignature(inputs=None, outputs=signature.outputs, params=signature.params), fields


def _declared_params(signature: Any) -> dict[str, str]:
    """Name -> MLflow type of the params ``signature`` declares (a list param: ``"<type>[]"``)."""
    schema = getattr(signature, "params", None)
    if schema is None:
        return {}
    return {p.name: p.dtype.name + ("[]" if p.shape else "") for p in schema.params}


def _describe(client: Any, name: str, version: str, card: str) -> None:
    """Set the version's and the registered model's description (what the MLflow UI shows)."""
    note = (
        f"\n_This describes version {version}, the latest registered; every version's own "
        "description describes that version._\n"
    )
    client.update_model_version(name, version, description=card[:MAX_DESCRIPTION])
    client.update_registered_model(name, description=card[: MAX_DESCRIPTION - len(note)] + note)
