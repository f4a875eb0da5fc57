"""`thyroaug synthesize`: draw a synthetic set from a registered generator into an MLflow run.

Example:
    thyroaug synthesize --generator models:/thyroaug-fm@champion --per-class 1000 --seed 0

Works for any generator logged through ``thyroaug.generators.pyfunc_base`` (flow matching, Stable
Diffusion with ``--mode SD1..SD4``). The set (``thyroaug.synthetic.SyntheticSet``: images,
manifest with per-image seed / source case / solver..., ``set.json``, one sample grid per class)
is logged as run artifacts under ``synthetic/<METHOD>/``; the run is tagged ``step=synthesize``
and ``method=<METHOD>``. Prints the run id and the artifact URI the classifier consumes
(``--synthetic`` of `thyroaug train-classifier`).

With ``--cohort`` (an existing prepared cohort) the run also logs, against its train split:

* fidelity (``thyroaug.evaluation.fidelity``; 200 images per class; extractors: Inception-v3 if
  its weights are local, and the ResNet18 of ``--feature-model`` or the fixed-seed random
  fallback), per extractor ``<ext>`` and group ``<g>`` (DG / NG / NL / TI / overall), names from
  ``thyroaug.evaluation.table3``: ``n_real_<g>``, ``n_fake_<g>``, ``feature_dim_<ext>``,
  ``fid_<ext>_<g>`` with ``fid_<ext>_<g>_ci_low`` / ``_ci_high`` (bootstrap 95 %), ``kid_<ext>_<g>``
  (raw MMD^2) with its ``_ci_low`` / ``_ci_high`` and ``kid_std_<ext>_<g>``, ``precision_``,
  ``recall_``, ``density_``, ``coverage_<ext>_<g>`` (k = 5) and ``n_below_dim_<ext>_<g>``; params
  ``fidelity_per_class``, ``fidelity_resamples``, ``fidelity_ci_level``, ``fidelity_nearest_k``,
  ``fidelity_kid_scale`` (1: KID as logged is the raw MMD^2) and ``fidelity_extractors``
  (``name:dimension``);
* the memorisation audit (``thyroaug.evaluation.memorisation``, ``docs/memorisation.md``) of every
  generated image against the train split, with the external split as the reference: metrics
  ``memorisation_<pixel|feature>_<same|any>_<near_copy_frac|median_ratio|min>_<g>``,
  ``..._threshold``, ``..._reference_median``, ``memorisation_n_*`` and ``memorisation_flagged``;
  params ``memorisation_*``; the run tag ``TAG_MEMORISATION``; artifacts
  ``memorisation/closest_pairs.csv`` and ``.png`` (training images and case ids: patient data, run
  artifacts only); a line in the run description; on a flag, a tag and a description line on the
  registered generator version.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient

from thyroaug.contract import (
    MEMORISATION_ARTIFACT_DIR,
    MEMORISATION_NEAR_COPIES,
    MEMORISATION_PASSED,
    STEP_SYNTHESIZE,
    TAG_COHORT_HASH,
    TAG_GENERATOR_NAME,
    TAG_GENERATOR_VERSION,
    TAG_MEMORISATION,
    TAG_METHOD,
    TAG_STEP,
    synthetic_artifact,
)
from thyroaug.data.cohort import PreparedCohort
from thyroaug.errors import ConfigError
from thyroaug.evaluation import memorisation as memo
from thyroaug.evaluation.fidelity import (
    CI_LEVEL,
    NEAREST_K,
    RESAMPLES,
    FeatureExtractor,
    ResNet18Features,
    default_extractors,
    fidelity_metrics,
)
from thyroaug.evaluation.plots import save_figure
from thyroaug.evaluation.table3 import KID_RAW_SCALE, dim_key
from thyroaug.generators.base import (
    MAX_DESCRIPTION,
    GeneratorHandle,
    open_generator,
    synthesize,
)
from thyroaug.generators.registry import family
from thyroaug.jobs.common import add_experiment, cohort_path
from thyroaug.synthetic import SyntheticSet
from thyroaug.tracking.runs import describe_run, log_params_safely
from thyroaug.tracking.setup import configure_tracking, start_run
from thyroaug.utils.resize import resize_images

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
        "--cohort",
        help="prepared cohort: FID/KID against its train split and the memorisation audit "
        "(skipped if absent)",
    )
    parser.add_argument(
        "--feature-model", help="MLflow URI of the O-scenario ResNet18 for domain FID/KID"
    )
    parser.add_argument("--fidelity-per-class", type=int, default=200, help="images per class")
    parser.add_argument(
        "--fidelity-resamples",
        type=int,
        default=RESAMPLES,
        help="bootstrap replicates of the FID/KID intervals (0: none)",
    )
    parser.add_argument("--no-fidelity", action="store_true", help="skip FID/KID")
    parser.add_argument(
        "--no-audit", action="store_true", help="skip the memorisation audit (docs/memorisation.md)"
    )
    parser.add_argument("--out", help="also keep a local copy of the set in this folder")
    add_experiment(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _load_cohort(args: argparse.Namespace) -> PreparedCohort | None:
    """The ``--cohort`` for fidelity and the audit; None (with a warning) when absent."""
    path = cohort_path(args)
    try:
        return PreparedCohort.load(path)
    except Exception as exc:  # a missing cohort only costs the metrics
        log.warning("no prepared cohort at %s (%s): FID/KID and the audit skipped", path, exc)
        return None


def _fidelity(
    args: argparse.Namespace,
    cohort: PreparedCohort,
    sset: SyntheticSet,
    extractors: list[FeatureExtractor],
) -> dict[str, float]:
    """Fidelity metrics of the set against the cohort's train split; their settings as params."""
    train = cohort.subset("train")
    metrics = fidelity_metrics(
        train.images,
        train.labels,
        sset.images,
        sset.labels,
        extractors,
        per_class=args.fidelity_per_class,
        seed=args.seed,
        resamples=args.fidelity_resamples,
    )
    dims = ", ".join(f"{e.name}:{int(metrics[dim_key(e.name)])}" for e in extractors)
    log_params_safely(
        {
            "fidelity_per_class": args.fidelity_per_class,
            "fidelity_resamples": args.fidelity_resamples,
            "fidelity_ci_level": CI_LEVEL,
            "fidelity_nearest_k": NEAREST_K,
            "fidelity_kid_scale": KID_RAW_SCALE,
            "fidelity_extractors": dims,
        }
    )
    return metrics


