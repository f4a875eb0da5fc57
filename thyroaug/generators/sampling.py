"""Sampling for flow matching: the ODE sampler and the synthesis pipeline, kept apart.

Following diffusers' split of model / scheduler / pipeline:

* the **model** is ``thyroaug.generators.flow_matching.VelocityNet`` (v(x, t | class, mask));
* the **sampler** ``ODESampler`` holds the time discretisation and the integration method only:
  it integrates dx/dt = v(x, t) from t = 0 (Gaussian noise) to t = 1 (data) with torchdiffeq's
  ``odeint``. Fixed-step ``euler`` (the paper: 10 steps), ``midpoint`` and ``rk4`` take ``steps``
  equal steps on ``linspace(0, 1, steps + 1)``; adaptive ``dopri5`` uses ``atol`` / ``rtol``;
* the **pipeline** ``FlowMatchingPipeline`` wires net + sampler + the bank of training masks for
  inference: seeds -> noise, labels -> class context, mask choice, batching, output mapping.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from thyroaug import CLASSES
from thyroaug.errors import GeneratorError
from thyroaug.generators.base import GeneratedBatch, label_index
from thyroaug.generators.fm_config import SOLVERS

if TYPE_CHECKING:
    from thyroaug.generators.flow_matching import VelocityNet

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


@dataclass
class MaskBank:
    """Training masks by class, from which mask-conditioned synthesis draws its conditions.

    Attributes:
        masks: uint8 ``[M, 1, S, S]`` (0/1).
        labels: int64 ``[M]`` class index of each mask's case.
        case_ids: the case id of each mask (recorded as ``source_id`` in manifests).
    """

    masks: torch.Tensor
    labels: torch.Tensor
    case_ids: list[str]

    def __post_init__(self) -> None:
        if not (len(self.masks) == len(self.labels) == len(self.case_ids)):
            raise GeneratorError("MaskBank: masks, labels and case_ids differ in length")

    def __len__(self) -> int:
        return len(self.case_ids)

    def counts(self) -> dict[str, int]:
        """Masks per class name."""
        c = np.bincount(self.labels.numpy(), minlength=len(CLASSES))
        return {name: int(c[i]) for i, name in enumerate(CLASSES)}

    def pick(self, label: int, seed: int) -> int:
        """Row of the mask used for (label, seed): uniform over that class's masks.

        Raises:
            GeneratorError: the bank holds no mask of that class.
        """
        rows = np.flatnonzero(self.labels.numpy() == int(label))
        if len(rows) == 0:
            raise GeneratorError(
                f"no training mask of class {CLASSES[int(label)]} in the generator's mask bank; "
                "pass a mask explicitly or retrain on a cohort with masks for that class"
            )
        rng = np.random.default_rng([int(seed), int(label)])
        return int(rows[rng.integers(len(rows))])

    def save(self, folder: str | Path) -> None:
        """Write ``masks.safetensors`` (bit-packed) and ``masks.csv`` into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        arr = self.masks.numpy().astype(np.uint8)
        packed = np.packbits(arr.reshape(len(arr), -1) > 0, axis=1)
        save_file(
            {"packed": torch.from_numpy(packed), "labels": self.labels.long().contiguous()},
            str(folder / "masks.safetensors"),
            metadata={"shape": ",".join(str(s) for s in arr.shape)},
        )
        pd.DataFrame(
            {"case_id": self.case_ids, "label": [CLASSES[int(i)] for i in self.labels]}
        ).to_csv(folder / "masks.csv", index=False)

    @classmethod
    def load(cls, folder: str | Path) -> MaskBank:
        """Read a bank written by ``save``."""
        from safetensors import safe_open

        folder = Path(folder)
        with safe_open(str(folder / "masks.safetensors"), framework="pt") as f:
            shape = tuple(int(s) for s in (f.metadata() or {})["shape"].split(","))
            packed = f.get_tensor("packed").numpy()
            labels = f.get_tensor("labels")
        n = int(np.prod(shape[1:]))
        masks = np.unpackbits(packed, axis=1, count=n).reshape(shape).astype(np.uint8)
        table = pd.read_csv(folder / "masks.csv", keep_default_na=False, dtype=str)
        return cls(torch.from_numpy(masks), labels, table["case_id"].tolist())


