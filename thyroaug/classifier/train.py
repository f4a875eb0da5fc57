"""Training loop of the ResNet18 classifier (paper Sec. 3.2.4) on in-memory tensors.

Images stay in memory as one float32 tensor; mini-batches are slices of a seeded permutation; the
network runs ``channels_last`` where faster (CPU convolutions, ``bench/classifier.py``). After each
epoch the validation loss drives ReduceLROnPlateau and the best epoch's weights (by
``checkpoint_metric``) are kept and written atomically. With the same seed, CPU and thread count
two fits give identical numbers (seeded init, batch order and dropout; deterministic algorithms
while training, the caller's settings restored). ``on_state`` / ``resume_state`` carry the whole
training state for `train-classifier --resume` (``thyroaug.classifier.resume``).
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
from thyroaug.utils.digest import MISMATCH, damaged, seal, unseal
from thyroaug.utils.threads import torch_threads

log = logging.getLogger(__name__)

BEST_WHAT = "the classifier's best-weights checkpoint"

EpochCallback = Callable[[int, dict[str, float]], None]
StateCallback = Callable[[dict[str, Any]], None]

METRIC_ORDER: tuple[str, ...] = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "epoch_time_s",
    "train_images_per_s",
    "eval_time_s",
)
"""The per-epoch metrics ``fit`` reports (MLflow step = epoch)."""


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
    """``torch.save`` of ``payload`` and its digest (``utils.digest.seal``) to a temporary file
    in the same folder, then rename (atomic)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # closed even on a full disk
        torch.save(seal(payload), fh)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint ``save_checkpoint`` wrote (the best epoch's ``checkpoint/best.pt``), checked
    against its digest (one written without one loads as it is).

    Raises:
        ConfigError: unreadable, or its bytes do not match its digest (one line naming it).
    """
    fix = (
        "train the scenario again with `thyroaug train-classifier` (its MLflow run keeps the model)"
    )
    try:
        saved, sound = unseal(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # truncated, not a torch file, another torch
        why = f"it is unreadable ({type(exc).__name__})"
        raise ConfigError(damaged(path, BEST_WHAT, why, fix)) from exc
    if sound is False:
        raise ConfigError(damaged(path, BEST_WHAT, MISMATCH, fix))
    return saved


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


@dataclass
class _Loop:
    """What a fit carries from epoch to epoch; ``state`` / ``restore`` are its checkpoint."""

    cfg: ClassifierConfig
    device: torch.device
    model: nn.Module
    pretrained: bool
    optimizer: torch.optim.Optimizer
    scheduler: Any
    order: torch.Generator
    checkpoint_path: Path | None = None
    epoch: int = 0
    best: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    seconds_before: float = 0.0
    saved: Path | None = None

    def state(self, seconds: float) -> dict[str, Any]:
        """The loop after ``epoch`` (live tensors: serialise it before training goes on)."""
        cuda = self.device.type == "cuda"
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if cuda else None,
                "order": self.order.get_state(),
            },
            "best": list(self.best) if self.best is not None else None,
            "best_epoch": self.best_epoch,
            # the best epoch's weights, unless they are this epoch's (then they are "model")
            "best_state": None if self.best_epoch == self.epoch else self.best_state,
            "history": list(self.history),
            "train_seconds": self.seconds_before + seconds,
            "pretrained": self.pretrained,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue after the epoch ``state`` was taken at (``state`` from ``state()``)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.order.set_state(rng["order"])
        self.epoch = int(state["epoch"])
        self.best = tuple(state["best"]) if state["best"] is not None else None  # type: ignore[assignment]
        self.best_epoch = int(state["best_epoch"])
        best = state["best_state"]
        self.best_state = copy.deepcopy(self.model.state_dict() if best is None else best)
        self.history = [dict(h) for h in state["history"]]
        self.seconds_before = float(state.get("train_seconds", 0.0))
        if self.checkpoint_path is not None and self.best is not None:
            self._save_best()  # a new output folder gets the best weights too
        log.info("resumed after epoch %d (best epoch %d)", self.epoch, self.best_epoch)

    def _save_best(self) -> None:
        assert self.best is not None and self.checkpoint_path is not None
        self.saved = save_checkpoint(
            self.checkpoint_path,
            {
                "state_dict": self.best_state,
                "epoch": self.best_epoch,
                "val_loss": self.best[0],
                "val_accuracy": self.best[1],
                "classes": list(CLASSES),
                "config": to_dict(self.cfg),
                "pretrained": self.pretrained,
            },
        )

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Record the epoch's metrics; keep (and save) the weights when they are the best."""
        self.epoch = epoch
        self.history.append({"epoch": float(epoch), **metrics})
        val_loss, val_acc = metrics["val_loss"], metrics["val_accuracy"]
        if _is_better(self.cfg.checkpoint_metric, val_loss, val_acc, self.best):
            self.best = (val_loss, val_acc)
            self.best_epoch = epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
            if self.checkpoint_path is not None:
                self._save_best()


def _build_loop(
    cfg: ClassifierConfig, device: torch.device, checkpoint_path: str | Path | None
) -> _Loop:
    """Network, optimiser, scheduler and batch-order generator, seeded (inside the context)."""
    model, pretrained = build_resnet18(
        len(CLASSES),
        init=cfg.init,
        conv1_stride=cfg.conv1_stride,
        keep_maxpool=cfg.keep_maxpool,
        dropout=cfg.dropout,
    )
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr
    )
    return _Loop(
        cfg=cfg,
        device=device,
        model=model,
        pretrained=pretrained,
        optimizer=optimizer,
        scheduler=scheduler,
        order=torch.Generator().manual_seed(cfg.seed),
        checkpoint_path=Path(checkpoint_path) if checkpoint_path is not None else None,
    )


