"""MLflow pyfunc of the flow-matching generator (registered as ``thyroaug-fm``).

Request rows and the answer are those of ``generators.serving.GeneratorModel``; params ``solver``
(euler / midpoint / rk4 / dopri5) and ``steps`` (1..1000) choose the ODE integration. The logged
model is named ``generator-fm``; a registered version carries ``fm_card`` as its description.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from thyroaug.contract import registered_name
from thyroaug.generators.base import Generator
from thyroaug.generators.flow_matching.config import SOLVERS
from thyroaug.generators.serving import (
    GeneratorModel,
    LoggedGenerator,
    _as_int,
    _invalid,
    log_generator,
    model_card,
    pip_requirements,
)

FM_REGISTERED_NAME = registered_name("fm")
FM_MODEL_NAME = "generator-fm"


class FMGeneratorModel(GeneratorModel):
    """Pyfunc of the flow-matching generator; params ``solver`` and ``steps``."""

    def load_generator(self, folder: Path, device: str) -> Generator:
        """Load ``save_generator``'s folder."""
        from thyroaug.generators.flow_matching.pipeline import load_generator

        return load_generator(folder, device=device)

    def sample_kwargs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``solver`` in euler / midpoint / rk4 / dopri5, ``steps`` in 1..1000."""
        kwargs: dict[str, Any] = {}
        solver = params.get("solver")
        if solver not in (None, ""):
            if solver not in SOLVERS:
                raise _invalid(f"params.solver={solver!r}: choose one of {', '.join(SOLVERS)}")
            kwargs["solver"] = str(solver)
        steps = params.get("steps")
        if steps not in (None, ""):
            steps = _as_int(steps, "steps", 0, 1)
            if steps > 1000:
                raise _invalid(f"params.steps={steps}: at most 1000")
            kwargs["steps"] = steps
        return kwargs


def fm_card(config: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    """The registry description of a generator folder, from its ``config.json`` (config, info)."""
    uses_mask = "mask" in str(config.get("conditioning", ""))
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
            "(seed, class) when no mask is given",
        ],
    )


def log_fm_generator(
    folder: str | Path,
    *,
    registered_name: str | None = None,
    alias: str | None = None,
    max_count: int = 64,
) -> LoggedGenerator:
    """Log (and optionally register) a flow-matching generator folder in the active run.

    The model is logged as ``generator-fm``; a registered version (and the registered model) get
    ``fm_card`` as their description.
    """
    payload = json.loads((Path(folder) / "config.json").read_text())
    cfg = payload["config"]
    info = payload.get("info", {})
    tags = {
        "method": "FM",
        "conditioning": cfg["conditioning"],
        "profile": cfg["profile"],
        "image_size": str(cfg["image_size"]),
        "content_hash": str(info.get("content_hash", "")),
    }
    return log_generator(
        FMGeneratorModel(max_count=max_count),
        folder,
        name=FM_MODEL_NAME,
        card=fm_card(cfg, info),
        registered_name=registered_name,
        alias=alias,
        params=[("solver", "string", cfg["solver"]), ("steps", "long", int(cfg["steps"]))],
        requirements=pip_requirements("monai", "torchdiffeq", "einops"),
        metadata={"thyroaug_generator": "fm", **tags},
        tags=tags,
    )
