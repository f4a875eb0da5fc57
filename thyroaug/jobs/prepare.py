"""`thyroaug prepare`: validate manifest(s) / registries and build the prepared cohort cache.

Examples:
    thyroaug prepare --manifest data/manifest.csv --out outputs/cohort
    thyroaug prepare --registry siteA/Data/Scintigraphy.xlsx --center A \\
        --registry siteG/Scintigraphy.xlsx --center G --class-map 0=DG,1=NG,2=NL,3=TI --out out
Prints a center x class summary. With MLflow on (default) the run ``prepare_data`` logs the
settings, the cohort as a dataset input, count tables and an example grid.

Kills: the phantom and the cohort are written through hidden staging siblings renamed into place
when complete (``thyroaug.utils.atomic``), so a killed prepare never leaves a half-written cohort.
The next prepare of the same ``--out`` takes an exclusive lock on the output folder and removes the
staging leftovers of killed runs before it starts (``remove_stale_staging``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import mlflow

from thyroaug.config import PROFILE_NAMES, resolve, to_dict
from thyroaug.contract import STEP_PREPARE, TAG_COHORT_HASH, TAG_COHORT_REUSED, TAG_STEP
from thyroaug.data.manifest import load_registry, parse_class_map
from thyroaug.data.prepare import (
    PrepareConfig,
    PrepareOutcome,
    carved_from_train,
    cohort_path,
    example_grid,
    prepare,
    split_table,
    summary_table,
)
from thyroaug.data.preprocess import NON_SQUARE_POLICIES, NORMALISATIONS
from thyroaug.data.splits import SPLITS
from thyroaug.errors import ConfigError
from thyroaug.phantom import PHANTOM_VERSION, simulate_cohort
from thyroaug.tracking.runs import describe_run, log_cohort_input
from thyroaug.tracking.setup import configure_tracking, start_run

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `thyroaug prepare`."""
    src = parser.add_argument_group("inputs")
    src.add_argument(
        "--manifest",
        action="append",
        default=[],
        metavar="FILE",
        help="manifest CSV / TSV / Parquet / Excel (repeatable); paths relative to its folder",
    )
    src.add_argument(
        "--registry",
        action="append",
        default=[],
        metavar="XLSX_OR_DIR",
        help="authors' layout: workbook (ID, Class, Prompt) + IMAGES/ + MASKS/ (repeatable)",
    )
    src.add_argument(
        "--center",
        action="append",
        default=[],
        help="center of each --registry, in the same order (e.g. --center A)",
    )
    src.add_argument("--class-map", help="meaning of numeric classes, e.g. 0=DG,1=NG,2=NL,3=TI")
    src.add_argument("--root", help="base of relative paths (default: the manifest's folder)")
    src.add_argument(
        "--phantom-scale",
        type=float,
        help="without --manifest / --registry: simulate the phantom cohort at this scale "
        "(1 = the paper's 2954 cases) and prepare it",
    )
    src.add_argument(
        "--phantom-dir", help="folder of the simulated cohort (default: phantom/ beside --out)"
    )
    parser.add_argument("--out", default="outputs/cohort", help="output folder")
    parser.add_argument(
        "--profile",
        default="paper",
        choices=PROFILE_NAMES,
        help="size preset: paper 128 px (default for every study profile: a cohort is prepared "
        "once at full size and each model downsamples), quick 64, smoke 32",
    )
    parser.add_argument("--size", type=int, help="output image side (paper 128)")
    parser.add_argument("--normalisation", choices=NORMALISATIONS, help="max (default) or counts")
    parser.add_argument("--percentile", type=float, help="robust-max percentile (default 99.9)")
    parser.add_argument("--non-square", choices=NON_SQUARE_POLICIES, help="pad (default) or error")
    parser.add_argument("--train-centers", help="training centers (default ABCDEF)")
    parser.add_argument("--external-centers", help="external test centers (default GHI)")
    parser.add_argument("--val-fraction", type=float, help="val share per class (default 0.1)")
    parser.add_argument("--seed", type=int, help="seed of the train / val split (default 0)")
    parser.add_argument("--workers", type=int, help="reader processes (default 0: in-process)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache is current")
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept image/mask paths outside the manifest's folder (absolute or ../)",
    )
    parser.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def phantom_manifest(folder: str | Path, scale: float, seed: int, progress: bool = True) -> Path:
    """The manifest of a phantom cohort in ``folder``, simulated unless the same one is there.

    An existing ``phantom.json`` with the same scale, seed and generator version means the files are
    reused.
    """

    folder = Path(folder)
    manifest, summary = folder / "manifest.csv", folder / "phantom.json"
    if manifest.is_file() and summary.is_file():
        info = json.loads(summary.read_text(encoding="utf-8"))
        same = (
            float(info.get("scale", -1)) == float(scale)
            and int(info.get("seed", -1)) == seed
            and info.get("phantom_version") == PHANTOM_VERSION
        )
        if same:
            log.info("reusing the phantom cohort in %s (scale %g, seed %d)", folder, scale, seed)
            return manifest
    simulate_cohort(folder, scale=scale, seed=seed, overwrite=True, progress=progress)
    return manifest


