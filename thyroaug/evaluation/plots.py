"""Figures: confusion matrix, ROC curves, paired-difference heatmap, significance heatmap (paper
Figure 3), bootstrap distributions, and image grids.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas, no pyplot, no global state), saved
to a temporary sibling file and renamed, so a reader never sees a half-written PNG. Each function
returns the written path.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from sklearn.metrics import roc_auc_score, roc_curve

from thyroaug.contract import CLASSES
from thyroaug.evaluation.metrics import check_labels, check_probabilities
from thyroaug.evaluation.paper_method import ComparisonResult

log = logging.getLogger(__name__)

DPI = 150


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Save ``fig`` atomically (temporary sibling file, then rename) and return the path.

    The format follows the suffix (``.png`` when there is none).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".").lower() or "png"
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.debug("wrote %s", path)
    return path


def plot_confusion(
    cm: np.ndarray,
    path: str | Path,
    title: str = "",
    classes: Sequence[str] = CLASSES,
    normalize: bool = False,
) -> Path:
    """Confusion matrix heatmap, counts (and row percentages) written in each cell.

    Args:
        cm: [K, K] counts, rows = true class, columns = predicted (``metrics.confusion``).
        path: output image path.
        title: figure title.
        classes: class names for the axes.
        normalize: colour by row fraction (recall) instead of counts.

    Returns:
        The written path.
    """
    cm = np.asarray(cm)
    k = len(classes)
    if cm.shape != (k, k):
        raise ValueError(
            f"confusion matrix must be {k}x{k} for classes {list(classes)}, got {cm.shape}"
        )
    row_sum = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, row_sum, out=np.zeros(cm.shape, dtype=float), where=row_sum > 0)
    shown = frac if normalize else cm
    fig = Figure(figsize=(1.1 * k + 1.6, 1.1 * k + 1.0))
    ax = fig.subplots()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(1, cm.max()))
    fig.colorbar(
        im, ax=ax, fraction=0.046, pad=0.04, label="row fraction" if normalize else "cases"
    )
    for i in range(k):
        for j in range(k):
            dark = frac[i, j] > 0.5 if normalize else cm[i, j] > 0.5 * max(1, cm.max())
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{100 * frac[i, j]:.0f}%",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if dark else "black",
            )
    ax.set_xticks(range(k), classes)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "Confusion matrix")
    return save_figure(fig, path)


def plot_roc(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    path: str | Path,
    title: str = "",
    classes: Sequence[str] = CLASSES,
) -> Path:
    """One-vs-rest ROC curve per class plus the micro-average curve, AUC in the legend.

    A class absent from ``y_true`` (or the only class present) has no ROC curve; it is listed in
    the legend as undefined.

    Args:
        y_true: true class indices [N].
        y_prob: class probabilities [N, K].
        path: output image path.
        title: figure title.
        classes: class names in index order.

    Returns:
        The written path.
    """
    k = len(classes)
    y_true = check_labels(y_true, k)
    y_prob = check_probabilities(y_prob, len(y_true), k)
    onehot = np.eye(k, dtype=int)[y_true]
    fig = Figure(figsize=(5.2, 5.0))
    ax = fig.subplots()
    colors = ["tab:red", "tab:orange", "tab:green", "tab:blue", "tab:purple", "tab:brown"]
    for c in range(k):
        support = onehot[:, c].sum()
        if 0 < support < len(y_true):
            fpr, tpr, _ = roc_curve(onehot[:, c], y_prob[:, c])
            auc = roc_auc_score(onehot[:, c], y_prob[:, c])
            ax.plot(
                fpr,
                tpr,
                color=colors[c % len(colors)],
                lw=1.5,
                label=f"{classes[c]} (AUC {auc:.2f})",
            )
        else:
            ax.plot(
                [],
                [],
                color=colors[c % len(colors)],
                label=f"{classes[c]} (undefined, n={support})",
            )
    fpr, tpr, _ = roc_curve(onehot.ravel(), y_prob.ravel())
    auc = roc_auc_score(onehot.ravel(), y_prob.ravel())
    ax.plot(fpr, tpr, color="black", lw=2, ls="--", label=f"micro (AUC {auc:.2f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls=":")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title or "ROC (one vs rest)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_aspect("equal")
    return save_figure(fig, path)


def _format_p(p: float) -> str:
    """Short p-value text for heatmap cells."""
    if not np.isfinite(p):
        return ""
    if p == 0:
        return "<1e-99"
    if p >= 0.1:
        return f"{p:.2f}"
    if p >= 0.001:
        return f"{p:.3g}"
    mant, exp = f"{p:.0e}".split("e")
    return "<1e-99" if int(exp) < -99 else f"{mant}e{int(exp)}"


def _axis_labels(
    ax: Any,
    names: Sequence[str],
    grey: set[str],
    fontsize: float,
    status: Mapping[str, str] | None = None,
) -> None:
    """Tick labels on both axes, unavailable names in grey (with their ``status`` in brackets,
    e.g. ``CA (not tested)``); white cell grid."""
    m = len(names)
    status = status or {}
    grey = {f"{n} ({status[n]})" if n in status else n for n in grey}
    names = [f"{n} ({status[n]})" if n in status else n for n in names]
    ax.set_xticks(
        range(m), names, rotation=60, ha="right", rotation_mode="anchor", fontsize=fontsize
    )
    ax.set_yticks(range(m), names, fontsize=fontsize)
    for label in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
        if label.get_text() in grey:
            label.set_color("0.55")
    ax.set_xticks(np.arange(-0.5, m, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, m, 1), minor=True)
    ax.grid(which="minor", color="white", lw=0.6)
    ax.tick_params(which="minor", length=0)


def _grey_unavailable(ax: Any, names: Sequence[str], grey: set[str]) -> None:
    """Hatch the rows and columns of scenarios without a result (missing / not tested)."""
    from matplotlib.patches import Rectangle

    m = len(names)
    for k, name in enumerate(names):
        if name in grey:
            for x, y, w, h in ((-0.5, k - 0.5, m, 1), (k - 0.5, -0.5, 1, m)):
                ax.add_patch(
                    Rectangle((x, y), w, h, facecolor="0.8", edgecolor="0.6", hatch="//", lw=0)
                )


def _font_size(m: int) -> float:
    """Cell font size for an m x m heatmap (10 pt for 2 models, 5.5 pt for 18)."""
    return float(np.clip(11.0 - 0.32 * m, 5.0, 10.0))


def plot_significance_heatmap(
    result: ComparisonResult,
    path: str | Path,
    title: str = "",
    cap: float = 10.0,
    annotate: bool = True,
    order: Sequence[str] | None = None,
    status: Mapping[str, str] | None = None,
) -> Path:
    """Pairwise significance heatmap in the spirit of the paper's Figure 3.

    Cell (row, column) is coloured by ``direction * -log10(p_adj)`` (clipped to ``cap``): red when
    the row model is better, blue when worse, pale when not significant. Significant cells
    (``p_adj < alpha``) carry a bold adjusted p-value; others a grey one. The diagonal is grey.

    Args:
        result: output of ``paper_method.compare_distributions``.
        path: output image path.
        title: figure title (default names the metric and the test).
        cap: colour saturation in -log10(p) units.
        annotate: write the adjusted p-value in each cell.
        order: axis order; names in it but not in ``result`` (missing scenarios) are drawn as
            grey hatched rows and columns. Default: ``result.names``.
        status: a note shown beside a name's tick label (e.g. ``{"FM": "missing"}``).

    Returns:
        The written path.
    """
    names = list(order) if order is not None else list(result.names)
    names += [n for n in result.names if n not in names]
    grey = {n for n in names if n not in result.names}
    m = len(names)
    p_adj = result.p_adj.reindex(index=names, columns=names).to_numpy(dtype=float)
    direction = result.direction.reindex(index=names, columns=names, fill_value=0).to_numpy()
    sig = result.significant.reindex(index=names, columns=names, fill_value=False).to_numpy(bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        strength = -np.log10(np.clip(p_adj, 1e-300, 1.0))
    signed = np.clip(direction * strength, -cap, cap)
    signed = np.where(np.eye(m, dtype=bool), np.nan, signed)
    side = max(5.0, 0.5 * m + 2.5)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    cmap = colormaps["RdBu_r"].with_extremes(bad="0.85")
    im = ax.imshow(
        np.ma.masked_invalid(signed), cmap=cmap, norm=TwoSlopeNorm(0.0, -cap, cap), aspect="equal"
    )
    _grey_unavailable(ax, names, grey)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cbar.set_label("row vs column: direction × −log10(adjusted p)")
    thr = -np.log10(result.alpha)
    for v in (-thr, thr):
        cbar.ax.axhline(v, color="black", lw=0.8)
    if annotate:
        fontsize = float(np.clip(11.5 - 0.28 * m, 6.0, 10))
        for i in range(m):
            for j in range(m):
                if i == j or not np.isfinite(p_adj[i, j]):
                    continue
                strong = abs(signed[i, j]) > 0.6 * cap
                color = "white" if strong else ("black" if sig[i, j] else "0.45")
                ax.text(
                    j,
                    i,
                    _format_p(p_adj[i, j]),
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color=color,
                    fontweight="bold" if sig[i, j] else "normal",
                )
    _axis_labels(ax, names, grey, float(np.clip(12.5 - 0.25 * m, 7.0, 11.0)), status)
    metric = result.metric or "metric"
    ax.set_title(
        title
        or f"Wilcoxon rank-sum on bootstrap {metric}, BH-adjusted p (bold: < {result.alpha:g})",
        fontsize=11,
    )
    return save_figure(fig, path)


def _signed(value: float, digits: int) -> str:
    """``+0.030`` / ``−0.020`` (true minus sign); a value that rounds to zero prints ``0.00``."""
    text = f"{value:+.{digits}f}"
    if float(text) == 0:
        return f"{0:.{digits}f}"
    return text.replace("-", "\u2212")


def _paired_matrices(
    paired: pd.DataFrame, names: Sequence[str], metric: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(diff, ci_low, ci_high, significant) m x m matrices of row minus column."""
    m = len(names)
    pos = {n: k for k, n in enumerate(names)}
    d, lo, hi = (np.full((m, m), np.nan) for _ in range(3))
    sig = np.zeros((m, m), dtype=bool)
    for row in paired[paired["metric"] == metric].itertuples(index=False):
        a, b = pos.get(str(row.a)), pos.get(str(row.b))
        if a is None or b is None:
            continue
        # diff = metric(b) - metric(a): cell (b, a) is row b minus column a
        d[b, a], lo[b, a], hi[b, a] = row.diff, row.ci_low, row.ci_high
        d[a, b], lo[a, b], hi[a, b] = -row.diff, -row.ci_high, -row.ci_low
        sig[a, b] = sig[b, a] = bool(row.significant)
    return d, lo, hi, sig


