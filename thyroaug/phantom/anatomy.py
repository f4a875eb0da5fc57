"""Anatomy of the anterior neck for the phantom (gland, salivary glands, neck, markers) and its
rendering as projected activity on a pixel grid.

Millimetres in a patient frame centred on the gland, x to the image right, y caudal; units and
geometry: ``docs/phantom.md``, "Anatomy and rendering".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

REFERENCE_DEPTH_MM = 8.0
"""Half-thickness of a reference normal lobe; concentration = uptake ratio / (2 * this)."""


@dataclass(frozen=True)
class Lobe:
    """One thyroid lobe: a tapered ellipsoid leaning with its upper pole lateral.

    Attributes:
        side: ``right`` (image left, x < 0) or ``left`` (image right).
        cx: Centre x (mm).
        cy: Centre y (mm, down).
        half_length: Semi-axis along the lobe (mm).
        half_width: Semi-axis across the lobe at its centre (mm).
        half_depth: Semi-axis front-to-back (mm).
        tilt: Lean of the long axis from vertical, upper pole outwards (radians).
        taper: Narrowing of the upper pole (0 = ellipse).
        uptake: Target-to-background ratio of this lobe's tissue (peak of a reference lobe).
    """

    side: str
    cx: float
    cy: float
    half_length: float
    half_width: float
    half_depth: float
    tilt: float
    taper: float
    uptake: float

    @property
    def sign(self) -> float:
        """-1 for the right lobe (image left), +1 for the left lobe."""
        return -1.0 if self.side == "right" else 1.0


@dataclass(frozen=True)
class Isthmus:
    """The band joining the lower thirds of the lobes (``half_height`` 0 = absent)."""

    cy: float
    half_width: float
    half_height: float
    half_depth: float


@dataclass(frozen=True)
class PyramidalLobe:
    """A thin tongue of tissue rising from the isthmus, usually left of the midline."""

    cx: float
    cy: float
    half_length: float
    half_width: float
    half_depth: float
    tilt: float


@dataclass(frozen=True)
class Nodule:
    """A spherical nodule inside the gland.

    Attributes:
        side: ``right``, ``left`` or ``isthmus``.
        x: Centre x (mm).
        y: Centre y (mm).
        radius: Radius (mm).
        uptake: Target-to-background ratio of the nodule tissue (absolute, not relative).
        kind: ``hot``, ``warm`` or ``cold`` (relative to the surrounding tissue).
    """

    side: str
    x: float
    y: float
    radius: float
    uptake: float
    kind: str


@dataclass(frozen=True)
class Texture:
    """Multiplicative log-normal texture of the gland tissue: ``exp(amplitude * smooth noise)``."""

    amplitude: float
    scale_mm: float


@dataclass(frozen=True)
class Gland:
    """The whole thyroid."""

    right: Lobe
    left: Lobe
    isthmus: Isthmus
    pyramidal: PyramidalLobe | None
    nodules: tuple[Nodule, ...]
    texture: Texture


@dataclass(frozen=True)
class Ellipsoid:
    """A generic ellipsoidal organ (salivary gland, mouth pool) with a peak projected activity."""

    name: str
    cx: float
    cy: float
    half_x: float
    half_y: float
    peak: float


@dataclass(frozen=True)
class Neck:
    """Background: neck soft tissue (a soft cylinder widening to head and shoulders), great
    vessels, optional swallowed activity in the oesophagus, and a uniform scatter floor."""

    level: float
    half_width: float
    vessel_x: float
    vessel_level: float
    oesophagus_level: float
    floor: float
    texture: Texture


@dataclass(frozen=True)
class Marker:
    """A point source (Co-57 / Tc-99m pen marker), peak relative to the thyroid peak."""

    name: str
    x: float
    y: float
    relative_peak: float


@dataclass(frozen=True)
class Scene:
    """Everything in the field of view of one scan."""

    gland: Gland
    salivary: tuple[Ellipsoid, ...]
    neck: Neck
    markers: tuple[Marker, ...] = field(default_factory=tuple)


@dataclass
class RenderedScene:
    """Unblurred activity maps on the pixel grid (projected activity per pixel) + gland support."""

    gland: np.ndarray
    salivary: np.ndarray
    background: np.ndarray
    markers: np.ndarray
    support: np.ndarray

    @property
    def activity(self) -> np.ndarray:
        """Sum of the extended sources (markers are kept apart: they are point sources)."""
        return self.gland + self.salivary + self.background


def tapered_ellipsoid(
    x: np.ndarray,
    y: np.ndarray,
    cx: float,
    cy: float,
    half_length: float,
    half_width: float,
    half_depth: float,
    tilt: float = 0.0,
    sign: float = 1.0,
    taper: float = 0.0,
) -> np.ndarray:
    """Projected thickness (mm) of a tapered ellipsoid whose long axis points cranially.

    The axis leans by ``tilt`` towards ``sign`` (+1 image right, -1 image left) as it rises;
    ``taper`` > 0 narrows (and thins) the upper end.
    """
    dx, dy = x - cx, y - cy
    st, ct = np.sin(tilt), np.cos(tilt)
    u = dx * sign * st - dy * ct  # along the axis, positive = cranial
    v = dx * ct + dy * sign * st  # across
    width = half_width * np.clip(1.0 - taper * u / half_length, 0.35, None)
    r2 = (u / half_length) ** 2 + (v / width) ** 2
    return 2.0 * half_depth * (width / half_width) * np.sqrt(np.clip(1.0 - r2, 0.0, None))


def ellipse_profile(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, half_x: float, half_y: float
) -> np.ndarray:
    """``sqrt(1 - r^2)`` of an axis-aligned ellipse (1 at the centre, 0 outside)."""
    r2 = ((x - cx) / half_x) ** 2 + ((y - cy) / half_y) ** 2
    return np.sqrt(np.clip(1.0 - r2, 0.0, None))


def sphere_chord(x: np.ndarray, y: np.ndarray, cx: float, cy: float, radius: float) -> np.ndarray:
    """Length (mm) of the anterior ray through a sphere."""
    d2 = (x - cx) ** 2 + (y - cy) ** 2
    return 2.0 * np.sqrt(np.clip(radius**2 - d2, 0.0, None))


def smooth_field(shape: tuple[int, int], scale_px: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean and unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), max(scale_px, 0.5), mode="wrap")
    sd = noise.std()
    return (noise - noise.mean()) / (sd if sd > 0 else 1.0)


def render_gland(
    gland: Gland, x: np.ndarray, y: np.ndarray, pixel_mm: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Projected gland activity and the anatomical support (bool) on the grid ``x, y`` (mm)."""
    parts: list[tuple[np.ndarray, float]] = []
    for lobe in (gland.right, gland.left):
        t = tapered_ellipsoid(
            x, y, lobe.cx, lobe.cy, lobe.half_length, lobe.half_width, lobe.half_depth,
            lobe.tilt, lobe.sign, lobe.taper,
        )  # fmt: skip
        parts.append((t, lobe.uptake))
    mid_uptake = 0.5 * (gland.right.uptake + gland.left.uptake)
    isth = gland.isthmus
    if isth.half_height > 0:
        prof = ellipse_profile(x, y, 0.0, isth.cy, isth.half_width, isth.half_height)
        parts.append((2.0 * isth.half_depth * prof, mid_uptake))
    pyr = gland.pyramidal
    if pyr is not None:
        t = tapered_ellipsoid(
            x, y, pyr.cx, pyr.cy, pyr.half_length, pyr.half_width, pyr.half_depth,
            pyr.tilt, 1.0, 0.3,
        )  # fmt: skip
        parts.append((t, mid_uptake))

    thickness = np.max(np.stack([t for t, _ in parts]), axis=0)
    activity = np.max(np.stack([t * u for t, u in parts]), axis=0) / (2 * REFERENCE_DEPTH_MM)
    support = thickness > 0

    nodule_terms = np.zeros_like(activity)
    for nod in gland.nodules:
        chord = sphere_chord(x, y, nod.x, nod.y, nod.radius)
        inside = chord > 0
        if not inside.any():
            continue
        host_c = _nodule_host_uptake(gland, nod) / (2 * REFERENCE_DEPTH_MM)
        # An exophytic nodule bulges the gland: host tissue fills the bulge, then the nodule's
        # chord replaces host tissue by nodule tissue.
        bulge = np.clip(chord - thickness, 0.0, None)
        activity = activity + host_c * bulge
        thickness = np.maximum(thickness, chord)
        nod_c = nod.uptake / (2 * REFERENCE_DEPTH_MM)
        nodule_terms += (nod_c - host_c) * np.minimum(chord, thickness)
        support |= inside

    if gland.texture.amplitude > 0:
        tex = smooth_field(x.shape, gland.texture.scale_mm / pixel_mm, rng)
        activity = activity * np.exp(gland.texture.amplitude * tex)
    activity = np.clip(activity + nodule_terms, 0.0, None)
    return activity, support


