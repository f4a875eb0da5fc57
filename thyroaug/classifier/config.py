"""Classifier settings: field defaults are the paper's (Sec. 3.2.4), profiles override a few.

Paper: ResNet18 from ImageNet-1K weights, first conv 3×3, head Dropout(0.2) + Linear(4); Adam
(lr 1e-4, weight decay 1e-5), cross-entropy, ReduceLROnPlateau on the validation loss (factor 0.8,
patience 10, min lr 2e-5), 300 epochs, 128×128 inputs, 1000 synthetic images per class per method,
1000 bootstrap resamples. The paper does not state the batch size; 32 is a common choice for
ResNet18 on a few thousand 128 px images (about 150 steps per epoch on the paper's 4500+ image
training sets, enough for the plateau scheduler to act on a smooth validation curve).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from thyroaug.errors import ConfigError

CHECKPOINT_METRICS: tuple[str, ...] = ("val_loss", "val_accuracy")
INITS: tuple[str, ...] = ("imagenet", "random")


@dataclass
class ClassifierConfig:
    """Everything a classifier run needs besides its data (all logged as MLflow params).

    Attributes:
        profile: the profile these values came from (set by ``thyroaug.config.resolve``).
        init: ``imagenet`` uses local ImageNet-1K ResNet18 weights when the file is present
            (``THYROAUG_RESNET18_WEIGHTS`` or ``$THYROAUG_WEIGHTS_DIR/resnet18-f37072fd.pth``)
            and random initialisation otherwise (with a warning); ``random`` never loads weights.
        conv1_stride: stride of the 3×3 first conv (1: see ``thyroaug.classifier.model``).
        keep_maxpool: keep ResNet's 3×3/2 max-pool after conv1.
        dropout: dropout before the final linear layer.
        lr: Adam learning rate.
        weight_decay: Adam weight decay (L2, as torch.optim.Adam applies it).
        epochs: training epochs.
        batch_size: training batch size (not in the paper; see the module docstring).
        eval_batch_size: batch size for validation / external inference.
        lr_factor / lr_patience / min_lr: ReduceLROnPlateau on the validation loss.
        checkpoint_metric: which validation number picks the kept (best) epoch.
        image_size: input side length; larger cohorts are resized once at load (antialiased
            bilinear), smaller ones are used at their own size.
        per_class_synthetic: images per class taken from each synthetic set and made by CA.
        seed: seeds weights init (when random), batch order, dropout, CA and subsets.
        bootstrap: bootstrap resamples of the external set.
        gradcam_per_class: external images per class in the Grad-CAM figure.
        num_threads: torch intra-op threads (0: leave torch's default).
        channels_last: NHWC memory format (faster for convolutions on CPU; see bench/classifier.py).
        deterministic: ``torch.use_deterministic_algorithms`` while training.
        device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``.
    """

    profile: str = "paper"
    init: str = "imagenet"
    conv1_stride: int = 1
    keep_maxpool: bool = True
    dropout: float = 0.2
    lr: float = 1e-4
    weight_decay: float = 1e-5
    epochs: int = 300
    batch_size: int = 32
    eval_batch_size: int = 128
    lr_factor: float = 0.8
    lr_patience: int = 10
    min_lr: float = 2e-5
    checkpoint_metric: str = "val_loss"
    image_size: int = 128
    per_class_synthetic: int = 1000
    seed: int = 0
    bootstrap: int = 1000
    gradcam_per_class: int = 4
    num_threads: int = 0
    channels_last: bool = True
    deterministic: bool = True
    device: str = "auto"

    PROFILES: ClassVar[dict[str, dict[str, object]]] = {
        # quick: sized so that all 18 scenarios fit the demo's 15 minutes on 2 CPU cores
        # (measurements in README.md); 32 px keeps O informative on the phantom (macro-F1 ~0.69)
        "quick": {
            "image_size": 32,
            "epochs": 8,
            "per_class_synthetic": 80,
            "bootstrap": 200,
            "gradcam_per_class": 2,
        },
        # smoke: tests, seconds; one torch thread (tiny batches gain nothing from more, and on a
        # shared machine extra OpenMP threads wait on each other)
        "smoke": {
            "image_size": 32,
            "epochs": 2,
            "batch_size": 16,
            "per_class_synthetic": 8,
            "bootstrap": 50,
            "gradcam_per_class": 1,
            "num_threads": 1,
        },
    }

    def __post_init__(self) -> None:
        problems = []
        if self.init not in INITS:
            problems.append(f"init={self.init!r} (choose {', '.join(INITS)})")
        if self.checkpoint_metric not in CHECKPOINT_METRICS:
            problems.append(
                f"checkpoint_metric={self.checkpoint_metric!r} "
                f"(choose {', '.join(CHECKPOINT_METRICS)})"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"device={self.device!r} (choose auto, cpu, cuda)")
        for name in (
            "epochs",
            "batch_size",
            "eval_batch_size",
            "image_size",
            "conv1_stride",
            "per_class_synthetic",
        ):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)} (must be >= 1)")
        for name in ("bootstrap", "gradcam_per_class", "num_threads"):
            if int(getattr(self, name)) < 0:
                problems.append(f"{name}={getattr(self, name)} (must be >= 0)")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout={self.dropout} (must be in [0, 1))")
        if self.lr <= 0 or self.min_lr < 0 or not 0 < self.lr_factor < 1:
            problems.append(
                f"lr={self.lr}, min_lr={self.min_lr}, lr_factor={self.lr_factor} "
                "(need lr > 0, min_lr >= 0, 0 < lr_factor < 1)"
            )
        if problems:
            raise ConfigError("ClassifierConfig: invalid " + "; ".join(problems))
