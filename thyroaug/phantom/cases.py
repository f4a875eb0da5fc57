"""The records a simulated case is made of, and ``case_rng``, the random stream of each step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import thyroaug.phantom.anatomy as an
from thyroaug.phantom.scanners import ALL_CENTERS
from thyroaug.reports.findings import Findings

PURPOSE_PLAN, PURPOSE_SCENE, PURPOSE_ACQ, PURPOSE_REPORT = 0, 1, 2, 3
"""The ``purpose`` word of ``case_rng``: one independent stream per step of a case."""


def case_rng(seed: int, center: str, number: int, purpose: int) -> np.random.Generator:
    """The generator of one step (``purpose``) of case ``number`` at ``center``.

    Keyed this way, a case does not change when other centers or cases are added or removed.
    """
    return np.random.default_rng([int(seed), ALL_CENTERS.index(center), number, purpose])


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


@dataclass
class SimulatedCase:
    """A planned case with its scene, image, mask, findings and report."""

    plan: CasePlan
    scene: an.Scene
    traits: Traits
    acquisition: Acquisition
    findings: Findings
    report: str
