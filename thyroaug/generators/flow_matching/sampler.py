"""The ODE sampler of flow matching: dx/dt = v(t, x) from noise (t = 0) to data (t = 1).

The "scheduler" of diffusers' model / scheduler / pipeline split (the net is
``model.VelocityNet``, the pipeline ``pipeline.FlowMatchingPipeline``). Seeding and the output
mapping: docs/generators.md, "Sampling".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from thyroaug.errors import GeneratorError
from thyroaug.generators.flow_matching.config import SOLVERS

FIXED_STEP_SOLVERS: tuple[str, ...] = ("euler", "midpoint", "rk4")
EVALS_PER_STEP: dict[str, int] = {"euler": 1, "midpoint": 2, "rk4": 4}
Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ODESampler:
    """Integrate dx/dt = v(t, x) from t = 0 to t = 1.

    Fixed-step solvers take ``steps`` equal steps on ``linspace(0, 1, steps + 1)``; ``dopri5`` is
    torchdiffeq's adaptive ``odeint``.

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
        """The output times (the step grid of the fixed-step solvers)."""
        if self.solver in FIXED_STEP_SOLVERS:
            return torch.linspace(0.0, 1.0, int(self.steps) + 1, device=device)
        return torch.tensor([0.0, 1.0], device=device)

    def integrate(self, velocity: Velocity, x0: torch.Tensor) -> torch.Tensor:
        """x(1) of the ODE started at ``x0`` (no intermediate states are kept)."""
        if self.solver in FIXED_STEP_SOLVERS:
            return fixed_step_integrate(velocity, x0, self.time_grid(x0.device), self.solver)
        return self.integrate_odeint(velocity, x0)

    def integrate_odeint(self, velocity: Velocity, x0: torch.Tensor) -> torch.Tensor:
        """x(1) through torchdiffeq's ``odeint`` for every solver (the reference path)."""
        # torchdiffeq loads for dopri5 only, not with `train-fm --help` (which imports this module)
        from torchdiffeq import odeint

        options: dict[str, Any] = {}
        if self.solver not in FIXED_STEP_SOLVERS:
            options = {"atol": self.atol, "rtol": self.rtol}
        trajectory = odeint(velocity, x0, self.time_grid(x0.device), method=self.solver, **options)
        return trajectory[-1]


_ONE_THIRD = 1 / 3
_TWO_THIRDS = 2 / 3


def fixed_step_integrate(
    velocity: Velocity, x0: torch.Tensor, grid: torch.Tensor, solver: str
) -> torch.Tensor:
    """x at ``grid[-1]`` by ``euler`` / ``midpoint`` / ``rk4`` steps between the grid points.

    Bitwise ``torchdiffeq.odeint(velocity, x0, grid, method=solver)[-1]`` (torchdiffeq 0.2's update
    formulas in its operation order; ``rk4`` is its 3/8 rule) without the trajectory buffer. The
    state keeps ``x0``'s memory format.

    Raises:
        GeneratorError: ``solver`` is not a fixed-step solver.
    """
    if solver not in FIXED_STEP_SOLVERS:
        raise GeneratorError(f"solver={solver!r} is not a fixed-step solver")
    y0 = x0
    for t0, t1 in itertools.pairwise(grid):
        dt = t1 - t0
        k1 = velocity(t0, y0)
        if solver == "euler":
            dy = dt * k1
        elif solver == "midpoint":
            half_dt = 0.5 * dt
            y_mid = y0 + k1 * half_dt
            dy = dt * velocity(t0 + half_dt, y_mid)
        else:
            k2 = velocity(t0 + dt * _ONE_THIRD, y0 + dt * k1 * _ONE_THIRD)
            k3 = velocity(t0 + dt * _TWO_THIRDS, y0 + dt * (k2 - k1 * _ONE_THIRD))
            k4 = velocity(t1, y0 + dt * (k1 - k2 + k3))
            dy = (k1 + 3 * (k2 + k3) + k4) * dt * 0.125
        y0 = y0 + dy
    return y0


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
