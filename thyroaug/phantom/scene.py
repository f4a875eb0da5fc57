"""Scene sampling: one case's anatomy and physiology, drawn for its class (``sample_scene``).

The class distributions overlap on purpose and a share of scans looks like another class
(``docs/phantom.md``, "Scenes"). Nothing here knows about cameras or files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

import thyroaug.phantom.anatomy as an
from thyroaug import CLASSES
from thyroaug.errors import ConfigError
from thyroaug.phantom.cases import Traits

ATYPICAL_FRACTION = 0.05
"""Share of cases whose scan looks like a neighbouring class (the label came from the clinical
work-up: labs, ultrasound), which caps the accuracy any image classifier can reach."""

_LOOKALIKE: dict[str, tuple[str, ...]] = {
    "DG": ("NL", "NG"),
    "NG": ("DG", "NL"),
    "NL": ("DG", "NG", "TI"),
    "TI": ("NL",),
}


def _lognormal(rng: np.random.Generator, median: float, sigma: float, lo: float, hi: float):
    return float(np.clip(median * math.exp(sigma * rng.standard_normal()), lo, hi))


@dataclass
class _ClassDraw:
    """Class-dependent scalar draws before geometry."""

    size: float
    uptake: float
    texture_amp: float
    texture_scale: float
    isthmus_p: float
    isthmus_scale: float
    pyramidal_p: float
    bulk: float = 1.0
    texture: str = "homogeneous"
    focal_lobe: str | None = None
    focal_uptake: float = 0.0
    counts_factor: float = 1.0


def _draw_class(label: str, rng: np.random.Generator) -> _ClassDraw:
    """The class's size / uptake / texture distributions (with deliberate overlap)."""
    u = rng.uniform
    if label == "NL":
        d = _ClassDraw(
            size=float(np.clip(rng.normal(1.0, 0.08), 0.8, 1.24)),
            uptake=_lognormal(rng, 6.0, 0.35, 2.6, 13.0),
            texture_amp=u(0.03, 0.12),
            texture_scale=u(3, 8),
            isthmus_p=0.85,
            isthmus_scale=1.0,
            pyramidal_p=0.08,
        )
    elif label == "DG":
        mild = rng.random() < 0.25
        d = _ClassDraw(
            size=u(1.04, 1.22) if mild else float(np.clip(rng.normal(1.35, 0.15), 1.1, 1.9)),
            uptake=u(6.5, 11.0) if mild else _lognormal(rng, 15.0, 0.35, 8.0, 40.0),
            texture_amp=u(0.02, 0.09),
            texture_scale=u(3, 8),
            isthmus_p=0.95,
            isthmus_scale=1.4,
            pyramidal_p=0.3,
            bulk=u(1.0, 1.2),
        )
    elif label == "NG":
        d = _ClassDraw(
            size=float(np.clip(rng.normal(1.25, 0.18), 0.92, 2.1)),
            uptake=_lognormal(rng, 7.0, 0.4, 2.8, 20.0),
            texture_amp=u(0.08, 0.24),
            texture_scale=u(3, 8),
            isthmus_p=0.85,
            isthmus_scale=1.1,
            pyramidal_p=0.08,
        )
    elif label == "TI":
        focal = rng.random() < 0.2
        patchy = focal or rng.random() < 0.45
        d = _ClassDraw(
            size=float(np.clip(rng.normal(1.02, 0.12), 0.75, 1.45)),
            uptake=_lognormal(rng, 1.6, 0.45, 0.4, 4.0),
            texture_amp=u(0.25, 0.5) if patchy else u(0.05, 0.18),
            texture_scale=u(5, 10) if patchy else u(3, 8),
            isthmus_p=0.8,
            isthmus_scale=1.0,
            pyramidal_p=0.05,
            texture="patchy" if patchy else "homogeneous",
            counts_factor=0.5,
        )
        if focal:
            d.focal_lobe = "right" if rng.random() < 0.5 else "left"
            d.focal_uptake = u(0.5, 1.5)
            d.uptake = u(2.5, 5.0)  # the spared lobe
    else:
        raise ConfigError(f"unknown class {label!r}; expected one of {', '.join(CLASSES)}")
    return d


