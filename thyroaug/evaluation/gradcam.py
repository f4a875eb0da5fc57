"""Grad-CAM heatmaps for the classifier (paper 3.3.4 and Figure 2) with ``pytorch_grad_cam``.

``gradcam`` wraps ``pytorch_grad_cam.GradCAM``: it runs batches through the model, back-propagates
the target class score (the predicted class unless ``target_classes`` is given), weights the target
layer's activations by their spatially pooled gradients, keeps the positive part, upsamples to the
input size and scales each map to [0, 1] (a map with no positive evidence stays all 0). The library
downloads nothing; it only hooks the given layer and removes its hooks afterwards. The model's
train/eval mode and the caller's grad mode are restored on return; parameter ``.grad`` buffers are
reset to None (Grad-CAM back-propagates into them).

``overlay_figure`` draws the paper's Figure 2 style panels: the grayscale scan and the scan with the
jet heatmap on top, titled with the true and predicted class.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from thyroaug.contract import CLASSES
from thyroaug.evaluation.plots import save_figure

log = logging.getLogger(__name__)


def default_target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM usually explains: ResNet's last ``layer4`` block, else the last Conv2d.

    Looks for an attribute ``layer4`` on the model or on any sub-module (so wrappers such as
    ``model.backbone.layer4`` are found).
    """
    for module in model.modules():
        layer4 = getattr(module, "layer4", None)
        if isinstance(layer4, nn.Module):
            children = list(layer4.children())
            return children[-1] if children else layer4
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("gradcam: the model has no Conv2d layer; pass target_layer explicitly")
    return convs[-1]


@dataclass
class GradCamResult:
    """Heatmaps with the model outputs they explain.

    Attributes:
        cams: float32 [N, H, W] in [0, 1].
        probs: float32 [N, K] softmax of the model's outputs.
        targets: int64 [N] the class each map explains.
    """

    cams: np.ndarray
    probs: np.ndarray
    targets: np.ndarray


