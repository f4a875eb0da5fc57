"""Training of the flow-matching velocity net (MOTFM recipe) with exact resume.

``train_flow_matching``: Adam, EMA weights (sampled), gradient clipping, autocast on CUDA only,
``accelerate`` across GPUs, atomic checkpoints and a resume equal to an uninterrupted run (bitwise
on CPU). Recipe and seeding: docs/generators.md, "Training".
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from thyroaug.config import to_dict
from thyroaug.data.cohort import PreparedCohort
from thyroaug.errors import ConfigError, GeneratorError
from thyroaug.generators.flow_matching.bank import MaskBank
from thyroaug.generators.flow_matching.config import FMConfig
from thyroaug.generators.flow_matching.model import (
    FORMAT,
    VelocityNet,
    count_parameters,
    flow_matching_loss,
)
from thyroaug.generators.flow_matching.pipeline import FlowMatchingPipeline, sample_grid
from thyroaug.generators.flow_matching.sampler import from_data_range
from thyroaug.utils.atomic import atomic_path
from thyroaug.utils.digest import MISMATCH, damaged, seal, unseal
from thyroaug.utils.resize import resize_images, resize_masks
from thyroaug.utils.seeds import torch_generator

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_WHAT = "the flow-matching checkpoint"
RESUMABLE_CHANGES = ("epochs", "checkpoint_every", "sample_every", "max_count", "solver", "steps")
"""Config fields a resumed run may change (the rest must match the checkpoint)."""


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


def prepare_training_data(cohort: PreparedCohort, cfg: FMConfig) -> TrainingData:
    """The cohort's train split, resized once to ``cfg.image_size``, images scaled to [-1, 1].

    Raises:
        GeneratorError: the train split is empty, or masks are needed and none exists.
    """
    train = cohort.subset("train")
    if len(train) == 0:
        raise GeneratorError(
            "the prepared cohort has no train split cases; check the split column / centers"
        )
    images = resize_images(train.images, cfg.image_size)
    masks = resize_masks(train.masks, cfg.image_size)
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
# EMA, RNG state, checkpoints
# --------------------------------------------------------------------------------------------
def _ema_multi_avg_fn(decay: float):
    """EMA update with warm-up: d_n = min(decay, (1 + n) / (10 + n)) (n = updates so far)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num: torch.Tensor):
        n = float(num)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    return update


def make_ema(net: nn.Module, decay: float) -> AveragedModel:
    """A ``torch.optim.swa_utils.AveragedModel`` keeping the EMA of ``net``'s parameters."""
    return AveragedModel(net, multi_avg_fn=_ema_multi_avg_fn(decay))


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


@dataclass
class _Training:
    """Everything one training run carries from epoch to epoch."""

    cfg: FMConfig
    accelerator: Any
    data: TrainingData
    bank: MaskBank
    net: nn.Module
    optimizer: torch.optim.Optimizer
    ema: Any
    ckpt_path: Path
    log_mlflow: bool
    losses: list[float] = field(default_factory=list)
    start_epoch: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)


def _mlflow_run_info(log_mlflow: bool | None, main: bool) -> tuple[bool, dict[str, Any]]:
    """(whether to log to MLflow, {mlflow_run_id}) - default: log when a run is active."""
    if log_mlflow is None:
        log_mlflow = mlflow.active_run() is not None
    log_mlflow = bool(log_mlflow) and main
    return log_mlflow, ({"mlflow_run_id": mlflow.active_run().info.run_id} if log_mlflow else {})


