"""What every generator offers to synthesis and serving: the ``Generator`` protocol and helpers.

``open_generator`` loads any registered generator (the logged pyfunc class is the dispatch),
``synthesize`` draws a synthetic set (image j of class c from run seed s: seed
``SeedSequence([s, c, j])``), ``ConditionBank`` draws training conditions by (class, seed) and
``model_card`` writes the registry description. Loading and seeding: docs/generators.md, "Shared".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from thyroaug.contract import CLASSES
from thyroaug.errors import GeneratorError
from thyroaug.utils.seeds import derive_seed

log = logging.getLogger(__name__)


@dataclass
class GeneratedBatch:
    """Images ``[N, 1, S, S]`` float32 in [0, 1] (CPU) plus per-image provenance columns.

    ``columns`` maps a manifest column name (``source_id``, ``solver``, ``steps``, ...) to a list
    of N values.
    """

    images: torch.Tensor
    columns: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = int(self.images.shape[0])
        bad = {k: len(v) for k, v in self.columns.items() if len(v) != n}
        if bad:
            raise GeneratorError(f"generated batch of {n} images has columns of lengths {bad}")


@runtime_checkable
class Generator(Protocol):
    """The interface ``thyroaug synthesize`` and the pyfunc wrappers rely on."""

    image_size: int

    def method(self, mode: str | None = None) -> str:
        """The synthetic-set method name for ``mode`` (``FM``, ``SD1``..``SD4``)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Settings worth recording as provenance (config, training run, cohort hash...)."""
        ...

    def sample(
        self,
        labels: Sequence[int],
        seeds: Sequence[int],
        masks: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> GeneratedBatch:
        """One image per (label, seed[, mask]); same inputs give the same image."""
        ...


def label_index(label: int | str) -> int:
    """Class index of a class name (``"DG"``) or index (``0``); GeneratorError otherwise."""
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        if 0 <= int(label) < len(CLASSES):
            return int(label)
    elif isinstance(label, str):
        key = label.strip().upper()
        if key in CLASSES:
            return CLASSES.index(key)
        if key.isdigit() and int(key) < len(CLASSES):
            return int(key)
    shown = repr(label) if len(repr(label)) <= 40 else repr(label)[:37] + "..."
    raise GeneratorError(
        f"unknown label {shown}: use one of {', '.join(CLASSES)} (or 0..{len(CLASSES) - 1})"
    )


def sample_seed(base_seed: int, label: int, index: int) -> int:
    """Per-image seed of the ``index``-th image of class ``label`` in a run seeded ``base_seed``."""
    return derive_seed(base_seed, label, index)


class ConditionBank:
    """Training cases a generator may condition on, by class (FM: masks; SD: images/masks/prompts).

    Subclasses (dataclasses) add the tensors and their own ``save`` / ``load``. ``pick`` draws the
    case for (class c, image seed s) uniformly among the eligible cases of c, by
    ``numpy.random.default_rng([s, c])``.

    Attributes:
        labels: int64 ``[M]`` class index of each case.
        case_ids: case id of each row (recorded as ``source_id`` in synthetic manifests).
    """

    labels: torch.Tensor
    case_ids: list[str]
    condition_name: ClassVar[str] = "case"

    def __len__(self) -> int:
        return len(self.case_ids)

    def counts(self) -> dict[str, int]:
        """Cases per class name."""
        c = np.bincount(self.labels.numpy(), minlength=len(CLASSES))
        return {name: int(c[i]) for i, name in enumerate(CLASSES)}

    def eligible(self, need_mask: bool = False) -> np.ndarray:
        """Bool ``[M]``: rows that may be drawn (subclasses restrict, e.g. to cases with a mask)."""
        return np.ones(len(self), dtype=bool)

    def pick(self, label: int, seed: int, need_mask: bool = False) -> int:
        """Row of the condition used for (label, seed).

        Raises:
            GeneratorError: the bank holds no eligible case of that class.
        """
        rows = np.flatnonzero((self.labels.numpy() == int(label)) & self.eligible(need_mask))
        if len(rows) == 0:
            kind = f"masked {self.condition_name}" if need_mask else self.condition_name
            raise GeneratorError(
                f"no {kind} of class {CLASSES[int(label)]} in the generator's condition bank; "
                "pass the condition explicitly or retrain on a cohort that has one"
            )
        rng = np.random.default_rng([int(seed), int(label)])
        return int(rows[rng.integers(len(rows))])


def image_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2) -> np.ndarray:
    """Tile ``[N, 1, S, S]`` images in [0, 1] into one uint8 ``(H, W)`` array (gray)."""
    # torchvision (~1000 modules) loads for a grid, not with base.py, which every family imports
    from torchvision.utils import make_grid

    if images.numel() == 0:
        return np.zeros((1, 1), dtype=np.uint8)
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=pad)
    return (grid[0] * 255).round().to(torch.uint8).numpy()


@dataclass
class GeneratorHandle:
    """A loaded generator and where it came from."""

    generator: Generator
    uri: str
    version: str = ""


def registry_version(uri: str) -> str:
    """The registered version behind ``models:/name@alias`` or ``models:/name/N`` ('' otherwise)."""
    m = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri.strip())
    if not m:
        return ""
    name, alias, version = m.groups()
    if version:
        return version
    # mlflow (seconds) loads to read the registry, not with base.py, which every family imports
    from mlflow import MlflowClient

    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except Exception as exc:  # the registry raises several types
        raise GeneratorError(
            f"{uri}: alias {alias!r} of registered model {name!r} not found ({exc}); register "
            "one with `thyroaug train-fm --register --alias champion` (or train-sd)"
        ) from exc


def open_generator(uri: str) -> GeneratorHandle:
    """Load a logged / registered generator (any family) by MLflow model URI.

    Raises:
        GeneratorError: the URI cannot be resolved or is not a thyroaug generator.
    """
    import mlflow  # heavy: see registry_version

    version = registry_version(uri)
    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as exc:
        raise GeneratorError(
            f"cannot load generator {uri}: {exc}. Check the tracking URI "
            f"({mlflow.get_tracking_uri()}) and the model name/alias"
        ) from exc
    python_model = model.unwrap_python_model()
    generator = getattr(python_model, "generator", None)
    if not isinstance(generator, Generator):
        raise GeneratorError(f"{uri} is not a thyroaug generator (no sample() after loading)")
    if "content_hash" not in generator.describe():
        raise GeneratorError(
            f"{uri}: its generator's describe() has no 'content_hash' (the cohort it was trained "
            "on), which synthetic sets are stamped with; see docs/adding-a-generator.md"
        )
    return GeneratorHandle(generator=generator, uri=uri, version=version)


def synthesize(
    handle: GeneratorHandle,
    per_class: int,
    seed: int = 0,
    *,
    classes: Sequence[str] = CLASSES,
    batch_size: int = 32,
    mode: str | None = None,
    progress: bool = True,
    **sample_kwargs: Any,
) -> tuple[Any, dict[str, np.ndarray]]:
    """Draw ``per_class`` images of each class as a synthetic set.

    Args:
        handle: from ``open_generator`` (carries URI and registry version for the manifest).
        per_class: images per class (paper: 1000).
        seed: run seed; image j of class c gets ``sample_seed(seed, c, j)``.
        classes: class names to draw.
        batch_size: images per ``sample`` call.
        mode: generator mode (SD1..SD4 for Stable Diffusion; None for FM).
        progress: show a tqdm bar.
        **sample_kwargs: passed to ``Generator.sample`` (e.g. ``solver``, ``steps``).

    Returns:
        (SyntheticSet, {class: uint8 grid of its first 16 images}).

    Raises:
        GeneratorError: ``per_class`` or ``batch_size`` below 1.
    """
    from thyroaug.synthetic import SyntheticSet  # it imports mlflow: see registry_version

    if per_class < 1:
        raise GeneratorError(f"per_class={per_class}: need at least one image per class")
    if batch_size < 1:
        raise GeneratorError(f"batch_size={batch_size} must be >= 1")
    gen = handle.generator
    method = gen.method(mode)
    jobs = [
        (label_index(c), sample_seed(seed, label_index(c), j))
        for c in classes
        for j in range(per_class)
    ]
    kwargs = dict(sample_kwargs)
    if mode is not None:
        kwargs["mode"] = mode
    all_images, columns = _sample_jobs(
        gen, jobs, batch_size, kwargs, f"synthesize {method}", progress
    )
    labels = torch.tensor([j[0] for j in jobs], dtype=torch.int64)
    manifest = pd.DataFrame(
        {
            "index": np.arange(len(jobs)),
            "label": [CLASSES[j[0]] for j in jobs],
            "method": method,
            "generator_uri": handle.uri,
            "generator_version": handle.version,
            "seed": [j[1] for j in jobs],
        }
    )
    manifest["source_id"] = columns.pop("source_id", [""] * len(jobs))
    for key, values in columns.items():
        manifest[key] = values
    info = {
        "method": method,
        "mode": mode,
        "generator_uri": handle.uri,
        "generator_version": handle.version,
        "seed": seed,
        "per_class": per_class,
        "seeding": "per-image seed = SeedSequence([seed, class_index, j]).generate_state(1)[0]",
        "generator": gen.describe(),
        "sample_kwargs": {k: v for k, v in kwargs.items() if v is not None},
    }
    grids = {
        c: image_grid(all_images[labels == label_index(c)][:16], nrow=8)
        for c in classes
        if (labels == label_index(c)).any()
    }
    return SyntheticSet(all_images, labels, manifest, info), grids


def _sample_jobs(
    gen: Generator,
    jobs: list[tuple[int, int]],
    batch_size: int,
    kwargs: dict[str, Any],
    desc: str,
    progress: bool,
) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    """Images of the (label, seed) ``jobs`` in batches, and their provenance columns."""
    images: list[torch.Tensor] = []
    columns: dict[str, list[Any]] = {}
    with tqdm(total=len(jobs), desc=desc, disable=not progress) as bar:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            out = gen.sample([j[0] for j in chunk], [j[1] for j in chunk], **kwargs)
            images.append(out.images.float().cpu())
            for key, values in out.columns.items():
                columns.setdefault(key, []).extend(values)
            bar.update(len(chunk))
    return torch.cat(images), columns


# ----------------------------------------------------------------------------------------------
# Model cards (registry descriptions; ``pyfunc_base.log_generator`` writes them)
# ----------------------------------------------------------------------------------------------
INTENDED_USE = (
    "research data augmentation for thyroid scintigraphy classifiers; synthetic images are not "
    "for diagnosis"
)
MUST_NOT = (
    "diagnosis, treatment decisions or any other clinical use; presenting its images as real "
    "patients' scans; evaluating a classifier in place of real external cases"
)
MAX_DESCRIPTION = 5000
"""Characters of a registry description MLflow's SQL stores keep."""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "unknown" if value is None or value == "" else str(value)


