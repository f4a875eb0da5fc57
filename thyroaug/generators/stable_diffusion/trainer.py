"""The Stable Diffusion family's ``FamilyTrainer``: options, training, paper inputs, logging.

Examples:
    thyroaug train-sd --profile quick --register --alias champion
    thyroaug train-sd --profile paper --base-model ~/weights/sd-v1-4
    accelerate launch -m thyroaug.cli train-sd --profile paper --base-model DIR   (multi-GPU)

Without ``--base-model`` (or ``THYROAUG_SD_BASE``) a compact latent diffusion model is built and
trained from scratch on the cohort; with it, the UNet of that local diffusers SD directory is
fine-tuned with the authors' recipe (``train.train_sd``). The model is the diffusers directory
``<output>/model``, logged as ``generator-sd``; the source bank (training images, masks, prompts,
case ids) is ``<output>/condition_bank``. ``--resume`` continues the run of the newest checkpoint.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import torch

from thyroaug.config import local_weights, resolve, to_dict
from thyroaug.contract import TAG_SOURCE, TAG_TEXT_ENCODER
from thyroaug.errors import ConfigError
from thyroaug.generators.banks import BANK_ARTIFACT
from thyroaug.generators.family import FamilyTrainer, PaperInput, TrainedGenerator, TrainingJob
from thyroaug.generators.stable_diffusion.checkpoint import checkpoint_run_id
from thyroaug.generators.stable_diffusion.config import SOURCES, SDConfig
from thyroaug.generators.stable_diffusion.pyfunc import SDGeneratorModel, log_sd_generator
from thyroaug.generators.stable_diffusion.train import BASE_MODEL_ENV, train_sd

SD_MAX_COUNT = 16
"""Served image cap of an SD model unless ``--max-count`` says otherwise."""


class SDTrainer(FamilyTrainer):
    """``thyroaug train-sd``."""

    folder_logger = staticmethod(log_sd_generator)
    model_class = SDGeneratorModel

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--base-model",
            help="local diffusers SD directory to fine-tune (e.g. SD v1.4; never downloaded)",
        )
        parser.add_argument("--source", choices=SOURCES, help="auto (default), scratch, finetune")
        parser.add_argument("--max-steps", type=int, help="optimizer steps (paper 50000)")
        parser.add_argument("--resolution", type=int, help="training resolution (paper 128)")
        parser.add_argument("--lr", type=float, help="learning rate (paper 1e-5)")
        parser.add_argument(
            "--text-encoder",
            choices=("auto", "frozen", "joint"),
            help="auto: frozen when fine-tuning (authors), joint for scratch",
        )
        parser.add_argument(
            "--truncate-prompts",
            action="store_true",
            help="cut prompts over the 77-token limit (logged) instead of failing",
        )
        parser.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="any other SDConfig field, e.g. --set guidance_scale=5 (repeatable)",
        )
        parser.add_argument("--num-threads", type=int, help="torch CPU threads (default: torch's)")

    def config(self, job: TrainingJob) -> SDConfig:
        """The job's ``SDConfig``: the profile's values, then the command line's.

        Raises:
            ConfigError: a ``--set`` item that is not KEY=VALUE, or an unknown field.
        """
        opts = job.options
        values: dict[str, Any] = {
            "seed": job.seed,
            "source": getattr(opts, "source", None),
            "max_train_steps": getattr(opts, "max_steps", None),
            "resolution": getattr(opts, "resolution", None),
            "learning_rate": getattr(opts, "lr", None),
            "text_encoder_training": getattr(opts, "text_encoder", None),
            "truncate_prompts": True if getattr(opts, "truncate_prompts", False) else None,
        }
        for item in getattr(opts, "set", None) or []:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set strength=0.7")
            values[key.strip().replace("-", "_")] = value.strip()
        return resolve(SDConfig, job.profile, **values)

    def settings(self, job: TrainingJob) -> Mapping[str, Any]:
        return to_dict(self.config(job))

    def missing_paper_inputs(self, job: TrainingJob) -> list[PaperInput]:
        """SD v1.4, unless ``--source`` says otherwise or a base model is given."""
        base = getattr(job.options, "base_model", None)
        if self.config(job).source != "auto" or base:
            return []
        if local_weights(BASE_MODEL_ENV, "stable-diffusion-v1-4"):
            return []
        return [
            PaperInput(
                "sd_source",
                f"a local Stable Diffusion v1.4 directory (--base-model DIR or {BASE_MODEL_ENV})",
                "a compact latent diffusion model is trained from scratch",
            )
        ]

    def train(self, job: TrainingJob) -> TrainedGenerator:
        threads = getattr(job.options, "num_threads", None)
        if threads:
            torch.set_num_threads(threads)
        cfg = self.config(job)
        result = train_sd(
            job.cohort,
            cfg,
            job.output,
            base_model=getattr(job.options, "base_model", None),
            resume=job.resume,
            progress=job.progress and job.tracking,
            embed_sources=job.embed_sources,
        )
        metrics = {"train_steps": float(result.train_steps), "train_seconds": result.seconds}
        if result.losses:
            tail = result.losses[-max(1, len(result.losses) // 10) :]
            metrics["final_loss"] = float(sum(tail) / len(tail))
        if job.tracking:
            curves = {"loss": result.losses, "vae_loss": result.vae_losses}
            mlflow.log_dict(curves, "loss_curve.json")
        return TrainedGenerator(
            folder=result.model_dir,
            summary=(
                f"Stable Diffusion generator ({result.source}, {cfg.profile} profile, "
                f"{cfg.resolution} px) trained {result.train_steps} steps on cohort "
                f"{job.content_hash}; final loss {metrics.get('final_loss', float('nan')):.4f}. "
                "Modes SD1-SD4."
            ),
            metrics=metrics,
            bank=result.model_dir.parent / BANK_ARTIFACT,
            tags={
                TAG_SOURCE: result.source,
                TAG_TEXT_ENCODER: result.card["text_encoder_training"],
            },
            max_count=SD_MAX_COUNT,
        )

    def checkpoint_run_id(self, output: Path) -> str | None:
        return checkpoint_run_id(output / "checkpoints")
