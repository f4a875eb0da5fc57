"""One seed derivation for the whole package: ``derive_seed(*words)``.

Each purpose uses its own word tuple (e.g. ``(run_seed, class_index, j)`` for the j-th synthetic
image of a class), so streams never collide by accident and any single item can be regenerated
from the words recorded with it.
"""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*words: int) -> int:
    """A 32-bit seed from non-negative integers (``SeedSequence(words).generate_state(1)[0]``)."""
    if not words:
        raise ValueError("derive_seed needs at least one word")
    bad = [w for w in words if int(w) < 0]
    if bad:
        raise ValueError(f"seed words must be >= 0, got {bad}")
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0])


def torch_generator(*words: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with ``derive_seed(*words)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*words))
    return g
