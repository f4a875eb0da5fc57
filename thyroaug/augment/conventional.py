"""Conventional augmentation (CA), paper Sec. 3.2.1, with ``torchvision.transforms.v2``.

Rotation (±15°), horizontal flip, translation (±10 %), scaling (0.8–1.2×) and additive Gaussian
noise with sigma drawn from [0.001, 0.01] of the data range. Design choices (one affine, masks
nearest-neighbour, sigma relative to the range, per-image seeds): ``docs/data.md``,
"Conventional augmentation".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch
import torchvision
from torchvision import tv_tensors
from torchvision.transforms import v2
from tqdm.auto import tqdm

import thyroaug
from thyroaug.contract import CLASSES
from thyroaug.data.cohort import PreparedCohort
from thyroaug.errors import ScenarioError
from thyroaug.synthetic import SyntheticSet
from thyroaug.utils.seeds import derive_seed
from thyroaug.utils.threads import torch_threads

log = logging.getLogger(__name__)

ROTATION_DEGREES: float = 15.0
TRANSLATE: float = 0.10
SCALE: tuple[float, float] = (0.8, 1.2)
FLIP_P: float = 0.5
NOISE_SIGMA: tuple[float, float] = (0.001, 0.01)
GENERATOR_URI = "thyroaug.augment.conventional"


class RandomGaussianNoise(v2.Transform):
    """Additive Gaussian noise whose sigma is drawn uniformly from ``sigma_range`` per call.

    Masks (and anything that is not a float image) pass through unchanged. Random draws come from
    torch's global generator, like every ``v2`` transform.

    Args:
        sigma_range: (low, high) of the noise standard deviation, in units of ``scale``.
        scale: multiplies sigma (the width of the data range).
    """

    def __init__(self, sigma_range: tuple[float, float] = NOISE_SIGMA, scale: float = 1.0) -> None:
        super().__init__()
        lo, hi = float(sigma_range[0]), float(sigma_range[1])
        if not 0 <= lo <= hi:
            raise ValueError(f"sigma_range must satisfy 0 <= low <= high, got {sigma_range}")
        self.sigma_range = (lo, hi)
        self.scale = float(scale)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        lo, hi = self.sigma_range
        sigma = float(torch.empty(()).uniform_(lo, hi)) if hi > lo else lo
        return {"sigma": sigma * self.scale}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask) or not torch.is_floating_point(inpt):
            return inpt
        out = inpt.as_subclass(torch.Tensor) + params["sigma"] * torch.randn_like(inpt)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Fix torch's CPU generator inside the block and restore the caller's state afterwards."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


class ConventionalAugment:
    """The paper's CA pipeline for one image (and optionally its mask).

    Args:
        value_range: (low, high) of the data; output is clipped to it, ``low`` fills the borders.
        degrees: maximum absolute rotation in degrees.
        translate: maximum absolute shift as a fraction of the side length (both axes).
        scale: (min, max) zoom factor.
        flip_p: probability of a horizontal flip.
        noise_sigma: (min, max) Gaussian noise sigma, relative to ``high - low``.

    Example:
        >>> aug = ConventionalAugment()
        >>> out = aug(torch.rand(1, 32, 32), seed=3)
        >>> tuple(out.shape), bool(out.min() >= 0), bool(out.max() <= 1)
        ((1, 32, 32), True, True)
    """

    def __init__(
        self,
        value_range: tuple[float, float] = (0.0, 1.0),
        degrees: float = ROTATION_DEGREES,
        translate: float = TRANSLATE,
        scale: tuple[float, float] = SCALE,
        flip_p: float = FLIP_P,
        noise_sigma: tuple[float, float] = NOISE_SIGMA,
    ) -> None:
        lo, hi = float(value_range[0]), float(value_range[1])
        if not hi > lo:
            raise ValueError(f"value_range must have high > low, got {value_range}")
        self.value_range = (lo, hi)
        self.params = {
            "degrees": float(degrees),
            "translate": float(translate),
            "scale": [float(scale[0]), float(scale[1])],
            "flip_p": float(flip_p),
            "noise_sigma": [float(noise_sigma[0]), float(noise_sigma[1])],
            "value_range": [lo, hi],
        }
        self.geometric = v2.Compose(
            [
                v2.RandomHorizontalFlip(p=flip_p),
                v2.RandomAffine(
                    degrees=degrees,
                    translate=(translate, translate),
                    scale=scale,
                    interpolation=v2.InterpolationMode.BILINEAR,
                    fill={tv_tensors.Image: lo, tv_tensors.Mask: 0},
                ),
            ]
        )
        self.noise = RandomGaussianNoise(noise_sigma, scale=hi - lo)

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor | None = None, *, seed: int | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Augment ``image`` [C,H,W] (float) and, if given, ``mask`` [C,H,W] with the same geometry.

        Args:
            image: float tensor [C, H, W]. A leading batch dimension would share one draw of the
                random parameters across the batch; call once per image for independent draws.
            mask: optional integer/bool mask of the same spatial size.
            seed: fixes the random draw (torch's global generator state is restored afterwards);
                None uses the current global generator.

        Returns:
            The augmented image, or (image, mask) when a mask is given; the mask keeps its dtype.
        """
        if not torch.is_floating_point(image):
            raise TypeError(f"image must be a float tensor, got {image.dtype}")
        if mask is not None and mask.shape[-2:] != image.shape[-2:]:
            raise ValueError(
                f"mask size {tuple(mask.shape[-2:])} != image size {tuple(image.shape[-2:])}"
            )
        lo, hi = self.value_range
        with _seeded(seed):
            img = tv_tensors.Image(image)
            if mask is None:
                out_img = self.noise(self.geometric(img))
                return out_img.as_subclass(torch.Tensor).clamp_(lo, hi)
            out_img, out_mask = self.geometric(img, tv_tensors.Mask(mask))
            out_img = self.noise(out_img)
        return out_img.as_subclass(torch.Tensor).clamp_(lo, hi), out_mask.as_subclass(torch.Tensor)


