"""Describing a scene: the structured ``Findings`` a physician would state for it (fixed thresholds,
so the report agrees with what was rendered).
"""

from __future__ import annotations

import math

import numpy as np

import thyroaug.phantom.anatomy as an
from thyroaug.phantom.cases import Traits
from thyroaug.reports.findings import Findings


def _size_word(size: float) -> str:
    for limit, word in (
        (0.86, "small"),
        (1.12, "normal"),
        (1.25, "mildly enlarged"),
        (1.5, "enlarged"),
    ):
        if size < limit:
            return word
    return "markedly enlarged"


def _uptake_word(uptake: float) -> str:
    for limit, word in (
        (0.8, "absent"),
        (1.6, "very low"),
        (3.0, "low"),
        (9.5, "normal"),
        (16.0, "increased"),
    ):
        if uptake < limit:
            return word
    return "intense"


def gland_size_factor(gland: an.Gland) -> float:
    """Linear size of the gland relative to a reference normal gland (1 = normal)."""
    per_lobe = [
        math.sqrt((lobe.half_length / 22.0) * (lobe.half_width / 8.5))
        for lobe in (gland.right, gland.left)
    ]
    return float(np.mean(per_lobe))


def thyroid_peak(gland: an.Gland) -> float:
    """Unblurred peak projected activity of the gland (texture ignored)."""
    peaks = [
        lobe.uptake * lobe.half_depth / an.REFERENCE_DEPTH_MM for lobe in (gland.right, gland.left)
    ]
    peaks += [n.uptake * n.radius / an.REFERENCE_DEPTH_MM for n in gland.nodules]
    return float(max(peaks))


def describe(scene: an.Scene, traits: Traits, label: str) -> Findings:
    """The physician's structured findings for a scene (consistent with what was rendered)."""
    gland = scene.gland
    nodules = gland.nodules
    kinds = {n.kind for n in nodules}
    sides = {n.side for n in nodules}
    nodule_kind = None
    nodule_side = None
    if nodules:
        nodule_kind = next(iter(kinds)) if len(kinds) == 1 else "mixed"
        if len(sides) == 1:
            nodule_side = next(iter(sides))
        else:
            nodule_side = (
                "bilateral" if {"right", "left"} <= sides else sorted(sides - {"isthmus"})[0]
            )
    if traits.texture == "patchy":
        distribution = "patchy"
    elif nodules or traits.texture == "heterogeneous":
        distribution = "heterogeneous"
    elif traits.texture == "mild":
        distribution = "mildly heterogeneous"
    else:
        distribution = "homogeneous"
    uptake = traits.uptake
    peak = thyroid_peak(gland)
    background = "high" if peak < 2.5 else ("low" if peak > 12.0 else "normal")
    sal_peak = max((o.peak for o in scene.salivary if o.name != "mouth"), default=0.0)
    ratio = sal_peak / max(peak, 1e-6)
    salivary = "faint" if ratio < 0.25 else ("normal" if ratio < 0.9 else "prominent")
    return Findings(
        gland_size=_size_word(gland_size_factor(gland)),  # type: ignore[arg-type]
        uptake=_uptake_word(uptake),  # type: ignore[arg-type]
        distribution=distribution,  # type: ignore[arg-type]
        nodules=min(len(nodules), 3),
        nodule_kind=nodule_kind,  # type: ignore[arg-type]
        nodule_side=nodule_side,  # type: ignore[arg-type]
        background=background,  # type: ignore[arg-type]
        salivary=salivary,  # type: ignore[arg-type]
        pyramidal_lobe=gland.pyramidal is not None,
        impression=label,  # type: ignore[arg-type]
    )
