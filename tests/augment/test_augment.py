"""Conventional augmentation (thyroaug.augment.conventional)."""

from __future__ import annotations

import pytest
import torch

from thyroaug.augment import ConventionalAugment, make_ca_set
from thyroaug.augment.conventional import NOISE_SIGMA, RandomGaussianNoise
from thyroaug.contract import CLASSES
from thyroaug.data.cohort import PreparedCohort
from thyroaug.errors import ScenarioError


def blob(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """An off-centre bright ellipse (image in [0, 1]) and its 0/1 uint8 mask."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = (((xx - size * 0.4) / (size * 0.22)) ** 2 + ((yy - size * 0.5) / (size * 0.3)) ** 2) < 1
    image = 0.05 + 0.9 * mask.float()
    return image[None], mask.to(torch.uint8)[None]


def test_same_seed_same_output_and_global_rng_untouched() -> None:
    image, mask = blob()
    aug = ConventionalAugment()
    state = torch.random.get_rng_state()
    a_img, a_mask = aug(image, mask, seed=7)
    b_img, b_mask = aug(image, mask, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a_img, b_img) and torch.equal(a_mask, b_mask)
    c_img = aug(image, seed=8)
    assert not torch.equal(a_img, c_img)


def test_output_stays_in_the_data_range() -> None:
    image, _ = blob()
    for seed in range(20):
        out = ConventionalAugment(value_range=(0.0, 1.0))(image, seed=seed)
        assert out.shape == image.shape and out.dtype == torch.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    shifted = ConventionalAugment(value_range=(-1.0, 3.0))(image * 4 - 1, seed=0)
    assert float(shifted.min()) >= -1.0 and float(shifted.max()) <= 3.0


def test_mask_stays_binary_and_aligned_with_the_image() -> None:
    image, mask = blob()
    aug = ConventionalAugment(noise_sigma=(0.0, 0.0))
    moved = 0
    for seed in range(10):
        out_img, out_mask = aug(image, mask, seed=seed)
        assert out_mask.dtype == torch.uint8
        assert set(out_mask.unique().tolist()) <= {0, 1}
        assert out_mask.sum() > 0
        agree = ((out_img > 0.5).to(torch.uint8) == out_mask).float().mean()
        assert agree > 0.97
        moved += int(not torch.equal(out_mask, mask))
    assert moved >= 9  # the geometry really changes


def test_flip_only_is_an_exact_mirror() -> None:
    image, mask = blob()
    aug = ConventionalAugment(
        degrees=0, translate=0, scale=(1, 1), flip_p=1.0, noise_sigma=(0.0, 0.0)
    )
    out_img, out_mask = aug(image, mask, seed=0)
    assert torch.allclose(out_img, image.flip(-1))
    assert torch.equal(out_mask, mask.flip(-1))


def test_noise_sigma_lies_in_the_paper_range() -> None:
    flat = torch.full((1, 64, 64), 0.5)
    aug = ConventionalAugment(degrees=0, translate=0, scale=(1, 1), flip_p=0.0)
    sigmas = [float((aug(flat, seed=s) - flat).std()) for s in range(30)]
    low, high = NOISE_SIGMA
    assert min(sigmas) > low * 0.85 and max(sigmas) < high * 1.1
    assert max(sigmas) - min(sigmas) > (high - low) / 3  # sigma itself is drawn, not fixed
    scaled = ConventionalAugment(value_range=(0.0, 10.0), degrees=0, translate=0, scale=(1, 1))
    big = float((scaled(flat * 10, seed=0) - flat * 10).std())
    assert low * 10 * 0.85 < big < high * 10 * 1.1  # sigma is relative to the data range


def test_noise_leaves_masks_alone() -> None:
    from torchvision import tv_tensors

    _, mask = blob()
    noise = RandomGaussianNoise((0.5, 0.5))
    assert torch.equal(noise(tv_tensors.Mask(mask)), mask)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ConventionalAugment(value_range=(1.0, 1.0))
    with pytest.raises(TypeError):
        ConventionalAugment()(torch.zeros(1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError):
        ConventionalAugment()(torch.zeros(1, 8, 8), torch.zeros(1, 4, 4))


def test_ca_set_counts_provenance_and_determinism(tiny_cohort: PreparedCohort) -> None:
    train = tiny_cohort.subset("train")
    a = make_ca_set(train, per_class=7, seed=5, progress=False)
    b = make_ca_set(train, per_class=7, seed=5, progress=False)
    c = make_ca_set(train, per_class=7, seed=6, progress=False)
    assert a.method == "CA"
    assert a.class_counts() == dict.fromkeys(CLASSES, 7)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.images.shape[1:] == train.images.shape[1:]
    lo, hi = float(train.images.min()), float(train.images.max())
    assert float(a.images.min()) >= lo and float(a.images.max()) <= hi
    # every source is a training case of the same class
    label_of = dict(zip(train.table["case_id"], train.table["label"]))
    assert all(label_of[s] == lab for s, lab in zip(a.manifest["source_id"], a.manifest["label"]))
    assert a.info["cohort_hash"] == tiny_cohort.content_hash
    # sources are used evenly: each DG training case is used floor or ceil(7 / n) times
    dg = a.manifest[a.manifest["label"] == "DG"]["source_id"].value_counts()
    assert dg.max() - dg.min() <= 1
    # the manifest seed reproduces one image from its source
    k = 9
    row = train.table.index[train.table["case_id"] == a.manifest["source_id"][k]][0]
    again = ConventionalAugment(value_range=(lo, hi))(
        train.images[row], seed=int(a.manifest["seed"][k])
    )
    assert torch.equal(again, a.images[k])


def test_ca_set_refuses_held_out_cases_and_empty_classes(tiny_cohort: PreparedCohort) -> None:
    with pytest.raises(ScenarioError, match="not in the training split"):
        make_ca_set(tiny_cohort, per_class=2, progress=False)
    train = tiny_cohort.subset("train")
    no_ti = train.subset((train.labels != CLASSES.index("TI")).nonzero().flatten().numpy())
    with pytest.raises(ScenarioError, match="class TI"):
        make_ca_set(no_ti, per_class=2, progress=False)
    with pytest.raises(ScenarioError):
        make_ca_set(train, per_class=0, progress=False)
