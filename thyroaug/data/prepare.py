"""Manifest + files on disk -> the prepared cohort cache (``cohort.safetensors``).

Validate, split, hash the inputs, then reuse the cache of the same content hash or read and
preprocess every case; nothing is written unless every case succeeds. The content hash:
``docs/data.md``, "The prepared cohort".
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
from matplotlib.figure import Figure
from safetensors import safe_open
from tqdm.auto import tqdm

from thyroaug.contract import CLASS_NAMES, CLASSES
from thyroaug.data.cohort import COHORT_FILE, PreparedCohort
from thyroaug.data.io import read_image, read_mask
from thyroaug.data.manifest import (
    CANONICAL_COLUMNS,
    combine_manifests,
    load_manifest,
    validate_manifest,
)
from thyroaug.data.preprocess import PreprocessSettings, preprocess_case
from thyroaug.data.splits import SPLITS, assign_splits, carves_val, parse_centers
from thyroaug.errors import CohortFileError, ImageReadError, PromptError, ThyroaugError
from thyroaug.reports import prompts
from thyroaug.utils.digest import DIGEST_KEY

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bumped whenever preparation changes in a way that changes the output (invalidates caches)."""

ManifestInput = str | Path | pd.DataFrame | Sequence[str | Path | pd.DataFrame]


@dataclass
class PrepareConfig:
    """Preparation settings; defaults are the paper's (128 px, B-spline, centers A-F / G-I, 9:1).

    Attributes:
        size: side of the square output images.
        normalisation: ``max`` (robust max -> [0, 1]) or ``counts`` (count-preserving).
        percentile: robust-maximum percentile for ``max``.
        non_square: ``pad`` (zero-pad, centred) or ``error``.
        train_centers: training centers, e.g. ``"ABCDEF"`` or ``"A,B"`` (split into train / val).
        external_centers: external test centers.
        val_fraction: fraction of each class of the training cases held out for validation
            (from the training centers, or from the train cases of a manifest whose split
            column names no val case).
        seed: seed of the train / val split.
        workers: worker processes for reading (0 or 1 = in this process).
    """

    size: int = 128
    normalisation: str = "max"
    percentile: float = 99.9
    non_square: str = "pad"
    train_centers: str = "ABCDEF"
    external_centers: str = "GHI"
    val_fraction: float = 0.1
    seed: int = 0
    workers: int = 0

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {"quick": {"size": 64}, "smoke": {"size": 32}}

    def preprocess(self) -> PreprocessSettings:
        """The per-case preprocessing part of the settings (validated)."""
        return PreprocessSettings(
            size=int(self.size),
            normalisation=self.normalisation,
            percentile=float(self.percentile),
            non_square=self.non_square,
        )


@dataclass
class PrepareOutcome:
    """Result of ``prepare``: the cohort, where it is, and whether the cache was reused."""

    cohort: PreparedCohort
    path: Path
    reused: bool


def cohort_path(out: str | Path) -> Path:
    """The cohort file for ``out`` (a folder, or a path ending in ``.safetensors``)."""
    out = Path(out)
    return out if out.suffix == ".safetensors" else out / COHORT_FILE


