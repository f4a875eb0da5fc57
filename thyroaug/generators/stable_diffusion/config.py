"""Configuration of the Stable Diffusion generator: paper defaults plus quick / smoke profiles.

Defaults are the authors' recipe (paper section 3.2.2 and their ``Train.sh`` /
``Inference_combined.py``). A model is fine-tuned from a local diffusers SD directory
(``finetune``, never downloaded) or built from the same diffusers classes and trained on the
cohort (``scratch``); ``auto`` picks ``finetune`` when a base model is given or found. The recipe
in full: docs/generators.md, "Recipe and sources".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from thyroaug.errors import ConfigError, GeneratorError

SOURCES: tuple[str, ...] = ("auto", "scratch", "finetune")
TEXT_ENCODER_TRAINING: tuple[str, ...] = ("auto", "frozen", "joint")
SCHEDULER_NAMES: tuple[str, ...] = ("default", "pndm", "ddim", "ddpm", "euler", "euler_a", "dpm")
MODES: tuple[str, ...] = ("SD1", "SD2", "SD3", "SD4")
"""The paper's four inference modes (``pipeline.SDGenerator``)."""
MODE_DESCRIPTIONS: dict[str, str] = {
    "SD1": "image + prompt -> image (img2img with the case's prompt)",
    "SD2": "prompt -> image (text-to-image)",
    "SD3": "image -> image (img2img, empty prompt)",
    "SD4": "mask + prompt -> image (img2img from the mask image)",
}


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is SD1..SD4, else raise GeneratorError."""
    if mode not in MODES:
        raise GeneratorError(f"unknown SD mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


@dataclass
class SDConfig:
    """Training and sampling settings of the Stable Diffusion generator (paper values)."""

    profile: str = "paper"
    # --- which model -------------------------------------------------------------------------
    source: str = "auto"
    """``auto`` | ``scratch`` | ``finetune``."""
    base_model: str = ""
    """Local diffusers SD directory to fine-tune (empty: ``THYROAUG_SD_BASE`` or scratch)."""
    # --- data ----------------------------------------------------------------------------------
    resolution: int = 128
    random_flip: bool = True
    train_split: str = "train"
    truncate_prompts: bool = False
    """Cut over-long prompts at the tokenizer limit (logged) instead of failing."""
    # --- UNet training: the authors' fine-tuning recipe --------------------------------------
    max_train_steps: int = 50_000
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 4
    learning_rate: float = 1e-5
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str = "fp16"
    """Used on a GPU only; CPU training runs in fp32."""
    use_ema: bool = True
    ema_decay: float = 0.9999
    prompt_dropout: float = 0.0
    """Probability of training on the empty prompt (0 as the authors; a scratch model needs > 0
    for classifier-free guidance and SD3, docs/generators.md)."""
    text_encoder_training: str = "auto"
    """``frozen`` (the authors' recipe), ``joint`` (trained with the UNet, same learning rate and
    EMA) or ``auto``: frozen for ``finetune``, joint for ``scratch``."""
    seed: int = 0
    checkpointing_steps: int = 5000
    checkpoints_total_limit: int = 2
    sample_every: int = 5000
    """Log a per-class SD2 sample grid every this many optimizer steps (0: only at the end)."""
    grid_per_class: int = 4
    # --- scratch components (ignored when fine-tuning) ---------------------------------------
    tokenizer_vocab_size: int = 2000
    text_hidden_size: int = 256
    text_layers: int = 4
    text_heads: int = 4
    vae_block_channels: tuple[int, ...] = (64, 128, 256, 256)
    vae_layers_per_block: int = 1
    vae_latent_channels: int = 4
    vae_steps: int = 20_000
    vae_batch_size: int = 16
    vae_learning_rate: float = 1e-4
    vae_kl_weight: float = 1e-6
    unet_block_channels: tuple[int, ...] = (128, 256, 512)
    unet_layers_per_block: int = 2
    unet_attention_heads: int = 8
    # --- inference (pipeline defaults, as the authors) ---------------------------------------
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    strength: float = 0.8
    """img2img strength for SD1, SD3, SD4 (diffusers' default, which the authors kept)."""
    scheduler: str = "default"
    """Sampler: ``default`` = the model directory's own (PNDM for SD v1.4), or one of
    pndm, ddim, ddpm, euler, euler_a, dpm (DPM-Solver++ multistep)."""
    per_class: int = 1000
    gen_batch_size: int = 16
    black_threshold: float = 5 / 255
    collapse_std: float = 1e-4
    max_retries: int = 3

    PROFILES: ClassVar[dict[str, dict]] = {
        # quick: sized with the 18-scenario demo's 15-minute budget on 2 CPU cores (README)
        "quick": {
            "resolution": 32,
            "max_train_steps": 240,
            "train_batch_size": 16,
            "gradient_accumulation_steps": 1,
            "learning_rate": 5e-4,
            "lr_warmup_steps": 20,
            "lr_scheduler": "constant_with_warmup",
            "ema_decay": 0.999,
            "prompt_dropout": 0.1,
            "checkpointing_steps": 100,
            "sample_every": 200,
            "tokenizer_vocab_size": 800,
            "text_hidden_size": 64,
            "text_layers": 2,
            "text_heads": 4,
            "vae_block_channels": (32, 64, 64),
            "vae_steps": 200,
            "vae_batch_size": 16,
            "vae_learning_rate": 1e-3,
            "unet_block_channels": (64, 128),
            "unet_layers_per_block": 1,
            "unet_attention_heads": 4,
            "num_inference_steps": 10,
            "per_class": 50,
            "gen_batch_size": 25,
        },
        "smoke": {
            "resolution": 32,
            "max_train_steps": 24,
            "train_batch_size": 4,
            "gradient_accumulation_steps": 2,
            "learning_rate": 1e-3,
            "ema_decay": 0.99,
            "prompt_dropout": 0.1,
            "checkpointing_steps": 16,
            "sample_every": 0,
            "grid_per_class": 2,
            "tokenizer_vocab_size": 600,
            "text_hidden_size": 32,
            "text_layers": 1,
            "text_heads": 2,
            "vae_block_channels": (16, 32, 32),
            "vae_steps": 20,
            "vae_batch_size": 8,
            "vae_learning_rate": 2e-3,
            "unet_block_channels": (32, 32),
            "unet_layers_per_block": 1,
            "unet_attention_heads": 2,
            "num_inference_steps": 3,
            "per_class": 2,
            "gen_batch_size": 8,
        },
    }

    def __post_init__(self) -> None:
        problems = []
        if self.source not in SOURCES:
            problems.append(f"source={self.source!r} (choose {', '.join(SOURCES)})")
        if self.text_encoder_training not in TEXT_ENCODER_TRAINING:
            problems.append(
                f"text_encoder_training={self.text_encoder_training!r} "
                f"(choose {', '.join(TEXT_ENCODER_TRAINING)})"
            )
        if self.scheduler not in SCHEDULER_NAMES:
            problems.append(f"scheduler={self.scheduler!r} (choose {', '.join(SCHEDULER_NAMES)})")
        if self.resolution % 8:
            problems.append(f"resolution={self.resolution} (must be a multiple of 8)")
        if not 0.0 < self.strength <= 1.0:
            problems.append(f"strength={self.strength} (must be in (0, 1])")
        if not 0.0 <= self.prompt_dropout < 1.0:
            problems.append(f"prompt_dropout={self.prompt_dropout} (must be in [0, 1))")
        for name in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (must be >= 1)")
        if self.num_inference_steps < 1 or self.per_class < 1 or self.gen_batch_size < 1:
            problems.append("num_inference_steps, per_class and gen_batch_size must be >= 1")
        if self.max_retries < 0:
            problems.append(f"max_retries={self.max_retries} (must be >= 0)")
        if problems:
            raise ConfigError("SDConfig: invalid " + "; ".join(problems))
