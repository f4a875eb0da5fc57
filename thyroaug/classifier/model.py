"""The paper's ResNet18 variant (Sec. 3.2.4) for one-channel 128 px scintigrams.

torchvision's ``resnet18`` with three changes:

* **First conv 3×3, stride 1, max-pool kept** (the paper's 3×3 kernel). ImageNet's 7×7/2 conv and
  max-pool would leave a 4×4 map at stage 4 of a 128 px input, losing the small nodules that
  separate NG from DG; stride 1 with the max-pool gives 8×8 (also the Grad-CAM resolution) for
  about 1.3× the compute of a 224 px ImageNet forward, while dropping the max-pool too (CIFAR
  style) costs 4× more for little gain (``conv1_stride``, ``keep_maxpool``). ImageNet weights: the
  centre 3×3 crop of the pretrained 7×7 kernel.
* **Grayscale input**: conv1 weights summed over the RGB channels, which equals the original conv
  on the gray image repeated three times.
* **Head**: ``Dropout(p) -> Linear(512, 4)`` (``thyroaug.CLASSES`` order), returning logits.

ImageNet weights come only from a local file (``thyroaug.config.local_weights``), never a download;
without one the model starts from random initialisation, with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18

from thyroaug.config import local_weights
from thyroaug.contract import CLASSES
from thyroaug.errors import ConfigError
from thyroaug.evaluation.gradcam import CamLayer, choose_layer

log = logging.getLogger(__name__)

WEIGHTS_ENV = "THYROAUG_RESNET18_WEIGHTS"
WEIGHTS_FILE = "resnet18-f37072fd.pth"
"""torchvision's ImageNet-1K (IMAGENET1K_V1) ResNet18 state dict file name."""


def find_weights() -> Path | None:
    """The local ImageNet ResNet18 weights file, or None (never downloads)."""
    return local_weights(WEIGHTS_ENV, WEIGHTS_FILE)


def build_resnet18(
    num_classes: int = len(CLASSES),
    *,
    init: str = "imagenet",
    conv1_stride: int = 1,
    keep_maxpool: bool = True,
    dropout: float = 0.2,
    weights_path: str | Path | None = None,
) -> tuple[nn.Module, bool]:
    """Build the paper's ResNet18 variant.

    Args:
        num_classes: output logits (4).
        init: ``imagenet`` (local weights if present, else random with a warning) or ``random``.
        conv1_stride: stride of the 3×3 first convolution.
        keep_maxpool: keep the 3×3/2 max-pool after conv1.
        dropout: dropout probability before the final linear layer.
        weights_path: explicit weights file (overrides the environment lookup).

    Returns:
        (model, pretrained) where ``pretrained`` says whether ImageNet weights were loaded.

    Raises:
        ConfigError: an unknown ``init`` or a weights file that does not fit ResNet18.
    """
    if init not in ("imagenet", "random"):
        raise ConfigError(f"init={init!r}: choose imagenet or random")
    model = resnet18(weights=None)
    pretrained = False
    path = Path(weights_path) if weights_path else (find_weights() if init == "imagenet" else None)
    if path is not None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:
            raise ConfigError(
                f"{path}: not a torchvision ResNet18 state dict ({exc}); point "
                f"{WEIGHTS_ENV} at resnet18-f37072fd.pth or unset it"
            ) from exc
        pretrained = True
        log.info("ResNet18 initialised from ImageNet weights %s", path)
    elif init == "imagenet":
        log.warning(
            "no local ImageNet ResNet18 weights (set %s or put %s in $THYROAUG_WEIGHTS_DIR): "
            "training from random initialisation, unlike the paper",
            WEIGHTS_ENV,
            WEIGHTS_FILE,
        )

    old = model.conv1.weight.detach()  # [64, 3, 7, 7]
    conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=conv1_stride, padding=1, bias=False)
    if pretrained:
        with torch.no_grad():
            conv1.weight.copy_(old[:, :, 2:5, 2:5].sum(dim=1, keepdim=True))
    else:  # torchvision's own init for ResNet convolutions
        nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
    model.conv1 = conv1
    if not keep_maxpool:
        model.maxpool = nn.Identity()
    model.fc = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(model.fc.in_features, num_classes))
    return model, pretrained


def gradcam_layer(model: nn.Module, image_size: int) -> CamLayer:
    """The ResNet stage Grad-CAM explains for ``image_size`` px inputs (``gradcam.choose_layer``).

    The deepest of ``layer1``..``layer4`` whose map is at least 8x8: with the 3x3/1 conv1 and the
    max-pool that is layer4 (8x8) at 128 px and layer2 (8x8) at 32 px, where layer4 is 2x2.
    """
    stages = {f"layer{i}": getattr(model, f"layer{i}") for i in range(1, 5)}
    probe = torch.zeros(1, model.conv1.in_channels, image_size, image_size)
    return choose_layer(model, stages, probe)
