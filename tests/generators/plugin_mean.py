"""A plug-in generator family kept outside the package, written from docs/adding-a-generator.md.

``MEAN``: the per-class mean of the training images plus seeded Gaussian noise. The class means
are an aggregate of a few patients' images, so they are not saved in the model folder: the
training images are the family's condition bank (kept with the training run, like FM's masks)
and the generator averages them when it is loaded. The model folder holds settings only.

Registered by importing this module: ``THYROAUG_PLUGINS=plugin_mean`` (with this folder on
``PYTHONPATH``), in every process that needs it, `mlflow run` entry points included.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from thyroaug.contract import CLASSES
from thyroaug.generators.base import ConditionBank, GeneratedBatch, Generator, label_index
from thyroaug.generators.family import FamilyTrainer, TrainedGenerator, TrainingJob
from thyroaug.generators.pyfunc_base import GeneratorModel
from thyroaug.generators.registry import GeneratorFamily, register_family

METHOD = "MEAN"
FAMILY = GeneratorFamily(
    name="mean",
    methods=(METHOD,),
    trainer=f"{__name__}:MeanTrainer",
    description="train the class-mean test generator",
)


@dataclass
class ImageBank(ConditionBank):
    """The training images the class means are computed from (patient data: kept with the run)."""

    images: torch.Tensor
    labels: torch.Tensor
    case_ids: list[str]
    condition_name: ClassVar[str] = "training image"

    def save(self, folder: str | Path) -> None:
        tensors = {"images": self.images.contiguous(), "labels": self.labels.contiguous()}
        save_file(tensors, str(Path(folder) / "images.safetensors"))
        pd.DataFrame({"case_id": self.case_ids}).to_csv(Path(folder) / "cases.csv", index=False)

    @classmethod
    def load(cls, folder: str | Path) -> ImageBank:
        tensors = load_file(str(Path(folder) / "images.safetensors"))
        ids = pd.read_csv(Path(folder) / "cases.csv", dtype=str)["case_id"].tolist()
        return cls(tensors["images"], tensors["labels"], ids)


class MeanGenerator:
    """Class mean + N(0, sigma) noise, clipped to [0, 1]; one image per (label, seed)."""

    def __init__(self, bank: ImageBank, sigma: float, content_hash: str) -> None:
        self.means = torch.stack(
            [bank.images[bank.labels == k].float().mean(0) for k in range(len(CLASSES))]
        )
        self.sigma, self.content_hash = sigma, content_hash
        self.image_size = int(self.means.shape[-1])

    def method(self, mode: str | None = None) -> str:
        return METHOD

    def describe(self) -> dict[str, Any]:
        size, cohort = self.image_size, self.content_hash
        return {"sigma": self.sigma, "image_size": size, "content_hash": cohort}

    def sample(
        self, labels: Sequence[int], seeds: Sequence[int], masks: Any = None, **kwargs: Any
    ) -> GeneratedBatch:
        rows = []
        for label, seed in zip(labels, seeds):
            g = torch.Generator().manual_seed(int(seed))
            noise = torch.randn(self.means.shape[1:], generator=g) * self.sigma
            rows.append((self.means[label_index(label)] + noise).clamp(0, 1))
        return GeneratedBatch(torch.stack(rows), {"source_id": [""] * len(rows)})


class MeanGeneratorModel(GeneratorModel):
    """The family's pyfunc: settings from ``config.json``, class means from the bank."""

    bank_family = "mean"

    def read_bank(self, folder: Path) -> ImageBank:
        return ImageBank.load(folder)

    def load_generator(self, folder: Path, device: str, bank: Any = None) -> Generator:
        if bank is None:
            raise ValueError("the class-mean generator needs its condition bank (training images)")
        config = json.loads((Path(folder) / "config.json").read_text())
        return MeanGenerator(bank, config["sigma"], config["content_hash"])


class MeanTrainer(FamilyTrainer):
    """No training beyond writing the bank and the settings."""

    model_class = MeanGeneratorModel

    def add_arguments(self, parser) -> None:
        parser.add_argument("--sigma", type=float, default=0.05, help="noise standard deviation")

    def settings(self, job: TrainingJob) -> dict[str, Any]:
        return {"sigma": job.options.sigma}

    def train(self, job: TrainingJob) -> TrainedGenerator:
        train = job.cohort.subset("train")
        ids = train.table["case_id"].astype(str).tolist()
        bank = ImageBank(train.images.float(), train.labels.long(), ids)
        folder = job.output / "generator"
        folder.mkdir(parents=True, exist_ok=True)
        config = {"sigma": job.options.sigma, "content_hash": job.content_hash}
        (folder / "config.json").write_text(json.dumps(config))
        return TrainedGenerator(
            folder=folder,
            summary=f"Class-mean generator (sigma {job.options.sigma}) of cohort "
            f"{job.content_hash}.",
            bank=job.write_bank(bank),
            metrics={"train_cases": float(len(bank))},
        )


register_family(FAMILY)
