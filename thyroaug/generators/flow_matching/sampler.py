"""The ODE sampler of flow matching (the "scheduler" of diffusers' model / scheduler / pipeline).

* the **model** is ``flow_matching.model.VelocityNet`` (v(x, t | class, mask));
* the **sampler** ``ODESampler`` holds the time discretisation and the integration method only:
  it integrates dx/dt = v(x, t) from t = 0 (Gaussian noise) to t = 1 (data) with torchdiffeq's
  ``odeint``. Fixed-step ``euler`` (the paper: 10 steps), ``midpoint`` and ``rk4`` take ``steps``
  equal steps on ``linspace(0, 1, steps + 1)``; adaptive ``dopri5`` uses ``atol`` / ``rtol``;
* the **pipeline** ``flow_matching.pipeline.FlowMatchingPipeline`` wires net + sampler + the bank
  of training masks for inference: seeds -> noise, labels -> class context, mask choice,
  batching, output mapping.

Seeding: the initial noise of every image comes from its own ``torch.Generator`` seeded with that
image's seed (drawn on the CPU, then moved), and a mask drawn from the bank is chosen by
``numpy.random.default_rng([seed, label])``, so an image depends on (seed, label, mask) only.
Inside a batch the computation is per-sample (GroupNorm, per-image attention), so a different batch
composition gives the same image up to float rounding (bitwise for the same batch layout).

Output: the net works in [-1, 1]; images are mapped back with (x + 1) / 2 and clipped to the data
range [0, 1]. There is deliberately no per-image min-max stretch (MOTFM's default for saving):
absolute intensity carries diagnostic meaning in scintigraphy (uptake, background).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from thyroaug.errors import GeneratorError
from thyroaug.generators.flow_matching.config import SOLVERS

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

FIXED_STEP_SOLVERS: tuple[str, ...] = ("euler", "midpoint", "rk4")
EVALS_PER_STEP: dict[str, int] = {"euler": 1, "midpoint": 2, "rk4": 4}
Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ODESampler:
    """Integrate dx/dt = v(t, x) from t = 0 to t = 1 with torchdiffeq.

    Args:
        solver: ``euler`` | ``midpoint`` | ``rk4`` (fixed steps) or ``dopri5`` (adaptive).
        steps: number of equal steps for the fixed-step solvers (ignored by ``dopri5``).
        atol: absolute tolerance of ``dopri5``.
        rtol: relative tolerance of ``dopri5``.
    """

    solver: str = "euler"
    steps: int = 10
    atol: float = 1e-5
    rtol: float = 1e-5

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise GeneratorError(f"solver={self.solver!r}: choose one of {', '.join(SOLVERS)}")
        if int(self.steps) < 1:
            raise GeneratorError(f"steps={self.steps}: need at least one step")

    @property
    def evaluations(self) -> int | None:
        """Velocity evaluations per image (None for the adaptive solver)."""
        per = EVALS_PER_STEP.get(self.solver)
        return None if per is None else per * int(self.steps)

    def time_grid(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The output times handed to ``odeint`` (its step grid for fixed-step solvers)."""
        if self.solver in FIXED_STEP_SOLVERS:
            return torch.linspace(0.0, 1.0, int(self.steps) + 1, device=device)
        return torch.tensor([0.0, 1.0], device=device)

    def integrate(self, velocity: Velocity, x0: torch.Tensor) -> torch.Tensor:
        """x(1) of the ODE started at ``x0`` (no intermediate states are kept)."""
        from torchdiffeq import odeint

        options: dict[str, Any] = {}
        if self.solver not in FIXED_STEP_SOLVERS:
            options = {"atol": self.atol, "rtol": self.rtol}
        trajectory = odeint(velocity, x0, self.time_grid(x0.device), method=self.solver, **options)
        return trajectory[-1]


def initial_noise(
    seeds: Sequence[int],
    shape: Sequence[int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise ``[len(seeds), *shape]``, each row from its own seeded generator."""
    rows = [
        torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s)), dtype=dtype)
        for s in seeds
    ]
    return torch.stack(rows).to(device) if rows else torch.empty(0, *shape, dtype=dtype)


def to_data_range(x: torch.Tensor) -> torch.Tensor:
    """Map net outputs in [-1, 1] to the cohort's [0, 1] range and clip (no min-max stretch)."""
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def from_data_range(x: torch.Tensor) -> torch.Tensor:
    """Map cohort images in [0, 1] to the net's [-1, 1] range."""
    return x.float() * 2.0 - 1.0