def _nodule_host_uptake(gland: Gland, nodule: Nodule) -> float:
    """Uptake of the tissue a nodule sits in."""
    if nodule.side == "right":
        return gland.right.uptake
    if nodule.side == "left":
        return gland.left.uptake
    return 0.5 * (gland.right.uptake + gland.left.uptake)


def render_salivary(organs: tuple[Ellipsoid, ...], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Projected activity of the salivary glands and the mouth pool."""
    out = np.zeros_like(x)
    for organ in organs:
        out += organ.peak * ellipse_profile(x, y, organ.cx, organ.cy, organ.half_x, organ.half_y)
    return out


def render_neck(
    neck: Neck, x: np.ndarray, y: np.ndarray, pixel_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """Projected background activity: neck cylinder, head and shoulders, vessels, oesophagus."""
    # Half-width of the body outline: the neck, widening to the mandible above and the
    # shoulders below (smooth, so the outline never kinks).
    head = 1.0 + 0.35 / (1.0 + np.exp((y + 70.0) / 8.0))
    shoulders = 1.0 + 0.02 * np.clip(y - 45.0, 0.0, None) ** 1.3
    half_w = neck.half_width * head * shoulders
    body = np.sqrt(np.clip(1.0 - (x / half_w) ** 2, 0.0, None))
    out = neck.level * body
    if neck.texture.amplitude > 0:
        out = out * np.exp(
            neck.texture.amplitude * smooth_field(x.shape, neck.texture.scale_mm / pixel_mm, rng)
        )
    along = 1.0 / (1.0 + np.exp((np.abs(y) - 70.0) / 8.0))  # vessels run the neck's length
    for sx in (-1.0, 1.0):
        out += (
            neck.level
            * neck.vessel_level
            * along
            * np.exp(-0.5 * ((x - sx * neck.vessel_x) / 3.5) ** 2)
        )
    if neck.oesophagus_level > 0:
        ox = 3.0
        out += neck.level * neck.oesophagus_level * along * np.exp(-0.5 * ((x - ox) / 3.0) ** 2)
    return out + neck.level * neck.floor


def render_markers(
    markers: tuple[Marker, ...],
    x: np.ndarray,
    y: np.ndarray,
    thyroid_peak: float,
    pixel_mm: float,
    psf_sigma_px: float,
) -> np.ndarray:
    """Point sources as single-pixel deltas, scaled so that after blurring by the PSF each peaks
    at ``relative_peak * thyroid_peak``."""
    out = np.zeros_like(x)
    if not markers:
        return out
    flat_x, flat_y = x.ravel(), y.ravel()
    for m in markers:
        idx = int(np.argmin((flat_x - m.x) ** 2 + (flat_y - m.y) ** 2))
        d2 = (flat_x[idx] - m.x) ** 2 + (flat_y[idx] - m.y) ** 2
        if d2 > (2 * pixel_mm) ** 2:  # outside the field
            continue
        gain = 2.0 * np.pi * max(psf_sigma_px, 0.5) ** 2
        out.flat[idx] += m.relative_peak * thyroid_peak * gain
    return out


def render_scene(
    scene: Scene,
    x: np.ndarray,
    y: np.ndarray,
    pixel_mm: float,
    psf_sigma_px: float,
    rng: np.random.Generator,
) -> RenderedScene:
    """Render every source of ``scene`` on the grid ``x, y`` (mm, patient frame)."""
    gland, support = render_gland(scene.gland, x, y, pixel_mm, rng)
    salivary = render_salivary(scene.salivary, x, y)
    background = render_neck(scene.neck, x, y, pixel_mm, rng)
    peak = float(gland.max()) if gland.size else 0.0
    peak = max(peak, scene.neck.level)
    markers = render_markers(scene.markers, x, y, peak, pixel_mm, psf_sigma_px)
    return RenderedScene(gland, salivary, background, markers, support)
