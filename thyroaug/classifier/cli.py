"""`thyroaug train-classifier`: train + evaluate the ResNet18 for one scenario, as an MLflow run.

Examples:
    thyroaug train-classifier --scenario O+CA --profile quick
    thyroaug train-classifier --scenario O+FM+CA --profile quick \\
        --synthetic FM=runs:/<run_id>/synthetic/FM
    thyroaug train-classifier --scenario O --profile smoke --cohort outputs/cohort --epochs 3

The cohort defaults to ``$THYROAUG_HOME/outputs/cohort`` (THYROAUG_HOME defaults to the current
folder), where ``thyroaug prepare`` writes by default.
"""

from __future__ import annotations

import argparse
from typing import Any

from thyroaug.config import PROFILE_NAMES, resolve
from thyroaug.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `thyroaug train-classifier`."""
    parser.add_argument(
        "--scenario", required=True, help="parts joined by '+', e.g. O, O+CA, O+FM+CA (any order)"
    )
    parser.add_argument("--profile", default="paper", choices=PROFILE_NAMES, help="defaults set")
    parser.add_argument(
        "--cohort", help="prepared cohort folder/file (default $THYROAUG_HOME/outputs/cohort)"
    )
    parser.add_argument(
        "--synthetic",
        action="append",
        default=[],
        metavar="METHOD=REF",
        help="synthetic set for a scenario part: local folder, runs:/<id>/synthetic/FM, "
        "mlflow-artifacts:/... or a run id (repeatable)",
    )
    parser.add_argument("--seed", type=int, help="seed (weights, batches, CA, bootstrap)")
    parser.add_argument("--epochs", type=int, help="training epochs (paper 300)")
    parser.add_argument("--batch-size", type=int, help="batch size (default 32)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (paper 1e-4)")
    parser.add_argument("--image-size", type=int, help="input side in pixels (paper 128)")
    parser.add_argument(
        "--per-class", type=int, help="synthetic / CA images per class per method (paper 1000)"
    )
    parser.add_argument("--bootstrap", type=int, help="bootstrap resamples (paper 1000)")
    parser.add_argument("--num-threads", type=int, help="torch CPU threads (0: torch default)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    parser.add_argument("--init", choices=("imagenet", "random"), help="default imagenet if found")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other ClassifierConfig field, e.g. --set lr_patience=5 (repeatable)",
    )
    parser.add_argument(
        "--params-from",
        metavar="JSON_OR_RUN_ID",
        help="hyperparameters found by `thyroaug tune` (its best_params.json or the tune run id); "
        "explicit flags still win",
    )
    parser.add_argument("--study-id", default="default", help="tag grouping a study's runs")
    parser.add_argument("--run-name", help="MLflow run name (default <scenario>-<profile>-s<seed>)")
    parser.add_argument("--experiment", help="MLflow experiment (default thyroaug)")
    parser.add_argument("--out", help="output folder (default outputs/classifier/<run>)")
    parser.add_argument("--no-model", action="store_true", help="do not log the model")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


PHANTOM_SCALE = {"paper": 1.0, "quick": 0.25, "smoke": 0.03}


def ensure_default_cohort(profile: str) -> None:
    """Without ``--cohort``: prepare the embedded default (phantom) cohort if it is not there yet.

    So that `mlflow run . -e train_classifier` works on a fresh clone; the phantom scale follows the
    profile. It is not logged as a run of its own (`mlflow run . -e prepare_data` does that).
    """
    from thyroaug.classifier.job import default_cohort_dir
    from thyroaug.cli import main
    from thyroaug.data.cohort import COHORT_FILE

    folder = default_cohort_dir()
    if (folder / COHORT_FILE).exists():
        return
    scale = PHANTOM_SCALE[profile]
    print(f"no cohort at {folder}: preparing the default phantom cohort (scale {scale})")
    code = main(
        [
            "prepare",
            "--phantom-scale",
            str(scale),
            "--out",
            str(folder),
            "--no-mlflow",
            "--no-progress",
        ]
    )
    if code != 0:
        raise ConfigError(f"could not prepare the default cohort in {folder} (exit {code})")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "image_size": args.image_size,
        "per_class_synthetic": args.per_class,
        "bootstrap": args.bootstrap,
        "num_threads": args.num_threads,
        "device": args.device,
        "init": args.init,
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr_patience=5")
        values[key.strip().replace("-", "_")] = value.strip()
    return values


def run(args: argparse.Namespace) -> int:
    """Run `thyroaug train-classifier`; prints a one-line summary, returns the exit code."""
    from thyroaug.classifier.config import ClassifierConfig
    from thyroaug.classifier.job import train_and_evaluate
    from thyroaug.scenarios import Scenario, parse_synthetic_args, require_synthetic
    from thyroaug.tracking.setup import configure_tracking

    scenario = Scenario.parse(args.scenario)
    synthetic = parse_synthetic_args(args.synthetic)
    require_synthetic(scenario, synthetic)  # before touching the tracking store
    explicit = {k: v for k, v in _overrides(args).items() if v is not None}
    resolve(ClassifierConfig, args.profile, **explicit)  # validate flags early, too
    if args.cohort is None:
        ensure_default_cohort(args.profile)
    configure_tracking(experiment=args.experiment)
    overrides: dict[str, Any] = {}
    tags: dict[str, str] = {}
    if args.params_from:
        from thyroaug.tune import load_best_params

        overrides.update(load_best_params(args.params_from))
        tags["params_from"] = args.params_from
    overrides.update(explicit)
    cfg = resolve(ClassifierConfig, args.profile, **overrides)
    out = train_and_evaluate(
        args.cohort,
        scenario,
        cfg,
        synthetic,
        args.out,
        study_id=args.study_id,
        run_name=args.run_name,
        tags=tags,
        log_model=not args.no_model,
        progress=not args.no_progress,
    )
    m = out["metrics"]
    print(
        f"{out['scenario']} ({cfg.profile}): external accuracy {m['external_accuracy']:.3f}, "
        f"F1 macro {m['external_f1_macro']:.3f}, AUC macro {m['external_auc_macro']:.3f}; "
        f"best epoch {out['best_epoch']}; run {out['run_id']}; files in {out['out_dir']}"
    )
    return 0