def _audit(
    cohort: PreparedCohort, sset: SyntheticSet, extractor: FeatureExtractor
) -> tuple[memo.MemorisationAudit, torch.Tensor, torch.Tensor] | None:
    """The memorisation audit of the set (and the images compared, for the figure)."""
    made_from = str(sset.info.get("cohort_hash") or "")
    if made_from and cohort.content_hash and made_from != cohort.content_hash:
        log.warning(
            "memorisation audit skipped: the set comes from cohort %s, --cohort is %s (its "
            "training images are not the generator's)",
            made_from,
            cohort.content_hash,
        )
        return None
    train, external = cohort.subset("train"), cohort.subset("external")
    if len(external) == 0 or len(train) == 0:
        log.warning("memorisation audit skipped: the cohort has no train or no external split")
        return None
    size = min(cohort.size, int(sset.images.shape[-1]))
    gen, tr, ref = (
        resize_images(x.float(), size) for x in (sset.images, train.images, external.images)
    )
    audit = memo.audit_memorisation(
        gen.numpy(),
        sset.labels.numpy(),
        tr.numpy(),
        train.labels.numpy(),
        train.table["case_id"].astype(str).tolist(),
        ref.numpy(),
        external.labels.numpy(),
        features=(extractor(gen), extractor(tr), extractor(ref)),
        feature_name=extractor.name,
    )
    log_params_safely(
        {
            "memorisation_reference": "external",
            "memorisation_quantile": memo.QUANTILE,
            "memorisation_flag_multiple": memo.FLAG_MULTIPLE,
            "memorisation_feature_extractor": extractor.name,
            "memorisation_image_size": size,
        }
    )
    return audit, gen, tr


