"""Configuration of the flow-matching generator: paper defaults plus quick / smoke profiles.

Defaults (profile ``paper``) are the paper's section 3.2.3 and the MOTFM network it cites (71.2 M +
31.2 M parameters); values the paper does not state are marked "ours". The profiles' sizes:
docs/generators.md, "Configuration".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from thyroaug.contract import CLASSES
from thyroaug.errors import ConfigError

CONDITIONING_MODES: tuple[str, ...] = ("class+mask", "class", "mask", "none")
"""``class+mask`` (the paper's), ``class`` (cross-attention only), ``mask`` (ControlNet only),
``none`` (unconditional)."""

SOLVERS: tuple[str, ...] = ("euler", "midpoint", "rk4", "dopri5")
MIXED_PRECISION: tuple[str, ...] = ("bf16", "fp16", "no")


@dataclass
class FMConfig:
    """Network, training and sampling settings of the flow-matching generator."""

    profile: str = "paper"
    # --- data ----------------------------------------------------------------------------------
    image_size: int = 128
    """Side length the net sees; the cohort is resized once at load if it differs."""
    conditioning: str = "class+mask"
    """One of ``CONDITIONING_MODES``."""
    # --- network (MONAI DiffusionModelUNet / ControlNet, MOTFM layout) -----------------------
    channels: tuple[int, ...] = (32, 64, 128, 224, 256)
    attention_levels: tuple[bool, ...] = (False, False, False, True, True)
    num_head_channels: tuple[int, ...] = (32, 64, 128, 224, 256)
    num_res_blocks: int = 2
    transformer_num_layers: int = 4
    norm_num_groups: int = 32
    resblock_updown: bool = True
    conditioning_embedding_channels: tuple[int, ...] = (16,)
    use_flash_attention: bool = True
    """MONAI's switch for ``torch.nn.functional.scaled_dot_product_attention`` (paper: flash
    attention). Works on CPU too."""
    max_timestep: int = 1000
    """Continuous t in [0, 1] is scaled to [0, max_timestep - 1] for the sinusoidal embedding."""
    # --- training ------------------------------------------------------------------------------
    epochs: int = 200
    batch_size: int = 16
    """Ours: the paper does not give one (MOTFM's public configs use 1)."""
    lr: float = 1e-4
    ema_decay: float = 0.999
    """Ours: EMA of the weights with warm-up min(decay, (1+n)/(10+n)); EMA weights are sampled."""
    grad_clip: float = 1.0
    """Ours: max global gradient norm (0 disables)."""
    mixed_precision: str = "bf16"
    """Autocast dtype on CUDA (``bf16`` / ``fp16`` / ``no``); CPU always trains in fp32."""
    checkpoint_every: int = 10
    sample_every: int = 10
    """Log a sample grid to MLflow every this many epochs (and after the last)."""
    grid_per_class: int = 4
    seed: int = 0
    # --- sampling ------------------------------------------------------------------------------
    solver: str = "euler"
    steps: int = 10
    max_count: int = 64
    """Largest number of images one serving request may ask for."""

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {  # 32 px: the quick classifier's input size (sets are never upsampled)
            "image_size": 32,
            "channels": (16, 32, 64),
            "attention_levels": (False, False, True),
            "num_head_channels": (16, 32, 64),
            "num_res_blocks": 1,
            "transformer_num_layers": 1,
            "norm_num_groups": 8,
            "epochs": 6,
            "batch_size": 16,
            "lr": 3e-4,
            "ema_decay": 0.99,
            "checkpoint_every": 2,
            "sample_every": 5,
        },
        "smoke": {
            "image_size": 32,
            "channels": (8, 16),
            "attention_levels": (False, True),
            "num_head_channels": (16, 16),
            "num_res_blocks": 1,
            "transformer_num_layers": 1,
            "norm_num_groups": 8,
            "conditioning_embedding_channels": (8,),
            "epochs": 2,
            "batch_size": 8,
            "lr": 2e-3,
            "ema_decay": 0.9,
            "checkpoint_every": 1,
            "sample_every": 1,
            "grid_per_class": 2,
            "max_count": 8,
        },
    }

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        self.num_head_channels = tuple(int(c) for c in self.num_head_channels)
        self.conditioning_embedding_channels = tuple(
            int(c) for c in self.conditioning_embedding_channels
        )
        problems = []
        if self.conditioning not in CONDITIONING_MODES:
            problems.append(
                f"conditioning={self.conditioning!r}: choose one of {', '.join(CONDITIONING_MODES)}"
            )
        if self.solver not in SOLVERS:
            problems.append(f"solver={self.solver!r}: choose one of {', '.join(SOLVERS)}")
        if self.mixed_precision not in MIXED_PRECISION:
            problems.append(
                f"mixed_precision={self.mixed_precision!r}: choose one of "
                f"{', '.join(MIXED_PRECISION)}"
            )
        n = len(self.channels)
        if len(self.attention_levels) != n or len(self.num_head_channels) != n:
            problems.append(
                "channels, attention_levels and num_head_channels need one entry per level "
                f"(got {n}, {len(self.attention_levels)}, {len(self.num_head_channels)})"
            )
        if any(c % self.norm_num_groups for c in self.channels):
            problems.append(
                f"every channel count must be a multiple of norm_num_groups={self.norm_num_groups}"
            )
        factor = 2 ** (n - 1)
        if self.image_size % factor:
            problems.append(
                f"image_size={self.image_size} must be divisible by {factor} ({n} levels)"
            )
        for name in ("epochs", "batch_size", "steps", "checkpoint_every", "sample_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay={self.ema_decay} must be in [0, 1)")
        if problems:
            raise ConfigError("FMConfig: " + "; ".join(problems))

    @property
    def uses_class(self) -> bool:
        """Whether the class enters through cross-attention."""
        return "class" in self.conditioning

    @property
    def uses_mask(self) -> bool:
        """Whether the mask enters through the ControlNet branch."""
        return "mask" in self.conditioning

    def unet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by MONAI's DiffusionModelUNet and ControlNet."""
        return {
            "spatial_dims": 2,
            "in_channels": 1,
            "num_res_blocks": self.num_res_blocks,
            "channels": self.channels,
            "attention_levels": self.attention_levels,
            "norm_num_groups": self.norm_num_groups,
            "resblock_updown": self.resblock_updown,
            "num_head_channels": self.num_head_channels,
            "transformer_num_layers": self.transformer_num_layers,
            "with_conditioning": self.uses_class,
            "cross_attention_dim": len(CLASSES) if self.uses_class else None,
            "use_flash_attention": self.use_flash_attention,
        }
