"""Tiny image files in every supported format, for the thyroaug.data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from PIL import Image

from thyroaug.contract import CLASSES


def blob(size: int = 32, seed: int = 0, peak: float = 200.0, rows: int | None = None) -> np.ndarray:
    """A thyroid-like blob of counts on a low background (float64, rows x size)."""
    rng = np.random.default_rng(seed)
    rows = rows or size
    yy, xx = np.mgrid[0:rows, 0:size]
    cy, cx = rows / 2 + rng.uniform(-2, 2), size / 2 + rng.uniform(-2, 2)
    r2 = ((yy - cy) / (0.3 * rows)) ** 2 + ((xx - cx) / (0.3 * size)) ** 2
    return 5.0 + peak * np.exp(-2 * r2) + rng.uniform(0, 3, (rows, size))


def blob_mask(image: np.ndarray) -> np.ndarray:
    """Binary mask of the brighter half of a blob (uint8 {0, 1})."""
    return (image > 0.5 * image.max()).astype(np.uint8)


def write_dicom(
    path: Path,
    array: np.ndarray,
    *,
    slope: float | None = None,
    intercept: float = 0.0,
    signed: bool = False,
    rle: bool = False,
    frames: int | None = None,
) -> Path:
    """A single- (or multi-) frame 16-bit NM DICOM written with pydicom; stored values = array."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        RLELossless,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    stored = np.asarray(array).astype(np.int16 if signed else np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "NM"
    ds.Rows, ds.Columns = stored.shape[-2:]
    if frames:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    ds.PixelData = stored.tobytes()
    if rle:
        ds.compress(RLELossless, stored)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_sitk_dicom(path: Path, array: np.ndarray, compressor: str) -> Path:
    """A DICOM written by SimpleITK/GDCM with a compressed transfer syntax (JPEG, JPEG2000)."""
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(True)
    writer.SetCompressor(compressor)
    writer.Execute(sitk.GetImageFromArray(np.asarray(array).astype(np.uint16)))
    return path


def write_png(path: Path, array: np.ndarray, bits: int = 8) -> Path:
    """Grey PNG / TIFF (by suffix) of 8 or 16 bits; the array is stored as is (rounded)."""
    values = np.rint(np.asarray(array))
    if bits == 16:
        Image.fromarray(values.astype(np.uint16)).save(path)
    else:
        Image.fromarray(values.astype(np.uint8)).save(path)
    return path


def write_rgb(path: Path, array: np.ndarray) -> Path:
    """An RGB export of a grey image (R = G = B)."""
    grey = np.rint(np.asarray(array)).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(path)
    return path


def write_jpg(path: Path, array: np.ndarray, quality: int = 95) -> Path:
    """8-bit grey JPEG."""
    Image.fromarray(np.rint(np.asarray(array)).astype(np.uint8)).save(path, quality=quality)
    return path


def write_nifti(path: Path, array: np.ndarray, dtype: type = np.uint8) -> Path:
    """NIfTI (.nii / .nii.gz) of a 2-D or 3-D array, as ITK-SNAP would save a segmentation."""
    sitk.WriteImage(sitk.GetImageFromArray(np.asarray(array).astype(dtype)), str(path))
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to a fraction of its bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_cohort(
    folder: Path,
    centers: str = "ABG",
    per_class: int = 3,
    size: int = 32,
    formats: tuple[str, ...] = ("png8", "png16", "dicom", "nifti"),
) -> Path:
    """Files + manifest.csv of a tiny cohort in mixed formats; returns the manifest path.

    Formats rotate over cases: png8 / png16 / dicom (with rescale slope 0.5) / nifti images; masks
    alternate NIfTI and {0, 255} PNG. Center "E"-like 2x matrices are used for center B.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img").mkdir(exist_ok=True)
    (folder / "msk").mkdir(exist_ok=True)
    rows = []
    k = 0
    for center in centers:
        for label in CLASSES:
            for j in range(per_class):
                cid = f"{center}{label}{j}"
                side = 2 * size if center == "B" else size
                img = blob(side, seed=k, peak=40.0 + 20 * CLASSES.index(label))
                mask = blob_mask(img)
                fmt = formats[k % len(formats)]
                if fmt == "png8":
                    image_rel = f"img/{cid}.png"
                    write_png(folder / image_rel, img)
                elif fmt == "png16":
                    image_rel = f"img/{cid}.png"
                    write_png(folder / image_rel, img * 100, bits=16)
                elif fmt == "dicom":
                    image_rel = f"img/{cid}.dcm"
                    write_dicom(folder / image_rel, np.rint(img * 2), slope=0.5)
                else:
                    image_rel = f"img/{cid}.nii.gz"
                    write_nifti(folder / image_rel, img, dtype=np.float32)
                if k % 2:
                    mask_rel = f"msk/{cid}.nii.gz"
                    write_nifti(folder / mask_rel, mask)
                else:
                    mask_rel = f"msk/{cid}.png"
                    write_png(folder / mask_rel, mask * 255)
                rows.append(
                    {
                        "case_id": cid,
                        "patient_id": f"P{k:04d}",
                        "center": center,
                        "label": label,
                        "image": image_rel,
                        "mask": mask_rel,
                        "report": "",
                        "prompt": f"thyroid scan {label.lower()}",
                        "split": "",
                        "age": 40 + k % 30,
                        "sex": "F" if k % 4 else "M",
                        "manufacturer": "ACME",
                        "model": "Cam",
                    }
                )
                k += 1
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
