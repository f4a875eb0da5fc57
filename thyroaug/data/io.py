"""Read planar scintigraphy images and thyroid masks with SimpleITK (integrity-checked first).

Formats, value conventions, integrity checks and the mask binarisation rule: ``docs/data.md``,
"Reading images and masks".
"""

from __future__ import annotations

import gzip
import logging
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from thyroaug.errors import ImageReadError

log = logging.getLogger(__name__)

RASTER_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LOSSY_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg")
LUMINANCE_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)


def _where(path: Path, case_id: str | None) -> str:
    return f"case {case_id}, file {path}" if case_id else f"file {path}"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _check_raster(path: Path, where: str) -> np.ndarray | None:
    """Decode with Pillow (raises on truncation); return Pillow's array for formats ITK lacks."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("LA", "P", "PA", "1", "CMYK", "YCbCr", "HSV"):
                return np.asarray(im.convert("L"))
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ...
        if path.suffix.lower() in (".tif", ".tiff"):
            log.debug("%s: Pillow cannot decode it (%s); trying SimpleITK", where, exc)
            return None  # TIFF variants Pillow lacks; ITK's libtiff refuses truncated strips
        raise ImageReadError(
            f"{where}: not a readable image (truncated or corrupt: {exc}); re-export the file"
        ) from exc
    return None


def _check_nifti(path: Path, where: str) -> None:
    """Raise if a NIfTI file holds fewer bytes than its header announces."""
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageReadError(f"{where}: truncated or corrupt NIfTI file ({exc})") from exc
    if len(raw) < 348:
        raise ImageReadError(f"{where}: truncated NIfTI file (no complete header)")
    for endian in ("<", ">"):
        sizeof_hdr = struct.unpack(endian + "i", raw[:4])[0]
        if sizeof_hdr == 348:
            dims = struct.unpack(endian + "8h", raw[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", raw[70:74])
            offset = int(struct.unpack(endian + "f", raw[108:112])[0])
            break
        if sizeof_hdr == 540 and len(raw) >= 540:
            datatype, bitpix = struct.unpack(endian + "2h", raw[12:16])
            dims = struct.unpack(endian + "8q", raw[16:80])
            offset = int(struct.unpack(endian + "q", raw[168:176])[0])
            break
    else:
        raise ImageReadError(f"{where}: not a NIfTI file (bad header size)")
    ndim = max(0, min(int(dims[0]), 7))
    voxels = math.prod(max(1, int(d)) for d in dims[1 : ndim + 1])
    expected = max(offset, sizeof_hdr) + voxels * max(1, bitpix) // 8
    if len(raw) < expected:
        raise ImageReadError(
            f"{where}: truncated NIfTI file ({len(raw)} of {expected} bytes); re-export the file"
        )
    float_types = {16: "f4", 64: "f8"}  # ITK's NIfTI reader turns NaN into 0: check the raw data
    if datatype in float_types:
        start = max(offset, sizeof_hdr)
        data = np.frombuffer(raw, endian + float_types[datatype], count=voxels, offset=start)
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise ImageReadError(f"{where}: {bad} pixel(s) are NaN or infinite; fix the export")


def _planar_array(path: Path, case_id: str | None) -> np.ndarray:
    """Read any supported file as a 2-D array (colour reduced to luminance), no value checks."""
    where = _where(path, case_id)
    if not path.is_file():
        raise ImageReadError(f"{where}: file not found")
    suffix = _suffix(path)
    fallback = None
    if suffix in RASTER_SUFFIXES:
        fallback = _check_raster(path, where)
    elif suffix in (".nii", ".nii.gz"):
        _check_nifti(path, where)
    if fallback is not None:
        return fallback
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(
            f"{where}: not a readable image (unknown format, truncated or corrupt); "
            "expected DICOM, NIfTI, PNG, JPEG or TIFF"
        ) from exc
    size = reader.GetSize()
    if len(size) < 2 or any(s != 1 for s in size[2:]):
        dims = "x".join(str(s) for s in size)
        raise ImageReadError(
            f"{where}: image is {dims} (a 3-D volume or multi-frame file); only planar 2-D "
            "images are supported: export the anterior view as a single 2-D image"
        )
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ImageReadError(f"{where}: pixel data cannot be decoded ({exc})") from exc
    array = sitk.GetArrayViewFromImage(image)
    ncomp = image.GetNumberOfComponentsPerPixel()
    array = array.reshape(array.shape[-2 - (ncomp > 1) :])  # drop singleton leading dims
    if ncomp == 1:
        return np.array(array)
    if ncomp == 2:
        return np.array(array[..., 0])
    if ncomp in (3, 4):
        weights = np.asarray(LUMINANCE_WEIGHTS)
        return array[..., :3].astype(np.float64) @ weights
    raise ImageReadError(f"{where}: {ncomp} components per pixel; expected grey or RGB")


def read_image(path: str | Path, case_id: str | None = None) -> np.ndarray:
    """Read a planar image as float32 [rows, cols] (DICOM rescale applied, colour -> luminance).

    Args:
        path: the image file.
        case_id: named in error messages.

    Raises:
        ImageReadError: missing / unreadable / truncated file, not planar, NaN / inf pixels,
            all-zero or constant image.
    """
    path = Path(path)
    where = _where(path, case_id)
    array = _planar_array(path, case_id).astype(np.float64)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise ImageReadError(f"{where}: {bad} pixel(s) are NaN or infinite; fix the export")
    if not np.any(array):
        raise ImageReadError(f"{where}: image is all zero (empty export?)")
    lo, hi = float(array.min()), float(array.max())
    if lo == hi:
        raise ImageReadError(f"{where}: image has one value ({lo:g}) everywhere (no content)")
    return array.astype(np.float32)


def read_mask(path: str | Path, case_id: str | None = None) -> np.ndarray:
    """Read a planar mask as uint8 {0, 1} (binarisation rule: ``docs/data.md``).

    Raises:
        ImageReadError: missing / unreadable / truncated file, not planar, NaN / inf pixels.
    """
    path = Path(path)
    where = _where(path, case_id)
    array = _planar_array(path, case_id)
    lossy = _suffix(path) in LOSSY_SUFFIXES
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise ImageReadError(f"{where}: mask has NaN or infinite values")
        # non-integral values: a colour export reduced to luminance, or an interpolated mask
        lossy = lossy or not np.array_equal(array, np.round(array))
    top = float(array.max()) if array.size else 0.0
    if lossy and top > 0:
        mask = array > 0.5 * top
    else:
        mask = array > 0
    if not mask.any():
        log.warning("%s: mask is empty (no thyroid pixels)", where)
    return mask.astype(np.uint8)
