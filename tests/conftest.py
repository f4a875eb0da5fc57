"""Shared fixtures: seeds, an isolated tracking home, and a tiny synthetic prepared cohort."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from thyroaug.contract import CLASSES
from thyroaug.data.cohort import PreparedCohort


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Test nets are tiny: one intra-op thread is as fast alone and avoids oversubscribing the
    2 shared cores (OpenMP threads fighting over cores slowed torch 5-10x in these tests)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _restore_umask():
    """`thyroaug.cli.main` makes its process's files private (umask 077); in-process calls
    would otherwise carry that mask into later tests."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


@pytest.fixture(autouse=True)
def _fresh_mlflow_experiment_state():
    """`mlflow.set_experiment` caches the experiment id in a global and in MLFLOW_EXPERIMENT_ID;
    a later test on another store would otherwise log into an experiment id that is not there."""
    import mlflow.tracking.fluent as fluent

    def reset() -> None:
        fluent._active_experiment_id = None
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)

    reset()
    yield
    reset()


@pytest.fixture
def tracking_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private local MLflow store (SQLite + artifacts) under tmp_path."""
    monkeypatch.setenv("THYROAUG_HOME", str(tmp_path))
    monkeypatch.setenv("THYROAUG_TRACKING", "local")
    for var in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_RUN_ID",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_PARENT_RUN_ID",
    ):
        monkeypatch.delenv(var, raising=False)
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after the test
    mlflow.set_tracking_uri(uri)
    yield tmp_path
    while mlflow.active_run() is not None:
        mlflow.end_run()


def make_tiny_cohort(
    per_class_center: int = 3, size: int = 32, seed: int = 0, centers: str = "ABCDEFGHI"
) -> PreparedCohort:
    """A small cohort of blob images whose class shows in size/intensity/texture (for fast tests).

    Splits: centers A-F -> train (every 5th case -> val), G-I -> external.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images, masks, rows = [], [], []
    for center in centers:
        for label in CLASSES:
            for k in range(per_class_center):
                radius = {"DG": 0.32, "NG": 0.28, "NL": 0.2, "TI": 0.18}[label]
                radius *= 1 + 0.1 * rng.standard_normal()
                cx, cy = 0.5 + 0.05 * rng.standard_normal(2)
                blob = ((xx - cx) ** 2 + (yy - cy) ** 2) < radius**2
                level = {"DG": 1.0, "NG": 0.7, "NL": 0.6, "TI": 0.25}[label]
                bg = {"DG": 0.02, "NG": 0.05, "NL": 0.06, "TI": 0.2}[label]
                img = bg + level * blob.astype(np.float32)
                if label == "NG":
                    img = img * (1 + 0.5 * (np.sin(xx * 20 + rng.uniform(0, 6)) > 0.6))
                img = img + 0.03 * rng.standard_normal(img.shape)
                img = np.clip(img / img.max(), 0, 1).astype(np.float32)
                images.append(img[None])
                masks.append(blob.astype(np.uint8)[None])
                n = len(rows)
                rows.append(
                    {
                        "case_id": f"{center}{label}{k:03d}",
                        "patient_id": f"P{center}{n:04d}",
                        "center": center,
                        "label": label,
                        "split": "external"
                        if center in "GHI"
                        else ("val" if n % 5 == 0 else "train"),
                        "has_mask": True,
                        "prompt": f"thyroid scan, {label.lower()} pattern",
                    }
                )
    labels = torch.tensor([CLASSES.index(r["label"]) for r in rows], dtype=torch.int64)
    return PreparedCohort(
        images=torch.from_numpy(np.stack(images)),
        masks=torch.from_numpy(np.stack(masks)),
        labels=labels,
        table=pd.DataFrame(rows),
        content_hash=f"tiny-{seed}-{size}-{per_class_center}",
        settings={"size": size, "source": "tests.conftest.make_tiny_cohort"},
    )


@pytest.fixture
def tiny_cohort() -> PreparedCohort:
    """Nine centers x four classes x three cases, 32 px."""
    return make_tiny_cohort()
