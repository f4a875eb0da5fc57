"""`thyroaug train-fm`: train the flow-matching generator, log it to MLflow, optionally register.

Example:
    thyroaug train-fm --profile quick --cohort outputs/cohort --register --alias champion

Checkpoints go to ``--output`` (default ``$THYROAUG_HOME/outputs/fm/<profile>``); ``--resume``
continues a killed run from its last checkpoint (same settings, ``--epochs`` may grow) inside the
same MLflow run. The trained EMA generator is saved as ``<output>/generator`` (config JSON,
safetensors weights, README card) and logged as the pyfunc model ``generator-fm`` of the run;
``--register`` registers it as ``thyroaug-fm`` and ``--alias`` points an alias at the new version.
The mask bank (training masks + case ids) is written to ``<output>/condition_bank`` and logged as
the run artifact ``condition_bank/``, not inside the model (``--embed-sources`` puts it inside).
Under ``accelerate launch`` (several GPUs) every process trains its shard; only the main process
talks to MLflow and writes files.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from thyroaug.config import resolve, to_dict
from thyroaug.contract import CHAMPION, TAG_METHOD, TAG_STEP, generator_workdir, train_step
from thyroaug.jobs.common import (
    add_cohort,
    add_embed_sources,
    add_experiment,
    add_profile,
    cohort_path,
    ensure_default_cohort,
)
from thyroaug.tracking.runs import describe_run, log_cohort_input

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `thyroaug train-fm`."""
    from thyroaug.generators.flow_matching.config import CONDITIONING_MODES

    add_profile(parser)
    add_cohort(parser)
    parser.add_argument("--output", help="checkpoints + generator folder (default outputs/fm/...)")
    parser.add_argument("--epochs", type=int, help="training epochs (paper 200)")
    parser.add_argument("--batch-size", type=int, help="batch size")
    parser.add_argument("--lr", type=float, help="Adam learning rate (paper 1e-4)")
    parser.add_argument(
        "--conditioning", choices=CONDITIONING_MODES, help="class+mask (paper), class, mask, none"
    )
    parser.add_argument("--seed", type=int, help="seed (default 0)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--register", action="store_true", help="register as thyroaug-fm")
    parser.add_argument(
        "--alias",
        default=CHAMPION,
        help=f"registry alias the new version gets with --register (default {CHAMPION}; "
        "'none' for no alias)",
    )
    parser.add_argument("--max-count", type=int, help="largest image count per served request")
    add_embed_sources(parser)
    add_experiment(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _existing_run(output: Path) -> str | None:
    """The MLflow run id a checkpoint in ``output`` was logged to, if any."""
    import torch

    from thyroaug.generators.flow_matching.train import CHECKPOINT_FILE

    path = output / CHECKPOINT_FILE
    if not path.exists():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=False)
    return saved.get("info", {}).get("mlflow_run_id")


def _log_params(cfg_dict: dict[str, Any], extra: dict[str, Any]) -> None:
    """Log params, skipping ones a resumed run already has (changed ones become a tag)."""
    import json

    import mlflow

    run = mlflow.active_run()
    have = mlflow.get_run(run.info.run_id).data.params
    params = {**cfg_dict, **extra}
    new = {k: v for k, v in params.items() if k not in have}
    changed = {k: v for k, v in params.items() if k in have and str(v) != have[k]}
    if new:
        mlflow.log_params(new)
    if changed:
        mlflow.set_tag("resumed_with", json.dumps(changed, default=str))


