"""MLflow pyfunc of the flow-matching generator (registered as ``thyroaug-fm``).

Request rows and the answer are those of ``generators.serving.GeneratorModel``; params ``solver``
(euler / midpoint / rk4 / dopri5) and ``steps`` (1..1000) choose the ODE integration.
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
    pip_requirements,
)

FM_REGISTERED_NAME = registered_name("fm")


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


def log_fm_generator(
    folder: str | Path,
    *,
    registered_name: str | None = None,
    alias: str | None = None,
    max_count: int = 64,
) -> LoggedGenerator:
    """Log (and optionally register) a flow-matching generator folder in the active run."""
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
        registered_name=registered_name,
        alias=alias,
        params=[("solver", "string", cfg["solver"]), ("steps", "long", int(cfg["steps"]))],
        requirements=pip_requirements("monai", "torchdiffeq", "einops"),
        metadata={"thyroaug_generator": "fm", **tags},
        tags=tags,
    )
