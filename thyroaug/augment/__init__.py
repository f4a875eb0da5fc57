"""Conventional augmentation (CA) with ``torchvision.transforms.v2`` (paper section 3.2.1)."""

from thyroaug.augment.conventional import ConventionalAugment, make_ca_set

__all__ = ["ConventionalAugment", "make_ca_set"]
