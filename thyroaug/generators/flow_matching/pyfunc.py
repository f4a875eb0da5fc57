"""MLflow pyfunc of the flow-matching generator (registered as ``thyroaug-fm``).

Request rows and the answer are those of ``generators.pyfunc_base.GeneratorModel``; params
``solver`` (euler / midpoint / rk4 / dopri5) and ``steps`` (1..1000) choose the ODE integration.
The logged model is named ``generator-fm``; a registered version carries ``fm_card`` as its
description.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from thyroaug.contract import registered_name
from thyroaug.generators.banks import EMBEDDED_WARNING, bank_config, embedded_files
from thyroaug.generators.base import Generator, model_card
from thyroaug.generators.flow_matching.bank import MaskBank
from thyroaug.generators.flow_matching.config import SOLVERS
from thyroaug.generators.flow_matching.pipeline import load_generator as load_pipeline
from thyroaug.generators.pyfunc_base import (
    GeneratorModel,
    LoggedGenerator,
    log_generator,
    pip_requirements,
)
from thyroaug.generators.request_rows import param_choice, param_int

FM_REGISTERED_NAME = registered_name("fm")
FM_MODEL_NAME = "generator-fm"
MAX_STEPS = 1000


class FMGeneratorModel(GeneratorModel):
    """Pyfunc of the flow-matching generator; params ``solver`` and ``steps``."""

    bank_family = "fm"
    param_types = MappingProxyType({"solver": "string", "steps": "long"})

    def load_generator(self, folder: Path, device: str, bank: Any = None) -> Generator:
        """Load ``save_generator``'s folder with the mask bank ``bank`` (or the embedded one)."""
        return load_pipeline(folder, device=device, mask_bank=bank)

    def read_bank(self, folder: Path) -> Any:
        """The training masks (``MaskBank``) written by ``banks.write_bank``."""
        return MaskBank.load(folder)

    def sample_kwargs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``solver`` in euler / midpoint / rk4 / dopri5, ``steps`` in 1..1000."""
        solver = param_choice(params, "solver", SOLVERS)
        steps = param_int(params, "steps", 1, MAX_STEPS)
        kwargs = {"solver": solver, "steps": steps}
        return {name: value for name, value in kwargs.items() if value is not None}


def fm_card(config: Mapping[str, Any], info: Mapping[str, Any], embedded: bool = False) -> str:
    """The registry description of a generator folder.

    Args:
        config: the ``config`` of its ``config.json``.
        info: the ``info`` of its ``config.json``.
        embedded: the folder holds its mask bank (``--embed-sources``), said loudly first.
    """
    uses_mask = "mask" in str(config.get("conditioning", ""))
    where = (
        "EMBEDDED in this model (--embed-sources)"
        if embedded
        else "kept with the training run (artifact condition_bank/), not in this model"
    )
    warning = None
    if embedded:
        warning = EMBEDDED_WARNING.format(
            cases=info.get("train_masks", "?"),
            what="masks and case ids",
            cohort=info.get("content_hash", "?"),
        )
    return model_card(
        "thyroaug flow-matching generator (FM)",
        method="FM (conditional flow matching, MOTFM layout)",
        profile=str(config.get("profile", "")),
        content_hash=str(info.get("content_hash", "")),
        train_cases=info.get("train_cases"),
        metrics={
            "final training loss": info.get("final_loss"),
            "epochs": info.get("epochs_done"),
        },
        details=[
            f"conditioning: {config.get('conditioning')} (class: one-hot cross-attention"
            + ("; mask: ControlNet branch" if uses_mask else "")
            + ")",
            f"image size: {config.get('image_size')} px, intensities in [0, 1]",
            f"sampling default: {config.get('solver')}, {config.get('steps')} ODE steps "
            "(request params `solver`, `steps`), seeded per image",
            f"mask bank: {info.get('train_masks', 'unknown')} training masks, drawn per "
            f"(seed, class) when no mask is given; {where}",
        ],
        warning=warning,
    )


def log_fm_generator(
    folder: str | Path,
    *,
    registered_name: str | None = None,
    alias: str | None = None,
    max_count: int = 64,
    bank_uri: str | None = None,
) -> LoggedGenerator:
    """Log (and optionally register) a flow-matching generator folder in the active run.

    The model is logged as ``generator-fm``; a registered version (and the registered model) get
    ``fm_card`` as their description.

    Args:
        folder: the folder written by ``pipeline.save_generator``.
        registered_name: register under this name (e.g. ``thyroaug-fm``).
        alias: set this alias (e.g. ``champion``) on the new version; needs ``registered_name``.
        max_count: the served count cap.
        bank_uri: where the mask bank was logged (``banks.log_bank``), for ``model_config``.
    """
    payload = json.loads((Path(folder) / "config.json").read_text())
    cfg = payload["config"]
    info = payload.get("info", {})
    embedded = bool(embedded_files(folder, ("masks.safetensors", "masks.csv")))
    defaults = {"solver": cfg["solver"], "steps": int(cfg["steps"])}
    tags = {
        "method": "FM",
        "conditioning": cfg["conditioning"],
        "profile": cfg["profile"],
        "image_size": str(cfg["image_size"]),
        "content_hash": str(info.get("content_hash", "")),
        "embedded_sources": str(embedded).lower(),
    }
    return log_generator(
        FMGeneratorModel(max_count=max_count),
        folder,
        name=FM_MODEL_NAME,
        card=fm_card(cfg, info, embedded),
        model_config=bank_config(bank_uri, tags["content_hash"]),
        registered_name=registered_name,
        alias=alias,
        params=[(n, t, defaults[n]) for n, t in FMGeneratorModel.param_types.items()],
        requirements=pip_requirements("monai", "torchdiffeq", "einops"),
        metadata={"thyroaug_generator": "fm", **tags},
        tags=tags,
    )
