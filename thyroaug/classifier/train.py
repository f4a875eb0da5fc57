"""Training loop of the ResNet18 classifier (paper section 3.2.4) on in-memory tensors.

Everything is prepared once: images live in memory as one float32 tensor (no per-epoch file reads
or image decoding), mini-batches are slices taken with a seeded permutation, the network runs in
``channels_last`` where that is faster (CPU convolutions, see bench/classifier.py), evaluation runs
under ``torch.inference_mode``. After each epoch the validation loss drives ReduceLROnPlateau, and
the best epoch's weights (by ``checkpoint_metric``) are kept in memory and written atomically to
disk. With the same seed on the same CPU and thread count two fits give identical numbers: weights
init, batch order and dropout are all seeded, and ``torch.use_deterministic_algorithms`` is on
while training (the caller's RNG state and determinism setting are restored afterwards).
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from thyroaug.classifier.config import ClassifierConfig
from thyroaug.classifier.model import build_resnet18
from thyroaug.config import to_dict
from thyroaug.contract import CLASSES
from thyroaug.errors import ConfigError
from thyroaug.utils.atomic import atomic_path

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=cpu or auto")
    return torch.device(name)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Use ``n`` torch intra-op threads inside the block (0: leave as is); restore afterwards."""
    prev = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


@contextmanager
def _training_context(cfg: ClassifierConfig, device: torch.device) -> Iterator[None]:
    """Seed, thread count and determinism for the duration of a fit; restore them afterwards."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch_threads(cfg.num_threads):
        try:
            if cfg.deterministic:
                if device.type == "cuda":
                    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.use_deterministic_algorithms(True, warn_only=True)
            torch.manual_seed(cfg.seed)
            yield
        finally:
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


def _to_input(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def evaluate_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 128,
    channels_last: bool = False,
) -> tuple[float, float, np.ndarray]:
    """(mean cross-entropy, accuracy, softmax probabilities [N, C]) in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, correct, probs = 0.0, 0, []
    with torch.inference_mode():
        for i in range(0, len(labels), batch_size):
            xb = _to_input(images[i : i + batch_size], device, channels_last)
            yb = labels[i : i + batch_size].to(device)
            logits = model(xb).float()
            total += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
            probs.append(torch.softmax(logits, 1).cpu())
    model.train(was_training)
    n = max(len(labels), 1)
    prob = torch.cat(probs).numpy() if probs else np.zeros((0, len(CLASSES)), np.float32)
    return total / n, correct / n, prob


def predict_proba(
    model: nn.Module, images: torch.Tensor, *, batch_size: int = 128, channels_last: bool = False
) -> np.ndarray:
    """Softmax probabilities [N, 4] (CLASSES order) for float images [N,1,S,S]."""
    dummy = torch.zeros(len(images), dtype=torch.int64)
    return evaluate_loss(model, images, dummy, batch_size=batch_size, channels_last=channels_last)[
        2
    ]


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename (atomic)."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


@dataclass
class FitResult:
    """Outcome of ``fit``: the model holding the best epoch's weights, plus the curves."""

    model: nn.Module
    pretrained: bool
    best_epoch: int
    best_val_loss: float
    best_val_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    device: str = "cpu"
    train_seconds: float = 0.0


def _is_better(metric: str, loss: float, acc: float, best: tuple[float, float] | None) -> bool:
    if best is None:
        return True
    if metric == "val_accuracy":
        return acc > best[1] or (acc == best[1] and loss < best[0])
    return loss < best[0]


