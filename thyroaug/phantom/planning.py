"""Planning the cohort: which cases exist before any image is made (Table 1 counts x ``scale``,
class order, sexes, ages, repeat scans; ``docs/phantom.md``, "Planning").
"""

from __future__ import annotations

import math

import numpy as np

from thyroaug import CLASSES
from thyroaug.errors import ConfigError
from thyroaug.phantom.cases import PURPOSE_PLAN, CasePlan, case_rng
from thyroaug.phantom.scanners import CENTERS, OVERALL_AGE, CenterProfile, parse_centers

REPEAT_FRACTION = 0.015
"""Share of scans that are a second scan of an earlier patient of the same center."""


def scaled_count(n: int, scale: float) -> int:
    """``round(n * scale)`` (halves up), at least 1 when ``n > 0``."""
    if n <= 0:
        return 0
    return max(1, math.floor(n * scale + 0.5))


def check_scale_seed(scale: float, seed: int) -> None:
    """Validate ``scale`` (in (0, 10]) and ``seed`` (a non-negative integer).

    Raises:
        ConfigError: either is out of range.
    """
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
    check_scale_seed(scale, 0)
    return {
        c: {label: scaled_count(CENTERS[c].counts[label], scale) for label in CLASSES}
        for c in parse_centers(centers)
    }


def plan_center(profile: CenterProfile, seed: int, scale: float) -> list[CasePlan]:
    """Plan one center's cases: shuffled class order, sexes in Table 1 proportion (exact at
    scale 1), ages from the center's mean/sd, and a few repeat scans of earlier patients."""
    counts = {label: scaled_count(profile.counts[label], scale) for label in CLASSES}
    n = sum(counts.values())
    rng = case_rng(seed, profile.center, 0, PURPOSE_PLAN)
    labels = np.array([label for label in CLASSES for _ in range(counts[label])])
    labels = labels[rng.permutation(n)]
    n_male = min(n, math.floor(n * profile.male_fraction + 0.5))
    sexes = np.array(["M"] * n_male + ["F"] * (n - n_male))[rng.permutation(n)]
    mean, sd = profile.age if profile.age is not None else OVERALL_AGE
    ages = np.clip(np.rint(rng.normal(mean, sd, n)), 6, 95).astype(int)
    repeat_of = _pick_repeats(labels, sexes, rng)

    plans: list[CasePlan] = []
    next_patient = 1
    for i in range(n):
        number = i + 1
        if i in repeat_of:  # same patient, anatomy and sex; scanned again months later
            base = plans[repeat_of[i]]
            patient_id, sex, repeat_id, anatomy = (
                base.patient_id,
                base.sex,
                base.case_id,
                base.number,
            )
            age = min(base.age + int(rng.integers(0, 2)), 95)
        else:
            patient_id = f"{profile.center}-P{next_patient:05d}"
            next_patient += 1
            sex, repeat_id, anatomy, age = str(sexes[i]), None, number, int(ages[i])
        plans.append(
            CasePlan(
                case_id=f"{profile.center}-{number:04d}",
                patient_id=patient_id,
                center=profile.center,
                label=str(labels[i]),
                number=number,
                age=age,
                sex=sex,
                repeat_of=repeat_id,
                anatomy_number=anatomy,
            )
        )
    return plans


def _pick_repeats(
    labels: np.ndarray, sexes: np.ndarray, rng: np.random.Generator
) -> dict[int, int]:
    """Later case -> the earlier case (same class and sex) it is a second scan of.

    ``REPEAT_FRACTION`` of a center's cases (at least one from 10 cases on), chosen from its
    second half; an earlier case is scanned twice at most.
    """
    n = len(labels)
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
    return repeat_of


def plan_cohort(
    seed: int = 0, scale: float = 1.0, centers: str | list[str] | None = None
) -> list[CasePlan]:
    """Plans of every case of the selected centers, center by center."""
    check_scale_seed(scale, seed)
    return [p for c in parse_centers(centers) for p in plan_center(CENTERS[c], seed, scale)]
