"""Case sampling and image formation for the phantom cohort.

For each case: plan (center, class, patient, age, sex) -> sample a ``Scene`` whose appearance
depends on the class, with deliberate overlap between classes (mild goiter vs normal, small or
subtle nodules, focal thyroiditis, toxic adenoma with a suppressed gland) -> acquire it on the
center's camera (zoom, offset, rotation, PSF + scatter, count level, Poisson noise, pinhole field)
-> describe it as a ``Findings`` consistent with the scene -> a free-text report in the center's
style. Every random draw comes from a generator keyed by (seed, center, case number, purpose), so a
case does not change when other centers or cases are added or removed.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from thyroaug import CLASSES
from thyroaug.data.phantom import anatomy as an
from thyroaug.data.phantom.reports import write_report
from thyroaug.data.phantom.scanners import (
    ALL_CENTERS,
    CENTERS,
    OVERALL_AGE,
    CenterProfile,
    parse_centers,
)
from thyroaug.errors import ConfigError
from thyroaug.findings import Findings

log = logging.getLogger(__name__)

PHANTOM_VERSION = "1.0"
"""Bumped whenever the same seed would produce different images or reports."""

REPEAT_FRACTION = 0.015
"""Share of scans that are a second scan of an earlier patient of the same center."""

ATYPICAL_FRACTION = 0.05
"""Share of cases whose scan looks like a neighbouring class (the label came from the clinical
work-up: labs, ultrasound), which caps the accuracy any image classifier can reach."""

_LOOKALIKE: dict[str, tuple[str, ...]] = {
    "DG": ("NL", "NG"),
    "NG": ("DG", "NL"),
    "NL": ("DG", "NG", "TI"),
    "TI": ("NL",),
}

_PURPOSE_PLAN, _PURPOSE_SCENE, _PURPOSE_ACQ, _PURPOSE_REPORT = 0, 1, 2, 3


# ----------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class CasePlan:
    """Who was scanned where, before any image exists.

    Attributes:
        case_id: Unique id, e.g. ``A-0001``.
        patient_id: Unique per patient, e.g. ``A-P00001`` (shared by repeat scans).
        center: Center letter.
        label: Class (``thyroaug.CLASSES``).
        number: 1-based case number within the center (keys the random streams).
        age: Age in years.
        sex: ``M`` or ``F``.
        repeat_of: case_id of the patient's earlier scan, or None.
        anatomy_number: Case number whose anatomy this scan shows (itself unless a repeat).
    """

    case_id: str
    patient_id: str
    center: str
    label: str
    number: int
    age: int
    sex: str
    repeat_of: str | None
    anatomy_number: int


def scaled_count(n: int, scale: float) -> int:
    """``round(n * scale)`` (halves up), at least 1 when ``n > 0``."""
    if n <= 0:
        return 0
    return max(1, math.floor(n * scale + 0.5))


def _check_scale_seed(scale: float, seed: int) -> None:
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and 0 < scale <= 10):
        raise ConfigError(f"scale={scale!r}: must be a number in (0, 10]; 1 = Table 1 counts")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed={seed!r}: must be a non-negative integer")


def planned_counts(
    scale: float = 1.0, centers: str | list[str] | None = None
) -> dict[str, dict[str, int]]:
    """Cases per center and class that ``simulate_cohort`` will write (no image is made).

    Args:
        scale: 1 gives exactly the paper's Table 1; smaller values shrink every cell
            proportionally (rounded, at least 1 per non-empty cell).
        centers: Center letters (e.g. ``"GHI"``); None = all nine.

    Returns:
        ``{center: {class: count}}`` with classes in ``thyroaug.CLASSES`` order.
    """
    _check_scale_seed(scale, 0)
    return {
        c: {label: scaled_count(CENTERS[c].counts[label], scale) for label in CLASSES}
        for c in parse_centers(centers)
    }


def _rng(seed: int, center: str, number: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), ALL_CENTERS.index(center), number, purpose])


def plan_center(profile: CenterProfile, seed: int, scale: float) -> list[CasePlan]:
    """Plan one center's cases: shuffled class order, sexes in Table 1 proportion (exact at
    scale 1), ages from the center's mean/sd, and a few repeat scans of earlier patients."""
    counts = {label: scaled_count(profile.counts[label], scale) for label in CLASSES}
    n = sum(counts.values())
    rng = _rng(seed, profile.center, 0, _PURPOSE_PLAN)
    labels = np.array([label for label in CLASSES for _ in range(counts[label])])
    labels = labels[rng.permutation(n)]
    n_male = min(n, math.floor(n * profile.male_fraction + 0.5))
    sexes = np.array(["M"] * n_male + ["F"] * (n - n_male))[rng.permutation(n)]
    mean, sd = profile.age if profile.age is not None else OVERALL_AGE
    ages = np.clip(np.rint(rng.normal(mean, sd, n)), 6, 95).astype(int)

    # Repeat scans: a later case becomes a second scan of an earlier patient with the same class
    # and sex (a follow-up months later).
    n_repeat = math.floor(n * REPEAT_FRACTION + 0.5) if n >= 10 else 0
    n_repeat = max(n_repeat, 1) if n >= 10 else 0
    repeat_of: dict[int, int] = {}
    for later in sorted(rng.choice(np.arange(n // 2, n), size=n_repeat, replace=False)):
        earlier = [
            i
            for i in range(later)
            if labels[i] == labels[later]
            and sexes[i] == sexes[later]
            and i not in repeat_of
            and i not in repeat_of.values()
        ]
        if earlier:
            repeat_of[int(later)] = int(earlier[int(rng.integers(len(earlier)))])

    plans: list[CasePlan] = []
    patient_of: dict[int, str] = {}
    next_patient = 1
    for i in range(n):
        number = i + 1
        if i in repeat_of:
            first = repeat_of[i]
            pid = patient_of[first]
            base = plans[first]
            age = min(base.age + int(rng.integers(0, 2)), 95)
            plans.append(
                CasePlan(
                    case_id=f"{profile.center}-{number:04d}",
                    patient_id=pid,
                    center=profile.center,
                    label=str(labels[i]),
                    number=number,
                    age=age,
                    sex=base.sex,
                    repeat_of=base.case_id,
                    anatomy_number=base.number,
                )
            )
        else:
            pid = f"{profile.center}-P{next_patient:05d}"
            next_patient += 1
            plans.append(
                CasePlan(
                    case_id=f"{profile.center}-{number:04d}",
                    patient_id=pid,
                    center=profile.center,
                    label=str(labels[i]),
                    number=number,
                    age=int(ages[i]),
                    sex=str(sexes[i]),
                    repeat_of=None,
                    anatomy_number=number,
                )
            )
        patient_of[i] = pid
    return plans


def plan_cohort(
    seed: int = 0, scale: float = 1.0, centers: str | list[str] | None = None
) -> list[CasePlan]:
    """Plans of every case of the selected centers, center by center."""
    _check_scale_seed(scale, seed)
    return [p for c in parse_centers(centers) for p in plan_center(CENTERS[c], seed, scale)]


# ------------------------------------------------------------------------------ scene sampling
@dataclass(frozen=True)
class Traits:
    """Scalar summary of a sampled scene, used to write its findings.

    Attributes:
        uptake: Target-to-background ratio of the (extranodular) gland tissue.
        texture: ``homogeneous``, ``mild``, ``heterogeneous`` or ``patchy``.
        suppressed: Extranodular tissue suppressed by an autonomous (hot) nodule.
        counts_factor: Multiplier of the center's count level (faint glands collect fewer
            counts in a fixed-time acquisition).
        appearance: The class the scan looks like (differs from the label for atypical cases).
    """

    uptake: float
    texture: str
    suppressed: bool = False
    counts_factor: float = 1.0
    appearance: str = ""


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
    appearance = label
    if rng.random() < ATYPICAL_FRACTION:
        choices = _LOOKALIKE[label]
        appearance = choices[int(rng.integers(len(choices)))]
    d = _draw_class(appearance, rng)
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

    low_pole = 0.5 * (lobes["right"].cy + lobes["left"].cy)
    isthmus = an.Isthmus(
        cy=low_pole + rng.uniform(6.0, 14.0) * d.size,
        half_width=0.5 * (lobes["left"].cx - lobes["right"].cx),
        half_height=(rng.uniform(3.0, 6.0) * d.size * d.isthmus_scale)
        if rng.random() < d.isthmus_p
        else 0.0,
        half_depth=rng.uniform(2.5, 4.5) * d.isthmus_scale,
    )
    pyramidal = None
    if rng.random() < d.pyramidal_p:
        base = isthmus.cy - isthmus.half_height if isthmus.half_height > 0 else low_pole + 5.0
        half_length = rng.uniform(7.0, 14.0) * d.size
        pyramidal = an.PyramidalLobe(
            cx=rng.uniform(-3.0, 8.0),
            cy=base - 0.9 * half_length,
            half_length=half_length,
            half_width=rng.uniform(2.0, 3.5),
            half_depth=rng.uniform(2.0, 3.0),
            tilt=rng.uniform(-0.15, 0.15),
        )
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
    lateral = max(abs(lobes["right"].cx) + lobes["right"].half_width, lobes["left"].cx)
    neck = an.Neck(
        level=1.0,
        half_width=rng.uniform(50.0, 65.0),
        vessel_x=lateral + rng.uniform(2.0, 8.0),
        vessel_level=rng.uniform(0.15, 0.5),
        oesophagus_level=rng.uniform(0.3, 1.5) if rng.random() < 0.12 else 0.0,
        floor=rng.uniform(0.02, 0.08),
        texture=an.Texture(rng.uniform(0.03, 0.1), 15.0),
    )
    markers: tuple[an.Marker, ...] = ()
    if rng.random() < marker_rate:
        if rng.random() < 0.7:
            name, marker_y = "sternal notch", low_pole + rng.uniform(38.0, 55.0)
        else:
            name, marker_y = "chin", rng.uniform(-110.0, -90.0) + shift
        marker_x = rng.normal(0.0, 3.0)
        markers = (an.Marker(name, float(marker_x), float(marker_y), rng.uniform(0.5, 2.5)),)

    texture = d.texture
    if appearance != "TI":
        texture = "homogeneous" if d.texture_amp < 0.12 else "mild"
        if d.texture_amp > 0.2:
            texture = "heterogeneous"
    host_uptake = float(np.mean([lobes["right"].uptake, lobes["left"].uptake]))
    traits = Traits(
        uptake=host_uptake,
        texture=texture,
        suppressed=suppressed,
        counts_factor=d.counts_factor,
        appearance=appearance,
    )
    return an.Scene(gland, tuple(salivary), neck, markers), traits


# ---------------------------------------------------------------------------------- findings
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


# ----------------------------------------------------------------------------- acquisition
@dataclass
class Acquisition:
    """One acquired image.

    Attributes:
        counts: Detected counts per pixel, uint16 [matrix, matrix].
        mask: Physician's gland contour, uint8 0/1, same shape.
        pixel_mm: Pixel size at the gland plane.
        expected: The noise-free expected counts (float32), for checks.
        info: Acquisition parameters drawn for this case.
    """

    counts: np.ndarray
    mask: np.ndarray
    pixel_mm: float
    expected: np.ndarray
    info: dict[str, float]


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


# ---------------------------------------------------------------------------------- one case
@dataclass
class SimulatedCase:
    """A planned case with its scene, image, mask, findings and report."""

    plan: CasePlan
    scene: an.Scene
    traits: Traits
    acquisition: Acquisition
    findings: Findings
    report: str


def simulate_case(plan: CasePlan, seed: int) -> SimulatedCase:
    """Sample, image, describe and report one planned case (deterministic in ``seed``)."""
    profile = CENTERS[plan.center]
    scene_rng = _rng(seed, plan.center, plan.anatomy_number, _PURPOSE_SCENE)
    scene, traits = sample_scene(plan.label, scene_rng, profile.marker_rate)
    acq_rng = _rng(seed, plan.center, plan.number, _PURPOSE_ACQ)
    if plan.repeat_of is not None:
        # A follow-up scan: same gland, the marker placed (or not) anew.
        markers: tuple[an.Marker, ...] = ()
        if acq_rng.random() < profile.marker_rate and scene.markers:
            markers = scene.markers
        scene = an.Scene(scene.gland, scene.salivary, scene.neck, markers)
    acquisition = acquire(scene, profile, acq_rng, traits.counts_factor)
    findings = describe(scene, traits, plan.label)
    report = write_report(
        findings, plan.center, _rng(seed, plan.center, plan.number, _PURPOSE_REPORT)
    )
    if plan.repeat_of is not None:
        report = (
            f"Comparison: follow-up study; this patient was scanned before at this center "
            f"(case {plan.repeat_of}).\n{report}"
        )
    return SimulatedCase(plan, scene, traits, acquisition, findings, report)


# ------------------------------------------------------------------------------ whole cohort
def simulate_cohort(
    out_dir: str | Path,
    scale: float = 1.0,
    seed: int = 0,
    centers: str | list[str] | None = None,
    formats: str = "mixed",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Simulate the nine-center phantom cohort and write it as clinical-format files.

    Writes ``images/<center>/<case_id>.<ext>``, ``masks/<center>/<case_id>.<ext>``,
    ``manifest.csv``, ``examples.png`` and ``phantom.json`` into a temporary sibling folder and
    renames it to ``out_dir`` only when everything is written.

    Args:
        out_dir: Output folder; must not exist or be empty unless ``overwrite``.
        scale: 1 = exactly the paper's Table 1 counts (2954 cases); smaller shrinks every cell.
        seed: Same seed -> the same manifest and the same pixel arrays.
        centers: Center letters to simulate (e.g. ``"ABCDEF"``); None = all nine.
        formats: ``mixed`` (each center's own habit: DICOM / 16-bit PNG / 8-bit PNG / JPEG images,
            NIfTI or PNG masks) or one format for all: ``dicom``, ``png16``, ``nifti``.
        overwrite: Replace an existing non-empty ``out_dir``.
        progress: Show a progress bar.

    Returns:
        The output folder.

    Raises:
        ConfigError: bad scale / seed / centers / formats, or a non-empty ``out_dir`` without
            ``overwrite``.
    """
    from thyroaug.data.phantom import writer

    _check_scale_seed(scale, seed)
    writer.check_formats(formats)
    plans = plan_cohort(seed, scale, centers)
    start = time.perf_counter()
    with writer.staged_folder(out_dir, overwrite=overwrite) as stage:
        rows: list[dict[str, Any]] = []
        typical: dict[tuple[str, str], np.ndarray] = {}
        fallback: dict[tuple[str, str], np.ndarray] = {}
        for plan in tqdm(plans, desc="phantom", unit="case", disable=not progress):
            case = simulate_case(plan, seed)
            row, pixels = writer.write_case(stage, case, formats, seed)
            rows.append(row)
            key = (plan.center, plan.label)
            if case.traits.appearance == plan.label:
                typical.setdefault(key, pixels)
            fallback.setdefault(key, pixels)
        examples = {**fallback, **typical}
        writer.write_manifest(stage / writer.MANIFEST_NAME, rows)
        writer.write_examples(stage / writer.EXAMPLES_NAME, examples)
        writer.write_summary(
            stage / writer.SUMMARY_NAME,
            seed=seed,
            scale=scale,
            centers=parse_centers(centers),
            formats=formats,
            rows=rows,
            version=PHANTOM_VERSION,
        )
    log.info(
        "phantom cohort: %d cases in %.1f s -> %s", len(rows), time.perf_counter() - start, out_dir
    )
    return Path(out_dir)