def fit(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    cfg: ClassifierConfig,
    *,
    checkpoint_path: str | Path | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
) -> FitResult:
    """Train the paper's ResNet18 and keep the best validation epoch.

    Args:
        train_images / train_labels: float32 [N,1,S,S] / int64 [N] (already at the input size).
        val_images / val_labels: the validation split, never augmented.
        cfg: the resolved ``ClassifierConfig``.
        checkpoint_path: where the best weights are saved (atomically) whenever they improve.
        on_epoch: called after every epoch with (epoch starting at 1, metrics) where metrics has
            train_loss, train_accuracy, val_loss, val_accuracy, lr, epoch_time_s,
            train_images_per_s, eval_time_s. It may raise to stop training (e.g. Optuna pruning).
        progress: tqdm bars for epochs and batches.

    Returns:
        ``FitResult`` whose model holds the best epoch's weights, in eval mode.

    Raises:
        ConfigError: empty training or validation set, or mismatched shapes.
    """
    if len(train_labels) < 2 or len(val_labels) < 1:
        raise ConfigError(
            f"need >= 2 training and >= 1 validation images, got {len(train_labels)} / "
            f"{len(val_labels)}"
        )
    if train_images.shape[1:] != val_images.shape[1:]:
        raise ConfigError(
            f"training images {tuple(train_images.shape[1:])} and validation images "
            f"{tuple(val_images.shape[1:])} differ in shape"
        )
    device = resolve_device(cfg.device)
    cl = bool(cfg.channels_last)
    with _training_context(cfg, device):
        model, pretrained = build_resnet18(
            len(CLASSES),
            init=cfg.init,
            conv1_stride=cfg.conv1_stride,
            keep_maxpool=cfg.keep_maxpool,
            dropout=cfg.dropout,
        )
        model = model.to(device)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr
        )
        x_train = train_images.float().to(device)
        y_train = train_labels.long().to(device)
        x_val, y_val = val_images.float().to(device), val_labels.long().to(device)
        order = torch.Generator().manual_seed(cfg.seed)
        n, bs = len(y_train), cfg.batch_size
        best: tuple[float, float] | None = None
        best_state: dict[str, torch.Tensor] = {}
        best_epoch = 0
        history: list[dict[str, float]] = []
        saved: Path | None = None
        start = time.perf_counter()
        epochs = tqdm(
            range(1, cfg.epochs + 1), desc="epochs", unit="ep", disable=not progress, leave=False
        )
        for epoch in epochs:
            model.train()
            perm = torch.randperm(n, generator=order).to(device)
            starts = [i for i in range(0, n, bs) if n - i >= 2 or i == 0]  # BatchNorm needs >= 2
            t0 = time.perf_counter()
            loss_sum, seen = torch.zeros((), device=device), 0
            correct_t = torch.zeros((), dtype=torch.int64, device=device)
            for i in tqdm(starts, desc=f"epoch {epoch}", unit="batch", disable=not progress,
                          leave=False, mininterval=1.0):  # fmt: skip
                idx = perm[i : i + bs]
                xb = _to_input(x_train[idx], device, cl)
                yb = y_train[idx]
                optimizer.zero_grad(set_to_none=True)
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(idx)
                correct_t += (logits.detach().argmax(1) == yb).sum()
                seen += len(idx)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_time = time.perf_counter() - t0
            correct = int(correct_t)
            t1 = time.perf_counter()
            val_loss, val_acc, _ = evaluate_loss(
                model, x_val, y_val, batch_size=cfg.eval_batch_size, channels_last=cl
            )
            eval_time = time.perf_counter() - t1
            lr = float(optimizer.param_groups[0]["lr"])
            scheduler.step(val_loss)
            metrics = {
                "train_loss": float(loss_sum) / max(seen, 1),
                "train_accuracy": correct / max(seen, 1),
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": lr,
                "epoch_time_s": train_time,
                "train_images_per_s": seen / train_time if train_time > 0 else 0.0,
                "eval_time_s": eval_time,
            }
            history.append({"epoch": float(epoch), **metrics})
            if _is_better(cfg.checkpoint_metric, val_loss, val_acc, best):
                best = (val_loss, val_acc)
                best_epoch = epoch
                best_state = copy.deepcopy(model.state_dict())
                if checkpoint_path is not None:
                    saved = save_checkpoint(
                        checkpoint_path,
                        {
                            "state_dict": best_state,
                            "epoch": epoch,
                            "val_loss": val_loss,
                            "val_accuracy": val_acc,
                            "classes": list(CLASSES),
                            "config": to_dict(cfg),
                            "pretrained": pretrained,
                        },
                    )
            epochs.set_postfix(
                loss=f"{metrics['train_loss']:.3f}", val_loss=f"{val_loss:.3f}",
                val_acc=f"{val_acc:.3f}", lr=f"{lr:.1e}",
            )  # fmt: skip
            log.debug("epoch %d: %s", epoch, metrics)
            if on_epoch is not None:
                on_epoch(epoch, metrics)
        model.load_state_dict(best_state)
        model.eval()
    assert best is not None
    total = time.perf_counter() - start
    log.info(
        "trained %d epochs in %.1f s; best epoch %d (val loss %.4f, accuracy %.3f)",
        cfg.epochs,
        total,
        best_epoch,
        best[0],
        best[1],
    )
    return FitResult(
        model=model,
        pretrained=pretrained,
        best_epoch=best_epoch,
        best_val_loss=best[0],
        best_val_accuracy=best[1],
        history=history,
        checkpoint=saved,
        device=str(device),
        train_seconds=total,
    )
