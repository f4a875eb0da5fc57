"""Per-center scanners, protocols, demographics and file habits of the phantom cohort.

Demographics and class counts are the paper's Table 1; acquisition values are plausible for the
named cameras (``docs/phantom.md``, "Scanners and imaging").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from thyroaug import CLASSES
from thyroaug.errors import ConfigError

TABLE1_ORDER: tuple[str, ...] = ("DG", "NG", "TI", "NL")
"""Column order of the class counts in the paper's Table 1."""

TRAINING_CENTERS: str = "ABCDEF"
EXTERNAL_CENTERS: str = "GHI"
ALL_CENTERS: str = TRAINING_CENTERS + EXTERNAL_CENTERS

OVERALL_AGE: tuple[float, float] = (44.71, 17.66)
"""Mean and standard deviation of age over the whole cohort (Table 1, last row)."""

IMAGE_FORMATS: tuple[str, ...] = ("dicom", "png16", "png8", "jpg", "nifti")
MASK_FORMATS: tuple[str, ...] = ("nii.gz", "png")


@dataclass(frozen=True)
class CenterProfile:
    """One center: Table 1 facts plus its acquisition protocol and export habits.

    Attributes:
        center: One letter, A-I.
        manufacturer: Camera manufacturer as in Table 1.
        model: Camera model as in Table 1.
        counts: Cases per class at scale 1 (keys in ``thyroaug.CLASSES``).
        age: (mean, sd) of patient age, or None where Table 1 says NA.
        males: Male cases in Table 1.
        females: Female cases in Table 1.
        matrix: Image matrix (pixels per side).
        fov_mm: Field of view across the matrix, measured at the gland plane.
        fwhm_mm: System resolution (PSF FWHM) at the gland plane.
        scatter: Fraction of the PSF in a broad (3x wider) scatter tail.
        total_counts: (low, high) of the total counts per image, drawn log-uniformly.
        zoom_sd: Relative standard deviation of the per-case zoom (pinhole distance).
        offset_mm: Systematic (x, y) position of the gland centre in the field (y down).
        offset_sd_mm: Per-case positioning jitter.
        rotation_sd_deg: Per-case head/neck rotation jitter.
        field: ``circle`` (pinhole aperture: zero outside a disc) or ``square``.
        marker_rate: Probability of a point-source marker (sternal notch / chin).
        contour_level: The physician's contour habit: threshold on the smoothed outline
            (lower = more generous masks).
        image_format: How images leave the center (see ``IMAGE_FORMATS``).
        mask_format: How its masks were saved (``nii.gz`` as ITK-SNAP does, or ``png`` 0/255).
        rescale_slope: DICOM RescaleSlope (raw stored values = counts / slope); 1 = none.
        export_window: For 8-bit exports, the fraction of the image maximum mapped to 255.
    """

    center: str
    manufacturer: str
    model: str
    counts: dict[str, int]
    age: tuple[float, float] | None
    males: int
    females: int
    matrix: int
    fov_mm: float
    fwhm_mm: float
    scatter: float
    total_counts: tuple[float, float]
    zoom_sd: float
    offset_mm: tuple[float, float]
    offset_sd_mm: float
    rotation_sd_deg: float
    field: str
    marker_rate: float
    contour_level: float
    image_format: str
    mask_format: str
    rescale_slope: float = 1.0
    export_window: float = 1.0
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Cases at scale 1."""
        return sum(self.counts.values())

    @property
    def external(self) -> bool:
        """True for the external test centers (G-I)."""
        return self.center in EXTERNAL_CENTERS

    @property
    def male_fraction(self) -> float:
        """Share of male cases."""
        return self.males / (self.males + self.females)


def _counts(dg: int, ng: int, ti: int, nl: int) -> dict[str, int]:
    """Table 1 order (DG/NG/TI/NL) -> dict in ``CLASSES`` order."""
    by_name = dict(zip(TABLE1_ORDER, (dg, ng, ti, nl)))
    return {c: by_name[c] for c in CLASSES}


CENTERS: dict[str, CenterProfile] = {
    p.center: p
    for p in (
        CenterProfile(
            center="A", manufacturer="ADAC", model="GENESYS",
            counts=_counts(100, 203, 81, 48), age=None, males=129, females=303,
            matrix=128, fov_mm=150.0, fwhm_mm=7.0, scatter=0.08,
            total_counts=(8.0e4, 2.0e5), zoom_sd=0.06, offset_mm=(0.0, 4.0),
            offset_sd_mm=4.0, rotation_sd_deg=4.0, field="circle", marker_rate=0.05,
            contour_level=0.45, image_format="dicom", mask_format="nii.gz",
        ),
        CenterProfile(
            center="B", manufacturer="SIEMENS", model="IP2 (ECAM1028)",
            counts=_counts(63, 110, 47, 23), age=(46.12, 15.26), males=77, females=166,
            matrix=128, fov_mm=140.0, fwhm_mm=6.0, scatter=0.06,
            total_counts=(1.0e5, 3.0e5), zoom_sd=0.05, offset_mm=(0.0, 0.0),
            offset_sd_mm=3.5, rotation_sd_deg=3.0, field="circle", marker_rate=0.05,
            contour_level=0.5, image_format="png16", mask_format="nii.gz",
        ),
        CenterProfile(
            center="C", manufacturer="SIEMENS", model="IP2 (ECAM1028)",
            counts=_counts(215, 317, 88, 28), age=(45.08, 14.84), males=137, females=511,
            matrix=128, fov_mm=135.0, fwhm_mm=6.0, scatter=0.06,
            total_counts=(1.0e5, 3.0e5), zoom_sd=0.05, offset_mm=(0.0, -3.0),
            offset_sd_mm=3.5, rotation_sd_deg=3.0, field="circle", marker_rate=0.1,
            contour_level=0.5, image_format="dicom", mask_format="nii.gz", rescale_slope=0.5,
            notes={"dicom": "secondary capture export, RescaleSlope 0.5 (raw = 2 x counts)"},
        ),
        CenterProfile(
            center="D", manufacturer="Mediso", model="AnyScan",
            counts=_counts(145, 199, 134, 120), age=(43.81, 22.26), males=150, females=448,
            matrix=128, fov_mm=175.0, fwhm_mm=8.5, scatter=0.10,
            total_counts=(1.5e5, 4.0e5), zoom_sd=0.04, offset_mm=(0.0, 8.0),
            offset_sd_mm=5.0, rotation_sd_deg=3.0, field="square", marker_rate=0.3,
            contour_level=0.4, image_format="png16", mask_format="nii.gz",
            notes={"collimator": "zoomed parallel-hole (LEHR)"},
        ),
        CenterProfile(
            center="E", manufacturer="SIEMENS", model="IP1 (ECAM10482)",
            counts=_counts(89, 121, 60, 49), age=(47.04, 16.10), males=70, females=249,
            matrix=256, fov_mm=130.0, fwhm_mm=5.0, scatter=0.06,
            total_counts=(2.0e5, 5.0e5), zoom_sd=0.05, offset_mm=(0.0, 0.0),
            offset_sd_mm=4.0, rotation_sd_deg=3.0, field="circle", marker_rate=0.0,
            contour_level=0.5, image_format="dicom", mask_format="nii.gz",
        ),
        CenterProfile(
            center="F", manufacturer="GE", model="Discovery NM 630",
            counts=_counts(176, 61, 49, 29), age=(41.42, 14.75), males=91, females=224,
            matrix=128, fov_mm=160.0, fwhm_mm=7.5, scatter=0.08,
            total_counts=(6.0e4, 1.5e5), zoom_sd=0.06, offset_mm=(0.0, 5.0),
            offset_sd_mm=5.0, rotation_sd_deg=5.0, field="square", marker_rate=0.15,
            contour_level=0.45, image_format="png8", mask_format="png", export_window=1.0,
        ),
        CenterProfile(
            center="G", manufacturer="MiE", model="SCINTRON",
            counts=_counts(20, 21, 24, 6), age=(42.90, 12.00), males=21, females=50,
            matrix=128, fov_mm=180.0, fwhm_mm=9.0, scatter=0.12,
            total_counts=(3.0e4, 1.0e5), zoom_sd=0.07, offset_mm=(0.0, 6.0),
            offset_sd_mm=5.0, rotation_sd_deg=5.0, field="circle", marker_rate=0.2,
            contour_level=0.4, image_format="dicom", mask_format="nii.gz",
        ),
        CenterProfile(
            center="H", manufacturer="SIEMENS", model="Encore 2 (SYMBIA1071)",
            counts=_counts(61, 42, 31, 8), age=(46.78, 15.64), males=46, females=96,
            matrix=128, fov_mm=150.0, fwhm_mm=6.5, scatter=0.07,
            total_counts=(1.0e5, 2.5e5), zoom_sd=0.05, offset_mm=(0.0, -2.0),
            offset_sd_mm=4.0, rotation_sd_deg=3.0, field="square", marker_rate=0.05,
            contour_level=0.5, image_format="png16", mask_format="nii.gz",
        ),
        CenterProfile(
            center="I", manufacturer="GE", model="INFINIA",
            counts=_counts(46, 35, 60, 45), age=(41.30, 15.20), males=50, females=136,
            matrix=128, fov_mm=165.0, fwhm_mm=8.0, scatter=0.09,
            total_counts=(6.0e4, 2.0e5), zoom_sd=0.06, offset_mm=(0.0, 3.0),
            offset_sd_mm=4.5, rotation_sd_deg=4.0, field="circle", marker_rate=0.1,
            contour_level=0.45, image_format="jpg", mask_format="png", export_window=0.9,
        ),
    )
}  # fmt: skip


def parse_centers(centers: str | list[str] | tuple[str, ...] | None) -> str:
    """Normalise a center selection ("ABC", ["A", "B"], None = all) to a sorted letter string.

    Raises:
        ConfigError: an unknown center letter or an empty selection.
    """
    if centers is None:
        return ALL_CENTERS
    letters = [c.strip().upper() for c in centers]
    letters = [c for c in letters if c and c != ","]
    letters = [ch for c in letters for ch in c]  # "AB" inside a list is two centers
    unknown = sorted({c for c in letters if c not in CENTERS})
    if unknown or not letters:
        raise ConfigError(
            f"centers={centers!r}: unknown center(s) {', '.join(unknown) or '(none given)'}; "
            f"choose letters from {ALL_CENTERS}"
        )
    return "".join(sorted(set(letters)))