def _log_audit(audit: memo.MemorisationAudit, gen: torch.Tensor, train: torch.Tensor) -> None:
    """Metrics, the run tag and the artifacts (closest pairs as CSV and figure)."""
    mlflow.log_metrics(audit.metrics)
    mlflow.set_tag(
        TAG_MEMORISATION, MEMORISATION_NEAR_COPIES if audit.flagged else MEMORISATION_PASSED
    )
    with tempfile.TemporaryDirectory(prefix="thyroaug-audit-") as tmp:
        audit.pairs.to_csv(Path(tmp) / "closest_pairs.csv", index=False)
        figure = memo.closest_pairs_figure(audit.pairs, gen.numpy(), train.numpy())
        save_figure(figure, Path(tmp) / "closest_pairs.png")
        mlflow.log_artifacts(tmp, artifact_path=MEMORISATION_ARTIFACT_DIR)
    log.log(logging.WARNING if audit.flagged else logging.INFO, "%s", audit.summary)


def _registered(handle: GeneratorHandle) -> str:
    """Registered-model name of a ``models:/`` generator URI ('' for any other URI)."""
    if not handle.uri.startswith("models:/"):
        return ""
    return handle.uri.removeprefix("models:/").split("@")[0].split("/")[0]


def _note_on_version(handle: GeneratorHandle, audit: memo.MemorisationAudit, run_id: str) -> None:
    """Tag the registered version a flagged set came from and add the audit line to its
    description (no case ids); a generator outside the registry only gets a warning."""
    name, version = _registered(handle), handle.version
    if not (name and version):
        log.warning(
            "%s is not a registered version: its memorisation flag stays on the run", handle.uri
        )
        return
    client = MlflowClient()
    client.set_model_version_tag(name, version, TAG_MEMORISATION, MEMORISATION_NEAR_COPIES)
    line = f"{audit.summary} (synthesize run {run_id}; docs/memorisation.md)"
    current = client.get_model_version(name, version).description or ""
    if line not in current:
        keep = max(0, MAX_DESCRIPTION - len(line) - 2)
        text = f"{current[:keep].rstrip()}\n\n{line}" if current else line
        client.update_model_version(name, version, description=text)


def _evaluate(
    args: argparse.Namespace, sset: SyntheticSet, handle: GeneratorHandle, run_id: str
) -> str:
    """Fidelity and the memorisation audit against ``--cohort``; the audit's sentence ('' if
    none)."""
    if args.no_fidelity and args.no_audit:
        return ""
    cohort = _load_cohort(args)
    if cohort is None:
        return ""
    extractors = default_extractors(args.feature_model)
    if not args.no_fidelity:
        metrics = _fidelity(args, cohort, sset, extractors)
        mlflow.log_metrics(metrics)
        for key in sorted(
            k for k in metrics if k.startswith(("fid_", "kid_")) and k.endswith("_overall")
        ):
            print(f"{key}: {metrics[key]:.4f}")
    if args.no_audit:
        return ""
    domain = [e for e in extractors if isinstance(e, ResNet18Features)] or extractors
    audited = _audit(cohort, sset, domain[-1])
    if audited is None:
        return ""
    audit, gen, train = audited
    _log_audit(audit, gen, train)
    if audit.flagged:
        _note_on_version(handle, audit, run_id)
    print(audit.summary)
    return audit.summary


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
    mlflow.set_tags(
        {
            TAG_COHORT_HASH: sset.info["cohort_hash"],
            TAG_GENERATOR_NAME: _registered(handle),
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
        audit_line = _evaluate(args, sset, handle, run_id) if args.cohort else ""
        artifact_uri = mlflow.get_artifact_uri(synthetic_artifact(method))
        counts = ", ".join(f"{k} {v}" for k, v in sset.class_counts().items())
        describe_run(
            f"Synthetic set {method} from {handle.uri} (version {handle.version or '-'}), seed "
            f"{args.seed}: {counts} images, in `{synthetic_artifact(method)}/` "
            f"(images.safetensors + provenance manifest.csv).\n\n{audit_line}"
        )
    print(f"run id: {run_id}")
    print(f"synthetic set: runs:/{run_id}/{synthetic_artifact(method)}")
    print(f"artifact URI: {artifact_uri}")
    return 0