def _cached_meta(path: Path) -> dict[str, str] | None:
    """The header metadata of the cohort file at ``path`` (None if none or unreadable)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # a damaged cache is rebuilt, not fatal
        log.warning("cannot read the existing cohort at %s (%s); rebuilding", path, exc)
        return None


def cached_hash(out: str | Path) -> str | None:
    """Content hash of the cohort already at ``out`` (None if none or unreadable).

    Reads the header only: whether the cache's bytes are sound is checked when it is loaded.
    """
    return (_cached_meta(cohort_path(out)) or {}).get("content_hash")


def _reusable(path: Path, chash: str) -> PreparedCohort | None:
    """The cache at ``path`` if it has content hash ``chash`` and sound bytes, else None (rebuild).

    A cache without a byte digest (an older thyroaug's) or whose bytes do not match it is rebuilt
    from the inputs, with one log line saying why.
    """
    meta = _cached_meta(path)
    if meta is None or meta.get("content_hash") != chash:
        return None
    if DIGEST_KEY not in meta:
        log.warning("%s has no byte digest (an older thyroaug wrote it): rebuilding it", path)
        return None
    try:
        return PreparedCohort.load(path)
    except CohortFileError as exc:
        log.warning("%s; rebuilding it now", exc)
        return None


def load_inputs(
    manifest: ManifestInput,
    root: str | Path | None = None,
    class_map: dict[str, str] | None = None,
    allow_outside_root: bool = False,
) -> pd.DataFrame:
    """Load and validate one or more manifests (paths or tables) into one canonical table.

    Image / mask paths outside the manifest's folder (or ``root``) are refused unless
    ``allow_outside_root``.
    """
    items = [manifest] if isinstance(manifest, (str, Path, pd.DataFrame)) else list(manifest)
    if not items:
        raise ThyroaugError("no manifest given; pass a manifest file or a registry")
    tables = []
    for item in items:
        if isinstance(item, pd.DataFrame):
            tables.append(
                validate_manifest(
                    item, root=root, class_map=class_map, allow_outside_root=allow_outside_root
                )
            )
        else:
            tables.append(
                load_manifest(
                    item, root=root, class_map=class_map, allow_outside_root=allow_outside_root
                )
            )
    names = [Path(i).name if isinstance(i, str | Path) else "<table>" for i in items]
    return combine_manifests(tables, source=" + ".join(names))


def _file_digest(path: str) -> bytes:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()


def content_hash(table: pd.DataFrame, settings: dict[str, Any]) -> str:
    """Hash of the settings, the canonical manifest rows and the bytes of every referenced file."""
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    columns = [c for c in CANONICAL_COLUMNS if c in table.columns]
    for row in table[[*columns, "image_path", "mask_path"]].itertuples(index=False):
        values = ["" if pd.isna(v) else str(v) for v in row[: len(columns)]]
        digest.update(json.dumps(values).encode() + b"\n")
        for path in row[len(columns) :]:
            digest.update(_file_digest(path) if path else b"-")
    return digest.hexdigest()[:32]


def _prompt_builder(table: pd.DataFrame) -> tuple[Any, dict[str, Any] | None]:
    """``report_to_prompt`` and a record of its version, if any case needs a prompt built."""
    need = (table["prompt"] == "") & (table["report"] != "")
    if not need.any():
        return None, None
    source = Path(prompts.__file__).read_bytes()
    record = {
        "function": "thyroaug.reports.prompts.report_to_prompt",
        "source_sha256": hashlib.sha256(source).hexdigest()[:16],
    }
    return prompts.report_to_prompt, record


def _process_case(task: tuple[str, str, str, dict[str, Any]]) -> tuple[Any, ...]:
    """Read + preprocess one case; return (image, mask, info, errors) (picklable for a pool)."""
    case_id, image_path, mask_path, settings = task
    errors: list[str] = []
    image = mask = None
    try:
        image = read_image(image_path, case_id)
    except ImageReadError as exc:
        errors.append(str(exc))
    if mask_path:
        try:
            mask = read_mask(mask_path, case_id)
        except ImageReadError as exc:
            errors.append(str(exc))
    if errors:
        return None, None, None, errors
    try:
        out, out_mask, info = preprocess_case(image, mask, PreprocessSettings(**settings), case_id)
    except ImageReadError as exc:
        return None, None, None, [str(exc)]
    return out, out_mask, info, []


def _settings(cfg: PrepareConfig, class_map: dict[str, str] | None) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        **cfg.preprocess().to_dict(),
        "train_centers": list(parse_centers(cfg.train_centers)),
        "external_centers": list(parse_centers(cfg.external_centers)),
        "val_fraction": float(cfg.val_fraction),
        "seed": int(cfg.seed),
        "simpleitk": sitk.Version.VersionString(),
    }
    if class_map:
        settings["class_map"] = dict(class_map)
    return settings


def _carve_settings(table: pd.DataFrame, cfg: PrepareConfig) -> dict[str, Any]:
    """Settings recording a val set carved from the manifest's train cases ({} otherwise).

    Added only when it happens, so every other cohort keeps its content hash; for such a
    manifest they change the hash, so a cache prepared earlier (with no val case) is rebuilt.
    """
    if not carves_val(table, cfg.val_fraction):
        return {}
    return {
        "val_carved_from_train": True,
        "val_carve_fraction": float(cfg.val_fraction),
        "val_carve_seed": int(cfg.seed),
    }


def prepare(
    manifest: ManifestInput,
    out: str | Path,
    config: PrepareConfig | None = None,
    *,
    root: str | Path | None = None,
    class_map: dict[str, str] | None = None,
    force: bool = False,
    progress: bool = True,
    allow_outside_root: bool = False,
) -> PrepareOutcome:
    """Build (or reuse) the prepared cohort; see ``prepare_cohort`` for the arguments."""
    cfg = config or PrepareConfig()
    started = time.perf_counter()
    settings = _settings(cfg, class_map)  # validates the settings before any file is read
    table = load_inputs(
        manifest, root=root, class_map=class_map, allow_outside_root=allow_outside_root
    )
    builder, builder_record = _prompt_builder(table)
    if builder_record:
        settings["prompt_builder"] = builder_record
    settings.update(_carve_settings(table, cfg))
    chash = content_hash(table, settings)  # rows as given: assigned splits follow the settings
    settings["data_source"] = data_source(manifest)  # a record, not part of the hash
    table = assign_splits(
        table, cfg.train_centers, cfg.external_centers, cfg.val_fraction, cfg.seed
    )
    path = cohort_path(out)
    cached = None if force else _reusable(path, chash)
    if cached is not None:
        log.info("cohort at %s is up to date (hash %s): loaded, not rebuilt", path, chash)
        return PrepareOutcome(cohort=cached, path=path, reused=True)

    pre = cfg.preprocess()
    pre_dict = {k: getattr(pre, k) for k in ("size", "normalisation", "percentile", "non_square")}
    tasks = [
        (cid, img, msk, pre_dict)
        for cid, img, msk in zip(table["case_id"], table["image_path"], table["mask_path"])
    ]
    results = _run_tasks(tasks, int(cfg.workers), progress)
    errors = [msg for res in results for msg in res[3]]
    case_prompts, prompt_errors = _build_prompts(table, builder)
    if errors or prompt_errors:
        problems = [*errors, *prompt_errors]
        error_type = ImageReadError if errors else PromptError
        raise error_type(
            f"{len(problems)} problem(s) in {len(tasks)} case(s); nothing was written:\n"
            + "\n".join(f"  - {e}" for e in problems)
        )
    cohort = _assemble(table, results, case_prompts, pre.size, chash, settings)
    saved = cohort.save(path)
    log.info(
        "prepared %d cases (%s%s) -> %s in %.1f s (hash %s)",
        len(cohort),
        ", ".join(f"{s} {len(cohort.indices(s))}" for s in SPLITS),
        "; val carved from the manifest's train cases" * bool(carved_from_train(cohort)),
        saved,
        time.perf_counter() - started,
        chash,
    )
    return PrepareOutcome(cohort=cohort, path=saved, reused=False)


def data_source(manifest: ManifestInput) -> dict[str, Any]:
    """What the cohort is: ``{"kind": "phantom", ...}`` when the manifest sits beside the
    ``phantom.json`` the simulator writes (its version, scale and seed), else
    ``{"kind": "manifest", "name": <file name>}`` (clinical or other data of the user's)."""
    if isinstance(manifest, Sequence) and not isinstance(manifest, str) and len(manifest) == 1:
        manifest = manifest[0]
    if isinstance(manifest, (str, Path)):
        record = Path(manifest).parent / "phantom.json"
        if record.is_file():
            info = json.loads(record.read_text(encoding="utf-8"))
            keep = ("phantom_version", "scale", "seed", "total")
            return {"kind": "phantom", **{k: info.get(k) for k in keep}}
        return {"kind": "manifest", "name": Path(manifest).name}
    return {"kind": "manifest", "name": "(in memory)"}


def _build_prompts(table: pd.DataFrame, builder: Any) -> tuple[list[str], list[str]]:
    """Each case's prompt (built from its report where it has none); the build errors."""
    case_prompts = list(table["prompt"])
    errors: list[str] = []
    if builder is None:
        return case_prompts, errors
    for i, report in enumerate(table["report"]):
        if not case_prompts[i] and report:
            try:
                case_prompts[i] = builder(report)
            except ThyroaugError as exc:
                errors.append(f"case {table['case_id'].iloc[i]}: prompt: {exc}")
    return case_prompts, errors


def _assemble(
    table: pd.DataFrame,
    results: list[tuple],
    case_prompts: list[str],
    size: int,
    chash: str,
    settings: dict[str, Any],
) -> PreparedCohort:
    """The cohort from the preprocessed cases (``_process_case`` results, in table order)."""
    images = np.stack([r[0] for r in results])[:, None]
    masks = np.stack(
        [r[1] if r[1] is not None else np.zeros((size, size), np.uint8) for r in results]
    )[:, None]
    labels = torch.tensor([CLASSES.index(lab) for lab in table["label"]], dtype=torch.int64)
    cohort_table = pd.DataFrame(
        {
            "case_id": table["case_id"],
            "patient_id": table["patient_id"],
            "center": table["center"],
            "label": table["label"],
            "split": table["split"],
            "has_mask": table["mask_path"] != "",
            "prompt": case_prompts,
            "report": table["report"],
            "age": table["age"],
            "sex": table["sex"],
            "manufacturer": table["manufacturer"],
            "model": table["model"],
            "source_image": table["image"],
            "source_mask": table["mask"],
            "orig_rows": [r[2]["orig_rows"] for r in results],
            "orig_cols": [r[2]["orig_cols"] for r in results],
            "padded": [r[2]["padded"] for r in results],
        }
    )
    return PreparedCohort(
        images=torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)),
        masks=torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)),
        labels=labels,
        table=cohort_table,
        content_hash=chash,
        settings=settings,
    )