def _lobe(side: str, size: float, bulk: float, asym: float, rng: np.random.Generator) -> an.Lobe:
    s = size * asym
    half_width = 8.5 * s**0.9 * bulk * rng.normal(1.0, 0.07)
    gap = 7.0 + 1.5 * rng.standard_normal()
    return an.Lobe(
        side=side,
        cx=(-1.0 if side == "right" else 1.0) * (gap + 0.9 * half_width),
        cy=float(rng.normal(0.0, 2.0)),
        half_length=22.0 * s * rng.normal(1.0, 0.06),
        half_width=half_width,
        half_depth=8.0 * s**0.8 * bulk**0.5,
        tilt=math.radians(rng.uniform(6.0, 22.0)),
        taper=rng.uniform(0.1, 0.45) / bulk,
        uptake=1.0,
    )


def _point_in_lobe(lobe: an.Lobe, u: float, v: float) -> tuple[float, float]:
    """Patient-frame (x, y) of lobe coordinates (u along the axis, cranial +; v across)."""
    st, ct = math.sin(lobe.tilt), math.cos(lobe.tilt)
    return lobe.cx + lobe.sign * st * u + ct * v, lobe.cy - ct * u + lobe.sign * st * v


def _draw_nodules(
    lobes: dict[str, an.Lobe], isthmus: an.Isthmus, uptake: float, rng: np.random.Generator
) -> tuple[dict[str, an.Lobe], tuple[an.Nodule, ...], bool]:
    """Nodules of a nodular goiter; may enlarge the lobes that carry them.

    Returns the (possibly enlarged / suppressed) lobes, the nodules and whether the extranodular
    tissue is suppressed (toxic adenoma).
    """
    toxic = rng.random() < 0.1
    n = 1 if toxic else int(rng.choice([1, 2, 3, 4, 5], p=[0.32, 0.26, 0.2, 0.12, 0.1]))
    subtle_case = rng.random() < 0.25  # only small / low-contrast nodules
    sides = ["right", "left"] + (["isthmus"] if isthmus.half_height > 0 else [])
    weights = np.array([0.47, 0.43, 0.10][: len(sides)])
    nodules: list[an.Nodule] = []
    grown: set[str] = set()
    for _ in range(n):
        side = str(rng.choice(sides, p=weights / weights.sum()))
        if toxic:
            kind = "hot"
        else:
            kind = str(rng.choice(["cold", "hot", "warm"], p=[0.55, 0.25, 0.2]))
        if side == "isthmus":
            x = rng.uniform(-0.4, 0.4) * isthmus.half_width
            y = isthmus.cy + rng.uniform(-0.3, 0.3) * isthmus.half_height
            radius = rng.uniform(3.5, 7.0)
        else:
            lobe = lobes[side]
            if side not in grown and not subtle_case:
                f = rng.uniform(1.0, 1.25)
                lobes[side] = lobe = replace(
                    lobe, half_width=lobe.half_width * f, half_length=lobe.half_length * f**0.5
                )
                grown.add(side)
            u_ = rng.uniform(-0.65, 0.55) * lobe.half_length
            v_ = rng.uniform(-0.45, 0.45) * lobe.half_width
            x, y = _point_in_lobe(lobe, u_, v_)
            hi = 0.6 * lobe.half_width if subtle_case else 1.1 * lobe.half_width
            radius = rng.uniform(3.5, max(hi, 4.0))
        if toxic:
            nod_uptake = uptake * rng.uniform(2.5, 5.0)
        elif kind == "cold":
            lo_hi = (0.55, 0.8) if subtle_case else (0.05, 0.6)
            nod_uptake = uptake * rng.uniform(*lo_hi)
        elif kind == "warm":
            nod_uptake = uptake * rng.uniform(1.2, 1.45 if subtle_case else 1.6)
        else:
            nod_uptake = (
                uptake * rng.uniform(1.4, 1.8) if subtle_case else uptake * rng.uniform(1.7, 3.5)
            )
        nodules.append(an.Nodule(side, float(x), float(y), float(radius), float(nod_uptake), kind))
    if toxic:
        factor = rng.uniform(0.12, 0.35)
        for side in ("right", "left"):
            lobes[side] = replace(lobes[side], uptake=lobes[side].uptake * factor)
    return lobes, tuple(nodules), toxic