@contextlib.contextmanager
def exclusive_folder(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` keyed on ``folder`` (which need not exist) for the block.

    The lock file lives in the system temp folder (nothing is added to ``folder``); the kernel
    drops the lock when the process dies, so a killed prepare never blocks the next one.
    """
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    fd = os.open(Path(tempfile.gettempdir()) / f"thyroaug-prepare-{digest}.lock",
                 os.O_RDONLY | os.O_CREAT, 0o644)  # fmt: skip
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another prepare is writing %s: waiting for it", folder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def remove_stale_staging(*targets: Path) -> list[Path]:
    """Remove the hidden staging siblings (``.<name>.tmp-*`` / ``.<name>.old-*``) that killed
    writers of ``targets`` left. Call it only while no other process writes them (the lock)."""
    removed = []
    for target in targets:
        if not target.parent.is_dir():
            continue
        for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
            for stale in target.parent.glob(pattern):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
                removed.append(stale)
    if removed:
        log.warning(
            "removed %d staging leftover(s) of a killed prepare: %s",
            len(removed),
            ", ".join(p.name for p in removed),
        )
    return removed


def _inputs(args: argparse.Namespace, class_map: dict[str, str] | None, seed: int) -> list[Any]:
    registries, centers = list(args.registry), list(args.center)
    if len(registries) != len(centers):
        raise ConfigError(
            f"{len(registries)} --registry but {len(centers)} --center; give one --center per "
            "--registry, in the same order"
        )
    inputs: list[Any] = list(args.manifest)
    for registry, center in zip(registries, centers):
        inputs.append(
            load_registry(
                registry,
                center=center,
                class_map=class_map,
                allow_outside_root=args.allow_outside_root,
            )
        )
    if not inputs and args.phantom_scale:
        folder = args.phantom_dir or Path(args.out).parent / "phantom"
        inputs.append(
            phantom_manifest(folder, args.phantom_scale, seed, progress=not args.no_progress)
        )
    if not inputs:
        raise ConfigError(
            "no input: pass --manifest FILE, --registry XLSX --center X, or --phantom-scale S "
            "(simulate the phantom cohort first)"
        )
    return inputs


def log_cohort(
    outcome: PrepareOutcome,
    config: PrepareConfig,
    sources: Sequence[str] = (),
) -> None:
    """Log a prepared cohort to the active run: settings and split counts as params, the cohort
    as the run's dataset input (``tracking.runs.log_cohort_input``), count tables, settings and an
    example grid as artifacts (``docs/data.md``). No patient id or report text is logged."""
    cohort = outcome.cohort
    params: dict[str, Any] = {k: v for k, v in to_dict(config).items() if k not in ("workers",)}
    params.update(
        content_hash=cohort.content_hash,
        n_cases=len(cohort),
        **{f"n_{split}": len(cohort.indices(split)) for split in SPLITS},
        val_carved_from_train=str(carved_from_train(cohort)).lower(),
    )
    if sources:
        params["sources"] = ",".join(Path(s).name for s in sources)[:500]
    mlflow.log_params(params)
    mlflow.set_tags(
        {
            TAG_COHORT_HASH: cohort.content_hash,
            TAG_COHORT_REUSED: str(outcome.reused).lower(),
        }
    )
    log_cohort_input(cohort, outcome.path, context="prepared")
    summary = summary_table(cohort)
    mlflow.log_table(summary, artifact_file="cohort/counts_center_class.json")
    mlflow.log_text(summary.to_csv(index=False), "cohort/counts_center_class.csv")
    mlflow.log_text(split_table(cohort).to_csv(index=False), "cohort/counts_split_class.csv")
    mlflow.log_dict(cohort.settings, "cohort/settings.json")
    mlflow.log_figure(example_grid(cohort), "cohort/examples.png")


def run(args: argparse.Namespace) -> int:
    """Run `thyroaug prepare`; returns the exit code (errors raise ThyroaugError -> exit 2)."""
    cfg = resolve(
        PrepareConfig,
        args.profile,
        size=args.size,
        normalisation=args.normalisation,
        percentile=args.percentile,
        non_square=args.non_square,
        train_centers=args.train_centers,
        external_centers=args.external_centers,
        val_fraction=args.val_fraction,
        seed=args.seed,
        workers=args.workers,
    )
    class_map = parse_class_map(args.class_map)
    out = Path(args.out)
    stale = [cohort_path(out).resolve()]
    if args.phantom_scale and not (args.manifest or args.registry):
        stale.append(Path(args.phantom_dir or out.parent / "phantom").resolve())
    with contextlib.ExitStack() as locks:
        for folder in sorted({p.parent for p in stale}):  # one lock per folder, fixed order
            locks.enter_context(exclusive_folder(folder))
        remove_stale_staging(*stale)
        inputs = _inputs(args, class_map, int(cfg.seed))
        outcome = prepare(
            inputs,
            out,
            cfg,
            root=args.root,
            class_map=class_map,
            force=args.force,
            progress=not args.no_progress,
            allow_outside_root=args.allow_outside_root,
        )
    cohort = outcome.cohort
    state = "up to date, reused" if outcome.reused else "built"
    print(f"prepared cohort: {outcome.path} ({state}; {len(cohort)} cases, {cohort.size} px)")
    print(f"content hash: {cohort.content_hash}")
    print(summary_table(cohort).to_string(index=False))
    print()
    print(split_table(cohort).to_string(index=False))
    if not args.no_mlflow:
        configure_tracking()
        with start_run(run_name="prepare_data", tags={TAG_STEP: STEP_PREPARE}) as active:
            files = [str(s) for s in inputs if isinstance(s, str | Path)]
            log_cohort(outcome, cfg, sources=[*files, *args.registry])
            if not args.manifest and not args.registry:
                mlflow.log_param("phantom_scale", args.phantom_scale)
            source = "phantom cohort" if not args.manifest and not args.registry else "manifest"
            splits = ", ".join(
                f"{split} {len(cohort.indices(split))}" for split in ("train", "val", "external")
            )
            describe_run(
                f"Prepared cohort ({source}): {len(cohort)} cases at {cohort.size} px, {splits}; "
                f"content hash {cohort.content_hash} ({state})."
            )
            print(f"MLflow run: {active.info.run_id}")
    return 0
