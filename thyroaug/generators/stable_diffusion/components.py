"""The parts of a Stable Diffusion model (diffusers' models and schedulers) and tensor helpers.

``SDComponents`` holds the five parts (``AutoencoderKL``, ``CLIPTextModel``, ``CLIPTokenizer``,
``UNet2DConditionModel``, a scheduler); ``load_components`` reads them from a local diffusers SD
directory (offline); ``build_vae`` / ``build_text_encoder`` / ``build_unet`` make the seeded random
parts of a scratch model; ``make_scheduler`` the inference scheduler. Also the image helpers that
training and sampling share (``to_unit``, ``to_model_pixels``, ``collapsed``).

diffusers and transformers (seconds to import) load inside the functions that need them, so that
these helpers, the source bank and ``train-sd --help`` do not pull them in.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from thyroaug.errors import ConfigError, GeneratorError
from thyroaug.generators.stable_diffusion.config import SDConfig

SD_DIR_PARTS: tuple[str, ...] = (
    "model_index.json",
    "unet",
    "vae",
    "text_encoder",
    "tokenizer",
    "scheduler",
)

# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Images as float32 [N, 1, S, S] clipped to [0, 1] (the cohort's range)."""
    x = torch.as_tensor(images).float()
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise GeneratorError(f"expected grayscale images [N, 1, S, S], got {tuple(x.shape)}")
    return x.clamp(0.0, 1.0)


def to_model_pixels(images01: torch.Tensor, channels: int) -> torch.Tensor:
    """[N, 1, H, W] in [0, 1] -> [N, channels, H, W] in [-1, 1] (what the VAE encodes)."""
    return images01.repeat(1, channels, 1, 1) * 2.0 - 1.0


def collapsed(images01: torch.Tensor, black_threshold: float, min_std: float) -> torch.Tensor:
    """Bool [N]: an output is black (max <= threshold), flat (std < min_std) or not finite."""
    flat = images01.reshape(images01.shape[0], -1).float()
    finite = torch.isfinite(flat).all(dim=1)
    safe = torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0)
    return ~finite | (safe.amax(dim=1) <= black_threshold) | (safe.std(dim=1) < min_std)


def to_cpu_fp32(module: torch.nn.Module) -> torch.nn.Module:
    """Move to CPU and cast to fp32 only where needed (saved weights are fp32)."""
    module.to("cpu")
    if any(p.dtype != torch.float32 for p in module.parameters()):
        module.to(dtype=torch.float32)
    return module


def check_sd_dir(path: str | os.PathLike) -> Path:
    """Return ``path`` if it is a diffusers SD directory (model_index.json + components)."""
    path = Path(path)
    missing = [p for p in SD_DIR_PARTS if not (path / p).exists()]
    if missing:
        raise ConfigError(
            f"{path} is not a diffusers Stable Diffusion directory (missing {', '.join(missing)}); "
            "point to a local save_pretrained folder such as SD v1.4 or a thyroaug-sd model"
        )
    return path


# --------------------------------------------------------------------------------------------
# the five parts
# --------------------------------------------------------------------------------------------


