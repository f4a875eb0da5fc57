"""Reading things back from finished runs (artifacts other jobs hand over)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BEST_PARAMS_ARTIFACT = "tune/best_params.json"
"""Where `thyroaug tune` logs the best hyperparameters (read by ``--params-from``)."""


def load_best_params(source: str) -> dict[str, Any]:
    """Best params from a JSON file or a tune run id (its ``tune/best_params.json``)."""
    path = Path(source)
    if not path.exists():
        import mlflow

        path = Path(
            mlflow.artifacts.download_artifacts(run_id=source, artifact_path=BEST_PARAMS_ARTIFACT)
        )
    data = json.loads(path.read_text())
    return dict(data.get("params", data))
