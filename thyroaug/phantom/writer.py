"""Writing the phantom cohort: clinical-format files, the manifest, an example grid, a summary.

Each center's file formats (``docs/phantom.md``, "Files"); everything is staged in a sibling
folder renamed into place at the end, so a failure leaves no partial output.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from thyroaug import CLASS_NAMES, CLASSES, __version__
from thyroaug.errors import ConfigError
from thyroaug.phantom.cases import SimulatedCase
from thyroaug.phantom.scanners import ALL_CENTERS, CENTERS, CenterProfile
from thyroaug.utils.atomic import atomic_dir

MANIFEST_NAME = "manifest.csv"
EXAMPLES_NAME = "examples.png"
SUMMARY_NAME = "phantom.json"

MANIFEST_COLUMNS: tuple[str, ...] = (
    "case_id", "patient_id", "center", "label", "image", "mask", "report", "prompt", "split",
    "age", "sex", "manufacturer", "model",
)  # fmt: skip
"""Columns of ``manifest.csv`` (paths relative to the manifest's folder)."""

FORMAT_CHOICES: tuple[str, ...] = ("mixed", "dicom", "png16", "nifti")
_EXTENSIONS = {"dicom": ".dcm", "png16": ".png", "png8": ".png", "jpg": ".jpg", "nifti": ".nii.gz"}
_MASK_EXTENSIONS = {"nii.gz": ".nii.gz", "png": ".png"}
_NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_JPEG_QUALITY = 92


def check_formats(formats: str) -> str:
    """Validate the ``formats`` choice.

    Raises:
        ConfigError: not one of ``FORMAT_CHOICES``.
    """
    if formats not in FORMAT_CHOICES:
        raise ConfigError(f"formats={formats!r}; choose one of {', '.join(FORMAT_CHOICES)}")
    return formats


def file_formats(profile: CenterProfile, formats: str = "mixed") -> tuple[str, str]:
    """(image format, mask format) a center writes under the ``formats`` choice."""
    check_formats(formats)
    if formats == "mixed":
        return profile.image_format, profile.mask_format
    return formats, ("png" if formats == "png16" else "nii.gz")


@contextmanager
def staged_folder(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``out_dir``, on error it is
    deleted (``out_dir`` is left as it was). The staging is ``thyroaug.utils.atomic.atomic_dir``.

    Raises:
        ConfigError: ``out_dir`` is a file, or a non-empty folder and ``overwrite`` is False.
    """
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"{out} exists and is not empty; choose another --out or pass --overwrite"
        )
    with atomic_dir(out, replace=True) as tmp:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cohort is an ordinary folder
        yield tmp


def export_pixels(counts: np.ndarray, profile: CenterProfile, image_format: str) -> np.ndarray:
    """The pixel values a file of ``image_format`` holds (after any rescale a reader applies).

    16-bit formats keep the counts; 8-bit exports map ``export_window * max`` to 255 (a display
    window, as a workstation's JPEG/PNG export does).
    """
    if image_format in ("png8", "jpg"):
        top = max(float(counts.max()) * profile.export_window, 1.0)
        return np.rint(np.clip(counts / top, 0.0, 1.0) * 255.0).astype(np.uint8)
    return counts.astype(np.uint16)


def _uid(seed: int, case_id: str, what: str) -> str:
    """A deterministic DICOM UID under the UUID-derived root 2.25 (at most 44 characters)."""
    digest = hashlib.sha256(f"thyroaug-phantom:{seed}:{case_id}:{what}".encode()).hexdigest()
    return "2.25." + str(int(digest[:32], 16) >> 2)


def _study_date(seed: int, case_id: str) -> str:
    digest = hashlib.sha256(f"date:{seed}:{case_id}".encode()).hexdigest()
    day = dt.date(2016, 1, 4) + dt.timedelta(days=int(digest[:8], 16) % 2900)
    return day.strftime("%Y%m%d")


def write_dicom(path: Path, counts: np.ndarray, case: SimulatedCase, seed: int) -> None:
    """NM DICOM of the counts (uint16). With a RescaleSlope other than 1 the file is a secondary
    capture whose stored values are ``counts / slope`` (GDCM inverse-rescales on write)."""
    plan = case.plan
    profile = CENTERS[plan.center]
    slope = profile.rescale_slope
    if slope != 1.0:
        limit = 65535.0 * slope
        img = sitk.GetImageFromArray(np.minimum(counts, limit).astype(np.float64))
    else:
        img = sitk.GetImageFromArray(counts.astype(np.uint16))
    pixel_mm = round(case.acquisition.pixel_mm, 4)
    img.SetSpacing((pixel_mm, pixel_mm))
    tags = {
        "0008|0016": _NM_STORAGE if slope == 1.0 else _SECONDARY_CAPTURE,
        "0008|0018": _uid(seed, plan.case_id, "instance"),
        "0008|0020": _study_date(seed, plan.case_id),
        "0008|0030": "093000",
        "0008|0060": "NM",
        "0008|0070": profile.manufacturer,
        "0008|0080": f"Center {plan.center}",
        "0008|1030": "THYROID SCINTIGRAPHY",
        "0008|103e": "ANT NECK PINHOLE" if profile.field == "circle" else "ANT NECK",
        "0008|1090": profile.model,
        "0010|0010": f"ANON^{plan.patient_id}",
        "0010|0020": plan.patient_id,
        "0010|0040": plan.sex,
        "0010|1010": f"{plan.age:03d}Y",
        "0018|0015": "THYROID",
        "0018|1030": "Tc99m pertechnetate thyroid",
        "0020|000d": _uid(seed, plan.case_id, "study"),
        "0020|000e": _uid(seed, plan.case_id, "series"),
        "0020|0010": plan.case_id,
        "0020|0011": "1",
        "0020|0013": "1",
    }
    if slope != 1.0:
        tags.update(
            {
                "0028|1052": "0",
                "0028|1053": f"{slope:g}",
                "0028|0100": "16",
                "0028|0101": "16",
                "0028|0102": "15",
                "0028|0103": "0",
            }
        )
    for key, value in tags.items():
        img.SetMetaData(key, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(img)


def _write_plain(path: Path, array: np.ndarray, spacing: float, compress: bool = True) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((spacing, spacing))
    if path.suffix == ".jpg":
        sitk.WriteImage(img, str(path), useCompression=True, compressionLevel=_JPEG_QUALITY)
    else:
        sitk.WriteImage(img, str(path), useCompression=compress)


def write_case(
    stage: Path, case: SimulatedCase, formats: str = "mixed", seed: int = 0
) -> tuple[dict[str, Any], np.ndarray]:
    """Write one case's image and mask under ``stage``; return its manifest row and the image's
    pixel values (as a reader sees them)."""
    plan = case.plan
    profile = CENTERS[plan.center]
    image_format, mask_format = file_formats(profile, formats)
    image_rel = Path("images", plan.center, plan.case_id + _EXTENSIONS[image_format])
    mask_rel = Path("masks", plan.center, plan.case_id + _MASK_EXTENSIONS[mask_format])
    for rel in (image_rel, mask_rel):
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)

    counts = case.acquisition.counts
    pixels = export_pixels(counts, profile, image_format)
    physical = image_format in ("dicom", "nifti")
    spacing = round(case.acquisition.pixel_mm, 4) if physical else 1.0
    if image_format == "dicom":
        write_dicom(stage / image_rel, counts, case, seed)
    else:
        _write_plain(stage / image_rel, pixels, spacing)
    mask = case.acquisition.mask.astype(np.uint8)
    if mask_format == "png":
        _write_plain(stage / mask_rel, (mask * 255).astype(np.uint8), 1.0)
    else:
        _write_plain(stage / mask_rel, mask, spacing)

    row = {
        "case_id": plan.case_id,
        "patient_id": plan.patient_id,
        "center": plan.center,
        "label": plan.label,
        "image": image_rel.as_posix(),
        "mask": mask_rel.as_posix(),
        "report": case.report,
        "prompt": "",
        "split": "",
        "age": plan.age,
        "sex": plan.sex,
        "manufacturer": profile.manufacturer,
        "model": profile.model,
    }
    return row, pixels


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    """``manifest.csv`` with ``MANIFEST_COLUMNS`` (UTF-8, ``\\n`` line ends, minimal quoting)."""
    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    frame.to_csv(path, index=False, lineterminator="\n", encoding="utf-8")


def write_examples(path: Path, examples: dict[tuple[str, str], np.ndarray]) -> None:
    """A grid of one image per (class, center): rows = classes, columns = centers."""
    centers = [c for c in ALL_CENTERS if any((c, label) in examples for label in CLASSES)]
    fig = Figure(figsize=(1.35 * len(centers) + 0.6, 1.45 * len(CLASSES) + 0.4), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(CLASSES), len(centers), squeeze=False)
    for r, label in enumerate(CLASSES):
        for c, center in enumerate(centers):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            img = examples.get((center, label))
            if img is not None:
                top = max(float(np.percentile(img, 99.9)), 1.0)
                ax.imshow(
                    img.astype(np.float32), cmap="gray", vmin=0.0, vmax=top, interpolation="nearest"
                )
            else:
                ax.set_facecolor("0.85")
            if r == 0:
                ax.set_title(f"{center}: {CENTERS[center].model.split(' ')[0]}", fontsize=7)
            if c == 0:
                ax.set_ylabel(f"{label}\n{CLASS_NAMES[label]}", fontsize=7)
    fig.suptitle("thyroaug phantom: one case per class (rows) and center (columns)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, metadata={"Software": None})


def write_summary(
    path: Path,
    *,
    seed: int,
    scale: float,
    centers: str,
    formats: str,
    rows: list[dict[str, Any]],
    version: str,
) -> None:
    """``phantom.json``: how the cohort was made and what it holds."""
    counts: dict[str, dict[str, int]] = {}
    for center in centers:
        counts[center] = {label: 0 for label in CLASSES}
    for row in rows:
        counts[row["center"]][row["label"]] += 1
    patients = len({row["patient_id"] for row in rows})
    files = {}
    for center in centers:
        image_format, mask_format = file_formats(CENTERS[center], formats)
        files[center] = {"image": image_format, "mask": mask_format}
    summary = {
        "generator": "thyroaug.phantom",
        "phantom_version": version,
        "thyroaug_version": __version__,
        "seed": int(seed),
        "scale": float(scale),
        "centers": centers,
        "formats": formats,
        "total": len(rows),
        "patients": patients,
        "repeat_scans": len(rows) - patients,
        "counts": counts,
        "files": files,
        "classes": list(CLASSES),
    }
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
