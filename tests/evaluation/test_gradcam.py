"""Grad-CAM: shapes, range, determinism, localisation, no side effects, no network."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from thyroaug.evaluation.gradcam import (
    default_target_layer,
    explain,
    gradcam,
    overlay_figure,
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
