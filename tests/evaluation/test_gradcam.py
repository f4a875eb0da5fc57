"""Grad-CAM: shapes, range, determinism, localisation, no side effects, no network; the layer
rule, the fixed external cases, the saved maps and the two-run comparison panel."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from thyroaug.classifier.config import ClassifierConfig
from thyroaug.classifier.evaluate import _write_gradcam
from thyroaug.classifier.model import build_resnet18, gradcam_layer
from thyroaug.config import resolve
from thyroaug.contract import CLASSES
from thyroaug.data.cohort import PreparedCohort
from thyroaug.evaluation.gradcam import (
    CAMS_ARTIFACT,
    CamSet,
    check_same_cases,
    choose_layer,
    comparison_figure,
    comparison_panel,
    default_target_layer,
    explain,
    gradcam,
    load_cams,
    load_pair,
    overlay_figure,
    save_cams,
    select_cases,
    select_per_class,
)


def _resnet(in_channels: int = 3) -> nn.Module:
    """torchvision ResNet18 (random weights) with the paper's 3x3 first convolution."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    return model


class _GrayWrapper(nn.Module):
    """Feeds a 1-channel scan to a 3-channel backbone by repeating it inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = _resnet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x.repeat(1, 3, 1, 1))


class _BlobNet(nn.Module):
    """Box blur, ReLU, global mean, fixed head: class 0 likes brightness, class 1 hates it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        self.head = nn.Linear(1, 4, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 9)
            self.head.weight.copy_(torch.tensor([[1.0], [-1.0], [0.5], [0.2]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _images(n: int = 4, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1))


def test_resnet18_gray_repeated_shape_range_determinism() -> None:
    model = _resnet()
    model.train()
    x = _images()
    first = gradcam(model, x, model.layer4[-1], channels=3)
    second = gradcam(model, x, model.layer4[-1], channels=3)
    assert first.shape == (4, 32, 32) and first.dtype == np.float32
    assert np.isfinite(first).all() and first.min() >= 0 and first.max() <= 1
    assert first.max() > 0.99  # each non-empty map is scaled to [0, 1]
    np.testing.assert_array_equal(first, second)
    # no side effects: mode restored, hooks removed, gradients cleared
    assert model.training
    assert not model.layer4[-1]._forward_hooks
    assert all(p.grad is None for p in model.parameters())


def test_wrapper_model_default_layer_and_targets() -> None:
    model = _GrayWrapper().eval()
    x = _images(3)
    assert default_target_layer(model) is model.backbone.layer4[-1]
    res = explain(model, x)
    assert res.cams.shape == (3, 32, 32) and res.probs.shape == (3, 4)
    np.testing.assert_allclose(res.probs.sum(axis=1), 1, atol=1e-5)
    with torch.no_grad():
        logits = model(x)
    np.testing.assert_array_equal(res.targets, logits.argmax(1).numpy())
    np.testing.assert_allclose(res.probs, torch.softmax(logits, 1).numpy(), atol=1e-5)
    fixed = explain(model, x, target_classes=2)
    np.testing.assert_array_equal(fixed.targets, [2, 2, 2])
    per_image = explain(model, x, target_classes=[0, 1, 3], batch_size=2)
    np.testing.assert_array_equal(per_image.targets, [0, 1, 3])
    assert not model.training


def test_cam_peaks_at_planted_blob() -> None:
    model = _BlobNet()
    for p in model.parameters():  # frozen weights must still give maps
        p.requires_grad_(False)
    yy, xx = np.mgrid[0:32, 0:32]
    img = 0.05 * np.random.default_rng(0).random((32, 32))
    img[(yy - 22) ** 2 + (xx - 9) ** 2 <= 9] = 1.0
    x = torch.from_numpy(img.astype(np.float32))[None, None]
    with torch.no_grad():  # the caller's no_grad does not break Grad-CAM
        cam = gradcam(model, x, model.conv, target_classes=[0])[0]
    peak = np.unravel_index(cam.argmax(), cam.shape)
    assert abs(peak[0] - 22) <= 2 and abs(peak[1] - 9) <= 2
    assert cam[22, 9] > 0.9 and cam[2, 30] < 0.2
    # class 1 has only negative evidence from brightness: its map stays all zero
    assert gradcam(model, x, model.conv, target_classes=[1]).max() == 0


def test_no_network_access(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    cams = gradcam(_BlobNet(), _images(2), target_classes=[0, 0])
    assert cams.shape == (2, 32, 32)


def test_invalid_arguments() -> None:
    model = _BlobNet()
    with pytest.raises(ValueError, match="target classes"):
        gradcam(model, _images(2), model.conv, target_classes=[0, 1, 2])
    with pytest.raises(ValueError, match="output size"):
        gradcam(model, _images(2), model.conv, target_classes=[0, 7])
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        gradcam(model, torch.rand(32, 32), model.conv)
    with pytest.raises(ValueError, match="Conv2d"):
        default_target_layer(nn.Linear(2, 2))
    assert not model.conv._forward_hooks


def test_select_per_class() -> None:
    labels = np.array([0, 1, 0, 2, 0, 1, 3])
    np.testing.assert_array_equal(select_per_class(labels, 2), [0, 2, 1, 5, 3, 6])
    a = select_per_class(labels, 1, seed=5)
    np.testing.assert_array_equal(a, select_per_class(labels, 1, seed=5))
    assert sorted(labels[a].tolist()) == [0, 1, 2, 3]


def test_overlay_figure_png(tmp_path: Path) -> None:
    model = _BlobNet()
    x = _images(6)
    res = explain(model, x)
    true = np.array([0, 1, 2, 3, 0, 1])
    out = overlay_figure(x, res.cams, true, res.targets, tmp_path / "gradcam.png", n_per_class=2)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as img:
        assert min(img.size) > 300
    with pytest.raises(ValueError, match="must agree"):
        overlay_figure(x, res.cams[:2], true, res.targets, tmp_path / "bad.png")


def _paper_resnet(seed: int = 0) -> nn.Module:
    """``build_resnet18`` (3x3/1 conv1, max-pool kept), random weights, eval mode."""
    torch.manual_seed(seed)
    return build_resnet18(init="random")[0].eval()


@pytest.mark.parametrize(
    ("size", "layer", "map_size"),
    [
        (128, "layer4", (8, 8)),
        (64, "layer3", (8, 8)),
        (32, "layer2", (8, 8)),
        (8, "layer1", (4, 4)),
    ],
)
def test_layer_rule_deepest_stage_with_an_8x8_map(size: int, layer: str, map_size: tuple) -> None:
    model = _paper_resnet().train()
    before = model.bn1.running_mean.clone()
    chosen = gradcam_layer(model, size)
    assert (chosen.name, chosen.map_size, chosen.input_size) == (layer, map_size, (size, size))
    assert chosen.module is getattr(model, layer) and chosen.note == ""
    # the probe pass leaves the model as it was: mode, batch-norm statistics, hooks
    assert model.training and torch.equal(model.bn1.running_mean, before)
    assert not any(m._forward_hooks for m in model.modules())
    cams = explain(model, _images(1, size), chosen.module)
    assert cams.map_size == map_size and cams.cams.shape == (1, size, size)


def test_layer_rule_falls_back_to_the_largest_map_and_says_it_is_coarse() -> None:
    model = _paper_resnet()
    chosen = gradcam_layer(model, 4)  # every stage is 2x2 or smaller
    assert chosen.name == "layer1" and chosen.map_size == (2, 2)
    assert "too coarse" in chosen.note and "2x2" in chosen.note
    stages = {"layer3": model.layer3, "layer4": model.layer4}
    assert choose_layer(model, stages, torch.zeros(1, 1, 32, 32)).name == "layer3"
    with pytest.raises(ValueError, match="not used"):
        choose_layer(model, {"fc_in": nn.Conv2d(1, 1, 1)}, torch.zeros(1, 1, 32, 32))


def test_upsampled_map_is_smooth_not_blocky() -> None:
    """Bilinear upsampling: an 8x8 map on 32 px has no 4x4 pixel plateaus."""
    model = _paper_resnet()
    cams = explain(model, _images(2), gradcam_layer(model, 32).module, target_classes=[0, 1]).cams
    assert len(np.unique(cams[0])) > 8 * 8


def _external(tiny_cohort: PreparedCohort, order: np.ndarray | None = None) -> PreparedCohort:
    ext = tiny_cohort.subset("external")
    return ext if order is None else ext.subset(order)


def test_cases_are_fixed_by_case_id_whatever_the_order_seed_and_prediction(
    tiny_cohort: PreparedCohort, tmp_path: Path
) -> None:
    ext = _external(tiny_cohort)
    ids, y = ext.table["case_id"].to_numpy(), ext.labels.numpy()
    pick = select_cases(ids, y, 2)
    assert [CLASSES[c] for c in y[pick]] == [c for c in CLASSES for _ in range(2)]
    assert ids[pick].tolist() == ["GDG000", "GDG001", "GNG000", "GNG001",
                                  "GNL000", "GNL001", "GTI000", "GTI001"]  # fmt: skip
    order = np.random.default_rng(3).permutation(len(ext))
    assert ids[order][select_cases(ids[order], y[order], 2)].tolist() == ids[pick].tolist()

    cfg = resolve(ClassifierConfig, "smoke", gradcam_per_class=2)
    rng = np.random.default_rng(0)
    sets = []
    for k, (seed, cohort) in enumerate([(0, ext), (1, _external(tiny_cohort, order))]):
        probs = rng.dirichlet(np.ones(4), size=len(cohort)).astype(np.float32)
        files = _write_gradcam(_paper_resnet(seed), cohort, probs, cfg, tmp_path / str(k), "O")
        assert files["gradcam"].name == "gradcam.png" and files["gradcam"].exists()
        assert files["gradcam_data"] == tmp_path / str(k) / CAMS_ARTIFACT
        sets.append(load_cams(files["gradcam_data"]))
    a, b = sets
    assert a.case_ids.tolist() == ids[pick].tolist()
    check_same_cases(a, b)  # same cases, scans and labels; other model, other predictions
    np.testing.assert_array_equal(a.images, b.images)
    assert (a.layer, a.map_size, a.note, a.scenario) == ("layer2", (8, 8), "", "O")
    np.testing.assert_array_equal(a.target, a.pred)
    assert not np.array_equal(a.cams, b.cams)


def _camset(ids: list[str], true: list[int], seed: int = 0, **kw: object) -> CamSet:
    rng = np.random.default_rng(seed)
    n = len(ids)
    return CamSet(
        case_ids=ids,
        true=true,
        pred=rng.integers(0, 4, n),
        target=rng.integers(0, 4, n),
        probs=rng.dirichlet(np.ones(4), n),
        images=rng.random((n, 16, 16)),
        cams=rng.random((n, 16, 16)),
        layer="layer2",
        map_size=(8, 8),
        **kw,
    )


def test_cams_npz_round_trip(tmp_path: Path) -> None:
    cams = _camset(["b", "a", "c"], [0, 1, 3], scenario="O+FM", note="coarse")
    path = save_cams(cams, tmp_path / "gradcam" / "cams.npz")
    back = load_cams(path)
    for key in ("case_ids", "true", "pred", "target", "probs", "images", "cams"):
        np.testing.assert_array_equal(getattr(back, key), getattr(cams, key))
    assert (back.layer, back.map_size, back.scenario, back.note) == (
        "layer2",
        (8, 8),
        "O+FM",
        "coarse",
    )
    assert back.classes == tuple(CLASSES)
    with np.load(path, allow_pickle=False) as raw:  # plain arrays, nothing pickled
        assert raw["cams"].dtype == np.float32 and raw["true"].dtype == np.int64
        assert raw["case_ids"].dtype.kind == "U" and raw["map_size"].tolist() == [8, 8]
    np.savez(tmp_path / "other.npz", cams=cams.cams)
    with pytest.raises(ValueError, match="not a Grad-CAM set"):
        load_cams(tmp_path / "other.npz")


def test_comparison_panel_one_row_per_case_and_refuses_other_cases(tmp_path: Path) -> None:
    ids, true = ["c1", "c2", "c3", "c4", "c5"], [0, 1, 2, 3, 0]
    a, b = _camset(ids, true, 0, scenario="O"), _camset(ids, true, 1, scenario="O+FM")
    fig = comparison_figure(a, b)
    assert len(fig.axes) == 4 * 3  # one row per class (first case by id), scan + two overlays
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "c1: true DG" and titles[3] == "c2: true NG"
    assert titles[1] == f"O: pred {CLASSES[a.pred[0]]}"
    assert titles[2] == f"O+FM: pred {CLASSES[b.pred[0]]}"
    assert len(comparison_figure(a, b, per_class=2).axes) == 5 * 3
    out = comparison_panel(a, b, tmp_path / "panel.png", labels=("A", "B"))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    save_cams(a, tmp_path / "a.npz")
    save_cams(_camset(["c1", "c2", "c3", "c4", "x9"], true, 1), tmp_path / "b.npz")
    with pytest.raises(ValueError, match=r"different external cases.*\['c5'\].*\['x9'\]"):
        load_pair(tmp_path / "a.npz", tmp_path / "b.npz")
    with pytest.raises(ValueError, match="different external cases"):
        comparison_figure(a, _camset(ids[::-1], true[::-1]))
    small = _camset(ids, true)
    small.cams, small.images = small.cams[:, :8, :8], small.images[:, :8, :8]
    with pytest.raises(ValueError, match="image size"):
        comparison_figure(a, small)


def test_maps_of_a_model_are_reproducible() -> None:
    x = _images(3)
    first = explain(_paper_resnet(), x, target_classes=[0, 2, 3])
    again = _paper_resnet()
    second = explain(again, x, gradcam_layer(again, 32).module, target_classes=[0, 2, 3])
    third = explain(again, x, gradcam_layer(again, 32).module, target_classes=[0, 2, 3])
    np.testing.assert_array_equal(second.cams, third.cams)
    assert first.map_size == (2, 2) and second.map_size == (8, 8)  # default layer4 vs the rule
    assert second.cams.max() > 0.99