def _restore(tr: _Training, resume: bool, workdir: Path, info_run: dict[str, Any]) -> None:
    """Load ``checkpoint.pt`` into the run's net / optimiser / EMA / RNGs when resuming."""
    if not (resume and tr.ckpt_path.exists()):
        if resume:
            log.info("no checkpoint in %s: starting a new run", workdir)
        return
    saved = read_checkpoint(tr.ckpt_path)
    _check_resumable(saved, tr.cfg, tr.data.content_hash)
    tr.net.load_state_dict(saved["model"])
    tr.optimizer.load_state_dict(saved["optimizer"])
    tr.ema.load_state_dict(saved["ema"])
    tr.losses = list(saved["losses"])
    tr.start_epoch = int(saved["epoch"])
    tr.info = {**saved.get("info", {}), **info_run}
    _set_rng_state(saved["rng"])
    if saved.get("scaler") is not None:
        tr.info["_scaler"] = saved["scaler"]
    log.info("resuming %s at epoch %d/%d", tr.ckpt_path, tr.start_epoch, tr.cfg.epochs)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """``checkpoint.pt`` checked against the digest saved in it (one without loads as it is).

    Raises:
        ConfigError: unreadable, or its bytes do not match its digest (one line naming it).
    """
    fix = "delete it and run `thyroaug train-fm` without --resume (or with a new --output)"
    try:
        saved, sound = unseal(torch.load(path, map_location="cpu", weights_only=False))
    except Exception as exc:  # truncated, not a torch file, another torch
        why = f"it is unreadable ({type(exc).__name__})"
        raise ConfigError(damaged(path, CHECKPOINT_WHAT, why, fix)) from exc
    if sound is False:
        raise ConfigError(damaged(path, CHECKPOINT_WHAT, MISMATCH, fix))
    return saved


def _setup(
    cfg: FMConfig, cohort: PreparedCohort, workdir: Path, resume: bool, log_mlflow: bool | None
) -> _Training:
    """Data, net, optimiser, EMA and accelerator, restored from a checkpoint when resuming."""
    # accelerate (~200 modules) loads to train, not with `train-fm --help` (trainer imports this)
    from accelerate import Accelerator

    ckpt_path = workdir / CHECKPOINT_FILE
    if ckpt_path.exists() and not resume:
        raise ConfigError(
            f"{ckpt_path} exists: pass --resume to continue that run or choose a new --output"
        )
    mp = cfg.mixed_precision if torch.cuda.is_available() else "no"
    accelerator = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
    log_mlflow, info_run = _mlflow_run_info(log_mlflow, accelerator.is_main_process)
    data = prepare_training_data(cohort, cfg)
    bank = data.mask_bank()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    net = VelocityNet(cfg)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    ema = make_ema(net, cfg.ema_decay)
    tr = _Training(cfg, accelerator, data, bank, net, optimizer, ema, ckpt_path, log_mlflow)
    tr.info = dict(info_run)
    _restore(tr, resume, workdir, info_run)
    tr.net, tr.optimizer = accelerator.prepare(net, optimizer)
    scaler_state = tr.info.pop("_scaler", None)
    if scaler_state is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(scaler_state)
    ema.to(accelerator.device)
    return tr


def _describe(tr: _Training) -> None:
    """Record sizes in ``info`` and log the run's shape once."""
    counts = count_parameters(tr.accelerator.unwrap_model(tr.net))
    tr.info.update(
        {
            "train_cases": len(tr.data),
            "train_masks": len(tr.bank),
            "params_unet": counts["unet"],
            "params_controlnet": counts["controlnet"],
            "content_hash": tr.data.content_hash,
        }
    )
    if tr.main:
        log.info(
            "FM %s: %d train images at %d px, conditioning %s, %.2f M + %.2f M params, device %s",
            tr.cfg.profile,
            len(tr.data),
            tr.cfg.image_size,
            tr.cfg.conditioning,
            counts["unet"] / 1e6,
            counts["controlnet"] / 1e6,
            tr.accelerator.device,
        )


def _train_epoch(tr: _Training, epoch: int, per_rank: int, progress: bool) -> float:
    """One pass over this process's share of the epoch's permutation; the mean loss."""
    cfg, acc, data = tr.cfg, tr.accelerator, tr.data
    device, rank, world = acc.device, acc.process_index, acc.num_processes
    tr.net.train()
    order = torch.randperm(len(data), generator=torch_generator(cfg.seed, 0, epoch))
    order = order[rank::world][:per_rank]
    noise_gen = torch_generator(cfg.seed, 1, rank, epoch)
    total = torch.zeros((), dtype=torch.float64, device=device)
    batches = order.split(cfg.batch_size)
    bar = tqdm(
        batches, desc=f"FM epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and tr.main)
    )
    for step, idx in enumerate(bar):
        x1 = data.images[idx].to(device)
        labels = data.labels[idx].to(device)
        masks = data.masks[idx].to(device) if cfg.uses_mask else None
        x0 = torch.randn(x1.shape, generator=noise_gen).to(device)
        t = torch.rand(x1.shape[0], generator=noise_gen).to(device)
        with acc.autocast():
            loss = flow_matching_loss(tr.net, x0, x1, t, labels, masks)
        acc.backward(loss)
        if cfg.grad_clip > 0 and acc.sync_gradients:
            acc.clip_grad_norm_(tr.net.parameters(), cfg.grad_clip)
        tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)
        tr.ema.update_parameters(acc.unwrap_model(tr.net))
        total += loss.detach().double()
        if progress and tr.main and step % 10 == 0:  # .item() syncs a GPU: not every step
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return float(acc.reduce(total, reduction="mean")) / len(batches)


