"""Grad-CAM heatmaps for the classifier (paper 3.3.4 and Figure 2; Selvaraju et al. 2017).

``explain`` wraps ``pytorch_grad_cam.GradCAM``: it back-propagates the target class score (the
predicted class unless ``target_classes`` is given), weights the target layer's activations by
their spatially pooled gradients, keeps the positive part, upsamples bilinearly to the input size
(``cv2.resize``) and scales each map to [0, 1] (a map with no positive evidence stays all 0). The
library downloads nothing; its hooks are removed afterwards, the model's train/eval mode and the
caller's grad mode are restored, parameter ``.grad`` buffers are reset to None.

Which layer: ``choose_layer`` measures each candidate's feature map on a probe input and takes the
deepest one at least ``TARGET_MAP_SIZE`` wide (else the largest); a map under ``MIN_MAP_SIZE``
comes with a note saying it is too coarse to read (``coarse_note``).

One run's maps, with the cases, labels and scans they explain, are a ``CamSet``, saved as
``CAMS_ARTIFACT`` (``save_cams`` / ``load_cams``). ``select_cases`` picks the same external cases
for every scenario and seed, so two runs' sets pair up (``load_pair``) and ``comparison_panel``
draws them side by side, as the paper's Figure 2 does for O+FM. ``overlay_figure`` draws one run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from thyroaug.contract import CLASSES, GRADCAM_ARTIFACT
from thyroaug.evaluation.plots import save_figure
from thyroaug.utils.atomic import atomic_path

log = logging.getLogger(__name__)

CAMS_ARTIFACT = GRADCAM_ARTIFACT
"""Run artifact holding a ``CamSet`` (next to the figure ``gradcam/gradcam.png``)."""
TARGET_MAP_SIZE = 8
"""``choose_layer`` takes the deepest layer whose feature map is at least this wide."""
MIN_MAP_SIZE = 4
"""Below this width a map cannot show where in the neck the model looks (``coarse_note``)."""


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


@dataclass(frozen=True)
class CamLayer:
    """The layer Grad-CAM explains and the size of its feature map for the probed input.

    Attributes:
        name: the layer's name (e.g. ``layer2``).
        module: the layer itself (hooked by ``explain``).
        map_size: (height, width) of its output for the probe input.
        input_size: (height, width) of the probe input.
    """

    name: str
    module: nn.Module
    map_size: tuple[int, int]
    input_size: tuple[int, int]

    @property
    def note(self) -> str:
        """``coarse_note`` for this layer ("" when its map is readable)."""
        return coarse_note(self.name, self.map_size, self.input_size)


def feature_map_sizes(
    model: nn.Module, candidates: Mapping[str, nn.Module], probe: torch.Tensor
) -> dict[str, tuple[int, int]]:
    """Spatial size of each candidate's output for one forward pass of ``probe`` [1, C, H, W].

    Runs in eval mode without gradients (batch-norm statistics untouched), mode restored.
    """
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: sizes.__setitem__(name, tuple(out.shape[-2:]))
        )
        for name, module in candidates.items()
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            param = next(model.parameters())
            model(probe.to(device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    missing = [name for name in candidates if name not in sizes]
    if missing:
        raise ValueError(f"gradcam: candidate layers {missing} were not used by the forward pass")
    return {name: (int(h), int(w)) for name, (h, w) in sizes.items()}


def choose_layer(
    model: nn.Module,
    candidates: Mapping[str, nn.Module],
    probe: torch.Tensor,
    target_size: int = TARGET_MAP_SIZE,
) -> CamLayer:
    """The deepest candidate whose map is at least ``target_size`` on each side, else the largest.

    Deeper layers are more class-specific, shallower ones finer (Selvaraju et al. 2017, Sec. 3).

    Args:
        model: the classifier.
        candidates: layers by name, ordered from shallow to deep.
        probe: one input [1, C, H, W] of the size that will be explained.
        target_size: smallest map side that counts as readable.

    Returns:
        CamLayer (its ``note`` says when even the chosen map is too coarse).
    """
    if not candidates:
        raise ValueError("gradcam: no candidate layer given")
    sizes = feature_map_sizes(model, candidates, probe)
    readable = [name for name in candidates if min(sizes[name]) >= target_size]
    if readable:
        name = readable[-1]
    else:  # the largest map; the first listed (shallowest) among equals
        name = max(candidates, key=lambda n: (min(sizes[n]), -list(candidates).index(n)))
    input_size = (int(probe.shape[-2]), int(probe.shape[-1]))
    return CamLayer(name, candidates[name], sizes[name], input_size)


def coarse_note(layer: str, map_size: Sequence[int], input_size: Sequence[int]) -> str:
    """Why a map is too coarse to read, or "" when it is at least ``MIN_MAP_SIZE`` wide."""
    h, w = (int(v) for v in map_size)
    if min(h, w) >= MIN_MAP_SIZE:
        return ""
    ih, iw = (int(v) for v in input_size)
    return (
        f"Grad-CAM maps are {h}x{w} at {layer} for {ih}x{iw} px inputs: too coarse to show where "
        f"the model looks (needs at least {MIN_MAP_SIZE}x{MIN_MAP_SIZE}); use a larger image_size"
    )


@dataclass
class GradCamResult:
    """Heatmaps with the model outputs they explain.

    Attributes:
        cams: float32 [N, H, W] in [0, 1].
        probs: float32 [N, K] softmax of the model's outputs.
        targets: int64 [N] the class each map explains.
        map_size: (height, width) of the explained layer's map before upsampling.
    """

    cams: np.ndarray
    probs: np.ndarray
    targets: np.ndarray
    map_size: tuple[int, int] = (0, 0)


def explain(
    model: nn.Module,
    images: torch.Tensor,
    target_layer: nn.Module | None = None,
    target_classes: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    channels: int | None = None,
    batch_size: int = 16,
) -> GradCamResult:
    """Grad-CAM maps (Selvaraju et al. 2017) plus the class probabilities of the same passes.

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
    map_size = (0, 0)
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
                map_size = tuple(
                    int(v) for v in cam.activations_and_grads.activations[0].shape[-2:]
                )
    finally:
        cam.activations_and_grads.release()
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    result = np.clip(np.nan_to_num(np.concatenate(cams)), 0.0, 1.0).astype(np.float32)
    used_arr = np.concatenate(used).astype(np.int64)
    return GradCamResult(result, np.concatenate(probs), used_arr, map_size)


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


