"""A tiny plug-in generator family used to prove the registry: the class-mean generator.

"Training" computes each class's mean training image; sampling returns that mean plus seeded
Gaussian noise. It is deliberately trivial - what it exercises is the path a real third generator
takes: a training command (``add_arguments`` / ``run``) that logs and registers a pyfunc built on
``generators.pyfunc_base.GeneratorModel``, a ``Generator`` the synthesize job samples, and one
``register_family`` call. Nothing else in the package knows it exists.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import mlflow
import torch
from safetensors.torch import load_file, save_file

from thyroaug.contract import CLASSES, TAG_STEP
from thyroaug.data.cohort import PreparedCohort
from thyroaug.generators.base import GeneratedBatch, Generator, label_index
from thyroaug.generators.pyfunc_base import GeneratorModel, log_generator
from thyroaug.generators.registry import GeneratorFamily
from thyroaug.jobs.common import add_cohort, add_experiment, add_profile, cohort_path
from thyroaug.tracking.setup import configure_tracking, start_run

METHOD = "MEAN"
FAMILY = GeneratorFamily(
    name="mean",
    methods=(METHOD,),
    train_job=__name__,
    description="train the class-mean test generator",
    pyfunc_class=f"{__name__}:MeanGeneratorModel",
)


class MeanGenerator:
    """Class mean + N(0, sigma) noise, clipped to [0, 1]; one image per (label, seed)."""

    def __init__(self, means: torch.Tensor, sigma: float = 0.05) -> None:
        self.means = means
        self.sigma = sigma
        self.image_size = int(means.shape[-1])

    def method(self, mode: str | None = None) -> str:
        return METHOD

    def describe(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "image_size": self.image_size}

    def sample(self, labels, seeds, masks=None, **kwargs: Any) -> GeneratedBatch:
        rows = []
        for label, seed in zip(labels, seeds):
            g = torch.Generator().manual_seed(int(seed))
            noise = torch.randn(self.means.shape[1:], generator=g) * self.sigma
            rows.append((self.means[label_index(label)] + noise).clamp(0, 1))
        return GeneratedBatch(torch.stack(rows), {"source_id": [""] * len(rows)})


class MeanGeneratorModel(GeneratorModel):
    """The family's pyfunc: loads ``means.safetensors`` from the logged folder."""

    def load_generator(self, folder: Path, device: str) -> Generator:
        return MeanGenerator(load_file(str(folder / "means.safetensors"))["means"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `thyroaug train-mean` (the same the study passes every family)."""
    add_profile(parser)
    add_cohort(parser)
    add_experiment(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--register", action="store_true")
    parser.add_argument("--alias")


def run(args: argparse.Namespace) -> int:
    """Compute the class means, log them as a pyfunc generator, register it."""
    cohort = PreparedCohort.load(cohort_path(args)).subset("train")
    means = torch.stack([cohort.images[cohort.labels == k].mean(0) for k in range(len(CLASSES))])
    configure_tracking(experiment=args.experiment)
    with start_run(run_name=f"train-mean-{args.profile}", tags={TAG_STEP: FAMILY.entry_point}):
        folder = Path(mlflow.get_artifact_uri().replace("file://", "")).parent / "mean-generator"
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"means": means.contiguous()}, str(folder / "means.safetensors"))
        log_generator(
            MeanGeneratorModel(),
            folder,
            name="generator-mean",
            registered_name=FAMILY.registered_name if args.register else None,
            alias=args.alias,
        )
    return 0
