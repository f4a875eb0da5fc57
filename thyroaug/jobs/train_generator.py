"""`thyroaug train-<family>`: train any registered generator family in a tracked run.

Example:
    thyroaug train-fm --profile quick --register --alias champion
    thyroaug train-sd --profile quick --resume

One command for every family (``generators.family`` is the contract): it prepares the default
phantom cohort when the default one is missing, refuses the paper profile without the paper's
pretrained inputs unless ``--allow-substitutes``, opens the run (tags ``step=train_<family>``,
``method``, ``profile``; ``--resume`` continues the run of the family's checkpoint), logs the
cohort as a dataset input and the family's settings as params, trains, checks the saved generator
(``family.check_trained``), logs the condition bank as the run artifact ``condition_bank/`` and
the model as ``generator-<family>``, and with ``--register`` registers it as
``thyroaug-<family>`` with ``--alias``. Under ``accelerate launch`` every process trains its shard
and only the main process tracks and writes.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import mlflow
import torch
from accelerate import PartialState

from thyroaug.classifier.config import ClassifierConfig
from thyroaug.config import resolve
from thyroaug.contract import (
    TAG_METHOD,
    TAG_PROFILE,
    TAG_REGISTERED_VERSION,
    TAG_RESUMED_WITH,
    TAG_STEP,
    generator_workdir,
)
from thyroaug.generators.banks import log_bank
from thyroaug.generators.family import (
    FamilyTrainer,
    TrainingJob,
    add_training_arguments,
    check_family,
    check_trained,
)
from thyroaug.generators.registry import GeneratorFamily
from thyroaug.jobs import substitutes
from thyroaug.jobs.common import cohort_path, ensure_default_cohort
from thyroaug.tracking.runs import (
    describe_run,
    log_cohort_input,
    log_missing_steps,
    log_params_safely,
)
from thyroaug.tracking.setup import configure_tracking, project_home, start_run

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser, family: GeneratorFamily) -> None:
    """The common training options plus the family's own."""
    add_training_arguments(parser, family.name, check_family(family))


def _job(family: GeneratorFamily, args: argparse.Namespace, tracking: bool) -> TrainingJob:
    default_out = project_home() / generator_workdir(family.name, args.profile)
    return TrainingJob(
        family=family.name,
        profile=args.profile,
        cohort_file=cohort_path(args),
        seed=args.seed,
        output=Path(args.output).expanduser() if args.output else default_out,
        resume=args.resume,
        embed_sources=args.embed_sources,
        max_count=args.max_count,
        progress=not args.no_progress,
        tracking=tracking,
        options=args,
    )


def _previous_run(trainer: FamilyTrainer, job: TrainingJob) -> str | None:
    """The run to continue: the checkpoint's, unless `mlflow run` or a caller made one."""
    if not job.resume or os.environ.get("MLFLOW_RUN_ID") or mlflow.active_run() is not None:
        return None
    previous = trainer.checkpoint_run_id(job.output)
    if previous:
        log.info("resuming MLflow run %s", previous)
    return previous


def run(args: argparse.Namespace, family: GeneratorFamily) -> int:
    """Train, check, log and (with ``--register``) register the family's generator."""
    trainer = check_family(family)
    main_process = PartialState(cpu=not torch.cuda.is_available()).is_main_process
    job = _job(family, args, tracking=main_process)
    if not main_process:  # `accelerate launch` / torchrun: train this rank's shard only
        trainer.train(job)
        return 0
    missing = {i.key: (i.what, i.substitute) for i in trainer.missing_paper_inputs(job)}
    subs = substitutes.refuse_or_accept(job.profile, missing, args.allow_substitutes)
    settings = trainer.settings(job)  # resolve (and validate) before a run exists
    ensure_default_cohort(job.cohort_file, job.profile)
    alias = None if not args.register or (args.alias or "none").lower() == "none" else args.alias
    configure_tracking(experiment=args.experiment)
    tags = {TAG_STEP: family.entry_point, TAG_METHOD: family.label, TAG_PROFILE: job.profile}
    previous = _previous_run(trainer, job)
    name = args.run_name or f"train-{family.name}-{job.profile}"
    with start_run(run_name=name, tags=tags, resume_run_id=previous) as active:
        run_id = active.info.run_id
        mlflow.set_tags(tags)
        common = {"cohort": str(job.cohort_file), "cohort_hash": job.content_hash}
        common |= {"output": str(job.output), "resume": job.resume}
        log_params_safely({**settings, **common}, TAG_RESUMED_WITH if previous else None)
        log_cohort_input(job.cohort, job.cohort_file)
        substitutes.tag(subs)
        trained = trainer.train(job)
        trained.max_count = job.max_count or trained.max_count
        min_size = resolve(ClassifierConfig, job.profile).image_size
        check_trained(trainer, trained, job, min_size)
        bank_uri = log_bank(trained.bank) if trained.bank is not None else None
        filled = log_missing_steps(run_id, trained.history)
        if filled:
            log.info("logged metric steps the run was missing: %s", ", ".join(filled))
        mlflow.log_metrics(trained.metrics)
        mlflow.set_tags(trained.tags)
        logged = trainer.log_model(
            trained,
            job,
            registered_name=family.registered_name if args.register else None,
            alias=alias,
            bank_uri=bank_uri,
        )
        if logged.version:
            mlflow.set_tag(TAG_REGISTERED_VERSION, logged.version)
        describe_run(f"{trained.summary} Model: {logged.registry_uri or logged.model_uri}.")
    print(f"run id: {run_id}")
    print(f"model URI: {logged.model_uri}")
    if logged.registry_uri:
        print(f"registered: {logged.registry_uri} (version {logged.version})")
    print(f"generator folder: {trained.folder}")
    return 0