def plot_paired_heatmap(
    paired: pd.DataFrame,
    path: str | Path,
    names: Sequence[str] | None = None,
    metric: str = "accuracy",
    title: str = "",
    alpha: float = 0.05,
    status: Mapping[str, str] | None = None,
) -> Path:
    """Paired differences with their 95 % CI; only what the valid test calls significant is marked.

    Cell (row, column) is coloured by ``metric(row) - metric(column)`` (diverging, centred at 0,
    red: row better) and reads ``+0.030`` over ``[-0.01, +0.07]``; cells the paired test finds
    significant after Benjamini-Hochberg (``paired.significant``) get a ``*`` and a bold black
    border, nothing else does. Names without any pair in ``paired`` (missing scenarios, scenarios
    without predictions) are grey hatched rows and columns. Font sizes scale for 2 to 18 names.

    Args:
        paired: ``paired.paired_comparisons`` output (columns a, b, metric, diff, ci_low,
            ci_high, significant; ``diff = metric(b) - metric(a)``).
        path: output image path.
        names: axis order (default: the names in ``paired``, first seen first).
        metric: which metric family to draw (``accuracy``, ``macro_f1``, ``macro_auc``).
        title: figure title (default names the metric and the tests).
        alpha: the FDR level the ``significant`` column used (for the title).
        status: a note shown beside a name's tick label (e.g. ``{"CA": "not tested"}``).

    Returns:
        The written path.
    """
    from matplotlib.patches import Rectangle

    seen = list(dict.fromkeys([*paired["a"].astype(str), *paired["b"].astype(str)]))
    names = list(names) if names is not None else seen
    names += [n for n in seen if n not in names]
    grey = {n for n in names if n not in seen}
    m = len(names)
    d, lo, hi, sig = _paired_matrices(paired, names, metric)
    finite = np.abs(np.concatenate([d[np.isfinite(d)], lo[np.isfinite(lo)], hi[np.isfinite(hi)]]))
    vmax = max(0.01, float(finite.max()) if finite.size else 0.01)
    side = max(4.5, 0.78 * m + 2.2)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    cmap = colormaps["RdBu_r"].with_extremes(bad="0.92")
    im = ax.imshow(
        np.ma.masked_invalid(d), cmap=cmap, norm=TwoSlopeNorm(0.0, -vmax, vmax), aspect="equal"
    )
    _grey_unavailable(ax, names, grey)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).set_label(f"{metric}: row − column")
    fontsize = _font_size(m)
    for i in range(m):
        for j in range(m):
            if i == j or not np.isfinite(d[i, j]):
                continue
            strong = abs(d[i, j]) > 0.6 * vmax
            ax.text(
                j,
                i,
                f"{_signed(d[i, j], 3)}{'*' if sig[i, j] else ''}\n"
                f"[{_signed(lo[i, j], 2)}, {_signed(hi[i, j], 2)}]",
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if strong else "black",
                fontweight="bold" if sig[i, j] else "normal",
            )
            if sig[i, j]:
                ax.add_patch(
                    Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, lw=2.2, ec="black")
                )
    _axis_labels(ax, names, grey, float(np.clip(12.5 - 0.25 * m, 7.0, 11.0)), status)
    ax.set_title(
        title
        or f"Paired difference in {metric} (row − column), 95 % CI\n"
        f"* / bold border: significant by the paired test, BH-adjusted p < {alpha:g}",
        fontsize=11,
    )
    return save_figure(fig, path)


