"""MLflow pyfunc of the Stable Diffusion generator (registered as ``thyroaug-sd``).

``SDGeneratorModel`` extends ``pyfunc_base.GeneratorModel`` with the request fields ``mode``
(SD1..SD4, required), ``prompt`` and ``image``, and the params ``steps``, ``guidance_scale`` and
``strength``; the answer adds ``mode``, ``prompt`` and ``retries``. The logged artifact
(``generator-sd``) is the saved diffusers directory, without its source bank. Request format:
docs/generators.md, "Serving".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import Array

from thyroaug import CLASSES
from thyroaug.errors import GeneratorError, PromptError
from thyroaug.generators.banks import EMBEDDED_WARNING, bank_config, embedded_files
from thyroaug.generators.base import Generator, model_card
from thyroaug.generators.pyfunc_base import (
    GeneratorModel,
    LoggedGenerator,
    log_generator,
    pip_requirements,
    request_signature,
)
from thyroaug.generators.request_rows import (
    Request,
    invalid,
    is_missing,
    param_int,
    param_number,
    square,
)
from thyroaug.generators.stable_diffusion.checkpoint import read_card
from thyroaug.generators.stable_diffusion.config import MODE_DESCRIPTIONS, MODES
from thyroaug.generators.stable_diffusion.pipeline import MAX_STEPS, SDGenerator
from thyroaug.generators.stable_diffusion.sources import SOURCES_TABLE, SOURCES_TENSORS, SourceBank

SD_REGISTERED_NAME = "thyroaug-sd"
SD_MODEL_NAME = "generator-sd"
SD_FIELDS: tuple[str, ...] = ("mode", "prompt", "image")
MAX_GUIDANCE = 50.0


@dataclass
class SDRequest:
    """One validated SD request row: the shared fields plus mode, prompt and image."""

    base: Request
    mode: str
    prompt: str | None = None
    image: np.ndarray | None = None


def _records(model_input: Any) -> list[dict[str, Any]]:
    """Request rows as dicts (DataFrame, list of dicts, one dict, or a dict of columns)."""
    if isinstance(model_input, pd.DataFrame):
        return model_input.to_dict("records")
    if isinstance(model_input, Mapping):
        if "label" in model_input and not isinstance(model_input["label"], (list, tuple)):
            return [dict(model_input)]
        try:
            return pd.DataFrame(dict(model_input)).to_dict("records")
        except ValueError as exc:
            raise invalid(f"cannot read the request as rows: {exc}") from exc
    if isinstance(model_input, (list, tuple)) and all(isinstance(r, Mapping) for r in model_input):
        return [dict(r) for r in model_input]
    raise invalid(
        "request must be rows with fields label, mode[, prompt, image, mask, count, seed], e.g. "
        '{"inputs": [{"label": "DG", "mode": "SD2", "prompt": "...", "count": 2, "seed": 0}]}'
    )


class SDGeneratorModel(GeneratorModel):
    """Pyfunc of the Stable Diffusion generator: SD request fields and params.

    Args:
        max_count: most images one ``predict`` call may return (SD is slow: default 16).
    """

    extra_fields = SD_FIELDS
    bank_family = "sd"
    param_types = MappingProxyType(
        {"steps": "long", "guidance_scale": "double", "strength": "double"}
    )

    def __init__(self, max_count: int = 16) -> None:
        super().__init__(max_count=max_count)

    def load_generator(self, folder: Path, device: str, bank: Any = None) -> Generator:
        """The diffusers directory as an ``SDGenerator`` drawing from ``bank`` (default: one
        embedded in the directory, if any)."""
        return SDGenerator(folder, bank=bank, device=device)

    def read_bank(self, folder: Path) -> Any:
        """The source bank (``SourceBank``) written by ``banks.write_bank``."""
        return SourceBank.load(folder)

    def sample_kwargs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``steps`` (1..1000), ``guidance_scale`` (0..50), ``strength`` (0 < s <= 1)."""
        kwargs = {
            "steps": param_int(params, "steps", 1, MAX_STEPS),
            "guidance_scale": param_number(params, "guidance_scale", 0.0, MAX_GUIDANCE),
            "strength": param_number(params, "strength", 0.0, 1.0, low_open=True),
        }
        return {name: value for name, value in kwargs.items() if value is not None}

    def parse_requests(self, model_input: Any) -> list[SDRequest]:  # type: ignore[override]
        """Validate rows: the shared fields via ``GeneratorModel``, then mode / prompt / image."""
        records = _records(model_input)
        stripped = [{k: v for k, v in rec.items() if k not in SD_FIELDS} for rec in records]
        base = super().parse_requests(stripped)
        size = int(getattr(self.generator, "image_size", 0))
        out = []
        for r, (rec, req) in enumerate(zip(records, base)):
            mode = rec.get("mode")
            if is_missing(mode) or not isinstance(mode, str) or mode.strip().upper() not in MODES:
                raise invalid(f"row {r}: mode={mode!r}; choose one of {', '.join(MODES)}")
            mode = mode.strip().upper()
            prompt = rec.get("prompt")
            prompt = None if is_missing(prompt) else prompt
            if prompt is not None:
                if not isinstance(prompt, str):
                    raise invalid(f"row {r}: prompt must be text, got {type(prompt).__name__}")
                if mode == "SD3":
                    raise invalid(f"row {r}: SD3 (image -> image) uses the empty prompt; drop it")
                try:
                    self.generator.check_prompts([prompt], [f"row {r}"])  # type: ignore[union-attr]
                except PromptError as exc:
                    raise invalid(str(exc)) from exc
            raw = rec.get("image")
            image = None
            if raw is not None and not (isinstance(raw, float) and math.isnan(raw)):
                if mode not in ("SD1", "SD3"):
                    raise invalid(f"row {r}: image is used by SD1 and SD3 only, not {mode}")
                image = square(raw, "image", r, size)
                if image.min() < 0 or image.max() > 1:
                    raise invalid(f"row {r}: image values must be in [0, 1] (the cohort's range)")
            if req.mask is not None and mode != "SD4":
                raise invalid(f"row {r}: mask is used by SD4 only, not {mode}")
            out.append(SDRequest(base=req, mode=mode, prompt=prompt, image=image))
        return out

    def check_bank_strength(self, requests: list[SDRequest], kwargs: Mapping[str, Any]) -> None:
        """Refuse a ``strength`` below the model's default where the start comes from the bank.

        Near 0, img2img returns the training case itself; the caller's own image / mask, or the
        operator's ``reveal_sources``, lifts the floor.

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE (HTTP 400).
        """
        floor = float(getattr(getattr(self.generator, "cfg", None), "strength", 0.0) or 0.0)
        strength = kwargs.get("strength")
        if self.reveal_sources or strength is None or strength >= floor:
            return
        for r, req in enumerate(requests):
            own = req.image is not None if req.mode in ("SD1", "SD3") else req.base.mask is not None
            if req.mode != "SD2" and not own:
                raise invalid(
                    f"row {r}: params.strength={strength} is below this model's {floor} while the "
                    f"{req.mode} start comes from a training case (a low strength returns that "
                    "case); give your own image / mask, or use strength >= the default"
                )

    def check_denoising(self, requests: list[SDRequest], kwargs: Mapping[str, Any]) -> None:
        """Refuse rows whose mode, steps and strength run no denoising step, or more steps than
        the scheduler has (``SDGenerator.denoising_steps``), before any row is generated.

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE (HTTP 400) naming the row.
        """
        steps, strength = kwargs.get("steps"), kwargs.get("strength")
        for r, req in enumerate(requests):
            try:
                self.generator.denoising_steps(req.mode, steps, strength)  # type: ignore[union-attr]
            except GeneratorError as exc:
                raise invalid(f"row {r}: {exc}") from exc

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """Images for the requested rows (one ``SDGenerator.sample`` call per row).

        (No type hints, as the base class: MLflow would otherwise try to derive a schema.)

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE (HTTP 400) for any invalid request.
        """
        if self.generator is None:
            raise MlflowException("generator not loaded (load the model with mlflow.pyfunc)")
        requests = self.parse_requests(model_input)
        kwargs = self.sample_kwargs(params or {})
        self.check_bank_strength(requests, kwargs)
        self.check_denoising(requests, kwargs)
        frames = []
        for r, req in enumerate(requests):
            n = req.base.count
            labels = [req.base.label] * n
            seeds = [req.base.seed + j for j in range(n)]
            extra: dict[str, Any] = {}
            if req.prompt is not None:
                extra["prompts"] = [req.prompt] * n
            if req.image is not None:
                extra["images"] = torch.from_numpy(req.image.astype(np.float32))[None, None].repeat(
                    n, 1, 1, 1
                )
            masks = None
            if req.base.mask is not None:
                m = torch.from_numpy((req.base.mask > 0.5).astype(np.float32))
                masks = m[None, None].repeat(n, 1, 1, 1)
            try:
                out = self.generator.sample(labels, seeds, masks, mode=req.mode, **extra, **kwargs)
            except (GeneratorError, PromptError) as exc:
                raise invalid(f"row {r}: {exc}") from exc
            images = out.images.float().cpu().numpy()[:, 0].astype(np.float32)
            sources = self.public_sources(out.columns.get("source_id", [""] * n))
            prompts = [
                str(p) if (req.prompt is not None or self.reveal_sources) else ""
                for p in out.columns.get("prompt", [""] * n)
            ]
            frames.append(
                pd.DataFrame(
                    {
                        "request": r,
                        "index": np.arange(n),
                        "label": CLASSES[req.base.label],
                        "seed": seeds,
                        "source_id": sources,
                        "image": list(images),
                        "mode": req.mode,
                        "prompt": prompts,
                        "retries": [int(x) for x in out.columns.get("retries", [0] * n)],
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)


def sd_signature(params: list[tuple[str, str, Any]] | None = None) -> Any:
    """The shared generator signature extended with the SD fields (inputs and outputs)."""
    shared = request_signature(params)
    inputs = Schema(
        [
            *shared.inputs.inputs,
            ColSpec("string", "mode"),
            ColSpec("string", "prompt", required=False),
            ColSpec(Array(Array("double")), "image", required=False),
        ]
    )
    outputs = Schema(
        [
            *shared.outputs.inputs,
            ColSpec("string", "mode"),
            ColSpec("string", "prompt"),
            ColSpec("long", "retries"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=shared.params)


def _source_cases(card: Mapping[str, Any], model_dir: Path) -> int | None:
    """Number of training cases in the source bank: the card's ``train_cases``, else the rows of
    an embedded ``sources.csv`` (older models; ids are not read out)."""
    if card.get("train_cases") is not None:
        return int(card["train_cases"])
    path = model_dir / SOURCES_TABLE
    if not path.is_file():
        return None
    with path.open("rb") as fh:
        return max(0, sum(1 for _ in fh) - 1)


def sd_card(card: Mapping[str, Any], model_dir: str | Path) -> str:
    """The registry description of a saved SD directory, from its ``thyroaug_sd.json``."""
    cfg = card.get("config") or {}
    base = Path(str(card.get("base_model") or "")).name or "none (trained from scratch)"
    modes = "; ".join(f"{m}: {d}" for m, d in MODE_DESCRIPTIONS.items())
    cases = _source_cases(card, Path(model_dir))
    embedded = bool(embedded_files(model_dir, (SOURCES_TENSORS, SOURCES_TABLE)))
    warning = None
    if embedded:
        warning = EMBEDDED_WARNING.format(
            cases=cases if cases is not None else "?",
            what="images, masks, case ids and report-derived prompts",
            cohort=card.get("cohort_hash", "?"),
        )
    where = (
        "EMBEDDED in this model (--embed-sources)"
        if embedded
        else "kept with the training run (artifact condition_bank/), not in this model"
    )
    return model_card(
        "thyroaug Stable Diffusion generator (SD1-SD4)",
        method="SD1-SD4 (Stable Diffusion fine-tuned with report-derived prompts)",
        profile=str(cfg.get("profile", "")),
        content_hash=str(card.get("cohort_hash", "")),
        train_cases=cases,
        metrics={
            "final training loss": card.get("final_loss"),
            "optimizer steps": card.get("train_steps"),
        },
        details=[
            f"source: {card.get('source', 'unknown')} (base model: {base}); text encoder: "
            f"{card.get('text_encoder_training', 'unknown')}; EMA weights: {card.get('ema')}",
            f"resolution: {card.get('resolution')} px (cohort images "
            f"{card.get('cohort_image_size')} px)",
            f"sampling defaults: {cfg.get('num_inference_steps')} steps, guidance "
            f"{cfg.get('guidance_scale')}, strength {cfg.get('strength')}",
            f"modes: {modes}",
            f"source bank (the training cases SD1/SD3/SD4 start from when a request gives none): "
            f"{where}",
        ],
        warning=warning,
    )


def log_sd_generator(
    model_dir: str | Path,
    *,
    registered_name: str | None = None,
    alias: str | None = None,
    max_count: int = 16,
    bank_uri: str | None = None,
) -> LoggedGenerator:
    """Log (and optionally register + alias) a saved SD directory in the active run.

    The model is logged as ``generator-sd``; a registered version (and the registered model) get
    ``sd_card`` as their description.

    Args:
        model_dir: the ``model/`` folder written by ``train_sd``.
        registered_name: e.g. ``thyroaug-sd``.
        alias: e.g. ``champion`` (needs ``registered_name``).
        max_count: the served count cap.
        bank_uri: where the source bank was logged (``banks.log_bank``), for ``model_config``.
    """
    card = read_card(model_dir)
    cfg = card.get("config", {})
    tags = {
        "method": "SD",
        "source": str(card.get("source", "")),
        "profile": str(cfg.get("profile", "")),
        "resolution": str(card.get("resolution", "")),
        "image_size": str(card.get("cohort_image_size", "")),
        "content_hash": str(card.get("cohort_hash", "")),
        "embedded_sources": str(bool(embedded_files(model_dir, (SOURCES_TENSORS,)))).lower(),
    }
    defaults = {
        "steps": int(cfg.get("num_inference_steps", 50)),
        "guidance_scale": float(cfg.get("guidance_scale", 7.5)),
        "strength": float(cfg.get("strength", 0.8)),
    }
    params = [(n, t, defaults[n]) for n, t in SDGeneratorModel.param_types.items()]
    example = pd.DataFrame(
        [{"label": CLASSES[0], "mode": "SD2", "count": 1, "seed": 0}],
    )
    return log_generator(
        SDGeneratorModel(max_count=max_count),
        model_dir,
        name=SD_MODEL_NAME,
        card=sd_card(card, model_dir),
        registered_name=registered_name,
        alias=alias,
        params=params,
        requirements=pip_requirements("diffusers", "transformers", "tokenizers", "accelerate"),
        metadata={"thyroaug_generator": "sd", **tags},
        tags=tags,
        signature=sd_signature(params),
        input_example=example,
        model_config=bank_config(bank_uri, tags["content_hash"]),
    )
