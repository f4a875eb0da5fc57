"""The flow-matching synthesis pipeline (net + ODE sampler + mask bank -> images); save / load.

``FlowMatchingPipeline`` implements ``generators.base.Generator``. ``save_generator`` /
``load_generator`` own the generator folder a person can open: ``config.json``,
``model.safetensors`` (EMA weights), a ``README.md`` card and, with ``embed_bank``, the mask bank.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from thyroaug.config import resolve, to_dict
from thyroaug.contract import CLASSES
from thyroaug.errors import GeneratorError
from thyroaug.generators.base import GeneratedBatch, image_grid, label_index, sample_seed
from thyroaug.generators.flow_matching.bank import MaskBank
from thyroaug.generators.flow_matching.config import FMConfig
from thyroaug.generators.flow_matching.fast_sampling import (
    SamplingNet,
    onednn_linear_available,
    release_freed_heap,
    retain_freed_heap,
)
from thyroaug.generators.flow_matching.model import FORMAT, VelocityNet, count_parameters
from thyroaug.generators.flow_matching.sampler import (
    FIXED_STEP_SOLVERS,
    ODESampler,
    Velocity,
    initial_noise,
    to_data_range,
)
from thyroaug.utils.atomic import atomic_dir

log = logging.getLogger(__name__)


class FlowMatchingPipeline:
    """Velocity net + ODE sampler + mask bank -> images (implements ``base.Generator``).

    Args:
        net: the velocity model (EMA weights for synthesis).
        mask_bank: training masks to draw conditions from (needed for mask-conditioned nets when
            no mask is passed).
        sampler: default ODE sampler (the config's solver / steps if None).
        device: where to run (CUDA if available when None).
        channels_last: convert net and inputs to channels-last memory format (oneDNN's native
            layout; None: on for the CPU, off elsewhere). Converts ``net`` in place.
        compile: ``torch.compile`` the sampling forward (``True`` or a mode such as
            ``max-autotune-no-cudagraphs``); off by default (docs/generators.md).
        onednn_linear: run ``nn.Linear`` layers through oneDNN (None: on for the CPU if
            available).
        retain_heap: ``retain_freed_heap`` while sampling (None: on for the CPU with glibc).
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
        channels_last: bool | None = None,
        compile: bool | str = False,
        onednn_linear: bool | None = None,
        retain_heap: bool | None = None,
        autocast: str = "no",
        info: dict[str, Any] | None = None,
    ) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        on_cpu = self.device.type == "cpu"
        self.net = net.to(self.device).eval()
        self.config = net.config
        self.channels_last = False
        if onednn_linear is None:
            onednn_linear = on_cpu and onednn_linear_available()
        self.onednn_linear = bool(onednn_linear) and on_cpu
        self.retain_heap = on_cpu if retain_heap is None else bool(retain_heap) and on_cpu
        self.compiled: bool | str = False
        self._sampling_net = SamplingNet(self.net, onednn_linear=self.onednn_linear)
        self._forward: Callable[..., torch.Tensor] = self._sampling_net
        self.enable_fast_sampling(
            channels_last=on_cpu if channels_last is None else channels_last, compile=compile
        )
        self.mask_bank = mask_bank
        self.sampler = sampler or ODESampler(self.config.solver, self.config.steps)
        if autocast not in ("no", "bf16", "fp16"):
            raise GeneratorError(f"autocast={autocast!r}: choose no, bf16 or fp16")
        self.autocast = autocast if self.device.type == "cuda" else "no"
        self.info = dict(info or {})
        self.image_size = int(self.config.image_size)

    def enable_fast_sampling(self, channels_last: bool = True, compile: bool | str = True) -> None:
        """Channels-last memory format and/or ``torch.compile`` of the sampling forward.

        Same weights and math (outputs agree to float rounding).

        Args:
            channels_last: convert the net (in place) and the inputs to channels-last.
            compile: ``True`` (default mode) or an inductor mode name; a batch of another size
                compiles again.
        """
        if channels_last and not self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
            self.channels_last = True
            self._sampling_net = SamplingNet(self.net, onednn_linear=self.onednn_linear)
            self._forward = self._sampling_net
            self.compiled = False
        if compile and not self.compiled:
            mode = None if compile is True else str(compile)
            self._forward = torch.compile(self._sampling_net, mode=mode)
            self.compiled = compile

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
        try:
            for start in tqdm(batches, desc="FM sampling", disable=not progress):
                end = start + max(1, int(batch_size))
                x0 = initial_noise(seeds[start:end], (1, self.image_size, self.image_size))
                lab = torch.tensor(idx[start:end], dtype=torch.long)
                m = None if cond_masks is None else cond_masks[start:end]
                out.append(to_data_range(self.generate(x0, lab, m, sampler)).cpu())
        finally:
            if self.retain_heap:
                release_freed_heap()
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
        """The ODE right-hand side v(t, x) for fixed conditions.

        The conditions (``SamplingNet.conditions``) are prepared at the first evaluation, under
        the caller's autocast / grad mode, and reused by the later ones.
        """
        forward, view, prepared = self._forward, self._sampling_net, {}

        def field(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            key = (x.device, x.dtype)
            if key not in prepared:
                prepared[key] = view.conditions(labels, masks, x.device, x.dtype)
            return forward(x, t, *prepared[key])

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
        if self.retain_heap:
            retain_freed_heap()
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
        return x1.float().contiguous()

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
            raise GeneratorError(
                "this mask-conditioned generator has no mask bank loaded (the registered model "
                "holds none; it stays with the training run as the artifact condition_bank/): "
                "give a mask, or load the model with access to that run"
            )
        rows = [self.mask_bank.pick(lbl, seed) for lbl, seed in zip(labels, seeds)]
        chosen = self.mask_bank.masks[torch.tensor(rows, dtype=torch.long)].float()
        return chosen, [self.mask_bank.case_ids[r] for r in rows]


def sample_grid(
    pipeline: FlowMatchingPipeline, per_class: int, seed: int = 0
) -> tuple[np.ndarray, torch.Tensor]:
    """A grid with one row per class of ``per_class`` samples (fixed seeds across epochs)."""
    labels = [c for c in range(len(CLASSES)) for _ in range(per_class)]
    seeds = [sample_seed(seed, c, j) for c in range(len(CLASSES)) for j in range(per_class)]
    images = pipeline.sample(labels, seeds, batch_size=len(labels)).images
    return image_grid(images, nrow=per_class), images


# --------------------------------------------------------------------------------------------
# Saving / loading a generator folder
# --------------------------------------------------------------------------------------------
CARD = """# thyroaug flow-matching generator

Conditional flow matching (MOTFM layout) for thyroid scintigraphy, trained by `thyroaug train-fm`.

- conditioning: **{conditioning}** (class = one-hot cross-attention; mask = ControlNet branch)
- image size: {image_size} px, intensities in [0, 1] (net space [-1, 1]; outputs clipped, no
  per-image stretch)
- network: MONAI DiffusionModelUNet channels {channels}, attention {attention}, ControlNet
  {controlnet}; parameters UNet {params_unet:,}, ControlNet {params_controlnet:,}
- weights: `model.safetensors` = EMA weights after {epochs} epoch(s); profile `{profile}`
- sampling default: {solver}, {steps} steps, from N(0, I) noise (seeded per image)
- training cohort: `{content_hash}` ({train_cases} train cases); mask bank: {masks} masks
  (drawn per (seed, label) for mask-conditioned synthesis), {bank_where}

Files: `config.json` (all settings), `model.safetensors`.
Load in Python with `thyroaug.generators.flow_matching.pipeline.load_generator(folder)`, or
through MLflow (`mlflow.pyfunc.load_model("models:/thyroaug-fm@champion")`).
"""


def save_generator(
    folder: str | Path,
    net: VelocityNet,
    mask_bank: MaskBank,
    info: dict[str, Any] | None = None,
    *,
    embed_bank: bool = False,
) -> Path:
    """Write the generator folder atomically (config.json, safetensors weights, README card).

    Args:
        folder: destination (replaced if it exists).
        net: the velocity net to save (the EMA weights).
        mask_bank: the training masks (counted on the card).
        info: training provenance kept in ``config.json``.
        embed_bank: put the mask bank in the folder too (``--embed-sources``); otherwise the
            caller writes it apart (``generators.banks.write_bank``) and it stays with the run.

    Returns:
        ``folder``.
    """
    info = dict(info or {})
    cfg = net.config
    with atomic_dir(folder, replace=True) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        if embed_bank:
            mask_bank.save(tmp)
        payload = {
            "format": FORMAT,
            "classes": list(CLASSES),
            "config": to_dict(cfg),
            "info": info,
        }
        (tmp / "config.json").write_text(json.dumps(payload, indent=2, default=str))
        counts = count_parameters(net)
        (tmp / "README.md").write_text(
            CARD.format(
                conditioning=cfg.conditioning,
                image_size=cfg.image_size,
                channels=list(cfg.channels),
                attention=list(cfg.attention_levels),
                controlnet="yes" if cfg.uses_mask else "no",
                params_unet=counts["unet"],
                params_controlnet=counts["controlnet"],
                epochs=info.get("epochs_done", "?"),
                profile=cfg.profile,
                solver=cfg.solver,
                steps=cfg.steps,
                content_hash=info.get("content_hash", ""),
                train_cases=info.get("train_cases", "?"),
                masks=len(mask_bank),
                bank_where=(
                    "embedded in this folder (`masks.safetensors`, `masks.csv`: case ids)"
                    if embed_bank
                    else "kept with the training run (artifact `condition_bank/`), not here"
                ),
            )
        )
    return folder


def load_generator(
    folder: str | Path,
    device: torch.device | str | None = None,
    mask_bank: MaskBank | None = None,
    **pipeline_kwargs: Any,
) -> FlowMatchingPipeline:
    """Load a folder written by ``save_generator`` as a ready ``FlowMatchingPipeline``.

    Args:
        folder: the generator folder.
        device: where to run (CUDA if available when None).
        mask_bank: the training masks to draw from (default: the ones embedded in the folder, if
            any; without either, mask-conditioned sampling needs the caller's masks).
        **pipeline_kwargs: passed to ``FlowMatchingPipeline``.

    Raises:
        GeneratorError: the folder is not a thyroaug FM generator.
    """
    folder = Path(folder)
    path = folder / "config.json"
    if not path.exists():
        raise GeneratorError(f"{folder} is not a flow-matching generator folder (no config.json)")
    payload = json.loads(path.read_text())
    if payload.get("format") != FORMAT:
        raise GeneratorError(f"{path}: format {payload.get('format')!r}, expected {FORMAT!r}")
    if tuple(payload.get("classes", CLASSES)) != CLASSES:
        raise GeneratorError(f"{path}: class order {payload['classes']} differs from {CLASSES}")
    saved = dict(payload["config"])
    profile = saved.pop("profile", "paper")
    names = {f.name for f in dataclasses.fields(FMConfig)}
    cfg = resolve(FMConfig, "paper", **{k: v for k, v in saved.items() if k in names})
    object.__setattr__(cfg, "profile", profile)
    net = VelocityNet(cfg)
    net.load_state_dict(load_file(str(folder / "model.safetensors")))
    bank = mask_bank
    if bank is None and (folder / "masks.safetensors").exists():
        bank = MaskBank.load(folder)
    return FlowMatchingPipeline(
        net, mask_bank=bank, device=device, info=payload.get("info", {}), **pipeline_kwargs
    )