@dataclass
class SDComponents:
    """The five parts of a Stable Diffusion model."""

    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    scheduler: Any

    @property
    def image_channels(self) -> int:
        """Channels the VAE encodes (1 for a scratch model, 3 for SD v1.4)."""
        return int(self.vae.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """The pixel resolution the UNet was built / trained for."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def pipeline(self) -> Any:
        """A ``StableDiffusionPipeline`` over these components (no safety checker)."""
        from diffusers import StableDiffusionPipeline  # heavy: see the module docstring

        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def load_components(
    model_dir: str | os.PathLike, torch_dtype: torch.dtype | None = None
) -> SDComponents:
    """Load the five parts of a local diffusers SD directory (offline)."""
    # heavy: see the module docstring
    import diffusers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.schedulers import SchedulerMixin
    from transformers import CLIPTextModel, CLIPTokenizer

    path = check_sd_dir(model_dir)
    kw: dict[str, Any] = {"local_files_only": True}
    dkw = dict(kw, torch_dtype=torch_dtype) if torch_dtype is not None else kw
    index = json.loads((path / "model_index.json").read_text())
    sched_cls_name = (index.get("scheduler") or [None, "PNDMScheduler"])[1]
    sched_cls = getattr(diffusers, str(sched_cls_name), DDPMScheduler)
    if not (isinstance(sched_cls, type) and issubclass(sched_cls, SchedulerMixin)):
        sched_cls = DDPMScheduler
    return SDComponents(
        vae=AutoencoderKL.from_pretrained(path, subfolder="vae", **dkw),
        text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **dkw),
        tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **kw),
        unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet", **dkw),
        scheduler=sched_cls.from_pretrained(path, subfolder="scheduler", **kw),
    )


# --------------------------------------------------------------------------------------------
# schedulers
# --------------------------------------------------------------------------------------------


def sd_v1_scheduler_config() -> dict[str, Any]:
    """SD v1.x's noise schedule (scaled-linear betas 0.00085..0.012, 1000 steps, epsilon)."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "steps_offset": 1,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
    }


def make_scheduler(name: str, base: Any) -> Any:
    """The named inference scheduler built from ``base``'s config (``default`` keeps ``base``).

    Raises:
        ConfigError: an unknown name.
    """
    from diffusers import (  # heavy: see the module docstring
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
    )

    table = {
        "pndm": PNDMScheduler,
        "ddim": DDIMScheduler,
        "ddpm": DDPMScheduler,
        "euler": EulerDiscreteScheduler,
        "euler_a": EulerAncestralDiscreteScheduler,
        "dpm": DPMSolverMultistepScheduler,
    }
    if name == "default":
        return base
    if name not in table:
        raise ConfigError(f"unknown scheduler {name!r}; choose default or {', '.join(table)}")
    return table[name].from_config(base.config)


# --------------------------------------------------------------------------------------------
# the scratch latent-diffusion parts (random init, seeded)
# --------------------------------------------------------------------------------------------


def _groups(channels: Sequence[int]) -> int:
    return math.gcd(32, *[int(c) for c in channels])


def build_vae(cfg: SDConfig) -> Any:
    """A single-channel ``AutoencoderKL`` of the config's size (random init, seeded)."""
    from diffusers import AutoencoderKL  # heavy: see the module docstring

    torch.manual_seed(cfg.seed)
    n = len(cfg.vae_block_channels)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_block_channels),
        layers_per_block=cfg.vae_layers_per_block,
        latent_channels=cfg.vae_latent_channels,
        norm_num_groups=_groups(cfg.vae_block_channels),
        sample_size=cfg.resolution,
    )


def build_text_encoder(cfg: SDConfig, tokenizer: Any) -> Any:
    """A small ``CLIPTextModel`` sized to the tokenizer (random init, seeded)."""
    from transformers import CLIPTextConfig, CLIPTextModel  # heavy: see the module docstring

    torch.manual_seed(cfg.seed + 1)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden_size,
        intermediate_size=4 * cfg.text_hidden_size,
        projection_dim=cfg.text_hidden_size,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=int(tokenizer.model_max_length),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_unet(cfg: SDConfig, latent_size: int, latent_channels: int, cross_dim: int) -> Any:
    """A small ``UNet2DConditionModel`` (cross-attention in all but the deepest level)."""
    from diffusers import UNet2DConditionModel  # heavy: see the module docstring

    torch.manual_seed(cfg.seed + 2)
    n = len(cfg.unet_block_channels)
    down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(cfg.unet_block_channels),
        layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cross_dim,
        attention_head_dim=cfg.unet_attention_heads,
        norm_num_groups=_groups(cfg.unet_block_channels),
    )