def sample_scene(
    label: str, rng: np.random.Generator, marker_rate: float = 0.0
) -> tuple[an.Scene, Traits]:
    """Draw one case's anatomy and physiology for class ``label``.

    With probability ``ATYPICAL_FRACTION`` the scan is drawn from a look-alike class (the label
    stays: it came from the clinical work-up); ``Traits.appearance`` records which.

    Args:
        label: One of ``thyroaug.CLASSES``.
        rng: Random generator (consumed).
        marker_rate: Probability of a point-source marker in the field.

    Returns:
        The scene and its ``Traits`` (what the findings are written from).
    """
    # The steps draw from ``rng`` in this order; reordering them changes every case.
    appearance = _draw_appearance(label, rng)
    d = _draw_class(appearance, rng)
    lobes = _draw_lobes(d, rng)
    low_pole = 0.5 * (lobes["right"].cy + lobes["left"].cy)
    isthmus = _draw_isthmus(lobes, low_pole, d, rng)
    pyramidal = _draw_pyramidal(isthmus, low_pole, d, rng)
    nodules: tuple[an.Nodule, ...] = ()
    suppressed = False
    if appearance == "NG":
        lobes, nodules, suppressed = _draw_nodules(lobes, isthmus, d.uptake, rng)
    gland = an.Gland(
        right=lobes["right"],
        left=lobes["left"],
        isthmus=isthmus,
        pyramidal=pyramidal,
        nodules=nodules,
        texture=an.Texture(d.texture_amp, d.texture_scale),
    )
    salivary, shift = _draw_salivary(rng)
    neck = _draw_neck(lobes, rng)
    markers = _draw_markers(low_pole, shift, marker_rate, rng)

    host_uptake = float(np.mean([lobes["right"].uptake, lobes["left"].uptake]))
    traits = Traits(
        uptake=host_uptake,
        texture=_texture_word(d, appearance),
        suppressed=suppressed,
        counts_factor=d.counts_factor,
        appearance=appearance,
    )
    return an.Scene(gland, salivary, neck, markers), traits


def _draw_appearance(label: str, rng: np.random.Generator) -> str:
    """The class the scan looks like: ``label``, or a look-alike for an atypical case."""
    appearance = label
    if rng.random() < ATYPICAL_FRACTION:
        choices = _LOOKALIKE[label]
        appearance = choices[int(rng.integers(len(choices)))]
    return appearance


def _draw_lobes(d: _ClassDraw, rng: np.random.Generator) -> dict[str, an.Lobe]:
    """Both lobes (a slight right-left asymmetry), each with its own tissue uptake."""
    asym_r = math.exp(rng.normal(0.03, 0.07))
    asym_l = math.exp(rng.normal(0.0, 0.07))
    lobes = {
        "right": _lobe("right", d.size, d.bulk, asym_r, rng),
        "left": _lobe("left", d.size, d.bulk, asym_l, rng),
    }
    for side in lobes:
        uptake = d.uptake
        if d.focal_lobe == side:
            uptake = d.focal_uptake
        lobes[side] = replace(lobes[side], uptake=uptake * rng.normal(1.0, 0.05))
    return lobes


def _draw_isthmus(
    lobes: dict[str, an.Lobe], low_pole: float, d: _ClassDraw, rng: np.random.Generator
) -> an.Isthmus:
    """The isthmus below the lobes' centres (``half_height`` 0 when absent)."""
    return an.Isthmus(
        cy=low_pole + rng.uniform(6.0, 14.0) * d.size,
        half_width=0.5 * (lobes["left"].cx - lobes["right"].cx),
        half_height=(rng.uniform(3.0, 6.0) * d.size * d.isthmus_scale)
        if rng.random() < d.isthmus_p
        else 0.0,
        half_depth=rng.uniform(2.5, 4.5) * d.isthmus_scale,
    )