def _train_epoch(
    loop: _Loop, x: torch.Tensor, y: torch.Tensor, epoch: int, progress: bool
) -> dict[str, float]:
    """One pass over the training set in seeded order: loss, accuracy, time, throughput."""
    cfg, device, model, cl = loop.cfg, loop.device, loop.model, bool(loop.cfg.channels_last)
    model.train()
    n, bs = len(y), cfg.batch_size
    perm = torch.randperm(n, generator=loop.order).to(device)
    starts = [i for i in range(0, n, bs) if n - i >= 2 or i == 0]  # BatchNorm needs >= 2
    t0 = time.perf_counter()
    loss_sum, seen = torch.zeros((), device=device), 0
    correct_t = torch.zeros((), dtype=torch.int64, device=device)
    for i in tqdm(starts, desc=f"epoch {epoch}", unit="batch", disable=not progress,
                  leave=False, mininterval=1.0):  # fmt: skip
        idx = perm[i : i + bs]
        xb = _to_input(x[idx], device, cl)
        yb = y[idx]
        loop.optimizer.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        loss.backward()
        loop.optimizer.step()
        loss_sum += loss.detach() * len(idx)
        correct_t += (logits.detach().argmax(1) == yb).sum()
        seen += len(idx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_time = time.perf_counter() - t0
    return {
        "train_loss": float(loss_sum) / max(seen, 1),
        "train_accuracy": int(correct_t) / max(seen, 1),
        "epoch_time_s": train_time,
        "train_images_per_s": seen / train_time if train_time > 0 else 0.0,
    }


def _validate_epoch(loop: _Loop, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Validation loss / accuracy, then the plateau scheduler steps on the loss."""
    t1 = time.perf_counter()
    val_loss, val_acc, _ = evaluate_loss(
        loop.model,
        x,
        y,
        batch_size=loop.cfg.eval_batch_size,
        channels_last=bool(loop.cfg.channels_last),
    )
    eval_time = time.perf_counter() - t1
    lr = float(loop.optimizer.param_groups[0]["lr"])
    loop.scheduler.step(val_loss)
    return {"val_loss": val_loss, "val_accuracy": val_acc, "lr": lr, "eval_time_s": eval_time}


def _check_inputs(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
) -> None:
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
    resume_state: dict[str, Any] | None = None,
    on_state: StateCallback | None = None,
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
        resume_state: a state ``on_state`` was given: training continues after its epoch, with
            its weights, optimiser, scheduler, RNG states, best epoch and history, so that the
            result equals an uninterrupted fit (bitwise on CPU with the same thread count).
        on_state: called after every epoch (after ``on_epoch``) with the full training state
            (tensors are live: save it before returning, e.g. ``torch.save``). There is no AMP
            (no grad scaler state) and no early stopping: the plateau scheduler's counters are
            in its state.

    Returns:
        ``FitResult`` whose model holds the best epoch's weights, in eval mode.

    Raises:
        ConfigError: empty training or validation set, mismatched shapes, or a ``resume_state``
            with more epochs than ``cfg.epochs``.
    """
    _check_inputs(train_images, train_labels, val_images, val_labels)
    device = resolve_device(cfg.device)
    with _training_context(cfg, device):
        loop = _build_loop(cfg, device, checkpoint_path)
        if resume_state is not None:
            if int(resume_state["epoch"]) > cfg.epochs:
                raise ConfigError(
                    f"the checkpoint has {resume_state['epoch']} epochs done but epochs="
                    f"{cfg.epochs}; resume with at least as many epochs"
                )
            loop.restore(resume_state)
        x_train, y_train = train_images.float().to(device), train_labels.long().to(device)
        x_val, y_val = val_images.float().to(device), val_labels.long().to(device)
        start = time.perf_counter()
        epochs = tqdm(range(loop.epoch + 1, cfg.epochs + 1), desc="epochs", unit="ep",
                      disable=not progress, leave=False)  # fmt: skip
        for epoch in epochs:
            metrics = _train_epoch(loop, x_train, y_train, epoch, progress)
            metrics.update(_validate_epoch(loop, x_val, y_val))
            metrics = {k: metrics[k] for k in METRIC_ORDER}
            loop.end_epoch(epoch, metrics)
            epochs.set_postfix(
                loss=f"{metrics['train_loss']:.3f}", val_loss=f"{metrics['val_loss']:.3f}",
                val_acc=f"{metrics['val_accuracy']:.3f}", lr=f"{metrics['lr']:.1e}",
            )  # fmt: skip
            log.debug("epoch %d: %s", epoch, metrics)
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            if on_state is not None:
                on_state(loop.state(time.perf_counter() - start))
        loop.model.load_state_dict(loop.best_state)
        loop.model.eval()
    return _result(loop, loop.seconds_before + time.perf_counter() - start)


def _result(loop: _Loop, total: float) -> FitResult:
    if loop.best is None:
        raise ConfigError(f"no epoch was trained (epochs={loop.cfg.epochs})")
    log.info(
        "trained %d epochs in %.1f s; best epoch %d (val loss %.4f, accuracy %.3f)",
        loop.cfg.epochs,
        total,
        loop.best_epoch,
        loop.best[0],
        loop.best[1],
    )
    return FitResult(
        model=loop.model,
        pretrained=loop.pretrained,
        best_epoch=loop.best_epoch,
        best_val_loss=loop.best[0],
        best_val_accuracy=loop.best[1],
        history=loop.history,
        checkpoint=loop.saved,
        device=str(loop.device),
        train_seconds=total,
    )
