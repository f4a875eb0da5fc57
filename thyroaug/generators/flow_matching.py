"""Flow-matching generator (paper section 2.2 / 3.2.3, MOTFM): velocity net, path, training.

Why MONAI's ``DiffusionModelUNet`` and ``ControlNet``: they are exactly the networks MOTFM (the FM
method the paper cites, [yazdani2026flow]) builds from MONAI Generative, so the paper-size config
reproduces its 71.2 M + 31.2 M parameters and layer layout, maintained upstream (flash attention
through SDPA, ControlNet zero convolutions) instead of re-implemented here.

* **Velocity net** ``VelocityNet``: the UNet predicts v(x_t, t). The class enters as a one-hot
  context ``[B, 1, 4]`` through the UNet's (and ControlNet's) cross-attention; the mask enters
  through a ControlNet initialised from the UNet's weights whose zero-initialised output
  convolutions produce residuals added to the UNet's skip connections and middle block, so the
  branch is a no-op at initialisation. Conditioning is a string: ``class+mask`` (paper),
  ``class``, ``mask``, ``none``. Continuous t in [0, 1] is scaled to [0, 999] for the sinusoidal
  time embedding (kept continuous, unlike MOTFM's floor to integers, so that midpoint / rk4 /
  dopri5 evaluations between grid points see distinct times).
* **Path and loss**: conditional OT (linear) path x_t = (1 - t) x0 + t x1 with x0 ~ N(0, I) and x1 a
  training image scaled from [0, 1] to [-1, 1]; target velocity x1 - x0; MSE; t ~ U[0, 1].
* **Training** ``train_flow_matching``: Adam (1e-4), EMA weights (sampled), gradient clipping,
  autocast (bf16 / fp16) only on CUDA, ``accelerate.Accelerator`` (one CPU process here;
  ``accelerate launch`` shards each epoch's permutation across GPUs without code changes),
  atomic checkpoints every N epochs and an exact ``resume``. Seeding: the data order of epoch e is
  ``randperm`` from a generator seeded ``SeedSequence([seed, 0, e])`` and the noise / t of process
  r in epoch e from ``SeedSequence([seed, 1, r, e])``; the checkpoint also stores the torch, CUDA,
  numpy and python global RNG states, so a resumed run equals an uninterrupted one (bitwise on
  CPU).
* **Saving** ``save_generator`` / ``load_generator``: a folder a person can open: ``config.json``,
  ``model.safetensors`` (EMA weights), ``masks.safetensors`` + ``masks.csv`` (the training masks
  mask-conditioned sampling draws from) and a ``README.md`` card.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from thyroaug import CLASSES
from thyroaug.config import resolve, to_dict
from thyroaug.data.cohort import PreparedCohort
from thyroaug.errors import ConfigError, GeneratorError
from thyroaug.generators.base import image_grid, sample_seed
from thyroaug.generators.fm_config import FMConfig
from thyroaug.generators.sampling import FlowMatchingPipeline, MaskBank, from_data_range

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = "thyroaug-fm/1"
RESUMABLE_CHANGES = ("epochs", "checkpoint_every", "sample_every", "max_count", "solver", "steps")
"""Config fields a resumed run may change (the rest must match the checkpoint)."""


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class VelocityNet(nn.Module):
    """v(x_t, t | class, mask): MONAI DiffusionModelUNet (+ ControlNet for the mask).

    Args:
        config: network settings (``FMConfig``); ``config.conditioning`` picks the branches.
    """

    def __init__(self, config: FMConfig) -> None:
        super().__init__()
        from monai.networks.nets import ControlNet, DiffusionModelUNet

        self.config = config
        kwargs = config.unet_kwargs()
        self.unet = DiffusionModelUNet(out_channels=1, **kwargs)
        self.controlnet: nn.Module | None = None
        if config.uses_mask:
            self.controlnet = ControlNet(
                conditioning_embedding_in_channels=1,
                conditioning_embedding_num_channels=config.conditioning_embedding_channels,
                **kwargs,
            )
            # ControlNet paper / MOTFM: start the branch as a copy of the UNet's encoder; its
            # zero convolutions (not in the UNet) stay zero, so the branch starts as a no-op.
            self.controlnet.load_state_dict(self.unet.state_dict(), strict=False)

    @property
    def uses_class(self) -> bool:
        """Whether labels are required."""
        return self.config.uses_class

    @property
    def uses_mask(self) -> bool:
        """Whether masks are required."""
        return self.config.uses_mask

    def timesteps(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        """Continuous t in [0, 1] (scalar or [B]) -> float timesteps in [0, max_timestep - 1]."""
        t = torch.as_tensor(t, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(batch)
        return t.reshape(batch) * (self.config.max_timestep - 1)

    def context(self, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """One-hot class context ``[B, 1, len(CLASSES)]``."""
        return F.one_hot(labels.long(), len(CLASSES)).to(dtype)[:, None, :]

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity at ``x`` ``[B, 1, S, S]`` and time ``t`` (scalar or ``[B]`` in [0, 1]).

        Args:
            x: state in the net's [-1, 1] space.
            t: time in [0, 1].
            labels: ``[B]`` class indices (required for class conditioning, else ignored).
            masks: ``[B, 1, S, S]`` float 0/1 masks (required for mask conditioning, else ignored).
        """
        b = x.shape[0]
        steps = self.timesteps(t.to(x.device), b).to(x.device)
        context = None
        if self.uses_class:
            if labels is None:
                raise ValueError("this net is class-conditioned: pass labels")
            context = self.context(labels.to(x.device), x.dtype)
        if self.controlnet is None:
            return self.unet(x=x, timesteps=steps, context=context)
        if masks is None:
            raise ValueError("this net is mask-conditioned: pass masks")
        down, mid = self.controlnet(
            x=x, timesteps=steps, controlnet_cond=masks.to(x.dtype), context=context
        )
        return self.unet(
            x=x,
            timesteps=steps,
            context=context,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        )