def select_cases(
    case_ids: Sequence[str] | np.ndarray,
    labels: np.ndarray,
    n_per_class: int,
    n_classes: int = len(CLASSES),
) -> np.ndarray:
    """Indices of the first ``n_per_class`` cases of each class by sorted case id, class by class.

    Depends on nothing but the ids and true labels, so every scenario and seed explains the same
    external cases and their maps can be compared (``load_pair``).
    """
    ids = np.asarray(case_ids).astype(str)
    labels = np.asarray(labels).astype(np.int64)
    if ids.shape != labels.shape:
        raise ValueError(f"select_cases: {ids.size} case ids but {labels.size} labels")
    if np.unique(ids).size != ids.size:
        raise ValueError("select_cases: case ids are not unique")
    chosen: list[int] = []
    for c in range(n_classes):
        idx = np.flatnonzero(labels == c)
        chosen.extend(idx[np.argsort(ids[idx], kind="stable")][:n_per_class].tolist())
    return np.asarray(chosen, dtype=np.int64)


@dataclass
class CamSet:
    """One run's Grad-CAM maps on named external cases: the ``CAMS_ARTIFACT`` contents.

    Attributes:
        case_ids: str [N], in ``select_cases`` order.
        true: int64 [N] true class index.
        pred: int64 [N] predicted class index.
        target: int64 [N] the class each map explains.
        probs: float32 [N, K] predicted probabilities.
        images: float32 [N, H, W] the scans as the model saw them.
        cams: float32 [N, H, W] in [0, 1], upsampled bilinearly to the scans' size.
        layer: name of the explained layer.
        map_size: (height, width) of that layer's map before upsampling.
        scenario: the run's scenario name.
        note: why the maps cannot be read (``coarse_note``), "" when they can.
        classes: class names in index order.
    """

    case_ids: np.ndarray
    true: np.ndarray
    pred: np.ndarray
    target: np.ndarray
    probs: np.ndarray
    images: np.ndarray
    cams: np.ndarray
    layer: str
    map_size: tuple[int, int]
    scenario: str = ""
    note: str = ""
    classes: tuple[str, ...] = field(default=tuple(CLASSES))

    def __post_init__(self) -> None:
        self.case_ids = np.asarray(self.case_ids).astype(str)
        for name in ("true", "pred", "target"):
            setattr(self, name, np.asarray(getattr(self, name)).astype(np.int64))
        for name in ("probs", "images", "cams"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float32))
        self.map_size = (int(self.map_size[0]), int(self.map_size[1]))
        self.classes = tuple(str(c) for c in self.classes)
        n = self.case_ids.shape[0]
        shapes = {k: getattr(self, k).shape for k in ("true", "pred", "target", "probs")}
        if any(shape[0] != n for shape in shapes.values()) or self.cams.ndim != 3:
            raise ValueError(f"CamSet: {n} case ids but shapes {shapes}, cams {self.cams.shape}")
        if self.images.shape != self.cams.shape or self.cams.shape[0] != n:
            raise ValueError(f"CamSet: images {self.images.shape} and cams {self.cams.shape}")