def plot_bootstrap(
    data: pd.DataFrame | Mapping[str, np.ndarray],
    path: str | Path,
    title: str = "",
    level: float = 0.95,
) -> Path:
    """Bootstrap distributions.

    Args:
        data: either one model's ``bootstrap.bootstrap`` DataFrame (one histogram panel per metric,
            median and percentile interval marked) or {name: 1-D values} for one metric across
            models (horizontal box plots in the given order, top to bottom).
        path: output image path.
        title: figure title.
        level: coverage of the marked percentile interval.

    Returns:
        The written path.
    """
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    if isinstance(data, pd.DataFrame):
        cols = list(data.columns)
        if not cols:
            raise ValueError("plot_bootstrap: the DataFrame has no columns")
        fig = Figure(figsize=(3.4 * len(cols), 3.0))
        axes = np.atleast_1d(fig.subplots(1, len(cols)))
        for ax, col in zip(axes, cols):
            values = data[col].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if values.size == 0:
                ax.text(0.5, 0.5, "no finite values", ha="center", transform=ax.transAxes)
            else:
                ax.hist(values, bins=30, color="tab:blue", alpha=0.75)
                med, (a, b) = np.median(values), np.percentile(values, [lo, hi])
                ax.axvline(med, color="black", lw=1.5)
                for x in (a, b):
                    ax.axvline(x, color="black", lw=1, ls="--")
                ax.set_xlabel(f"{col}: {med:.3f} [{a:.3f}, {b:.3f}]", fontsize=9)
            ax.set_yticks([])
        fig.suptitle(title or f"bootstrap distributions (n={len(data)}, {level:.0%} interval)")
        return save_figure(fig, path)

    names = list(data)
    if not names:
        raise ValueError("plot_bootstrap: no distributions given")
    values = []
    for name in names:
        arr = np.asarray(data[name], dtype=float)
        values.append(arr[np.isfinite(arr)])
    fig = Figure(figsize=(7.0, max(2.5, 0.38 * len(names) + 1.2)))
    ax = fig.subplots()
    positions = np.arange(len(names))[::-1]
    ax.boxplot(
        values,
        positions=positions,
        orientation="horizontal",
        whis=(lo, hi),
        showfliers=False,
        widths=0.6,
        patch_artist=True,
        boxprops={"facecolor": "tab:blue", "alpha": 0.5},
        medianprops={"color": "black"},
    )
    ax.set_yticks(positions, names)
    ax.grid(axis="x", color="0.9")
    ax.set_title(title or f"bootstrap distributions (whiskers: {level:.0%} interval)")
    return save_figure(fig, path)


