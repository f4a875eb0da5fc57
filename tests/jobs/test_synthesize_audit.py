"""`thyroaug synthesize` logs the honest fidelity metrics and the memorisation audit, and flags a
registered generator version whose set holds near-copies of training images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_tiny_cohort
from mlflow import MlflowClient

import thyroaug.jobs.synthesize as synthesize_job
from thyroaug.cli import main
from thyroaug.contract import (
    MEMORISATION_ARTIFACT_DIR,
    MEMORISATION_NEAR_COPIES,
    MEMORISATION_PASSED,
    TAG_MEMORISATION,
    TAG_MLFLOW_NOTE,
)
from thyroaug.generators.base import GeneratedBatch, GeneratorHandle

NAME = "thyroaug-stand-in"


class ImageSource:
    """A stand-in generator that hands out the images of a cohort (plus a little noise): the
    training cohort's own images make a memorising generator, another seed's a faithful one."""

    def __init__(self, cohort: Any, content_hash: str, noise: float = 0.005) -> None:
        train = cohort.subset("train") if "train" in set(cohort.table["split"]) else cohort
        self.images, self.labels = train.images.float(), train.labels
        self.content_hash, self.noise = content_hash, noise

    def method(self, mode: str | None = None) -> str:
        return "FM"

    def describe(self) -> dict[str, Any]:
        return {"content_hash": self.content_hash}

    def sample(self, labels: list[int], seeds: list[int], **kwargs: Any) -> GeneratedBatch:
        out = []
        for label, seed in zip(labels, seeds):
            rows = torch.nonzero(self.labels == label).flatten()
            g = torch.Generator().manual_seed(int(seed))
            image = self.images[rows[int(seed) % len(rows)]]
            out.append((image + self.noise * torch.randn(image.shape, generator=g)).clamp(0, 1))
        return GeneratedBatch(torch.stack(out), {"source_id": [""] * len(out)})


@pytest.fixture
def setting(tracking_home: Path, tmp_path: Path):
    """A saved tiny cohort and a registered version 1 of ``NAME`` with a model card."""
    cohort = make_tiny_cohort()
    folder = cohort.save(tmp_path / "cohort")
    client = MlflowClient()
    with mlflow.start_run() as run:
        mlflow.log_text("stand-in", "model/README.txt")
    client.create_registered_model(NAME)
    client.create_model_version(
        NAME, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, description="Model card."
    )
    return cohort, folder


def synthesize(monkeypatch, capsys, generator: ImageSource, cohort_dir: Path, *extra: str):
    handle = GeneratorHandle(generator, f"models:/{NAME}/1", "1")  # type: ignore[arg-type]
    monkeypatch.setattr(synthesize_job, "open_generator", lambda uri: handle)
    argv = ["synthesize", "--generator", handle.uri, "--per-class", "8", "--seed", "1"]
    argv += ["--cohort", str(cohort_dir), "--no-progress", "--fidelity-resamples", "20", *extra]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    return mlflow.get_run(printed.split("run id: ")[1].split()[0]), printed


def test_a_memorising_generator_is_flagged_on_the_run_and_its_version(setting, monkeypatch, capsys):
    cohort, folder = setting
    run, printed = synthesize(monkeypatch, capsys, ImageSource(cohort, cohort.content_hash), folder)
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    # honest fidelity: sizes, dimension, intervals, PRDC, the n < d flag, the KID scale
    assert metrics["n_fake_overall"] == 32 and metrics["feature_dim_resnet18-random"] == 512
    for name in ("fid", "kid"):
        low, high = (metrics[f"{name}_resnet18-random_overall_ci_{s}"] for s in ("low", "high"))
        assert low <= metrics[f"{name}_resnet18-random_overall"] <= high
    for name in ("precision", "recall", "density", "coverage", "n_below_dim"):
        assert f"{name}_resnet18-random_DG" in metrics
    assert params["fidelity_kid_scale"] == "1" and params["fidelity_resamples"] == "20"
    assert params["fidelity_extractors"] == "resnet18-random:512"
    # the audit: metrics, params, tag, description, artifacts
    assert metrics["memorisation_flagged"] == 1.0
    assert metrics["memorisation_pixel_any_near_copy_frac_overall"] == 1.0
    assert params["memorisation_reference"] == "external"
    assert tags[TAG_MEMORISATION] == MEMORISATION_NEAR_COPIES
    assert "memorisation audit: near-copies" in tags[TAG_MLFLOW_NOTE]
    assert "memorisation audit: near-copies" in printed
    files = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "memorisation")}
    assert files == {f"{MEMORISATION_ARTIFACT_DIR}/closest_pairs.{x}" for x in ("csv", "png")}
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=f"{MEMORISATION_ARTIFACT_DIR}/closest_pairs.csv"
    )
    pairs = pd.read_csv(local)
    assert set(pairs["train_case_id"]) <= set(cohort.subset("train").table["case_id"])
    assert pairs["near_copy"].all()
    # the registered version it came from: a tag and a description line, no case ids
    version = MlflowClient().get_model_version(NAME, "1")
    assert version.tags[TAG_MEMORISATION] == MEMORISATION_NEAR_COPIES
    assert version.description.startswith("Model card.")
    assert "memorisation audit: near-copies" in version.description
    assert run.info.run_id in version.description
    assert not any(case in version.description for case in cohort.table["case_id"])
    assert not any(case in str(params) + str(tags) for case in cohort.table["case_id"])


def test_a_faithful_generator_passes_and_leaves_its_version_alone(setting, monkeypatch, capsys):
    cohort, folder = setting
    fresh = make_tiny_cohort(seed=7)  # new blobs from the same simulator: no training case
    run, _ = synthesize(monkeypatch, capsys, ImageSource(fresh, cohort.content_hash), folder)
    assert run.data.tags[TAG_MEMORISATION] == MEMORISATION_PASSED
    assert run.data.metrics["memorisation_flagged"] == 0.0
    ratio = run.data.metrics["memorisation_pixel_any_median_ratio_overall"]
    assert 0.7 < ratio < 1.4 and np.isfinite(run.data.metrics["memorisation_feature_any_min_DG"])
    version = MlflowClient().get_model_version(NAME, "1")
    assert TAG_MEMORISATION not in version.tags and version.description == "Model card."


def test_the_audit_needs_the_generators_own_cohort(setting, monkeypatch, capsys):
    cohort, folder = setting
    source = ImageSource(cohort, "another-cohort")
    run, _ = synthesize(monkeypatch, capsys, source, folder, "--no-fidelity")
    assert TAG_MEMORISATION not in run.data.tags
    assert not any(k.startswith(("memorisation_", "fid_")) for k in run.data.metrics)