def _save_checkpoint(tr: _Training, done: int) -> None:
    """Atomic ``checkpoint.pt``: weights, EMA, optimiser, scaler, every RNG, losses, and their
    digest (``utils.digest.seal``)."""
    acc = tr.accelerator
    payload = {
        "format": FORMAT,
        "epoch": done,
        "config": to_dict(tr.cfg),
        "content_hash": tr.data.content_hash,
        "model": acc.unwrap_model(tr.net).state_dict(),
        "ema": tr.ema.state_dict(),
        "optimizer": tr.optimizer.state_dict(),
        "scaler": acc.scaler.state_dict() if acc.scaler else None,
        "rng": _rng_state(),
        "losses": tr.losses,
        "info": {k: v for k, v in tr.info.items() if not k.startswith("_")},
    }
    with atomic_path(tr.ckpt_path) as tmp, open(tmp, "wb") as fh:  # closed even on a full disk
        torch.save(seal(payload), fh)


def _after_epoch(tr: _Training, done: int, seconds: float) -> None:
    """Checkpoint when due, then log the epoch (and a sample grid every ``sample_every``).

    Checkpoint first: a kill in between never logs an epoch twice after a resume.
    """
    cfg, loss = tr.cfg, tr.losses[-1]
    if tr.main:
        log.info("epoch %d/%d loss %.5f (%.1f s)", done, cfg.epochs, loss, seconds)
    if tr.main and (done % cfg.checkpoint_every == 0 or done == cfg.epochs):
        _save_checkpoint(tr, done)
    if tr.log_mlflow:
        try:  # a tracking outage must not stop training: the checkpoint is what counts
            _log_epoch(tr, done, loss)
        except Exception as exc:
            log.warning("epoch %d not logged to MLflow (%s); training goes on", done, exc)
    tr.accelerator.wait_for_everyone()


def _log_epoch(tr: _Training, done: int, loss: float) -> None:
    mlflow.log_metric("train_loss", loss, step=done)
    if done % tr.cfg.sample_every == 0 or done == tr.cfg.epochs:
        pipeline = _pipeline(tr.ema, tr.bank, tr.accelerator.device)
        grid, _ = sample_grid(pipeline, tr.cfg.grid_per_class, tr.cfg.seed)
        mlflow.log_image(grid, f"samples/epoch_{done:04d}.png")


def _pipeline(ema: nn.Module, bank: MaskBank, device: torch.device) -> FlowMatchingPipeline:
    module = ema.module if hasattr(ema, "module") else ema
    return FlowMatchingPipeline(module, mask_bank=bank, device=device)


def train_flow_matching(
    cfg: FMConfig,
    cohort: PreparedCohort,
    workdir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log_mlflow: bool | None = None,
) -> TrainResult:
    """Train the velocity net on the cohort's train split.

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
    workdir = Path(workdir)
    tr = _setup(cfg, cohort, workdir, resume, log_mlflow)
    n, world = len(tr.data), tr.accelerator.num_processes
    per_rank = n // world
    if per_rank < 1:
        raise GeneratorError(f"{n} training images cannot be shared by {world} processes")
    _describe(tr)
    for epoch in range(tr.start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        tr.losses.append(_train_epoch(tr, epoch, per_rank, progress))
        _after_epoch(tr, epoch + 1, time.perf_counter() - t0)
    tr.info["epochs_done"] = max(tr.start_epoch, cfg.epochs)
    return TrainResult(
        ema_net=copy.deepcopy(tr.ema.module).eval(),
        net=tr.accelerator.unwrap_model(tr.net),
        mask_bank=tr.bank,
        config=cfg,
        losses=tr.losses,
        epochs_done=len(tr.losses),
        workdir=workdir,
        info=tr.info,
    )