def _balanced_sources(n_available: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices into ``n_available`` sources, each used floor/ceil(count/n) times."""
    reps = -(-count // n_available)
    order = np.concatenate([rng.permutation(n_available) for _ in range(reps)])
    return order[:count]


def _check_training_only(table: pd.DataFrame) -> None:
    """Refuse source rows outside the training split (CA must never see evaluation images)."""
    if "split" not in table.columns:
        return
    bad = table.loc[table["split"] != "train", "case_id"].astype(str).tolist()
    if bad:
        raise ScenarioError(
            f"CA: {len(bad)} source case(s) are not in the training split (e.g. {bad[:3]}); "
            "pass cohort.subset('train')"
        )


def _source_plan(labels: np.ndarray, per_class: int, seed: int) -> list[tuple[int, int]]:
    """(class index, source row) of every CA image, class-major, sources balanced per class."""
    plan: list[tuple[int, int]] = []
    for ci, name in enumerate(CLASSES):
        rows = np.flatnonzero(labels == ci)
        if rows.size == 0:
            raise ScenarioError(
                f"CA: no training images of class {name} to augment; the training split needs at "
                "least one case per class"
            )
        rng = np.random.default_rng([int(seed), ci])
        plan.extend((ci, int(rows[j])) for j in _balanced_sources(rows.size, per_class, rng))
    return plan


def _augment_all(
    aug: ConventionalAugment,
    images: torch.Tensor,
    rows: list[int],
    seeds: list[int],
    progress: bool,
) -> torch.Tensor:
    """``aug(images[row])`` under each image's seed, on one torch thread (``docs/data.md``)."""
    out = torch.empty((len(rows), *images.shape[1:]), dtype=torch.float32)
    bar = {"desc": "CA", "unit": "img", "disable": not progress, "leave": False}
    with torch.random.fork_rng(devices=[]), torch_threads(1):
        for k, row in enumerate(tqdm(rows, mininterval=1.0, **bar)):
            torch.manual_seed(seeds[k])
            out[k] = aug(images[row])
    return out


def make_ca_set(
    cohort_train: PreparedCohort,
    per_class: int = 1000,
    seed: int = 0,
    *,
    value_range: tuple[float, float] | None = None,
    progress: bool = True,
) -> SyntheticSet:
    """Make ``per_class`` conventionally augmented images per class from training images.

    Sources are drawn per class in seeded random order, each training image used as evenly as
    possible (floor or ceil of per_class / n_class times).

    Args:
        cohort_train: the training split only (a ``PreparedCohort``); val/external rows are refused
            so that CA can never leak evaluation images into training.
        per_class: images per class (the paper: 1000).
        seed: the set's seed; image ``k`` uses ``derive_seed(seed, k)`` (written to the manifest).
        value_range: data range for clipping and border fill; default: min/max of the source images.
        progress: show a tqdm bar.

    Returns:
        A ``SyntheticSet`` with method ``CA``, source_id = the source case id, rows class-major
        in CLASSES order.

    Raises:
        ScenarioError: rows outside the training split, a class without training images, or
            per_class < 1.
    """
    if per_class < 1:
        raise ScenarioError(f"CA: per_class must be >= 1, got {per_class}")
    table = cohort_train.table
    _check_training_only(table)
    labels = cohort_train.labels.numpy()
    images = cohort_train.images.float()
    if value_range is None:
        value_range = (float(images.min()), float(images.max()))
        if value_range[1] <= value_range[0]:
            value_range = (value_range[0], value_range[0] + 1.0)
    aug = ConventionalAugment(value_range=value_range)
    case_ids = table["case_id"].astype(str).to_numpy()
    plan = _source_plan(labels, per_class, seed)
    seeds = [derive_seed(seed, k) for k in range(len(plan))]
    out = _augment_all(aug, images, [row for _, row in plan], seeds, progress)

    manifest = pd.DataFrame(
        {
            "index": np.arange(len(plan)),
            "label": [CLASSES[ci] for ci, _ in plan],
            "method": "CA",
            "generator_uri": GENERATOR_URI,
            "generator_version": f"thyroaug {thyroaug.__version__} / torchvision "
            f"{torchvision.__version__}",
            "seed": seeds,
            "source_id": [case_ids[row] for _, row in plan],
        }
    )
    info = {
        "method": "CA",
        "seed": int(seed),
        "per_class": int(per_class),
        "cohort_hash": cohort_train.content_hash,
        "image_size": int(images.shape[-1]),
        "transform": aug.params,
    }
    log.info(
        "CA: %d images (%d per class) from %d training cases", len(plan), per_class, len(labels)
    )
    return SyntheticSet(
        out, torch.tensor([ci for ci, _ in plan], dtype=torch.int64), manifest, info
    )