class FlowMatchingPipeline:
    """Velocity net + ODE sampler + mask bank -> images (implements ``base.Generator``).

    Args:
        net: the velocity model (EMA weights for synthesis).
        mask_bank: training masks to draw conditions from (needed for mask-conditioned nets when
            no mask is passed).
        sampler: default ODE sampler (the config's solver / steps if None).
        device: where to run (CUDA if available when None).
        channels_last: convert net and inputs to channels-last memory format (faster convs).
        compile: wrap the net in ``torch.compile`` (pays off for long sampling runs only).
        autocast: ``no`` (fp32, default: highest precision) or ``bf16`` / ``fp16`` (CUDA only).
        info: provenance returned by ``describe``.
    """

    def __init__(
        self,
        net: VelocityNet,
        *,
        mask_bank: MaskBank | None = None,
        sampler: ODESampler | None = None,
        device: torch.device | str | None = None,
        channels_last: bool = False,
        compile: bool = False,
        autocast: str = "no",
        info: dict[str, Any] | None = None,
    ) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.config = net.config
        self.channels_last = False
        self.forward: Callable[..., torch.Tensor] = self.net
        self.enable_fast_sampling(channels_last=channels_last, compile=compile)
        self.mask_bank = mask_bank
        self.sampler = sampler or ODESampler(self.config.solver, self.config.steps)
        if autocast not in ("no", "bf16", "fp16"):
            raise GeneratorError(f"autocast={autocast!r}: choose no, bf16 or fp16")
        self.autocast = autocast if self.device.type == "cuda" else "no"
        self.info = dict(info or {})
        self.image_size = int(self.config.image_size)

    def enable_fast_sampling(self, channels_last: bool = True, compile: bool = True) -> None:
        """Opt-in speed: channels-last memory format and/or ``torch.compile`` of the net.

        Same weights and math (outputs agree to float rounding); compilation costs a minute or
        two up front, so it pays for long runs (bench/fm_sampling.py measures both).
        """
        if channels_last and not self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
            self.channels_last = True
        if compile:
            self.forward = torch.compile(self.net)

    # --- Generator protocol --------------------------------------------------------------------
    def method(self, mode: str | None = None) -> str:
        """Always ``FM``; flow matching has no modes."""
        if mode not in (None, "", "FM"):
            raise GeneratorError(f"mode={mode!r}: the flow-matching generator has no modes")
        return "FM"

    def describe(self) -> dict[str, Any]:
        """Config and training provenance."""
        return {
            "conditioning": self.config.conditioning,
            "profile": self.config.profile,
            "image_size": self.image_size,
            "default_solver": self.sampler.solver,
            "default_steps": self.sampler.steps,
            **self.info,
        }

    def sample(
        self,
        labels: Sequence[int | str],
        seeds: Sequence[int],
        masks: torch.Tensor | None = None,
        *,
        solver: str | None = None,
        steps: int | None = None,
        batch_size: int = 32,
        mode: str | None = None,
        progress: bool = False,
    ) -> GeneratedBatch:
        """Images for (label, seed[, mask]) triples, in [0, 1].

        Args:
            labels: class names or indices, one per image.
            seeds: one seed per image.
            masks: optional ``[N, 1, S, S]`` / ``[N, S, S]`` masks (values > 0.5 are thyroid);
                without them a mask-conditioned net draws one per image from the mask bank.
            solver: override the default solver (``euler`` / ``midpoint`` / ``rk4`` / ``dopri5``).
            steps: override the default number of steps.
            batch_size: images per forward batch.
            mode: must be None (kept for the common interface).
            progress: show a tqdm bar over batches.

        Raises:
            GeneratorError: unknown label, length mismatch, wrong mask size, or a mask for a net
                that does not use masks.
        """
        from tqdm.auto import tqdm

        self.method(mode)
        idx = [label_index(lbl) for lbl in labels]
        seeds = [int(s) for s in seeds]
        if len(idx) != len(seeds):
            raise GeneratorError(f"{len(idx)} labels but {len(seeds)} seeds; give one per image")
        sampler = self.sampler
        if solver is not None or steps is not None:
            sampler = ODESampler(solver or sampler.solver, int(steps or sampler.steps))
        cond_masks, source_ids = self._resolve_masks(idx, seeds, masks)
        out = []
        batches = range(0, len(idx), max(1, int(batch_size)))
        for start in tqdm(batches, desc="FM sampling", disable=not progress):
            end = start + max(1, int(batch_size))
            x0 = initial_noise(seeds[start:end], (1, self.image_size, self.image_size))
            lab = torch.tensor(idx[start:end], dtype=torch.long)
            m = None if cond_masks is None else cond_masks[start:end]
            out.append(to_data_range(self.generate(x0, lab, m, sampler)).cpu())
        images = torch.cat(out) if out else torch.empty(0, 1, self.image_size, self.image_size)
        n = len(idx)
        columns: dict[str, list[Any]] = {
            "source_id": source_ids,
            "solver": [sampler.solver] * n,
            "steps": [sampler.steps if sampler.solver in FIXED_STEP_SOLVERS else ""] * n,
            "conditioning": [self.config.conditioning] * n,
        }
        return GeneratedBatch(images=images, columns=columns)

    # --- pieces ----------------------------------------------------------------------------------
    def velocity(self, labels: torch.Tensor | None, masks: torch.Tensor | None) -> Velocity:
        """The ODE right-hand side v(t, x) for fixed conditions."""
        forward = self.forward

        def field(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return forward(x, t, labels, masks)

        return field

    @torch.inference_mode()
    def generate(
        self,
        x0: torch.Tensor,
        labels: torch.Tensor | None,
        masks: torch.Tensor | None,
        sampler: ODESampler | None = None,
    ) -> torch.Tensor:
        """Integrate from noise ``x0`` (net space, [-1, 1] at the end); no output mapping."""
        sampler = sampler or self.sampler
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        # clones made here are inference tensors, like every later ODE state (one compiled graph)
        x0 = x0.to(self.device, torch.float32).clone(memory_format=fmt)
        labels = None if labels is None else labels.to(self.device).clone()
        if masks is not None:
            masks = masks.to(self.device, torch.float32).clone(memory_format=fmt)
        enabled = self.autocast != "no"
        dtype = torch.bfloat16 if self.autocast == "bf16" else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=enabled):
            x1 = sampler.integrate(self.velocity(labels, masks), x0)
        return x1.float()

    def _resolve_masks(
        self, labels: list[int], seeds: list[int], masks: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, list[str]]:
        n, s = len(labels), self.image_size
        if not self.config.uses_mask:
            if masks is not None:
                raise GeneratorError(
                    f"this generator is conditioned on {self.config.conditioning!r}, not on "
                    "masks; drop the mask"
                )
            return None, [""] * n
        if masks is not None:
            masks = torch.as_tensor(masks)
            if masks.ndim == 3:
                masks = masks[:, None]
            if masks.ndim != 4 or tuple(masks.shape[1:]) != (1, s, s) or len(masks) != n:
                raise GeneratorError(
                    f"masks must be [{n}, 1, {s}, {s}] (or [{n}, {s}, {s}]), got "
                    f"{list(masks.shape)}"
                )
            return (masks.float() > 0.5).float(), ["request"] * n
        if self.mask_bank is None or len(self.mask_bank) == 0:
            raise GeneratorError("mask-conditioned generator without a mask bank: pass masks")
        rows = [self.mask_bank.pick(lbl, seed) for lbl, seed in zip(labels, seeds)]
        chosen = self.mask_bank.masks[torch.tensor(rows, dtype=torch.long)].float()
        return chosen, [self.mask_bank.case_ids[r] for r in rows]
