"""The ODE sampler of flow matching (the "scheduler" of diffusers' model / scheduler / pipeline).

* the **model** is ``flow_matching.model.VelocityNet`` (v(x, t | class, mask));
* the **sampler** ``ODESampler`` holds the time discretisation and the integration method only:
  it integrates dx/dt = v(x, t) from t = 0 (Gaussian noise) to t = 1 (data). Fixed-step
  ``euler`` (the paper: 10 steps), ``midpoint`` and ``rk4`` take ``steps`` equal steps on
  ``linspace(0, 1, steps + 1)`` in a direct loop (``fixed_step_integrate``: torchdiffeq's update
  formulas operation for operation, so the result is bitwise that of ``odeint``, without its
  per-call wrappers and its trajectory buffer); adaptive ``dopri5`` goes through torchdiffeq's
  ``odeint`` with ``atol`` / ``rtol``;
* the **pipeline** ``flow_matching.pipeline.FlowMatchingPipeline`` wires net + sampler + the bank
  of training masks for inference: seeds -> noise, labels -> class context, mask choice,
  batching, output mapping.

Seeding: the initial noise of every image comes from its own ``torch.Generator`` seeded with that
image's seed (drawn on the CPU, then moved), and a mask drawn from the bank is chosen by
``numpy.random.default_rng([seed, label])``, so an image depends on (seed, label, mask) only.
Inside a batch the computation is per-sample (GroupNorm, per-image attention), so a different batch
composition gives the same image up to float rounding (bitwise for the same batch layout).

CPU runtime: ``retain_freed_heap`` / ``release_freed_heap`` keep the glibc heap's freed memory
while the pipeline samples on a CPU (see there; measured in ``bench/fm_sampling.py``).

Output: the net works in [-1, 1]; images are mapped back with (x + 1) / 2 and clipped to the data
range [0, 1]. There is deliberately no per-image min-max stretch (MOTFM's default for saving):
absolute intensity carries diagnostic meaning in scintigraphy (uptake, background).
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import logging
import platform
import sys
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
    """Integrate dx/dt = v(t, x) from t = 0 to t = 1 (fixed steps directly, dopri5 by torchdiffeq).

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
        """x(1) of the ODE started at ``x0`` (no intermediate states are kept).

        Fixed-step solvers run ``fixed_step_integrate`` (bitwise torchdiffeq's result, less
        overhead); ``dopri5`` runs torchdiffeq's ``odeint``.
        """
        if self.solver in FIXED_STEP_SOLVERS:
            return fixed_step_integrate(velocity, x0, self.time_grid(x0.device), self.solver)
        return self.integrate_odeint(velocity, x0)

    def integrate_odeint(self, velocity: Velocity, x0: torch.Tensor) -> torch.Tensor:
        """x(1) through torchdiffeq's ``odeint`` for every solver (the reference path)."""
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

    The update formulas are torchdiffeq 0.2's (``fixed_grid.py``; its ``rk4`` is the 3/8-rule
    ``rk4_alt_step_func``), in the same operation order and with the same 0-d time tensors, so
    the result is bitwise that of ``odeint(velocity, x0, grid, method=solver)[-1]`` (a test pins
    this) without ``odeint``'s per-evaluation wrappers, the ``[len(grid), *x.shape]`` trajectory
    buffer and its copies. The state keeps ``x0``'s memory format.
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


# --------------------------------------------------------------------------------------------
# CPU runtime while sampling: keep the heap's freed memory
# --------------------------------------------------------------------------------------------
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
HEAP_MMAP_THRESHOLD = 64 << 20
HEAP_TRIM_THRESHOLD = 256 << 20
_heap_state = {"retained": False}


@functools.lru_cache(maxsize=1)
def _glibc() -> Any:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def retain_freed_heap() -> bool:
    """Keep freed memory in the process heap (glibc; process-wide, set once): True if active.

    By default glibc hands blocks above a (dynamic, at most 32 MiB) threshold to ``mmap`` and
    trims the heap top beyond twice that, so the activations of every net evaluation are fresh
    pages, each zero-filled on its first write (a page fault: about 1 ms of every 14 ms
    evaluation of the quick net at batch 32 on one thread). Here blocks up to
    ``HEAP_MMAP_THRESHOLD`` come from the heap and up to ``HEAP_TRIM_THRESHOLD`` of free memory
    stays at its top; ``release_freed_heap`` (called at the end of ``sample``) returns it.
    """
    if not _heap_state["retained"]:
        libc = _glibc()
        if libc is None:
            return False
        ok = libc.mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD) == 1 and ok
        _heap_state["retained"] = ok
    return _heap_state["retained"]


def release_freed_heap() -> None:
    """Return the heap's free memory to the system (``malloc_trim``; glibc only)."""
    libc = _glibc()
    if libc is not None and _heap_state["retained"]:
        libc.malloc_trim(0)
