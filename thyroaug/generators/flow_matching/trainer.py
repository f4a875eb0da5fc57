"""The flow-matching family's ``FamilyTrainer``: options, training, the generator folder, logging.

``thyroaug train-fm`` trains the velocity net (``train.train_flow_matching``), saves the EMA
generator as ``<output>/generator`` (config JSON, safetensors weights, README card), writes the
mask bank (training masks + case ids) to ``<output>/condition_bank`` and logs the model as
``generator-fm`` (``pyfunc.log_fm_generator``). Checkpoints stay in ``<output>``; ``--resume``
continues the run the checkpoint was trained in (``--epochs`` may grow).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import torch

from thyroaug.config import resolve, to_dict
from thyroaug.generators.family import FamilyTrainer, TrainedGenerator, TrainingJob
from thyroaug.generators.flow_matching.config import CONDITIONING_MODES, FMConfig
from thyroaug.generators.flow_matching.pipeline import save_generator
from thyroaug.generators.flow_matching.pyfunc import FMGeneratorModel, log_fm_generator
from thyroaug.generators.flow_matching.train import CHECKPOINT_FILE, train_flow_matching


class FMTrainer(FamilyTrainer):
    """``thyroaug train-fm``."""

    folder_logger = staticmethod(log_fm_generator)
    model_class = FMGeneratorModel

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--epochs", type=int, help="training epochs (paper 200)")
        parser.add_argument("--batch-size", type=int, help="batch size")
        parser.add_argument("--lr", type=float, help="Adam learning rate (paper 1e-4)")
        parser.add_argument(
            "--conditioning",
            choices=CONDITIONING_MODES,
            help="class+mask (paper), class, mask, none",
        )

    def config(self, job: TrainingJob) -> FMConfig:
        """The job's ``FMConfig``: the profile's values, then the command line's."""
        opts = job.options
        return resolve(
            FMConfig,
            job.profile,
            epochs=getattr(opts, "epochs", None),
            batch_size=getattr(opts, "batch_size", None),
            lr=getattr(opts, "lr", None),
            conditioning=getattr(opts, "conditioning", None),
            seed=job.seed,
            max_count=job.max_count,
        )

    def settings(self, job: TrainingJob) -> Mapping[str, Any]:
        return to_dict(self.config(job))

    def train(self, job: TrainingJob) -> TrainedGenerator:

        cfg = self.config(job)
        result = train_flow_matching(
            cfg,
            job.cohort,
            job.output,
            resume=job.resume,
            progress=job.progress and job.tracking,
            log_mlflow=job.tracking,
        )
        folder = job.output / "generator"
        if not job.tracking:  # a non-main rank: its shard is trained, nothing is written
            return TrainedGenerator(folder=folder, summary="")
        active = mlflow.active_run()
        info = {
            **result.info,
            "mlflow_run_id": active.info.run_id if active else None,
            "final_loss": result.losses[-1],
        }
        save_generator(folder, result.ema_net, result.mask_bank, info, embed_bank=job.embed_sources)
        return TrainedGenerator(
            folder=folder,
            summary=(
                f"Flow-matching generator ({cfg.profile} profile, {cfg.image_size} px, "
                f"conditioning {cfg.conditioning}) trained {result.epochs_done} epoch(s) on the "
                f"{result.info.get('train_cases', '?')} training cases of cohort "
                f"{job.content_hash}; final loss {result.losses[-1]:.4f}."
            ),
            metrics={"final_train_loss": result.losses[-1]},
            history={"train_loss": result.losses},
            bank=job.write_bank(result.mask_bank),
            max_count=cfg.max_count,
        )

    def checkpoint_run_id(self, output: Path) -> str | None:
        path = output / CHECKPOINT_FILE
        if not path.exists():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=False)
        return saved.get("info", {}).get("mlflow_run_id")
