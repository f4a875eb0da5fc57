"""Image formation: a scene acquired on one center's gamma camera (``acquire``)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

import thyroaug.phantom.anatomy as an
from thyroaug.phantom.cases import Acquisition
from thyroaug.phantom.scanners import CenterProfile


def acquire(
    scene: an.Scene, profile: CenterProfile, rng: np.random.Generator, counts_factor: float = 1.0
) -> Acquisition:
    """Image ``scene`` on ``profile``'s camera: framing, PSF + scatter, counts, Poisson noise."""
    n = profile.matrix
    zoom = math.exp(rng.normal(0.0, profile.zoom_sd))
    pixel_mm = profile.fov_mm / (n * zoom)
    off_x = profile.offset_mm[0] + rng.normal(0.0, profile.offset_sd_mm)
    off_y = profile.offset_mm[1] + rng.normal(0.0, profile.offset_sd_mm)
    theta = math.radians(rng.normal(0.0, profile.rotation_sd_deg))
    fwhm = profile.fwhm_mm * rng.uniform(0.9, 1.1)
    sigma_px = fwhm / 2.3548 / pixel_mm
    lo, hi = profile.total_counts
    total = math.exp(rng.uniform(math.log(lo), math.log(hi))) * counts_factor

    coords = (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * pixel_mm
    yi, xi = np.meshgrid(coords - off_y, coords - off_x, indexing="ij")
    ct, st = math.cos(theta), math.sin(theta)
    x = ct * xi + st * yi
    y = -st * xi + ct * yi

    maps = an.render_scene(scene, x, y, pixel_mm, sigma_px, rng)
    source = maps.activity + maps.markers
    sharp = ndimage.gaussian_filter(source, sigma_px, mode="constant")
    broad = ndimage.gaussian_filter(source, 3.0 * sigma_px, mode="constant")
    expected = (1.0 - profile.scatter) * sharp + profile.scatter * broad
    if profile.field == "circle":
        r = np.hypot(*np.meshgrid(np.arange(n) - (n - 1) / 2.0, np.arange(n) - (n - 1) / 2.0))
        field_mask = r <= 0.49 * n
    else:
        field_mask = np.ones((n, n), dtype=bool)
    expected = np.where(field_mask, expected, 0.0)
    expected *= total / max(float(expected.sum()), 1e-12)
    counts = np.clip(rng.poisson(expected), 0, 65535).astype(np.uint16)

    outline = ndimage.gaussian_filter(
        maps.support.astype(np.float32), max(0.6, 0.35 * sigma_px), mode="constant"
    )
    mask = ((outline >= profile.contour_level) & field_mask).astype(np.uint8)
    info = {
        "zoom": zoom,
        "pixel_mm": pixel_mm,
        "offset_x_mm": off_x,
        "offset_y_mm": off_y,
        "rotation_deg": math.degrees(theta),
        "fwhm_mm": fwhm,
        "total_counts": float(counts.sum(dtype=np.int64)),
    }
    return Acquisition(counts, mask, pixel_mm, expected.astype(np.float32), info)
