"""`thyroaug train-sd`: train the Stable Diffusion generator in an MLflow run, optionally register.

Examples:
    thyroaug train-sd --profile quick --cohort outputs/cohort --register --alias champion
    thyroaug train-sd --profile paper --cohort outputs/cohort --base-model ~/weights/sd-v1-4
    thyroaug train-sd --profile quick --cohort outputs/cohort --resume
    accelerate launch -m thyroaug.cli train-sd --profile paper --base-model DIR   (multi-GPU)

Without ``--base-model`` (or ``THYROAUG_SD_BASE``) a compact latent diffusion model is built and
trained from scratch on the cohort (VAE, tokenizer, text encoder, UNet); with it, the UNet of that
local diffusers SD directory is fine-tuned with the authors' recipe. The run (tag
``step=train_sd``) logs the resolved config, the per-step loss, sample grids and the model as the
pyfunc ``thyroaug-sd`` (``--register``), whose artifact is the diffusers directory; the source bank
(training images, masks, prompts, case ids) is the run's artifact ``condition_bank/``, not part of
the model unless ``--embed-sources``. ``--resume`` continues the run of the newest checkpoint.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from thyroaug.config import resolve, to_dict
from thyroaug.contract import CHAMPION, TAG_METHOD, TAG_STEP, generator_workdir, train_step
from thyroaug.errors import ConfigError
from thyroaug.jobs import substitutes
from thyroaug.jobs.common import (
    add_cohort,
    add_embed_sources,
    add_experiment,
    add_profile,
    cohort_path,
    ensure_default_cohort,
)
from thyroaug.tracking.runs import describe_run, log_cohort_input, log_params_safely


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `thyroaug train-sd`."""
    from thyroaug.generators.stable_diffusion.config import SOURCES

    add_profile(parser)
    add_cohort(parser)
    parser.add_argument(
        "--base-model",
        help="local diffusers SD directory to fine-tune (e.g. SD v1.4; never downloaded)",
    )
    parser.add_argument("--source", choices=SOURCES, help="auto (default), scratch or finetune")
    parser.add_argument(
        "--output", help="checkpoints + model folder (default outputs/sd/<profile>)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--seed", type=int, help="seed (default 0)")
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
    parser.add_argument("--register", action="store_true", help="register as thyroaug-sd")
    substitutes.add_argument(parser)
    parser.add_argument(
        "--alias",
        default=CHAMPION,
        help=f"registry alias the new version gets with --register (default {CHAMPION}; "
        "'none' for no alias)",
    )
    parser.add_argument("--max-count", type=int, default=16, help="served request image cap")
    add_embed_sources(parser)
    parser.add_argument("--run-name", help="MLflow run name (default train_sd-<profile>)")
    add_experiment(parser)
    parser.add_argument("--num-threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {
        "seed": args.seed,
        "source": args.source,
        "max_train_steps": args.max_steps,
        "resolution": args.resolution,
        "learning_rate": args.lr,
        "text_encoder_training": args.text_encoder,
        "truncate_prompts": True if args.truncate_prompts else None,
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set guidance_scale=5")
        values[key.strip().replace("-", "_")] = value.strip()
    return values


def run(args: argparse.Namespace) -> int:
    """Run `thyroaug train-sd`; prints a summary, returns the exit code."""
    import mlflow
    from accelerate import PartialState

    from thyroaug.data.cohort import PreparedCohort
    from thyroaug.generators.banks import BANK_ARTIFACT, log_bank
    from thyroaug.generators.stable_diffusion.checkpoint import checkpoint_run_id
    from thyroaug.generators.stable_diffusion.config import SDConfig
    from thyroaug.generators.stable_diffusion.pyfunc import SD_REGISTERED_NAME, log_sd_generator
    from thyroaug.generators.stable_diffusion.train import train_sd
    from thyroaug.tracking.setup import configure_tracking, project_home, start_run

    alias = None if (args.alias or "none").lower() == "none" or not args.register else args.alias
    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
    cfg = resolve(SDConfig, args.profile, **_overrides(args))
    needs = ["sd_source"] if cfg.source == "auto" else []
    subs = substitutes.check(cfg.profile, needs, args.allow_substitutes, args.base_model)
    home = project_home()
    cohort_file = cohort_path(args)
    ensure_default_cohort(cohort_file, args.profile)
    cohort = PreparedCohort.load(cohort_file)
    out = Path(args.output) if args.output else home / generator_workdir("sd", cfg.profile)
    if not PartialState().is_main_process:
        # `accelerate launch`: only the main process tracks, saves and registers
        train_sd(cohort, cfg, out, base_model=args.base_model, resume=args.resume, progress=False)
        return 0
    configure_tracking(experiment=args.experiment)
    tags = {TAG_STEP: train_step("sd"), TAG_METHOD: "SD", "profile": cfg.profile}
    previous = checkpoint_run_id(out / "checkpoints") if args.resume else None
    if previous and (os.environ.get("MLFLOW_RUN_ID") or mlflow.active_run() is not None):
        previous = None  # `mlflow run` / a study made the run: log into that one
    with start_run(
        run_name=args.run_name or f"train_sd-{cfg.profile}", tags=tags, resume_run_id=previous
    ) as run:
        log_params_safely(to_dict(cfg))
        log_params_safely(
            {"cohort": str(cohort_file), "cohort_hash": cohort.content_hash, "resume": args.resume}
        )
        log_cohort_input(cohort, cohort_file)
        substitutes.tag(subs)
        result = train_sd(
            cohort,
            cfg,
            out,
            base_model=args.base_model,
            resume=args.resume,
            progress=not args.no_progress,
            embed_sources=args.embed_sources,
        )
        mlflow.set_tags(
            {"source": result.source, "text_encoder": result.card["text_encoder_training"]}
        )
        final = {"train_steps": result.train_steps, "train_seconds": result.seconds}
        if result.losses:
            tail = result.losses[-max(1, len(result.losses) // 10) :]
            final["final_loss"] = float(sum(tail) / len(tail))
        mlflow.log_metrics(final)
        mlflow.log_dict({"loss": result.losses, "vae_loss": result.vae_losses}, "loss_curve.json")
        logged = log_sd_generator(
            result.model_dir,
            registered_name=SD_REGISTERED_NAME if args.register else None,
            alias=alias,
            max_count=args.max_count,
            bank_uri=log_bank(result.model_dir.parent / BANK_ARTIFACT),
        )
        where = logged.registry_uri or logged.model_uri
        describe_run(
            f"Stable Diffusion generator ({result.source}, {cfg.profile} profile, "
            f"{cfg.resolution} px) trained {result.train_steps} steps on cohort "
            f"{cohort.content_hash}; final loss {final.get('final_loss', float('nan')):.4f}. "
            f"Modes SD1-SD4. Model: {where}."
        )
        print(
            f"SD ({result.source}, {cfg.profile}): {result.train_steps} steps in "
            f"{result.seconds:.0f} s, final loss {final.get('final_loss', float('nan')):.4f}; "
            f"model {where}; files in {result.model_dir}; run {run.info.run_id}"
        )
    return 0