def model_card(
    title: str,
    *,
    method: str,
    profile: str,
    content_hash: str,
    train_cases: int | str | None,
    metrics: Mapping[str, Any] | None = None,
    details: Sequence[str] = (),
    warning: str | None = None,
) -> str:
    """Markdown for the registry: data, profile, training metrics, intended use and limits.

    Only aggregates go in: the cohort's content hash and case count - never patient or case ids,
    pixels or report text (the caller passes nothing else).

    Args:
        title: heading, e.g. ``thyroaug flow-matching generator (FM)``.
        method: the augmentation method(s) it serves, e.g. ``FM`` or ``SD1-SD4``.
        profile: the config profile it was trained with.
        content_hash: the prepared cohort's content hash (its MLflow dataset digest).
        train_cases: number of training cases it saw.
        metrics: training metrics at registration (``None`` values are left out).
        details: further Markdown bullet texts (architecture, sampling defaults...).
        warning: shown first, in bold (e.g. ``banks.EMBEDDED_WARNING``).
    """
    lines = [
        f"# {title}",
        "",
        *([f"**{warning}**", ""] if warning else []),
        f"**Intended use:** {INTENDED_USE}.",
        "",
        f"**Must not be used for:** {MUST_NOT}.",
        "",
        "## Training data",
        f"- prepared cohort, content hash `{_fmt(content_hash)}` (the digest of the cohort "
        "dataset `thyroaug prepare` logs)",
        f"- training cases: {_fmt(train_cases)}",
        "- no patient or case ids, images or report text are part of this description",
        "",
        "## Training",
        f"- method: {method}; profile: `{_fmt(profile)}`",
        *(f"- {k}: {_fmt(v)}" for k, v in (metrics or {}).items() if v is not None),
        *(f"- {d}" for d in details),
    ]
    return "\n".join(lines) + "\n"
