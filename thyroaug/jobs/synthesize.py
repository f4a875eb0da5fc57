"""`thyroaug synthesize`: draw a synthetic set from a registered generator into an MLflow run.

Example:
    thyroaug synthesize --generator models:/thyroaug-fm@champion --per-class 1000 --seed 0

Works for any generator logged through ``thyroaug.generators.pyfunc_base`` (flow matching, Stable
Diffusion with ``--mode SD1..SD4``). The set (``thyroaug.synthetic.SyntheticSet``: images,
manifest with per-image seed / source case / solver..., ``set.json``, one sample grid per class)
is logged as run artifacts under ``synthetic/<METHOD>/``; the run is tagged ``step=synthesize``
and ``method=<METHOD>``. With ``--cohort`` (an existing prepared cohort) class-wise and overall
FID / KID against its train split are logged too (``thyroaug.evaluation.fidelity``; 200 images
per class; extractors: Inception-v3 if its weights are local, and the ResNet18 of
``--feature-model`` or the fixed-seed random fallback). Prints the run id and the artifact URI
the classifier consumes (``--synthetic`` of `thyroaug train-classifier`).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

import mlflow

from thyroaug.contract import (
    STEP_SYNTHESIZE,
    TAG_COHORT_HASH,
    TAG_GENERATOR_NAME,
    TAG_GENERATOR_VERSION,
    TAG_METHOD,
    TAG_STEP,
    synthetic_artifact,
)
from thyroaug.data.cohort import PreparedCohort
from thyroaug.errors import ConfigError
from thyroaug.evaluation.fidelity import default_extractors, fidelity_metrics
from thyroaug.generators.base import GeneratorHandle, open_generator, synthesize
from thyroaug.generators.registry import family
from thyroaug.jobs.common import add_experiment, cohort_path
from thyroaug.synthetic import SyntheticSet
from thyroaug.tracking.runs import describe_run, log_params_safely
from thyroaug.tracking.setup import configure_tracking, start_run

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `thyroaug synthesize`."""
    parser.add_argument(
        "--generator",
        default=family("fm").champion_uri(),
        help="MLflow model URI of a generator (models:/NAME@ALIAS, models:/NAME/N, runs:/...)",
    )
    parser.add_argument("--per-class", type=int, default=1000, help="images per class (paper)")
    parser.add_argument("--seed", type=int, default=0, help="run seed (per-image seeds derive)")
    parser.add_argument("--solver", help="FM: euler (default) | midpoint | rk4 | dopri5")
    parser.add_argument("--steps", type=int, help="FM: ODE steps (default 10); SD: denoising")
    parser.add_argument(
        "--mode", help="method of a multi-method generator (SD1..SD4 for Stable Diffusion)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per sampling call")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="opt-in speed for generators that offer it (FM: channels-last + torch.compile)",
    )
    parser.add_argument(
        "--cohort", help="prepared cohort for FID/KID against its train split (skipped if absent)"
    )
    parser.add_argument(
        "--feature-model", help="MLflow URI of the O-scenario ResNet18 for domain FID/KID"
    )
    parser.add_argument("--fidelity-per-class", type=int, default=200, help="images per class")
    parser.add_argument("--no-fidelity", action="store_true", help="skip FID/KID")
    parser.add_argument("--out", help="also keep a local copy of the set in this folder")
    add_experiment(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _fidelity(args: argparse.Namespace, sset: object) -> dict[str, float]:

    path = cohort_path(args)
    try:
        cohort = PreparedCohort.load(path)
    except Exception as exc:  # a missing cohort only costs the metrics
        log.warning("no prepared cohort at %s (%s): FID/KID skipped", path, exc)
        return {}
    train = cohort.subset("train")
    extractors = default_extractors(args.feature_model)
    return fidelity_metrics(
        train.images,
        train.labels,
        sset.images,  # type: ignore[attr-defined]
        sset.labels,  # type: ignore[attr-defined]
        extractors,
        per_class=args.fidelity_per_class,
        seed=args.seed,
    )


def _open(args: argparse.Namespace) -> tuple[GeneratorHandle, str | None, str]:
    """The generator of ``--generator`` (with ``--fast`` applied), its mode and method."""
    if args.per_class < 1:
        raise ConfigError(f"--per-class {args.per_class}: need at least 1")
    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed}: seeds are integers >= 0")
    handle = open_generator(args.generator)
    mode = args.mode or None
    method = handle.generator.method(mode)
    if args.fast:
        speed_up = getattr(handle.generator, "enable_fast_sampling", None)
        if speed_up is None:
            log.warning("%s offers no fast sampling mode; --fast ignored", method)
        else:
            speed_up()
    return handle, mode, method


