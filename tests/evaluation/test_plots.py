"""Figures are written atomically as valid PNGs; image grids tile pixels exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from thyroaug.evaluation.bootstrap import bootstrap
from thyroaug.evaluation.metrics import confusion
from thyroaug.evaluation.paper_method import compare_distributions
from thyroaug.evaluation.plots import (
    _format_p,
    _paired_matrices,
    image_grid,
    plot_bootstrap,
    plot_confusion,
    plot_paired_heatmap,
    plot_roc,
    plot_significance_heatmap,
    save_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path, min_side: int = 200) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert min(img.size) >= min_side
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


def _probs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def test_confusion_and_roc_pngs(tmp_path: Path) -> None:
    y, p = _probs(60)
    out = plot_confusion(confusion(y, p.argmax(1)), tmp_path / "sub" / "cm.png", "O+FM")
    assert out == tmp_path / "sub" / "cm.png"
    _assert_png(out)
    _assert_png(plot_confusion(confusion(y, p.argmax(1)), tmp_path / "cmn.png", normalize=True))
    _assert_png(plot_roc(y, p, tmp_path / "roc.png", title="external"))
    # a class absent from y_true still plots (listed as undefined)
    keep = y != 2
    _assert_png(plot_roc(y[keep], p[keep], tmp_path / "roc_absent.png"))
    with pytest.raises(ValueError, match="4x4"):
        plot_confusion(np.zeros((3, 3)), tmp_path / "bad.png")


def test_significance_heatmap_18_models(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = [f"M{i}" for i in range(17)] + ["O+SD1+CA"]
    dists = {n: rng.normal(0.6 + 0.01 * i, 0.02, 200) for i, n in enumerate(names)}
    res = compare_distributions(dists, metric="accuracy")
    out = plot_significance_heatmap(res, tmp_path / "heat.png", title="")
    _assert_png(out, min_side=1000)  # large enough to read 18 x 18 annotated cells


def test_significance_heatmap_missing_scenarios_are_grey(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    res = compare_distributions({n: rng.normal(0.6, 0.02, 100) for n in ("O", "CA")})
    out = plot_significance_heatmap(
        res, tmp_path / "heat.png", order=["O", "FM", "CA"], status={"FM": "missing"}
    )
    _assert_png(out)


def _fake_paired(names: list[str], seed: int = 0) -> pd.DataFrame:
    """A ``paired_comparisons``-shaped frame (accuracy rows only) without running the tests."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            d = float(rng.normal(0, 0.05))
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "metric": "accuracy",
                    "diff": d,
                    "ci_low": d - 0.06,
                    "ci_high": d + 0.06,
                    "significant": abs(d) > 0.06,
                }
            )
    return pd.DataFrame(rows)


def test_paired_matrices_are_row_minus_column() -> None:
    paired = pd.DataFrame(
        {
            "a": ["O"],
            "b": ["O+FM"],
            "metric": ["accuracy"],
            "diff": [0.03],
            "ci_low": [-0.01],
            "ci_high": [0.07],
            "significant": [True],
        }
    )
    d, lo, hi, sig = _paired_matrices(paired, ["O", "O+FM", "CA"], "accuracy")
    assert d[1, 0] == pytest.approx(0.03) and (lo[1, 0], hi[1, 0]) == (-0.01, 0.07)
    assert d[0, 1] == pytest.approx(-0.03) and (lo[0, 1], hi[0, 1]) == (-0.07, 0.01)
    assert sig[0, 1] and sig[1, 0] and not sig[2].any()
    assert np.isnan(d[2]).all() and np.isnan(d[:, 2]).all()  # CA: no pair -> grey


@pytest.mark.parametrize("m", [2, 18])
def test_paired_heatmap_2_to_18_scenarios(tmp_path: Path, m: int) -> None:
    names = [f"S{i}" for i in range(m)]
    tested = names[:-1] if m > 2 else names  # the last one missing when there are many
    out = plot_paired_heatmap(
        _fake_paired(tested),
        tmp_path / "paired.png",
        names=names,
        status={names[-1]: "missing"} if m > 2 else None,
    )
    _assert_png(out, min_side=600 if m == 2 else 1800)


def test_bootstrap_plots(tmp_path: Path) -> None:
    y, p = _probs(50)
    df = bootstrap(y, p, n_resamples=100, seed=0)
    _assert_png(plot_bootstrap(df, tmp_path / "hist.png"))
    dists = {"O": df["accuracy"].to_numpy(), "O+FM": df["accuracy"].to_numpy() + 0.05}
    _assert_png(plot_bootstrap(dists, tmp_path / "box.png", title="accuracy"))


def test_save_figure_failure_leaves_nothing(tmp_path: Path) -> None:
    fig = Figure()
    fig.subplots().plot([0, 1])
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "x.unknownformat")
    assert list(tmp_path.iterdir()) == []


def test_format_p() -> None:
    assert _format_p(0.5) == "0.50"
    assert _format_p(0.0496) == "0.0496"
    assert _format_p(3.2e-7) == "3e-7"
    assert _format_p(0.0) == "<1e-99" and _format_p(1e-150) == "<1e-99"
    assert _format_p(float("nan")) == ""


def test_image_grid_tiles_exact_pixels() -> None:
    rng = np.random.default_rng(0)
    imgs = torch.from_numpy(rng.random((7, 1, 8, 6)).astype(np.float32))
    grid = image_grid(imgs, nrow=3, pad=2)
    assert grid.dtype == np.uint8 and grid.shape == (3 * 10 + 2, 3 * 8 + 2, 3)
    # image 4 sits in row 1, column 1
    tile = grid[10 + 2 : 10 + 2 + 8, 8 + 2 : 8 + 2 + 6]
    np.testing.assert_array_equal(tile[..., 0], np.round(imgs[4, 0].numpy() * 255).astype(np.uint8))
    np.testing.assert_array_equal(tile[..., 0], tile[..., 2])
    assert grid[:2].max() == 0  # padding stays black

    scaled = image_grid(imgs[:2] * 4 - 1, nrow=2, value_range=None)
    assert scaled.max() == 255 and scaled[2:10, 2:8].min() == 0


def test_image_grid_labels_and_mixed_inputs() -> None:
    items = [np.zeros((8, 8)), np.ones((1, 8, 8)), np.full((8, 8, 3), 128, dtype=np.uint8)]
    items.append(Image.fromarray(np.full((8, 8), 255, dtype=np.uint8)))
    plain = image_grid(items, nrow=4)
    labelled = image_grid(items, nrow=4, labels=["DG", "NG", "NL", "TI"], label_height=12)
    assert labelled.shape[0] == plain.shape[0] + 12
    assert labelled[: 2 + 12].max() > 200  # text drawn in the caption strip
    assert plain[2:10, 2 + 2 * 10 : 10 + 2 * 10].min() == 128
    with pytest.raises(ValueError, match="labels"):
        image_grid(items, labels=["a"])
    with pytest.raises(ValueError, match="same height"):
        image_grid([np.zeros((8, 8)), np.zeros((9, 8))])
    with pytest.raises(ValueError, match="no images"):
        image_grid([])