def _draw_pyramidal(
    isthmus: an.Isthmus, low_pole: float, d: _ClassDraw, rng: np.random.Generator
) -> an.PyramidalLobe | None:
    """A pyramidal lobe rising from the isthmus (or the lower poles), or None."""
    if rng.random() >= d.pyramidal_p:
        return None
    base = isthmus.cy - isthmus.half_height if isthmus.half_height > 0 else low_pole + 5.0
    half_length = rng.uniform(7.0, 14.0) * d.size
    return an.PyramidalLobe(
        cx=rng.uniform(-3.0, 8.0),
        cy=base - 0.9 * half_length,
        half_length=half_length,
        half_width=rng.uniform(2.0, 3.5),
        half_depth=rng.uniform(2.0, 3.0),
        tilt=rng.uniform(-0.15, 0.15),
    )


def _draw_salivary(rng: np.random.Generator) -> tuple[tuple[an.Ellipsoid, ...], float]:
    """Submandibular and parotid glands (and sometimes the mouth), and the head's shift (mm)."""
    shift = rng.normal(0.0, 6.0)  # neck flexion / extension moves the head structures
    sal_level = _lognormal(rng, 3.5, 0.3, 1.5, 8.0)
    salivary: list[an.Ellipsoid] = []
    for sx in (-1.0, 1.0):
        salivary.append(
            an.Ellipsoid(
                name="submandibular",
                cx=sx * rng.uniform(30.0, 40.0),
                cy=rng.uniform(-72.0, -55.0) + shift,
                half_x=rng.uniform(11.0, 15.0),
                half_y=rng.uniform(8.0, 11.0),
                peak=sal_level * rng.normal(1.0, 0.1),
            )
        )
        salivary.append(
            an.Ellipsoid(
                name="parotid",
                cx=sx * rng.uniform(55.0, 68.0),
                cy=rng.uniform(-100.0, -85.0) + shift,
                half_x=rng.uniform(12.0, 18.0),
                half_y=rng.uniform(18.0, 26.0),
                peak=sal_level * rng.uniform(0.5, 0.9),
            )
        )
    if rng.random() < 0.6:
        salivary.append(
            an.Ellipsoid(
                name="mouth",
                cx=rng.normal(0.0, 3.0),
                cy=rng.uniform(-100.0, -85.0) + shift,
                half_x=rng.uniform(12.0, 20.0),
                half_y=rng.uniform(6.0, 10.0),
                peak=rng.uniform(0.5, 2.5),
            )
        )
    return tuple(salivary), shift


def _draw_neck(lobes: dict[str, an.Lobe], rng: np.random.Generator) -> an.Neck:
    """Neck background: soft tissue, the great vessels lateral to the lobes, the oesophagus."""
    lateral = max(abs(lobes["right"].cx) + lobes["right"].half_width, lobes["left"].cx)
    return an.Neck(
        level=1.0,
        half_width=rng.uniform(50.0, 65.0),
        vessel_x=lateral + rng.uniform(2.0, 8.0),
        vessel_level=rng.uniform(0.15, 0.5),
        oesophagus_level=rng.uniform(0.3, 1.5) if rng.random() < 0.12 else 0.0,
        floor=rng.uniform(0.02, 0.08),
        texture=an.Texture(rng.uniform(0.03, 0.1), 15.0),
    )


def _draw_markers(
    low_pole: float, shift: float, marker_rate: float, rng: np.random.Generator
) -> tuple[an.Marker, ...]:
    """With probability ``marker_rate``, one point-source marker (sternal notch or chin)."""
    if rng.random() >= marker_rate:
        return ()
    if rng.random() < 0.7:
        name, marker_y = "sternal notch", low_pole + rng.uniform(38.0, 55.0)
    else:
        name, marker_y = "chin", rng.uniform(-110.0, -90.0) + shift
    marker_x = rng.normal(0.0, 3.0)
    return (an.Marker(name, float(marker_x), float(marker_y), rng.uniform(0.5, 2.5)),)


def _texture_word(d: _ClassDraw, appearance: str) -> str:
    """The texture the findings report (thyroiditis keeps its drawn patchy / homogeneous)."""
    texture = d.texture
    if appearance != "TI":
        texture = "homogeneous" if d.texture_amp < 0.12 else "mild"
        if d.texture_amp > 0.2:
            texture = "heterogeneous"
    return texture
