"""thyroaug.data.io: round trips in every format and a clear error for every bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from data_helpers import (
    blob,
    truncate,
    write_dicom,
    write_jpg,
    write_nifti,
    write_png,
    write_rgb,
    write_sitk_dicom,
)

from thyroaug.data.io import read_image, read_mask
from thyroaug.errors import ImageReadError


@pytest.fixture
def counts() -> np.ndarray:
    return np.rint(blob(24, rows=20)).astype(np.int64)


def test_dicom_rescale_slope_is_applied(tmp_path: Path, counts: np.ndarray) -> None:
    # stored values 2x counts, slope 0.5, intercept 3: SimpleITK/GDCM apply it by default
    path = write_dicom(tmp_path / "a.dcm", counts * 2, slope=0.5, intercept=3.0)
    image = read_image(path, "c1")
    assert image.dtype == np.float32 and image.shape == (20, 24)
    np.testing.assert_allclose(image, counts + 3.0)


def test_dicom_signed_16bit(tmp_path: Path, counts: np.ndarray) -> None:
    signed = counts - 100  # negative values survive the round trip
    path = write_dicom(tmp_path / "s.dcm", signed, signed=True)
    image = read_image(path)
    np.testing.assert_array_equal(image, signed.astype(np.float32))
    assert image.min() < 0


def test_dicom_unsigned_16bit_full_range(tmp_path: Path, counts: np.ndarray) -> None:
    values = (counts * 300).clip(0, 65535)
    image = read_image(write_dicom(tmp_path / "u.dcm", values))
    np.testing.assert_array_equal(image, values.astype(np.float32))
    assert image.max() > 32767


@pytest.mark.parametrize("kind", ["RLE", "JPEG", "JPEG2000"])
def test_dicom_compressed_transfer_syntaxes(tmp_path: Path, counts: np.ndarray, kind: str) -> None:
    path = tmp_path / f"{kind}.dcm"
    if kind == "RLE":
        write_dicom(path, counts, rle=True)
    else:
        write_sitk_dicom(path, counts, kind)  # lossless JPEG / JPEG 2000 written by GDCM
    import pydicom

    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(read_image(path), counts.astype(np.float32))


def test_png16_png8_tiff_jpg(tmp_path: Path, counts: np.ndarray) -> None:
    big = counts * 250
    np.testing.assert_array_equal(read_image(write_png(tmp_path / "a.png", big, 16)), big)
    np.testing.assert_array_equal(read_image(write_png(tmp_path / "a.tif", big, 16)), big)
    np.testing.assert_array_equal(read_image(write_png(tmp_path / "b.png", counts)), counts)
    jpg = read_image(write_jpg(tmp_path / "c.jpg", counts, quality=100))
    assert jpg.shape == counts.shape and np.abs(jpg - counts).max() <= 3  # lossy, close


def test_rgb_export_becomes_luminance(tmp_path: Path, counts: np.ndarray) -> None:
    image = read_image(write_rgb(tmp_path / "rgb.png", counts))
    assert image.ndim == 2
    np.testing.assert_allclose(image, counts, atol=1e-3)


def test_nifti_image_and_itk_snap_mask(tmp_path: Path, counts: np.ndarray) -> None:
    np.testing.assert_allclose(
        read_image(write_nifti(tmp_path / "i.nii", counts, np.float32)), counts
    )
    labels = np.zeros_like(counts, dtype=np.uint8)
    labels[5:10, 4:9] = 1
    labels[5:10, 14:20] = 2  # a label map: every label > 0 is thyroid
    mask = read_mask(write_nifti(tmp_path / "m.nii.gz", labels))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    np.testing.assert_array_equal(mask, labels > 0)


def test_singleton_third_dimension_is_squeezed(tmp_path: Path, counts: np.ndarray) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", counts[None], np.float32)
    assert sitk.ReadImage(str(path)).GetDimension() == 3
    np.testing.assert_allclose(read_image(path), counts)


def test_mask_png_0_255_and_jpeg_noise(tmp_path: Path) -> None:
    truth = np.zeros((32, 32), np.uint8)
    truth[8:24, 6:20] = 1
    np.testing.assert_array_equal(read_mask(write_png(tmp_path / "m.png", truth * 255)), truth)
    jpg = read_mask(write_jpg(tmp_path / "m.jpg", truth * 255, quality=60))
    raw = np.asarray(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "m.jpg"))))
    assert ((raw > 0) & (raw < 128)).any()  # JPEG ringing that "> 0" would call thyroid
    assert np.mean(jpg != truth) < 0.02


@pytest.mark.parametrize(
    "name, writer, message",
    [
        ("png", lambda p, a: truncate(write_png(p / "t.png", a, 16)), "truncated"),
        ("jpg", lambda p, a: truncate(write_jpg(p / "t.jpg", a)), "truncated"),
        ("niigz", lambda p, a: truncate(write_nifti(p / "t.nii.gz", a, np.float32)), "NIfTI"),
        ("nii", lambda p, a: truncate(write_nifti(p / "t.nii", a, np.float32), 0.8), "NIfTI"),
        ("dicom", lambda p, a: truncate(write_dicom(p / "t.dcm", a)), "not a readable"),
        ("tiff", lambda p, a: truncate(write_png(p / "t.tif", a, 16)), "truncated|decoded"),
    ],
)
def test_truncated_files(tmp_path: Path, counts: np.ndarray, name: str, writer, message: str):
    path = writer(tmp_path, counts)
    with pytest.raises(ImageReadError, match=message) as err:
        read_image(path, "case7")
    assert "case7" in str(err.value) and str(path) in str(err.value)


def test_not_an_image_and_missing(tmp_path: Path) -> None:
    (tmp_path / "notes.dcm").write_text("this is a report, not an image")
    (tmp_path / "fake.png").write_text("hello")
    for name in ("notes.dcm", "fake.png"):
        with pytest.raises(ImageReadError, match=r"case x.*not a readable image"):
            read_image(tmp_path / name, "x")
    with pytest.raises(ImageReadError, match=r"case y, file .*gone\.png: file not found"):
        read_image(tmp_path / "gone.png", "y")
    with pytest.raises(ImageReadError, match="file not found"):
        read_mask(tmp_path / "gone.nii.gz", "y")


def test_nan_inf_zero_constant(tmp_path: Path, counts: np.ndarray) -> None:
    bad = counts.astype(np.float32)
    bad[3, 3] = np.nan
    bad[4, 4] = np.inf
    with pytest.raises(ImageReadError, match=r"case n.*2 pixel\(s\) are NaN or infinite"):
        read_image(write_nifti(tmp_path / "nan.nii.gz", bad, np.float32), "n")
    with pytest.raises(ImageReadError, match=r"case z.*all zero"):
        read_image(write_png(tmp_path / "zero.png", np.zeros((8, 8))), "z")
    with pytest.raises(ImageReadError, match=r"one value \(7\)"):
        read_image(write_png(tmp_path / "flat.png", np.full((8, 8), 7)), "f")
    with pytest.raises(ImageReadError, match="NaN or infinite"):
        read_mask(tmp_path / "nan.nii.gz", "n")


def test_volumes_and_multiframe_are_refused(tmp_path: Path, counts: np.ndarray) -> None:
    vol = write_nifti(tmp_path / "vol.nii.gz", np.stack([counts] * 3), np.float32)
    with pytest.raises(ImageReadError, match=r"case v.*24x20x3 .*3-D volume or multi-frame"):
        read_image(vol, "v")
    mf = write_dicom(tmp_path / "mf.dcm", np.stack([counts] * 4), frames=4)
    with pytest.raises(ImageReadError, match=r"24x20x4"):
        read_image(mf, "m")
    with pytest.raises(ImageReadError, match="3-D volume"):
        read_mask(vol, "v")
