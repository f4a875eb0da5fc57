"""Model cards in the registry (log_generator + the FM / SD cards) and no type-hint warning."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from thyroaug.contract import CLASSES
from thyroaug.generators.base import (
    INTENDED_USE,
    GeneratedBatch,
    Generator,
    label_index,
    model_card,
)
from thyroaug.generators.flow_matching.pyfunc import fm_card
from thyroaug.generators.pyfunc_base import TYPE_HINT_WARNING, GeneratorModel, log_generator
from thyroaug.generators.stable_diffusion.pyfunc import sd_card

HASH = "0123456789abcdef0123456789abcdef"
CASE_IDS = ["ADG000", "BNG001", "P0007"]  # what a careless card could leak


class ConstantGenerator:
    """Every image is its class's constant level (a stand-in generator)."""

    def __init__(self, levels: torch.Tensor, size: int = 8) -> None:
        self.levels = levels
        self.image_size = size

    def method(self, mode: str | None = None) -> str:
        return "CONST"

    def describe(self) -> dict:
        return {"image_size": self.image_size}

    def sample(self, labels, seeds, masks=None, **kwargs) -> GeneratedBatch:
        level = self.levels[[label_index(lab) for lab in labels]]
        images = level[:, None, None, None].expand(-1, 1, self.image_size, self.image_size)
        return GeneratedBatch(images.clone(), {"source_id": [""] * len(labels)})


class ConstantModel(GeneratorModel):
    """A minimal family pyfunc; it overrides ``predict`` (unannotated) as SD's does."""

    def load_generator(self, folder: Path, device: str) -> Generator:
        return ConstantGenerator(load_file(str(folder / "levels.safetensors"))["levels"])

    def predict(self, context, model_input, params=None):
        return super().predict(context, model_input, params)


def _card() -> str:
    return model_card(
        "thyroaug constant test generator",
        method="CONST",
        profile="smoke",
        content_hash=HASH,
        train_cases=12,
        metrics={"final training loss": 0.25, "epochs": 1, "absent": None},
        details=["image size: 8 px"],
    )


def _assert_card(text: str) -> None:
    assert HASH in text and "`smoke`" in text and "training cases: 12" in text
    assert INTENDED_USE in text and "synthetic images are not for diagnosis" in text
    assert "**Must not be used for:** diagnosis" in text
    assert "final training loss: 0.25" in text and "absent" not in text
    for case in CASE_IDS:
        assert case not in text


@pytest.fixture
def registered(tracking_home: Path):
    folder = tracking_home / "const-generator"
    folder.mkdir()
    save_file(
        {"levels": torch.linspace(0.2, 0.8, len(CLASSES))}, str(folder / "levels.safetensors")
    )
    mlflow.set_experiment("cards")
    with mlflow.start_run():
        logged = log_generator(
            ConstantModel(max_count=4),
            folder,
            name="generator-const",
            card=_card(),
            registered_name="thyroaug-const",
            alias="champion",
            tags={"content_hash": HASH},
        )
    return logged


def test_registered_model_and_version_carry_the_card(registered) -> None:
    client = mlflow.MlflowClient()
    version = client.get_model_version("thyroaug-const", registered.version)
    _assert_card(version.description)
    model = client.get_registered_model("thyroaug-const")
    _assert_card(model.description)
    assert f"version {registered.version}, the latest registered" in model.description
    logged = client.get_logged_model(registered.model_uri.removeprefix("models:/"))
    assert logged.name == "generator-const"
    out = mlflow.pyfunc.load_model(registered.registry_uri).predict(
        pd.DataFrame([{"label": "NG", "count": 2, "seed": 0}])
    )
    assert list(out["label"]) == ["NG", "NG"]


def test_loading_a_generator_emits_no_type_hint_warning(registered, tracking_home) -> None:
    """In a fresh process, as `mlflow models serve` or `synthesize` load a registered model."""
    here = Path(__file__).resolve().parent
    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "import mlflow, pandas as pd\n"
        f"m = mlflow.pyfunc.load_model({registered.registry_uri!r})\n"
        "print('rows', len(m.predict(pd.DataFrame([{'label': 'DG'}]))))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(here), str(here.parent), str(here.parents[1])]),
        "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rows 1" in done.stdout
    assert TYPE_HINT_WARNING not in done.stderr, done.stderr[-3000:]


def test_subclass_predict_without_hints_is_silent_other_warnings_pass() -> None:
    warnings.onceregistry.clear()  # MLflow shows the warning "once" per process
    with warnings.catch_warnings(record=True) as plain:
        warnings.simplefilter("always")

        class Plain(mlflow.pyfunc.PythonModel):  # the control: MLflow warns
            def predict(self, context, model_input, params=None):
                return model_input

    assert any(TYPE_HINT_WARNING in str(w.message) for w in plain)
    warnings.onceregistry.clear()
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")

        class Family(GeneratorModel):
            def predict(self, context, model_input, params=None):
                return model_input

            def __init_subclass__(cls, **kwargs) -> None:
                warnings.warn("another warning", UserWarning, stacklevel=2)
                super().__init_subclass__(**kwargs)

        class Child(Family):
            def predict(self, context, model_input, params=None):
                return model_input

    messages = [str(w.message) for w in ours]
    assert not any(TYPE_HINT_WARNING in m for m in messages)
    assert "another warning" in messages  # other warnings still reach the user


def test_fm_and_sd_cards_from_their_saved_settings(tmp_path: Path) -> None:
    fm = fm_card(
        {
            "profile": "quick",
            "conditioning": "class+mask",
            "image_size": 64,
            "solver": "euler",
            "steps": 10,
        },
        {
            "content_hash": HASH,
            "train_cases": 531,
            "final_loss": 0.1234567,
            "epochs_done": 8,
            "train_masks": 500,
            "mlflow_run_id": "abc",
        },
    )
    assert HASH in fm and "`quick`" in fm and "training cases: 531" in fm
    assert "final training loss: 0.1235" in fm and "epochs: 8" in fm and "ControlNet" in fm
    assert INTENDED_USE in fm and "Must not be used for" in fm
    model_dir = tmp_path / "sd"
    model_dir.mkdir()
    pd.DataFrame({"case_id": CASE_IDS, "label": ["DG", "NG", "TI"]}).to_csv(
        model_dir / "sources.csv", index=False
    )
    card = {
        "source": "scratch",
        "base_model": "/home/someone/weights/stable-diffusion-v1-4",
        "resolution": 64,
        "train_steps": 40,
        "ema": True,
        "text_encoder_training": "full",
        "cohort_hash": HASH,
        "cohort_image_size": 64,
        "final_loss": 0.5,
        "config": {
            "profile": "smoke",
            "num_inference_steps": 5,
            "guidance_scale": 7.5,
            "strength": 0.8,
        },
    }
    sd = sd_card(card, model_dir)
    assert HASH in sd and "`smoke`" in sd and "training cases: 3" in sd
    assert "final training loss: 0.5" in sd and "optimizer steps: 40" in sd
    assert "stable-diffusion-v1-4" in sd and "/home/someone" not in sd
    assert INTENDED_USE in sd and "Must not be used for" in sd
    for text in (fm, sd):
        assert len(text) < 5000
        for case in CASE_IDS:
            assert case not in text
