"""The one image resize and the one mask resize (preprocessing, classifier, FM, SD, fidelity).

Images: bilinear, antialiased, ``align_corners=False``, clamped to the input's range; masks:
``nearest-exact``, dtype kept. Why these: ``docs/data.md``, "Resizing".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(x: torch.Tensor, size: int, what: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{what} must be [N, C, H, W], got shape {tuple(x.shape)}")
    if int(size) < 1:
        raise ValueError(f"size must be >= 1, got {size}")


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images ``[N, C, H, W]`` -> ``[N, C, size, size]`` float32 (bilinear, antialiased)."""
    _check(images, size, "images")
    x = images.float()
    if x.shape[-2:] == (size, size) or x.shape[0] == 0:
        return x if x.shape[-2:] == (size, size) else x.new_zeros((0, x.shape[1], size, size))
    out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp_(float(x.min()), float(x.max()))


def resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Masks / label maps ``[N, C, H, W]`` -> ``[N, C, size, size]`` (nearest-exact, same dtype)."""
    _check(masks, size, "masks")
    if masks.shape[-2:] == (size, size):
        return masks
    if masks.shape[0] == 0:
        return masks.new_zeros((0, masks.shape[1], size, size))
    out = F.interpolate(masks.float(), size=(size, size), mode="nearest-exact")
    return out.to(masks.dtype)