def _log_missing_losses(run_id: str, losses: list[float]) -> list[int]:
    """Log the epochs' ``train_loss`` the run lacks (an outage or a kill between checkpoint and
    logging skipped them); returns the epochs logged now."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient()
    have = {m.step for m in client.get_metric_history(run_id, "train_loss")}
    now = int(time.time() * 1000)
    missing = [e for e in range(1, len(losses) + 1) if e not in have]
    if missing:
        metrics = [Metric("train_loss", float(losses[e - 1]), now, e) for e in missing]
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
        log.info("logged train_loss of epoch(s) %s the run was missing", missing)
    return missing


def run(args: argparse.Namespace) -> int:
    """Train, save, log, and optionally register the generator."""
    import mlflow

    from thyroaug.data.cohort import PreparedCohort
    from thyroaug.generators.banks import BANK_ARTIFACT, log_bank, write_bank
    from thyroaug.generators.flow_matching.config import FMConfig
    from thyroaug.generators.flow_matching.pipeline import save_generator
    from thyroaug.generators.flow_matching.pyfunc import FM_REGISTERED_NAME, log_fm_generator
    from thyroaug.generators.flow_matching.train import train_flow_matching
    from thyroaug.tracking.setup import configure_tracking, project_home, start_run

    alias = None if (args.alias or "none").lower() == "none" or not args.register else args.alias
    home = project_home()
    cohort_file = cohort_path(args)
    ensure_default_cohort(cohort_file, args.profile)
    cohort = PreparedCohort.load(cohort_file)
    cfg = resolve(
        FMConfig,
        args.profile,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        conditioning=args.conditioning,
        seed=args.seed,
        max_count=args.max_count,
    )
    output = Path(args.output) if args.output else home / generator_workdir("fm", args.profile)
    import torch
    from accelerate import PartialState

    # `accelerate launch` / torchrun: every rank trains its shard; only rank 0 tracks and saves
    if not PartialState(cpu=not torch.cuda.is_available()).is_main_process:
        train_flow_matching(
            cfg, cohort, output, resume=args.resume, progress=False, log_mlflow=False
        )
        return 0
    configure_tracking(experiment=args.experiment)
    previous = _existing_run(output) if args.resume else None
    tags = {TAG_STEP: train_step("fm"), TAG_METHOD: "FM", "profile": cfg.profile}
    if previous and not os.environ.get("MLFLOW_RUN_ID") and mlflow.active_run() is None:
        log.info("resuming MLflow run %s", previous)
    else:
        previous = None
    with start_run(run_name=f"train-fm-{cfg.profile}", tags=tags, resume_run_id=previous) as active:
        run_id = active.info.run_id
        mlflow.set_tags(tags)
        _log_params(
            to_dict(cfg),
            {"cohort": str(cohort_file), "cohort_hash": cohort.content_hash, "output": str(output)},
        )
        log_cohort_input(cohort, cohort_file)
        result = train_flow_matching(
            cfg,
            cohort,
            output,
            resume=args.resume,
            progress=not args.no_progress,
        )
        info = {**result.info, "mlflow_run_id": run_id, "final_loss": result.losses[-1]}
        folder = save_generator(
            output / "generator", result.ema_net, result.mask_bank, info,
            embed_bank=args.embed_sources,
        )  # fmt: skip
        bank = write_bank(
            result.mask_bank, output / BANK_ARTIFACT, family="fm", cohort_hash=cohort.content_hash
        )
        bank_uri = log_bank(bank)
        _log_missing_losses(run_id, result.losses)
        mlflow.log_metric("final_train_loss", result.losses[-1])
        logged = log_fm_generator(
            folder,
            registered_name=FM_REGISTERED_NAME if args.register else None,
            alias=alias,
            max_count=cfg.max_count,
            bank_uri=bank_uri,
        )
        if logged.version:
            mlflow.set_tag("registered_version", logged.version)
        describe_run(
            f"Flow-matching generator ({cfg.profile} profile, {cfg.image_size} px, conditioning "
            f"{cfg.conditioning}) trained {result.epochs_done} epoch(s) on the "
            f"{result.info.get('train_cases', '?')} training cases of cohort "
            f"{cohort.content_hash}; final loss {result.losses[-1]:.4f}. Model: "
            f"{logged.registry_uri or logged.model_uri}."
        )
    print(f"run id: {run_id}")
    print(f"model URI: {logged.model_uri}")
    if logged.registry_uri:
        print(f"registered: {logged.registry_uri} (version {logged.version})")
    print(f"generator folder: {folder}")
    return 0
