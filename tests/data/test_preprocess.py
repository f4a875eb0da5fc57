"""thyroaug.data.preprocess: resampling, non-square policy, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from data_helpers import blob, blob_mask

from thyroaug.data.preprocess import (
    PreprocessSettings,
    normalise,
    pad_to_square,
    preprocess_case,
    resample_image,
    resample_mask,
)
from thyroaug.errors import ConfigError, ImageReadError


def test_resample_256_to_128_matches_simpleitk_bspline() -> None:
    image = blob(256, seed=1)
    out = resample_image(image, 128)
    assert out.shape == (128, 128) and out.dtype == np.float32
    # reference: SimpleITK's own B-spline resampling of an image with spacing 1 onto spacing 2
    src = sitk.GetImageFromArray(image)
    ref = sitk.Resample(src, [128, 128], sitk.Transform(), sitk.sitkBSpline, (0.5, 0.5), (2.0, 2.0))
    np.testing.assert_allclose(out, np.clip(sitk.GetArrayFromImage(ref), 0, None), rtol=1e-5)
    # a smooth image keeps its values: output pixel (i, j) sits between input 2i and 2i+1
    pair_mean = image.reshape(128, 2, 128, 2).mean(axis=(1, 3))
    assert np.abs(out - pair_mean).mean() < 0.05 * image.max()


def test_resample_clamps_negative_overshoot() -> None:
    step = np.zeros((64, 64))
    step[:, 32:] = 100.0  # a sharp edge: cubic B-spline rings below zero
    raw = sitk.GetArrayFromImage(
        sitk.Resample(
            sitk.GetImageFromArray(step), [24, 24], sitk.Transform(), sitk.sitkBSpline,
            (0.5 * (64 / 24 - 1),) * 2, (64 / 24,) * 2,
        )
    )  # fmt: skip
    assert raw.min() < 0
    assert resample_image(step, 24).min() == 0.0


def test_mask_stays_binary_and_maps_256_to_128() -> None:
    mask = np.zeros((256, 256), np.uint8)
    mask[64:192, 40:120] = 1
    out = resample_mask(mask, 128)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
    expected = np.zeros((128, 128), np.uint8)
    expected[32:96, 20:60] = 1
    np.testing.assert_array_equal(out, expected)
    up = resample_mask(blob_mask(blob(64)) * 255, 128)  # {0, 255} input, upsampling
    assert set(np.unique(up)) == {0, 1}


def test_same_size_is_untouched() -> None:
    image = blob(32)
    np.testing.assert_array_equal(resample_image(image, 32), image.astype(np.float32))


def test_non_square_is_padded_centred_or_refused() -> None:
    image = blob(40, rows=30)
    mask = blob_mask(image)
    padded, pads = pad_to_square(image)
    assert padded.shape == (40, 40) and pads == (5, 5, 0, 0)
    np.testing.assert_array_equal(padded[5:35], image)
    assert not padded[:5].any() and not padded[35:].any()
    odd, pads = pad_to_square(np.ones((3, 6)))
    assert pads == (1, 2, 0, 0) and odd.shape == (6, 6)

    out, out_mask, info = preprocess_case(image, mask, PreprocessSettings(size=20))
    assert out.shape == out_mask.shape == (20, 20)
    assert info["padded"] and info["orig_rows"] == 30 and info["orig_cols"] == 40
    # top rows are padding (B-spline leaks a little signal into them), not stretched content
    assert out[0].max() < 0.01 and out_mask[:2].max() == 0 and out[10].max() > 0.5
    with pytest.raises(ImageReadError, match=r"case k7: image is 30x40 \(not square\)"):
        preprocess_case(image, mask, PreprocessSettings(size=20, non_square="error"), "k7")


def test_image_mask_size_mismatch_names_case() -> None:
    with pytest.raises(ImageReadError, match=r"case m1: image is 32x32 but mask is 16x16"):
        preprocess_case(blob(32), np.ones((16, 16), np.uint8), PreprocessSettings(), "m1")


def test_max_normalisation_uses_robust_max() -> None:
    image = blob(64)
    image[10, 10] = 1e5  # one hot pixel must not darken the image
    out = normalise(image, "max", 99.9)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() == 1.0
    top = np.percentile(image, 99.9)
    np.testing.assert_allclose(out[32, 32], min(image[32, 32] / top, 1.0), rtol=1e-6)
    assert out[32, 32] > 0.5
    sparse = np.zeros((64, 64))
    sparse[3, 3] = 4.0  # 99.9th percentile is 0: fall back to the maximum
    assert normalise(sparse, "max")[3, 3] == 1.0


def test_counts_normalisation_preserves_total() -> None:
    image = np.rint(blob(256, seed=3, peak=500))
    out, _, _ = preprocess_case(image, None, PreprocessSettings(size=128, normalisation="counts"))
    assert out.shape == (128, 128)
    np.testing.assert_allclose(out.sum(), image.sum(), rtol=1e-5)
    assert out.max() > 1.5 * image.max()  # values are counts per (bigger) pixel, not [0, 1]


def test_settings_are_validated_and_recorded() -> None:
    with pytest.raises(ConfigError, match="normalisation"):
        PreprocessSettings(normalisation="zscore")
    with pytest.raises(ConfigError, match="non_square"):
        PreprocessSettings(non_square="stretch")
    record = PreprocessSettings().to_dict()
    assert record["size"] == 128 and record["image_interpolator"] == "sitkBSpline"
    assert record["mask_interpolator"] == "sitkNearestNeighbor"