def count_parameters(net: VelocityNet) -> dict[str, int]:
    """Parameter counts of the UNet and the ControlNet branch."""
    count = {"unet": sum(p.numel() for p in net.unet.parameters())}
    count["controlnet"] = (
        sum(p.numel() for p in net.controlnet.parameters()) if net.controlnet is not None else 0
    )
    return count


# --------------------------------------------------------------------------------------------
# Path and loss
# --------------------------------------------------------------------------------------------
def cond_ot_path(
    x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditional OT path: (x_t, u_t) with x_t = (1 - t) x0 + t x1 and u_t = x1 - x0."""
    tt = t.reshape(-1, *([1] * (x1.ndim - 1))).to(x1.dtype)
    return (1 - tt) * x0 + tt * x1, x1 - x0


def flow_matching_loss(
    net: nn.Module,
    x0: torch.Tensor,
    x1: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between the predicted velocity at x_t and the path's target x1 - x0."""
    x_t, u_t = cond_ot_path(x0, x1, t)
    v = net(x_t, t, labels, masks)
    return F.mse_loss(v.float(), u_t.float())


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass
class TrainingData:
    """The train split at the net's size: images in [-1, 1], float 0/1 masks, labels."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    case_ids: list[str]
    has_mask: np.ndarray
    content_hash: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def mask_bank(self) -> MaskBank:
        """Masks of the cases that have one, for mask-conditioned synthesis."""
        rows = np.flatnonzero(self.has_mask)
        t = torch.as_tensor(rows, dtype=torch.long)
        return MaskBank(
            masks=self.masks[t].to(torch.uint8),
            labels=self.labels[t].clone(),
            case_ids=[self.case_ids[i] for i in rows],
        )


def resize_cohort_tensors(
    images: torch.Tensor, masks: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize images (bilinear, antialiased) and masks (nearest-exact) to ``size`` if needed."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.float(), masks
    imgs = F.interpolate(
        images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    ).clamp(0, 1)
    msk = F.interpolate(masks.float(), size=(size, size), mode="nearest-exact").to(masks.dtype)
    return imgs, msk


def prepare_training_data(cohort: PreparedCohort, cfg: FMConfig) -> TrainingData:
    """The cohort's train split, resized once to ``cfg.image_size``, images scaled to [-1, 1].

    Raises:
        GeneratorError: the train split is empty.
    """
    train = cohort.subset("train")
    if len(train) == 0:
        raise GeneratorError(
            "the prepared cohort has no train split cases; check the split column / centers"
        )
    images, masks = resize_cohort_tensors(train.images, train.masks, cfg.image_size)
    if "has_mask" in train.table:
        has_mask = train.table["has_mask"].astype(bool).to_numpy()
    else:
        has_mask = (masks.flatten(1) > 0).any(1).numpy()
    if cfg.uses_mask and not has_mask.any():
        raise GeneratorError(
            f"conditioning={cfg.conditioning!r} needs masks but no train case has one; use "
            "--conditioning class or prepare the cohort with masks"
        )
    return TrainingData(
        images=from_data_range(images).contiguous(),
        masks=(masks > 0).float().contiguous(),
        labels=train.labels.long().clone(),
        case_ids=train.table["case_id"].astype(str).tolist(),
        has_mask=has_mask,
        content_hash=cohort.content_hash,
    )


# --------------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------------
def _ema_multi_avg_fn(decay: float):
    """EMA update with warm-up: d_n = min(decay, (1 + n) / (10 + n)) (n = updates so far)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num: torch.Tensor):
        n = float(num)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    return update