def _to_hw_array(img: Any) -> np.ndarray:
    """One image as float/uint8 numpy [H, W] or [H, W, 3]."""
    if isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB") if img.mode not in ("L", "F", "I") else img)
    arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise ValueError(
            f"image_grid: each image must be [H,W], [1,H,W] or [H,W,3], got {arr.shape}"
        )
    return arr


def _to_uint8(arr: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float64)
    if value_range is None:
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    else:
        lo, hi = value_range
    scaled = (np.nan_to_num(arr, nan=lo) - lo) / (hi - lo if hi > lo else 1.0)
    return np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def image_grid(
    images: torch.Tensor | np.ndarray | Sequence[Any],
    nrow: int = 8,
    labels: Sequence[str] | None = None,
    pad: int = 2,
    value_range: tuple[float, float] | None = (0.0, 1.0),
    label_height: int = 12,
) -> np.ndarray:
    """Tile images into one RGB uint8 array (for sample grids and reports).

    Args:
        images: [N, 1, H, W] / [N, H, W] tensor or array, or a list of [H, W], [1, H, W], [H, W, 3]
            images or PIL images (all the same size).
        nrow: images per row (as ``torchvision.utils.make_grid``).
        labels: optional caption per image, written in a strip above it.
        pad: pixels of black border between tiles.
        value_range: intensity mapped to black..white for float images (clipped); None scales
            each image by its own min..max. uint8 images are used as they are.
        label_height: height of the caption strip in pixels (when ``labels`` is given).

    Returns:
        uint8 array [H_grid, W_grid, 3].
    """
    seq = list(images)
    if not seq:
        raise ValueError("image_grid: no images given")
    if nrow < 1:
        raise ValueError(f"image_grid: nrow must be >= 1, got {nrow}")
    if labels is not None and len(labels) != len(seq):
        raise ValueError(f"image_grid: {len(seq)} images but {len(labels)} labels")
    tiles = []
    for img in seq:
        arr = _to_uint8(_to_hw_array(img), value_range)
        tiles.append(np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr)
    h, w = tiles[0].shape[:2]
    if any(t.shape[:2] != (h, w) for t in tiles):
        raise ValueError("image_grid: all images must have the same height and width")
    top = label_height if labels is not None else 0
    ncol = min(nrow, len(tiles))
    nrows = -(-len(tiles) // ncol)
    cell_h, cell_w = h + top + pad, w + pad
    grid = np.zeros((nrows * cell_h + pad, ncol * cell_w + pad, 3), dtype=np.uint8)
    for n, tile in enumerate(tiles):
        r, c = divmod(n, ncol)
        y0, x0 = r * cell_h + pad + top, c * cell_w + pad
        grid[y0 : y0 + h, x0 : x0 + w] = tile
    if labels is not None:
        canvas = Image.fromarray(grid)
        draw = ImageDraw.Draw(canvas)
        font = ImageFont.load_default(size=max(6, label_height - 2))
        for n, text in enumerate(labels):
            r, c = divmod(n, ncol)
            draw.text(
                (c * cell_w + pad, r * cell_h + pad), str(text), fill=(255, 255, 255), font=font
            )
        grid = np.asarray(canvas)
    return grid