def _tag_provenance(sset: SyntheticSet, handle: GeneratorHandle, run_id: str) -> None:
    """Stamp the set and the run with the cohort and registered version it came from."""
    sset.info["created_by_run"] = run_id
    sset.info["cohort_hash"] = sset.info["generator"]["content_hash"]  # open_generator checked
    name = handle.uri.removeprefix("models:/").split("@")[0].split("/")[0]
    mlflow.set_tags(
        {
            TAG_COHORT_HASH: sset.info["cohort_hash"],
            TAG_GENERATOR_NAME: name if handle.uri.startswith("models:/") else "",
            TAG_GENERATOR_VERSION: handle.version,
        }
    )


def _log_set(sset: SyntheticSet, grids: dict, method: str, out: str | None) -> None:
    """The set as the run's artifacts ``synthetic/<METHOD>/`` (and a copy in ``out``)."""
    with tempfile.TemporaryDirectory(prefix="thyroaug-synth-") as tmp:
        folder = sset.save(Path(tmp) / method, grids)
        mlflow.log_artifacts(str(folder), artifact_path=synthetic_artifact(method))
        if out:
            shutil.copytree(folder, Path(out) / method)


def run(args: argparse.Namespace) -> int:
    """Sample, save as a synthetic set in the run's artifacts, log fidelity; print URIs."""
    configure_tracking(experiment=args.experiment)
    handle, mode, method = _open(args)
    kwargs = {k: v for k, v in {"solver": args.solver, "steps": args.steps}.items() if v}
    tags = {TAG_STEP: STEP_SYNTHESIZE, TAG_METHOD: method}
    with start_run(run_name=f"synthesize-{method}", tags=tags) as active:
        run_id = active.info.run_id
        mlflow.set_tags(tags)
        log_params_safely(
            {
                "generator_uri": handle.uri,
                "generator_version": handle.version,
                "per_class": args.per_class,
                "seed": args.seed,
                "mode": mode or "",
                "batch_size": args.batch_size,
                "fast": bool(args.fast),
                **{k: str(v) for k, v in kwargs.items()},
            }
        )
        sset, grids = synthesize(
            handle,
            args.per_class,
            args.seed,
            batch_size=args.batch_size,
            mode=mode,
            progress=not args.no_progress,
            **kwargs,
        )
        _tag_provenance(sset, handle, run_id)
        _log_set(sset, grids, method, args.out)
        if args.cohort and not args.no_fidelity:
            metrics = _fidelity(args, sset)
            if metrics:
                mlflow.log_metrics(metrics)
                for key in sorted(k for k in metrics if k.endswith("_overall")):
                    print(f"{key}: {metrics[key]:.4f}")
        artifact_uri = mlflow.get_artifact_uri(synthetic_artifact(method))
        counts = ", ".join(f"{k} {v}" for k, v in sset.class_counts().items())
        describe_run(
            f"Synthetic set {method} from {handle.uri} (version {handle.version or '-'}), seed "
            f"{args.seed}: {counts} images, in `{synthetic_artifact(method)}/` "
            f"(images.safetensors + provenance manifest.csv)."
        )
    print(f"run id: {run_id}")
    print(f"synthetic set: runs:/{run_id}/{synthetic_artifact(method)}")
    print(f"artifact URI: {artifact_uri}")
    return 0
