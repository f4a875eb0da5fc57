"""Bring every case to one square size and one intensity scale: pad, B-spline resample, normalise.

Resampling follows the paper (Sec. 3.1); the padding and normalisation rules are in
``docs/data.md``, "Preprocessing".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from thyroaug.errors import ConfigError, ImageReadError

NORMALISATIONS: tuple[str, ...] = ("max", "counts")
NON_SQUARE_POLICIES: tuple[str, ...] = ("pad", "error")


@dataclass(frozen=True)
class PreprocessSettings:
    """How cases are resampled and normalised (all recorded in the prepared cohort)."""

    size: int = 128
    normalisation: str = "max"
    percentile: float = 99.9
    non_square: str = "pad"

    def __post_init__(self) -> None:
        if int(self.size) < 8:
            raise ConfigError(f"size={self.size}: expected an image side of at least 8 pixels")
        if self.normalisation not in NORMALISATIONS:
            raise ConfigError(
                f"normalisation={self.normalisation!r}: choose one of {', '.join(NORMALISATIONS)}"
            )
        if not 50.0 <= float(self.percentile) <= 100.0:
            raise ConfigError(f"percentile={self.percentile}: expected a value in [50, 100]")
        if self.non_square not in NON_SQUARE_POLICIES:
            raise ConfigError(
                f"non_square={self.non_square!r}: choose one of {', '.join(NON_SQUARE_POLICIES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Settings plus the fixed choices (interpolators, clamping), for the cohort record."""
        return {
            **asdict(self),
            "image_interpolator": "sitkBSpline",
            "mask_interpolator": "sitkNearestNeighbor",
            "negative_overshoot": "clamped to 0",
            "pad_value": 0,
        }


def pad_to_square(array: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Zero-pad a 2-D array, centred, to a square; return it and (top, bottom, left, right)."""
    rows, cols = array.shape
    side = max(rows, cols)
    top, left = (side - rows) // 2, (side - cols) // 2
    pads = (top, side - rows - top, left, side - cols - left)
    if side == rows == cols:
        return array, pads
    return np.pad(array, ((pads[0], pads[1]), (pads[2], pads[3]))), pads


def _resample(array: np.ndarray, size: int, interpolator: int, pixel_id: int) -> np.ndarray:
    """Resample a square 2-D array to size x size, keeping its physical extent."""
    image = sitk.GetImageFromArray(array)
    in_size = np.asarray(image.GetSize(), dtype=np.float64)
    out_spacing = in_size / size
    out_origin = 0.5 * (out_spacing - 1.0)  # input spacing 1, origin 0: pixel centres aligned
    resampled = sitk.Resample(
        image,
        [size, size],
        sitk.Transform(),
        interpolator,
        out_origin.tolist(),
        out_spacing.tolist(),
        image.GetDirection(),
        0.0,
        pixel_id,
    )
    return sitk.GetArrayFromImage(resampled)


def resample_image(image: np.ndarray, size: int) -> np.ndarray:
    """B-spline resample a square image to size x size (float32, negatives clamped to 0)."""
    if image.shape == (size, size):
        return np.clip(image, 0, None).astype(np.float32)
    out = _resample(image.astype(np.float64), size, sitk.sitkBSpline, sitk.sitkFloat64)
    return np.clip(out, 0, None).astype(np.float32)


def resample_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resample a square binary mask to size x size (uint8 {0, 1})."""
    binary = (mask > 0).astype(np.uint8)
    if binary.shape == (size, size):
        return binary
    return _resample(binary, size, sitk.sitkNearestNeighbor, sitk.sitkUInt8)


def normalise(
    image: np.ndarray,
    method: str = "max",
    percentile: float = 99.9,
    total: float | None = None,
) -> np.ndarray:
    """Intensity normalisation (``docs/data.md``, "Preprocessing").

    Args:
        image: resampled image (non-negative).
        method: ``max`` (robust maximum -> [0, 1]) or ``counts`` (total kept at ``total``).
        percentile: robust-maximum percentile for ``max``.
        total: original total counts for ``counts`` (required there).

    Raises:
        ConfigError: unknown ``method``, or ``counts`` without ``total``.
    """
    image = image.astype(np.float64)
    if method == "max":
        top = float(np.percentile(image, percentile))
        if top <= 0:
            top = float(image.max())
        if top <= 0:
            return np.zeros_like(image, dtype=np.float32)
        return np.clip(image / top, 0.0, 1.0).astype(np.float32)
    if method == "counts":
        if total is None:
            raise ConfigError("normalise(method='counts') needs the original total counts")
        current = float(image.sum())
        if current <= 0:
            return np.zeros_like(image, dtype=np.float32)
        return (image * (total / current)).astype(np.float32)
    raise ConfigError(f"normalisation={method!r}: choose one of {', '.join(NORMALISATIONS)}")


def preprocess_case(
    image: np.ndarray,
    mask: np.ndarray | None,
    settings: PreprocessSettings,
    case_id: str = "?",
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Square, resample and normalise one case.

    Args:
        image: 2-D image as read (``thyroaug.data.io.read_image``).
        mask: 2-D binary mask of the same shape, or None.
        settings: preprocessing settings.
        case_id: named in error messages.

    Returns:
        (image float32 [S, S], mask uint8 [S, S] or None, info with the original shape / padding).

    Raises:
        ImageReadError: image / mask shapes differ, or non-square input with ``non_square="error"``.
    """
    rows, cols = image.shape
    if mask is not None and mask.shape != image.shape:
        raise ImageReadError(
            f"case {case_id}: image is {rows}x{cols} but mask is {mask.shape[0]}x{mask.shape[1]}; "
            "the mask must be drawn on the image's pixel grid"
        )
    padded = rows != cols
    if padded and settings.non_square == "error":
        raise ImageReadError(
            f"case {case_id}: image is {rows}x{cols} (not square) and non_square='error'; "
            "crop it to a square, or use non_square='pad' (zero padding, centred)"
        )
    image, pads = pad_to_square(image)
    if mask is not None:
        mask, _ = pad_to_square(mask)
    total = float(np.clip(image, 0, None).sum())
    out = resample_image(image, settings.size)
    out = normalise(out, settings.normalisation, settings.percentile, total=total)
    out_mask = resample_mask(mask, settings.size) if mask is not None else None
    info = {"orig_rows": rows, "orig_cols": cols, "padded": padded, "pad": list(pads)}
    return out, out_mask, info