def make_ema(net: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """A ``torch.optim.swa_utils.AveragedModel`` keeping the EMA of ``net``'s parameters."""
    from torch.optim.swa_utils import AveragedModel

    return AveragedModel(net, multi_avg_fn=_ema_multi_avg_fn(decay))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """Outcome of ``train_flow_matching``."""

    ema_net: VelocityNet
    net: VelocityNet
    mask_bank: MaskBank
    config: FMConfig
    losses: list[float]
    epochs_done: int
    workdir: Path
    info: dict[str, Any] = field(default_factory=dict)


def _generator(*words: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_resumable(saved: dict[str, Any], cfg: FMConfig, content_hash: str) -> None:
    now = to_dict(cfg)
    diff = sorted(
        k
        for k in set(now) | set(saved["config"])
        if k not in (*RESUMABLE_CHANGES, "profile") and now.get(k) != saved["config"].get(k)
    )
    if diff:
        raise ConfigError(
            "cannot resume: the checkpoint was trained with different settings for "
            + ", ".join(f"{k} ({saved['config'].get(k)!r} -> {now.get(k)!r})" for k in diff)
            + "; use the original settings or a new --output"
        )
    if saved.get("content_hash", "") != content_hash:
        raise ConfigError(
            f"cannot resume: checkpoint was trained on cohort {saved.get('content_hash')!r}, "
            f"this cohort is {content_hash!r}; use the same cohort or a new --output"
        )


def sample_grid(
    pipeline: FlowMatchingPipeline, per_class: int, seed: int = 0
) -> tuple[np.ndarray, torch.Tensor]:
    """A grid with one row per class of ``per_class`` samples (fixed seeds across epochs)."""
    labels = [c for c in range(len(CLASSES)) for _ in range(per_class)]
    seeds = [sample_seed(seed, c, j) for c in range(len(CLASSES)) for j in range(per_class)]
    images = pipeline.sample(labels, seeds, batch_size=len(labels)).images
    return image_grid(images, nrow=per_class), images


def train_flow_matching(
    cfg: FMConfig,
    cohort: PreparedCohort,
    workdir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log_mlflow: bool | None = None,
) -> TrainResult:
    """Train the velocity net on the cohort's train split (see the module docstring).

    Args:
        cfg: settings (``resolve(FMConfig, profile, ...)``).
        cohort: the prepared cohort; only its ``train`` split is used.
        workdir: folder for ``checkpoint.pt`` (and anything a caller saves next to it).
        resume: continue from ``workdir/checkpoint.pt`` (same settings; ``epochs`` may grow).
        progress: show tqdm bars (main process only).
        log_mlflow: log per-epoch loss and sample grids to the active MLflow run (default: when a
            run is active).

    Returns:
        TrainResult with the EMA net (used for sampling) and the raw net.

    Raises:
        ConfigError: a checkpoint exists without ``resume`` or does not match the settings.
        GeneratorError: no training data.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    workdir = Path(workdir)
    ckpt_path = workdir / CHECKPOINT_FILE
    if ckpt_path.exists() and not resume:
        raise ConfigError(
            f"{ckpt_path} exists: pass --resume to continue that run or choose a new --output"
        )
    mp = cfg.mixed_precision if torch.cuda.is_available() else "no"
    accelerator = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    if log_mlflow is None:
        import mlflow

        log_mlflow = mlflow.active_run() is not None
    log_mlflow = bool(log_mlflow) and main
    if log_mlflow:
        import mlflow

        info_run = {"mlflow_run_id": mlflow.active_run().info.run_id}
    else:
        info_run = {}

    data = prepare_training_data(cohort, cfg)
    bank = data.mask_bank()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    net = VelocityNet(cfg)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    ema = make_ema(net, cfg.ema_decay)
    losses: list[float] = []
    start_epoch = 0
    info: dict[str, Any] = dict(info_run)
    if resume and ckpt_path.exists():
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        _check_resumable(saved, cfg, data.content_hash)
        net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        ema.load_state_dict(saved["ema"])
        losses = list(saved["losses"])
        start_epoch = int(saved["epoch"])
        info = {**saved.get("info", {}), **info_run}
        _set_rng_state(saved["rng"])
        if saved.get("scaler") is not None:
            info["_scaler"] = saved["scaler"]
        log.info("resuming %s at epoch %d/%d", ckpt_path, start_epoch, cfg.epochs)
    elif resume:
        log.info("no checkpoint in %s: starting a new run", workdir)
    net, optimizer = accelerator.prepare(net, optimizer)
    scaler_state = info.pop("_scaler", None)
    if scaler_state is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(scaler_state)
    ema.to(accelerator.device)
    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    n = len(data)
    per_rank = n // world
    if per_rank < 1:
        raise GeneratorError(f"{n} training images cannot be shared by {world} processes")
    counts = count_parameters(accelerator.unwrap_model(net))
    info.update(
        {
            "train_cases": n,
            "train_masks": len(bank),
            "params_unet": counts["unet"],
            "params_controlnet": counts["controlnet"],
            "content_hash": data.content_hash,
        }
    )
    if main:
        log.info(
            "FM %s: %d train images at %d px, conditioning %s, %.2f M + %.2f M params, device %s",
            cfg.profile,
            n,
            cfg.image_size,
            cfg.conditioning,
            counts["unet"] / 1e6,
            counts["controlnet"] / 1e6,
            device,
        )

    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        order = torch.randperm(n, generator=_generator(cfg.seed, 0, epoch))
        order = order[rank::world][:per_rank]
        noise_gen = _generator(cfg.seed, 1, rank, epoch)
        total = torch.zeros((), dtype=torch.float64, device=device)
        batches = order.split(cfg.batch_size)
        t0 = time.perf_counter()
        bar = tqdm(
            batches, desc=f"FM epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and main)
        )
        for step, idx in enumerate(bar):
            x1 = data.images[idx].to(device)
            labels = data.labels[idx].to(device)
            masks = data.masks[idx].to(device) if cfg.uses_mask else None
            x0 = torch.randn(x1.shape, generator=noise_gen).to(device)
            t = torch.rand(x1.shape[0], generator=noise_gen).to(device)
            with accelerator.autocast():
                loss = flow_matching_loss(net, x0, x1, t, labels, masks)
            accelerator.backward(loss)
            if cfg.grad_clip > 0 and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema.update_parameters(accelerator.unwrap_model(net))
            total += loss.detach().double()
            if progress and main and step % 10 == 0:  # .item() syncs a GPU: not every step
                bar.set_postfix(loss=f"{loss.item():.4f}")
        epoch_loss = float(accelerator.reduce(total, reduction="mean")) / len(batches)
        losses.append(epoch_loss)
        done = epoch + 1
        if main:
            log.info(
                "epoch %d/%d loss %.5f (%.1f s)",
                done,
                cfg.epochs,
                epoch_loss,
                time.perf_counter() - t0,
            )
        if log_mlflow:
            import mlflow

            mlflow.log_metric("train_loss", epoch_loss, step=done)
            if done % cfg.sample_every == 0 or done == cfg.epochs:
                grid, _ = sample_grid(_pipeline(ema, bank, device), cfg.grid_per_class, cfg.seed)
                mlflow.log_image(grid, f"samples/epoch_{done:04d}.png")
        if main and (done % cfg.checkpoint_every == 0 or done == cfg.epochs):
            unwrapped = accelerator.unwrap_model(net)
            _atomic_save(
                {
                    "format": FORMAT,
                    "epoch": done,
                    "config": to_dict(cfg),
                    "content_hash": data.content_hash,
                    "model": unwrapped.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None,
                    "rng": _rng_state(),
                    "losses": losses,
                    "info": {k: v for k, v in info.items() if not k.startswith("_")},
                },
                ckpt_path,
            )
        accelerator.wait_for_everyone()

    raw = accelerator.unwrap_model(net)
    ema_net = copy.deepcopy(ema.module).eval()
    info["epochs_done"] = max(start_epoch, cfg.epochs)
    return TrainResult(
        ema_net=ema_net,
        net=raw,
        mask_bank=bank,
        config=cfg,
        losses=losses,
        epochs_done=len(losses),
        workdir=workdir,
        info=info,
    )


def _pipeline(ema: nn.Module, bank: MaskBank, device: torch.device) -> FlowMatchingPipeline:
    module = ema.module if hasattr(ema, "module") else ema
    return FlowMatchingPipeline(module, mask_bank=bank, device=device)


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
  (`masks.csv` lists their case ids, drawn per (seed, label) for mask-conditioned synthesis)

Files: `config.json` (all settings), `model.safetensors`, `masks.safetensors`, `masks.csv`.
Load in Python with `thyroaug.generators.flow_matching.load_generator(folder)`, or through MLflow
(`mlflow.pyfunc.load_model("models:/thyroaug-fm@champion")`).
"""


def save_generator(
    folder: str | Path, net: VelocityNet, mask_bank: MaskBank, info: dict[str, Any] | None = None
) -> Path:
    """Write the generator folder atomically (config.json, safetensors weights, masks, card)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    info = dict(info or {})
    cfg = net.config
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
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
            )
        )
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_generator(
    folder: str | Path, device: torch.device | str | None = None, **pipeline_kwargs: Any
) -> FlowMatchingPipeline:
    """Load a folder written by ``save_generator`` as a ready ``FlowMatchingPipeline``.

    Raises:
        GeneratorError: the folder is not a thyroaug FM generator.
    """
    from safetensors.torch import load_file

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
    bank = MaskBank.load(folder)
    return FlowMatchingPipeline(
        net, mask_bank=bank, device=device, info=payload.get("info", {}), **pipeline_kwargs
    )
