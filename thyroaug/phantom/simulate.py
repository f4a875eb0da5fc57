"""Simulating a case and the whole phantom cohort: plan -> scene -> image -> findings -> report."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import thyroaug.phantom.anatomy as an
import thyroaug.phantom.writer as writer
from thyroaug.phantom.cases import (
    PURPOSE_ACQ,
    PURPOSE_REPORT,
    PURPOSE_SCENE,
    CasePlan,
    SimulatedCase,
    case_rng,
)
from thyroaug.phantom.describe import describe
from thyroaug.phantom.imaging import acquire
from thyroaug.phantom.planning import check_scale_seed, plan_cohort
from thyroaug.phantom.reports import write_report
from thyroaug.phantom.scanners import CENTERS, parse_centers
from thyroaug.phantom.scene import sample_scene

log = logging.getLogger(__name__)

PHANTOM_VERSION = "1.0"
"""Bumped whenever the same seed would produce different images or reports."""


def simulate_case(plan: CasePlan, seed: int) -> SimulatedCase:
    """Sample, image, describe and report one planned case (deterministic in ``seed``)."""
    profile = CENTERS[plan.center]
    scene_rng = case_rng(seed, plan.center, plan.anatomy_number, PURPOSE_SCENE)
    scene, traits = sample_scene(plan.label, scene_rng, profile.marker_rate)
    acq_rng = case_rng(seed, plan.center, plan.number, PURPOSE_ACQ)
    if plan.repeat_of is not None:
        # A follow-up scan: same gland, the marker placed (or not) anew.
        markers: tuple[an.Marker, ...] = ()
        if acq_rng.random() < profile.marker_rate and scene.markers:
            markers = scene.markers
        scene = an.Scene(scene.gland, scene.salivary, scene.neck, markers)
    acquisition = acquire(scene, profile, acq_rng, traits.counts_factor)
    findings = describe(scene, traits, plan.label)
    report = write_report(
        findings, plan.center, case_rng(seed, plan.center, plan.number, PURPOSE_REPORT)
    )
    if plan.repeat_of is not None:
        report = (
            f"Comparison: follow-up study; this patient was scanned before at this center "
            f"(case {plan.repeat_of}).\n{report}"
        )
    return SimulatedCase(plan, scene, traits, acquisition, findings, report)


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

    Writes ``images/<center>/``, ``masks/<center>/``, ``manifest.csv``, ``examples.png`` and
    ``phantom.json``, staged in a sibling folder renamed to ``out_dir`` when complete.

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
    check_scale_seed(scale, seed)
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
