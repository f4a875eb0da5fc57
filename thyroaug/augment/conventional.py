"""Conventional augmentation (CA), paper section 3.2.1, with ``torchvision.transforms.v2``.

The paper's randomised pipeline: rotation (±15°), horizontal flip, translation (±10 %),
scaling (0.8–1.2×) and additive Gaussian noise with sigma drawn from [0.001, 0.01]. Rotation,
translation and scale are one ``RandomAffine`` (a single bilinear resampling instead of three); the
flip comes first. Everything runs on tensors. With a mask, image and mask receive the same geometric
transform; ``tv_tensors.Mask`` makes torchvision resample the mask with nearest-neighbour
interpolation, so a 0/1 mask stays 0/1. Noise touches the image only. The output is clipped to
the data range.

The paper's noise sigmas are for images in [0, 1]; here sigma is relative to the width of the data
range (``hi - lo``), which is the same thing for [0, 1] images and keeps the meaning for others.
Pixels that the affine moves in from outside the frame take the range minimum (the background).

The paper treats CA as one more augmentation method producing 1000 images per class, so
``make_ca_set`` returns a ``SyntheticSet`` (method ``CA``) like the generators do. Every image has
its own seed (recorded in the manifest), derived from the set's seed and the image index, so one
image can be reproduced alone: ``ConventionalAugment(...)(source_image, seed=manifest_seed)``.
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

log = logging.getLogger(__name__)

ROTATION_DEGREES: float = 15.0
TRANSLATE: float = 0.10
SCALE: tuple[float, float] = (0.8, 1.2)
FLIP_P: float = 0.5
NOISE_SIGMA: tuple[float, float] = (0.001, 0.01)
GENERATOR_URI = "thyroaug.augment.conventional"


class RandomGaussianNoise(v2.Transform):
    """Additive Gaussian noise whose sigma is drawn uniformly from ``sigma_range`` per call.

    Masks (and anything that is not a float image) pass through unchanged. Randomness comes from
    torch's global generator, like every ``v2`` transform, so ``torch.manual_seed`` fixes it.

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


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run per-image ops on one torch thread (restored afterwards).

    Each CA image is a handful of tiny kernels; intra-op threads only add synchronisation, and on
    a busy machine waiting OpenMP threads make it 10-30x slower (bench/classifier.py).
    """
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` in a set made with ``seed`` (independent streams per image)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint32)[0])


def _balanced_sources(n_available: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices into ``n_available`` sources, each used floor/ceil(count/n) times."""
    reps = -(-count // n_available)
    order = np.concatenate([rng.permutation(n_available) for _ in range(reps)])
    return order[:count]


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
        seed: the set's seed; image ``k`` uses ``image_seed(seed, k)`` (written to the manifest).
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
    if "split" in table.columns:
        bad = table.loc[table["split"] != "train", "case_id"].astype(str).tolist()
        if bad:
            raise ScenarioError(
                f"CA: {len(bad)} source case(s) are not in the training split (e.g. {bad[:3]}); "
                "pass cohort.subset('train')"
            )
    labels = cohort_train.labels.numpy()
    images = cohort_train.images.float()
    if value_range is None:
        value_range = (float(images.min()), float(images.max()))
        if value_range[1] <= value_range[0]:
            value_range = (value_range[0], value_range[0] + 1.0)
    aug = ConventionalAugment(value_range=value_range)
    case_ids = table["case_id"].astype(str).to_numpy()

    plan: list[tuple[int, int]] = []  # (class index, source row)
    for ci, name in enumerate(CLASSES):
        rows = np.flatnonzero(labels == ci)
        if rows.size == 0:
            raise ScenarioError(
                f"CA: no training images of class {name} to augment; the training split needs at "
                "least one case per class"
            )
        rng = np.random.default_rng([int(seed), ci])
        plan.extend((ci, int(rows[j])) for j in _balanced_sources(rows.size, per_class, rng))

    out = torch.empty((len(plan), *images.shape[1:]), dtype=torch.float32)
    seeds = [image_seed(seed, k) for k in range(len(plan))]
    with torch.random.fork_rng(devices=[]), _one_thread():
        for k, (_, row) in enumerate(
            tqdm(plan, desc="CA", unit="img", disable=not progress, leave=False, mininterval=1.0)
        ):
            torch.manual_seed(seeds[k])
            out[k] = aug(images[row])

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