def _run_tasks(tasks: list[tuple[Any, ...]], workers: int, progress: bool) -> list[tuple]:
    bar = dict(total=len(tasks), desc="prepare", unit="case", disable=not progress)
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            chunk = max(1, len(tasks) // (workers * 8))
            return list(tqdm(pool.map(_process_case, tasks, chunksize=chunk), **bar))
    return [_process_case(t) for t in tqdm(tasks, **bar)]


def prepare_cohort(
    manifest: ManifestInput,
    out: str | Path,
    size: int = 128,
    normalisation: str = "max",
    *,
    percentile: float = 99.9,
    non_square: str = "pad",
    train_centers: str = "ABCDEF",
    external_centers: str = "GHI",
    val_fraction: float = 0.1,
    seed: int = 0,
    workers: int = 0,
    root: str | Path | None = None,
    class_map: dict[str, str] | None = None,
    force: bool = False,
    progress: bool = True,
) -> PreparedCohort:
    """Validate, read, resample, normalise, split and cache a cohort; reuse an up-to-date cache.

    Args:
        manifest: a manifest file, a validated table (e.g. from ``load_registry``), or a list.
        out: output folder (the cohort goes to ``out/cohort.safetensors``) or a ``.safetensors``
            path.
        size, normalisation, percentile, non_square, train_centers, external_centers,
            val_fraction, seed, workers: the ``PrepareConfig`` fields.
        root: folder relative paths in manifest files resolve against (default: each manifest's
            folder; for tables: the current directory).
        class_map: meaning of non-standard label values, e.g. ``{"0": "DG", ...}``.
        force: rebuild even if the cache is up to date.
        progress: show a progress bar.

    Returns:
        The prepared cohort (also saved at ``out``).

    Raises:
        ManifestError: invalid manifest (every problem listed).
        SplitError: a patient in two splits, unknown centers, no training cases.
        ImageReadError: any case unreadable or invalid (every failing case listed); nothing is
            written.
    """
    cfg = PrepareConfig(
        size=size,
        normalisation=normalisation,
        percentile=percentile,
        non_square=non_square,
        train_centers=train_centers,
        external_centers=external_centers,
        val_fraction=val_fraction,
        seed=seed,
        workers=workers,
    )
    return prepare(
        manifest, out, cfg, root=root, class_map=class_map, force=force, progress=progress
    ).cohort


def summary_table(cohort: PreparedCohort) -> pd.DataFrame:
    """Cases per center x class, with each center's splits and a total row."""
    counts = cohort.counts()
    splits = cohort.table.groupby("center")["split"].agg(
        lambda s: "+".join(x for x in SPLITS if x in set(s))
    )
    counts.insert(0, "split", splits.reindex(counts.index))
    total = counts[[*CLASSES, "total"]].sum().to_frame().T.assign(split="")
    total.index = ["all"]
    out = pd.concat([counts, total[counts.columns]])
    out.index.name = "center"
    return out.reset_index()


def split_table(cohort: PreparedCohort) -> pd.DataFrame:
    """Cases per split x class (with totals)."""
    counts = pd.crosstab(cohort.table["split"], cohort.table["label"])
    counts = counts.reindex(index=list(SPLITS), columns=list(CLASSES)).fillna(0).astype(int)
    counts["total"] = counts.sum(axis=1)
    counts.index.name = "split"
    return counts.reset_index()


def example_grid(cohort: PreparedCohort, per_class: int = 6, seed: int = 0) -> Any:
    """A matplotlib Figure: one row per class, ``per_class`` random cases with mask outlines."""
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(1.6 * per_class, 1.7 * len(CLASSES)), dpi=100)
    axes = fig.subplots(len(CLASSES), per_class, squeeze=False)
    labels = cohort.labels.numpy()
    vmax = 1.0 if cohort.settings.get("normalisation", "max") == "max" else None
    for r, cls in enumerate(CLASSES):
        rows = np.flatnonzero(labels == r)
        pick = np.sort(rng.choice(rows, size=min(per_class, len(rows)), replace=False))
        for c in range(per_class):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{cls}\n{CLASS_NAMES[cls]}", fontsize=8)
            if c >= len(pick):
                ax.set_frame_on(False)
                continue
            i = int(pick[c])
            ax.imshow(cohort.images[i, 0].numpy(), cmap="gray", vmin=0, vmax=vmax)
            mask = cohort.masks[i, 0].numpy()
            if mask.any():
                ax.contour(mask, levels=[0.5], colors="tab:red", linewidths=0.6)
            row = cohort.table.iloc[i]
            ax.set_title(f"{row['center']} / {row['split']}", fontsize=7)
    fig.suptitle(f"prepared cohort ({cohort.size} px), hash {cohort.content_hash[:12]}")
    fig.tight_layout()
    return fig


def carved_from_train(cohort: PreparedCohort) -> bool:
    """Whether the cohort's val set was carved from the train cases its manifest named."""
    return bool(cohort.settings.get("val_carved_from_train", False))