def explain(
    model: nn.Module,
    images: torch.Tensor,
    target_layer: nn.Module | None = None,
    target_classes: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    channels: int | None = None,
    batch_size: int = 16,
) -> GradCamResult:
    """Grad-CAM maps plus the class probabilities of the same forward passes.

    Args:
        model: a classifier returning logits [N, K].
        images: [N, C, H, W] input as the model expects it (C=1 for the scans).
        target_layer: layer to explain; default ``default_target_layer(model)``.
        target_classes: class index per image (or one for all); None explains the predicted class.
        channels: if set and ``images`` has 1 channel, repeat it to this many channels first (for a
            3-channel backbone fed grayscale scans); None passes images unchanged.
        batch_size: images per forward/backward pass.

    Returns:
        GradCamResult.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"gradcam: images must be a [N, C, H, W] tensor, got {shape}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("gradcam: no images given")
    if channels is not None and images.shape[1] == 1 and channels != 1:
        images = images.repeat(1, channels, 1, 1)
    targets: np.ndarray | None = None
    if target_classes is not None:
        t = torch.as_tensor(target_classes).detach().cpu().numpy().astype(np.int64).reshape(-1)
        targets = np.repeat(t, n) if t.size == 1 else t
        if targets.shape != (n,):
            raise ValueError(f"gradcam: {n} images but {targets.size} target classes")
        if targets.min() < 0:
            raise ValueError(f"gradcam: negative target class {int(targets.min())}")
    layer = target_layer if target_layer is not None else default_target_layer(model)

    was_training = model.training
    device = next(model.parameters()).device
    cams, probs, used = [], [], []
    # Not used as a context manager: GradCAM.__exit__ swallows IndexError (and prints).
    cam = GradCAM(model=model, target_layers=[layer])
    try:
        with torch.enable_grad():
            starts = range(0, n, batch_size)
            for start in tqdm(starts, desc="grad-cam", disable=len(starts) < 4, leave=False):
                batch = images[start : start + batch_size].to(device).float()
                batch = batch.clone().requires_grad_(True)  # hooks fire even for frozen weights
                chunk = None if targets is None else targets[start : start + batch_size]
                batch_targets = (
                    None if chunk is None else [ClassifierOutputTarget(int(c)) for c in chunk]
                )
                try:
                    maps = cam(input_tensor=batch, targets=batch_targets)
                except IndexError as exc:
                    if chunk is None:
                        raise
                    raise ValueError(
                        f"gradcam: target classes {sorted(set(chunk.tolist()))} do not fit the "
                        "model's output size"
                    ) from exc
                logits = cam.outputs.detach().float().cpu()
                used.append(logits.argmax(dim=1).numpy() if chunk is None else chunk)
                probs.append(torch.softmax(logits, dim=1).numpy())
                cams.append(np.asarray(maps, dtype=np.float32))
    finally:
        cam.activations_and_grads.release()
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    result = np.clip(np.nan_to_num(np.concatenate(cams)), 0.0, 1.0).astype(np.float32)
    used_arr = np.concatenate(used).astype(np.int64)
    return GradCamResult(cams=result, probs=np.concatenate(probs), targets=used_arr)


def gradcam(
    model: nn.Module,
    images: torch.Tensor,
    target_layer: nn.Module | None = None,
    target_classes: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    channels: int | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """Grad-CAM heatmaps [N, H, W] in [0, 1] (see ``explain`` for the arguments)."""
    return explain(model, images, target_layer, target_classes, channels, batch_size).cams


def select_per_class(
    labels: np.ndarray, n_per_class: int, n_classes: int = len(CLASSES), seed: int | None = None
) -> np.ndarray:
    """Indices of up to ``n_per_class`` cases of each class, class by class.

    Args:
        labels: class index per case.
        n_per_class: cases kept per class.
        n_classes: number of classes.
        seed: None keeps the first cases in order; an int draws them at random (reproducibly).
    """
    labels = np.asarray(labels).astype(np.int64)
    rng = None if seed is None else np.random.default_rng(seed)
    chosen = []
    for c in range(n_classes):
        idx = np.flatnonzero(labels == c)
        if rng is not None and idx.size > n_per_class:
            idx = np.sort(rng.choice(idx, n_per_class, replace=False))
        chosen.extend(idx[:n_per_class].tolist())
    return np.asarray(chosen, dtype=np.int64)


def overlay_figure(
    images: torch.Tensor | np.ndarray,
    cams: np.ndarray,
    true_labels: np.ndarray,
    pred_labels: np.ndarray,
    path: str | Path,
    n_per_class: int = 1,
    classes: Sequence[str] = CLASSES,
    show_input: bool = True,
    alpha: float = 0.45,
    seed: int | None = None,
    title: str = "",
) -> Path:
    """Figure of scans with their Grad-CAM overlays, one row per true class (paper Figure 2 style).

    Args:
        images: [N, 1, H, W] (or [N, H, W]) scans.
        cams: [N, H, W] heatmaps in [0, 1] (``gradcam`` output).
        true_labels: [N] true class indices.
        pred_labels: [N] predicted class indices.
        path: output image path.
        n_per_class: cases shown per class (fewer if a class has fewer).
        classes: class names in index order.
        show_input: draw the plain scan next to each overlay.
        alpha: heatmap opacity.
        seed: None shows the first cases of each class; an int picks them at random.
        title: figure title.

    Returns:
        The written path. Titles read ``true DG / pred NG``; wrong predictions in red.
    """
    imgs = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if imgs.ndim == 4:
        if imgs.shape[1] != 1:
            imgs = imgs.mean(axis=1)
        else:
            imgs = imgs[:, 0]
    cams = np.asarray(cams)
    true_labels = np.asarray(true_labels).astype(np.int64)
    pred_labels = np.asarray(pred_labels).astype(np.int64)
    n = imgs.shape[0]
    if cams.shape != imgs.shape or true_labels.shape != (n,) or pred_labels.shape != (n,):
        raise ValueError(
            f"overlay_figure: images {imgs.shape}, cams {cams.shape}, true {true_labels.shape}, "
            f"pred {pred_labels.shape} must agree"
        )
    chosen = select_per_class(true_labels, n_per_class, len(classes), seed)
    if chosen.size == 0:
        raise ValueError("overlay_figure: no case to show")
    rows = [c for c in range(len(classes)) if (true_labels[chosen] == c).any()]
    per_case = 2 if show_input else 1
    ncols = n_per_class * per_case
    fig = Figure(figsize=(1.9 * ncols + 0.4, 2.0 * len(rows) + 0.4))
    axes = np.atleast_2d(fig.subplots(len(rows), ncols, squeeze=False))
    for ax in axes.ravel():
        ax.axis("off")
    for r, c in enumerate(rows):
        cases = chosen[true_labels[chosen] == c]
        for j, i in enumerate(cases):
            scan = imgs[i].astype(np.float64)
            lo, hi = float(scan.min()), float(scan.max())
            scan = (scan - lo) / (hi - lo) if hi > lo else np.zeros_like(scan)
            wrong = pred_labels[i] != true_labels[i]
            label = f"true {classes[true_labels[i]]} / pred {classes[pred_labels[i]]}"
            ax_overlay = axes[r, j * per_case + per_case - 1]
            if show_input:
                ax_scan = axes[r, j * per_case]
                ax_scan.imshow(scan, cmap="gray", vmin=0, vmax=1)
                ax_scan.set_title(f"case {i}", fontsize=8)
            ax_overlay.imshow(scan, cmap="gray", vmin=0, vmax=1)
            ax_overlay.imshow(cams[i], cmap="jet", vmin=0, vmax=1, alpha=alpha)
            ax_overlay.set_title(label, fontsize=8, color="red" if wrong else "black")
    fig.suptitle(title or "Grad-CAM (jet: class evidence)", fontsize=10)
    return save_figure(fig, path)