_CAMSET_KEYS = tuple(f.name for f in fields(CamSet))


def save_cams(cams: CamSet, path: str | Path) -> Path:
    """Write ``cams`` as a compressed ``.npz`` (no pickled objects), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {key: np.asarray(getattr(cams, key)) for key in _CAMSET_KEYS}
    arrays["classes"] = np.asarray(cams.classes, dtype=str)
    arrays["map_size"] = np.asarray(cams.map_size, dtype=np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def load_cams(path: str | Path) -> CamSet:
    """Read a ``save_cams`` file.

    Raises:
        ValueError: the file is not a Grad-CAM set (missing keys).
    """
    with np.load(path, allow_pickle=False) as data:
        missing = [key for key in _CAMSET_KEYS if key not in data.files]
        if missing:
            raise ValueError(f"{path}: not a Grad-CAM set ({CAMS_ARTIFACT}); missing {missing}")
        values = {key: data[key] for key in _CAMSET_KEYS}
    for key in ("layer", "scenario", "note"):
        values[key] = str(values[key])
    values["classes"] = tuple(values["classes"].tolist())
    values["map_size"] = tuple(values["map_size"].tolist())
    return CamSet(**values)


def check_same_cases(a: CamSet, b: CamSet) -> None:
    """Refuse two sets that do not explain the same cases, in the same order, at the same size.

    Raises:
        ValueError: naming the cases only one set has, or the differing sizes or classes.
    """
    who = f"Grad-CAM sets {a.scenario or 'A'!r} and {b.scenario or 'B'!r}"
    if a.classes != b.classes:
        raise ValueError(f"{who} use different classes: {a.classes} vs {b.classes}")
    ids_a, ids_b = a.case_ids.tolist(), b.case_ids.tolist()
    if ids_a != ids_b:
        only_a, only_b = sorted(set(ids_a) - set(ids_b)), sorted(set(ids_b) - set(ids_a))
        what = (
            f"only in the first: {only_a[:5]}, only in the second: {only_b[:5]}"
            if only_a or only_b
            else "the same cases in another order"
        )
        raise ValueError(
            f"{who} explain different external cases ({what}): compare runs of the same "
            "cohort and gradcam_per_class"
        )
    if a.cams.shape != b.cams.shape or not np.array_equal(a.true, b.true):
        raise ValueError(
            f"{who} differ in image size ({a.cams.shape[1:]} vs {b.cams.shape[1:]}) or true "
            "labels: compare runs of the same profile and cohort"
        )


def load_pair(path_a: str | Path, path_b: str | Path) -> tuple[CamSet, CamSet]:
    """Two runs' ``CAMS_ARTIFACT`` files, checked to explain the same cases (``check_same_cases``).

    Raises:
        ValueError: a file is not a Grad-CAM set, or the two explain different cases.
    """
    a, b = load_cams(path_a), load_cams(path_b)
    check_same_cases(a, b)
    return a, b


def _unit(scan: np.ndarray) -> np.ndarray:
    """Scan scaled to [0, 1] for display."""
    scan = scan.astype(np.float64)
    lo, hi = float(scan.min()), float(scan.max())
    return (scan - lo) / (hi - lo) if hi > lo else np.zeros_like(scan)


def comparison_figure(
    a: CamSet,
    b: CamSet,
    *,
    labels: tuple[str, str] | None = None,
    per_class: int = 1,
    alpha: float = 0.45,
    title: str = "",
) -> Figure:
    """Paper Figure 2 style panel: per case, the scan, then the Grad-CAM overlay of run A and B.

    Rows are the first ``per_class`` cases of each class (``select_cases`` order). A row's scan is
    titled with the case id and true class, each overlay with its scenario and prediction (red
    when wrong). A coarse-map note (``CamSet.note``) is printed under the panel.

    Args:
        a: the reference run's set (e.g. O).
        b: the run compared with it (e.g. O+FM, or the best scenario).
        labels: column names for A and B; default their ``scenario``.
        per_class: cases per class.
        alpha: heatmap opacity.
        title: figure title; default names the layer and its map size.

    Raises:
        ValueError: the sets explain different cases (``check_same_cases``) or none.
    """
    check_same_cases(a, b)
    rows = select_cases(a.case_ids, a.true, per_class, len(a.classes))
    if rows.size == 0:
        raise ValueError("comparison_figure: no case to show")
    names = labels or (a.scenario or "A", b.scenario or "B")
    fig = Figure(figsize=(6.2, 2.05 * len(rows) + 0.7))
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, i in enumerate(rows):
        scan = _unit(a.images[i])
        axes[r, 0].imshow(scan, cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(f"{a.case_ids[i]}: true {a.classes[a.true[i]]}", fontsize=8)
        for ax, cams, name in ((axes[r, 1], a, names[0]), (axes[r, 2], b, names[1])):
            ax.imshow(scan, cmap="gray", vmin=0, vmax=1)
            ax.imshow(cams.cams[i], cmap="jet", vmin=0, vmax=1, alpha=alpha)
            wrong = cams.pred[i] != cams.true[i]
            label = f"{name}: pred {cams.classes[cams.pred[i]]}"
            ax.set_title(label, fontsize=8, color="red" if wrong else "black")
    for ax in axes.ravel():
        ax.axis("off")
    (h, w), (ih, iw) = a.map_size, a.images.shape[1:]
    layers = a.layer if a.layer == b.layer else f"{a.layer} / {b.layer}"
    fig.suptitle(
        title or f"Grad-CAM on external cases ({layers}, {h}x{w} maps on {ih}x{iw} px)",
        fontsize=9,
    )
    notes = sorted({note for note in (a.note, b.note) if note})
    if notes:
        fig.text(
            0.5, 0.0, "\n".join(notes), ha="center", va="top", fontsize=7, color="red", wrap=True
        )
    return fig


def comparison_panel(
    a: CamSet,
    b: CamSet,
    path: str | Path,
    *,
    labels: tuple[str, str] | None = None,
    per_class: int = 1,
    alpha: float = 0.45,
    title: str = "",
) -> Path:
    """``comparison_figure`` (same arguments) saved as a PNG at ``path``; returns the path."""
    fig = comparison_figure(a, b, labels=labels, per_class=per_class, alpha=alpha, title=title)
    return save_figure(fig, path)


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
    case_ids: Sequence[str] | None = None,
    note: str = "",
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
        case_ids: names shown above the scans; default the row index.
        note: printed under the figure (e.g. ``CamLayer.note``).

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
    names = [f"case {i}" for i in range(n)] if case_ids is None else [str(c) for c in case_ids]
    if len(names) != n:
        raise ValueError(f"overlay_figure: {n} images but {len(names)} case ids")
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
                ax_scan.set_title(names[i], fontsize=8)
            ax_overlay.imshow(scan, cmap="gray", vmin=0, vmax=1)
            ax_overlay.imshow(cams[i], cmap="jet", vmin=0, vmax=1, alpha=alpha)
            ax_overlay.set_title(label, fontsize=8, color="red" if wrong else "black")
    fig.suptitle(title or "Grad-CAM (jet: class evidence)", fontsize=10)
    if note:
        fig.text(0.5, 0.0, note, ha="center", va="top", fontsize=8, color="red", wrap=True)
    return save_figure(fig, path)
