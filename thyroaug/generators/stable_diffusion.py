"""Stable Diffusion generator: fine-tune (or build and train) a latent diffusion model, then sample.

Everything is made of diffusers / transformers parts (``AutoencoderKL``, ``UNet2DConditionModel``,
``CLIPTextModel`` + ``CLIPTokenizer``, a scheduler, ``StableDiffusionPipeline`` and
``StableDiffusionImg2ImgPipeline``) and a trained model is saved with ``save_pretrained``, so it is
itself a local SD directory that ``StableDiffusionPipeline.from_pretrained(dir,
safety_checker=None, local_files_only=True)`` loads and that a later ``finetune`` can start from.

Training (``train_sd``) follows diffusers' ``train_text_to_image.py`` as the authors ran it: VAE and
(by default) text encoder frozen, noise-prediction MSE on VAE latents, DDPM noise schedule, AdamW,
gradient accumulation and clipping through ``accelerate``, EMA of the UNet
(``diffusers.training_utils.EMAModel``) whose weights are the ones saved. The ``scratch`` source
first trains the VAE (L1 reconstruction + a small KL term; no perceptual/GAN loss) and a tokenizer
on the cohort, and (``text_encoder_training="auto"``) trains the small text encoder jointly.

Sampling (``SDGenerator``) runs the paper's four modes:
  SD1  image + prompt -> image   img2img from the case image with the case's prompt
  SD2  prompt -> image           text-to-image with the case's prompt
  SD3  image -> image            img2img from the case image with the empty prompt
  SD4  mask + prompt -> image    img2img from the case's mask (as an image) with its prompt
Outputs whose brightest pixel is at most ``black_threshold`` (or that are flat / not finite) are
regenerated with a new seed up to ``max_retries`` times, as the authors did.

Images: the prepared cohort's intensity range is taken as [0, 1] (values outside are clipped);
the grayscale image is repeated to the VAE's input channels (3 for SD v1.4) and scaled to
[-1, 1]; outputs are averaged over channels and resized to the requested size.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from thyroaug import CLASSES
from thyroaug.config import local_weights, to_dict
from thyroaug.errors import ConfigError, GeneratorError, PromptError
from thyroaug.generators.base import GeneratedBatch, label_index
from thyroaug.generators.sd_config import SDConfig
from thyroaug.generators.sd_tokenizer import MODEL_MAX_LENGTH, check_prompts, train_clip_tokenizer

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("SD1", "SD2", "SD3", "SD4")
MODE_DESCRIPTIONS: dict[str, str] = {
    "SD1": "image + prompt -> image (img2img with the case's prompt)",
    "SD2": "prompt -> image (text-to-image)",
    "SD3": "image -> image (img2img, empty prompt)",
    "SD4": "mask + prompt -> image (img2img from the mask image)",
}
MODEL_CARD_FILE = "thyroaug_sd.json"
BASE_MODEL_ENV = "THYROAUG_SD_BASE"


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is SD1..SD4, else raise GeneratorError."""
    if mode not in MODES:
        raise GeneratorError(f"unknown SD mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def image_seed(seed: int, index: int, attempt: int = 0) -> int:
    """Seed of the ``index``-th image of a request (``attempt`` > 0 for black-image retries)."""
    return int(np.random.SeedSequence([int(seed), int(index), int(attempt)]).generate_state(1)[0])


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Images as float32 [N, 1, S, S] clipped to [0, 1] (the cohort's range)."""
    x = torch.as_tensor(images).float()
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise GeneratorError(f"expected grayscale images [N, 1, S, S], got {tuple(x.shape)}")
    return x.clamp(0.0, 1.0)


def resize(images: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize [N, C, H, W] to ``size`` x ``size`` (antialiased when shrinking; no-op if equal)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    if mode == "nearest":
        return F.interpolate(images, size=(size, size), mode="nearest")
    return F.interpolate(images, size=(size, size), mode=mode, antialias=True, align_corners=False)


def to_model_pixels(images01: torch.Tensor, channels: int) -> torch.Tensor:
    """[N, 1, H, W] in [0, 1] -> [N, channels, H, W] in [-1, 1] (what the VAE encodes)."""
    return images01.repeat(1, channels, 1, 1) * 2.0 - 1.0


def collapsed(images01: torch.Tensor, black_threshold: float, min_std: float) -> torch.Tensor:
    """Bool [N]: an output is black (max <= threshold), flat (std < min_std) or not finite."""
    flat = images01.reshape(images01.shape[0], -1).float()
    finite = torch.isfinite(flat).all(dim=1)
    safe = torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0)
    return ~finite | (safe.amax(dim=1) <= black_threshold) | (safe.std(dim=1) < min_std)


def _atomic_dir_replace(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log to the active MLflow run, if there is one."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def _log_image(array: np.ndarray, artifact_file: str) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_image(array, artifact_file)


def resolve_source(
    cfg: SDConfig, base_model: str | os.PathLike | None = None
) -> tuple[str, Path | None]:
    """(``scratch`` | ``finetune``, base directory or None) from the config and arguments.

    Raises:
        ConfigError: ``finetune`` without a base model, or a base model that is not a diffusers
            SD directory.
    """
    base = str(base_model or cfg.base_model or "")
    path = (
        Path(base).expanduser() if base else local_weights(BASE_MODEL_ENV, "stable-diffusion-v1-4")
    )
    source = cfg.source
    if source == "auto":
        source = "finetune" if path is not None else "scratch"
    if source == "scratch":
        return "scratch", None
    if path is None:
        raise ConfigError(
            "source=finetune needs a local diffusers SD directory: pass --base-model DIR or set "
            f"{BASE_MODEL_ENV} (nothing is downloaded)"
        )
    check_sd_dir(path)
    return "finetune", path


def check_sd_dir(path: str | os.PathLike) -> Path:
    """Return ``path`` if it is a diffusers SD directory (model_index.json + components)."""
    path = Path(path)
    missing = [
        p
        for p in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")
        if not (path / p).exists()
    ]
    if missing:
        raise ConfigError(
            f"{path} is not a diffusers Stable Diffusion directory (missing {', '.join(missing)}); "
            "point to a local save_pretrained folder such as SD v1.4 or a thyroaug-sd model"
        )
    return path


# --------------------------------------------------------------------------------------------
# components
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
        from diffusers import StableDiffusionPipeline

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


def _groups(channels: Sequence[int]) -> int:
    return math.gcd(32, *[int(c) for c in channels])


def build_vae(cfg: SDConfig) -> Any:
    """A single-channel ``AutoencoderKL`` of the config's size (random init, seeded)."""
    from diffusers import AutoencoderKL

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
    from transformers import CLIPTextConfig, CLIPTextModel

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
    from diffusers import UNet2DConditionModel

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


def load_components(
    model_dir: str | os.PathLike, torch_dtype: torch.dtype | None = None
) -> SDComponents:
    """Load the five parts of a local diffusers SD directory (offline)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.schedulers import SchedulerMixin
    from transformers import CLIPTextModel, CLIPTokenizer

    path = check_sd_dir(model_dir)
    kw: dict[str, Any] = {"local_files_only": True}
    dkw = dict(kw, torch_dtype=torch_dtype) if torch_dtype is not None else kw
    index = json.loads((path / "model_index.json").read_text())
    sched_cls_name = (index.get("scheduler") or [None, "PNDMScheduler"])[1]
    import diffusers

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


def save_components(
    components: SDComponents,
    out_dir: str | os.PathLike,
    card: dict[str, Any] | None = None,
    bank: SourceBank | None = None,
) -> Path:
    """Save as a diffusers SD directory (atomic: temp sibling, then rename).

    Next to the diffusers files go ``thyroaug_sd.json`` (the model card), ``README.md`` and,
    when given, the source bank (``sources.safetensors`` + ``sources.csv``).
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        components.pipeline().save_pretrained(str(tmp), safe_serialization=True)
        info = dict(card or {})
        (tmp / MODEL_CARD_FILE).write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
        (tmp / "README.md").write_text(_readme(info))
        if bank is not None:
            bank.save(tmp)
        _atomic_dir_replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _readme(info: dict[str, Any]) -> str:
    base = info.get("base_model") or "none"
    lines = [
        "# thyroaug Stable Diffusion generator",
        "",
        "A diffusers Stable Diffusion directory (vae, unet, text_encoder, tokenizer, scheduler)",
        "for thyroid scintigraphy, without safety checker. Load it offline with",
        "`StableDiffusionPipeline.from_pretrained(dir, safety_checker=None,",
        "local_files_only=True)`. `sources.*` hold the training cases SD1/SD3/SD4 start from.",
        "",
        f"- source: {info.get('source', '?')} (base: {base})",
        f"- resolution: {info.get('resolution', '?')} px, channels: {info.get('image_channels')}",
        f"- optimizer steps: {info.get('train_steps', '?')} (EMA weights: {info.get('ema')})",
        f"- text encoder: {info.get('text_encoder_training', '?')}",
        f"- cohort hash: {info.get('cohort_hash', '')}",
        "",
        "Modes: " + "; ".join(f"{m}: {d}" for m, d in MODE_DESCRIPTIONS.items()),
        "",
    ]
    return "\n".join(lines)


def read_card(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The thyroaug model card of a saved directory ({} for a foreign SD directory)."""
    path = Path(model_dir) / MODEL_CARD_FILE
    return json.loads(path.read_text()) if path.exists() else {}


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


@dataclass
class SDTrainResult:
    """What ``train_sd`` produced."""

    model_dir: Path
    source: str
    losses: list[float]
    """Mean UNet loss per optimizer step (from step 1, including steps before a resume)."""
    vae_losses: list[float] = field(default_factory=list)
    train_steps: int = 0
    seconds: float = 0.0
    card: dict[str, Any] = field(default_factory=dict)


def _train_images(cohort: Any, cfg: SDConfig) -> tuple[torch.Tensor, list[str], list[str]]:
    part = cohort.subset(cfg.train_split) if cfg.train_split else cohort
    if len(part) == 0:
        raise GeneratorError(f"the cohort has no cases in split {cfg.train_split!r} to train on")
    if "prompt" not in part.table.columns:
        raise PromptError(
            "the cohort table has no 'prompt' column; rebuild it with thyroaug prepare"
        )
    images = resize(to_unit(part.images), cfg.resolution)
    prompts = part.table["prompt"].fillna("").astype(str).tolist()
    ids = part.table["case_id"].astype(str).tolist()
    return images, prompts, ids


def train_vae(
    vae: Any, images01: torch.Tensor, cfg: SDConfig, device: torch.device, progress: bool = True
) -> list[float]:
    """Train a scratch VAE (L1 + ``vae_kl_weight`` * KL) and set its latent scaling factor.

    The scaling factor is 1 / std of the training latents (as chosen for SD), so the diffusion
    model sees unit-variance latents.

    Returns:
        The loss of every step.
    """
    from tqdm.auto import tqdm

    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_learning_rate, weight_decay=0.0)
    x_all = to_model_pixels(images01, 1)
    losses: list[float] = []
    n = x_all.shape[0]
    steps = tqdm(
        range(cfg.vae_steps), desc="train VAE", leave=False, mininterval=5, disable=not progress
    )
    for step in steps:
        rng = np.random.default_rng([cfg.seed, 7, step])
        idx = rng.integers(0, n, size=min(cfg.vae_batch_size, n))
        x = x_all[torch.as_tensor(idx)]
        if cfg.random_flip:
            flip = torch.as_tensor(rng.random(len(idx)) < 0.5)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        x = x.to(device)
        gen = torch.Generator().manual_seed(image_seed(cfg.seed, step, 7))
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(
            device
        )
        recon = vae.decode(z).sample
        loss = F.l1_loss(recon, x) + cfg.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == cfg.vae_steps - 1:
            _log_metrics({"vae_loss": losses[-1]}, step=step)
    vae.eval()
    with torch.no_grad():
        lat = torch.cat(
            [vae.encode(x_all[i : i + 64].to(device)).latent_dist.mean for i in range(0, n, 64)]
        )
    std = float(lat.std())
    vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
    log.info(
        "VAE trained %d steps: loss %.4f, latent std %.3f",
        cfg.vae_steps,
        losses[-1] if losses else float("nan"),
        std,
    )
    return losses


def _text_training(cfg: SDConfig, source: str) -> str:
    if cfg.text_encoder_training == "auto":
        return "joint" if source == "scratch" else "frozen"
    return cfg.text_encoder_training


def _prepare_scratch(
    cfg: SDConfig,
    images01: torch.Tensor,
    prompts: list[str],
    stages: Path,
    resume: bool,
    progress: bool = True,
) -> tuple[SDComponents, list[float]]:
    """Tokenizer, text encoder, VAE (trained), UNet and scheduler of a scratch model.

    Each finished stage is saved under ``stages``; with ``resume`` a saved stage is reused.
    """
    from diffusers import AutoencoderKL, PNDMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    stages.mkdir(parents=True, exist_ok=True)
    tok_dir, te_dir, vae_dir = stages / "tokenizer", stages / "text_encoder", stages / "vae"
    if resume and tok_dir.exists():
        tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    else:
        tokenizer = train_clip_tokenizer(
            prompts, tok_dir, vocab_size=cfg.tokenizer_vocab_size, model_max_length=MODEL_MAX_LENGTH
        )
    if resume and te_dir.exists():
        text_encoder = CLIPTextModel.from_pretrained(str(te_dir), local_files_only=True)
    else:
        text_encoder = build_text_encoder(cfg, tokenizer)
        text_encoder.save_pretrained(str(te_dir))
    vae_losses: list[float] = []
    if resume and (vae_dir / "config.json").exists():
        vae = AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True)
        log.info("resume: reusing the trained VAE in %s", vae_dir)
    else:
        vae = build_vae(cfg)
        vae_losses = train_vae(vae, images01, cfg, default_device(), progress)
        vae.to("cpu")
        tmp = Path(tempfile.mkdtemp(dir=stages, prefix=".vae.tmp-"))
        vae.save_pretrained(str(tmp))
        (tmp / "losses.json").write_text(json.dumps(vae_losses))
        _atomic_dir_replace(tmp, vae_dir)
    if not vae_losses and (vae_dir / "losses.json").exists():
        vae_losses = json.loads((vae_dir / "losses.json").read_text())
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet = build_unet(
        cfg, cfg.resolution // factor, vae.config.latent_channels, text_encoder.config.hidden_size
    )
    scheduler = PNDMScheduler.from_config(sd_v1_scheduler_config())
    return SDComponents(vae, text_encoder, tokenizer, unet, scheduler), vae_losses


def train_sd(
    cohort: Any,
    cfg: SDConfig,
    output_dir: str | os.PathLike,
    base_model: str | os.PathLike | None = None,
    resume: bool = False,
    on_grid: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    progress: bool = True,
) -> SDTrainResult:
    """Train the Stable Diffusion generator on a prepared cohort and save it.

    Layout of ``output_dir``: ``model/`` (the final diffusers directory, EMA weights),
    ``checkpoints/checkpoint-<step>/`` (accelerate state + EMA + trainer state) and, for a
    scratch model, ``stages/`` (tokenizer, text encoder init, trained VAE).

    Args:
        cohort: a ``PreparedCohort``; its ``cfg.train_split`` rows (images + prompts) train.
        cfg: the configuration (``resolve(SDConfig, profile, ...)``).
        output_dir: where checkpoints and the model go.
        base_model: a local diffusers SD directory to fine-tune (overrides ``cfg.base_model``).
        resume: continue from the newest checkpoint in ``output_dir`` (and reuse finished
            scratch stages); without one, start afresh.
        on_grid: called with (step, {class: uint8 grid}) whenever a sample grid is made.
        progress: show tqdm bars.

    Returns:
        SDTrainResult with the model directory and the loss curve. Per-step losses, learning rate
        and sample grids also go to the active MLflow run, if any.

    Raises:
        ConfigError, PromptError, GeneratorError: bad settings, over-long prompts, empty split.
    """
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out = Path(output_dir)
    source, base_path = resolve_source(cfg, base_model)
    images01, prompts, case_ids = _train_images(cohort, cfg)
    ckpt_root = out / "checkpoints"
    resume_from = _latest_checkpoint(ckpt_root) if resume else None
    if resume and resume_from is None:
        log.info("resume requested but no checkpoint in %s: starting from step 0", ckpt_root)

    cuda = torch.cuda.is_available()
    mixed = cfg.mixed_precision if cuda else "no"
    accelerator = Accelerator(
        mixed_precision=mixed, gradient_accumulation_steps=cfg.gradient_accumulation_steps
    )
    device = accelerator.device
    vae_losses: list[float] = []
    if source == "scratch":
        # the main process builds the stages; the others then load what it saved
        main = accelerator.is_main_process
        with accelerator.main_process_first():
            comps, vae_losses = _prepare_scratch(
                cfg, images01, prompts, out / "stages", resume or not main, progress and main
            )
    else:
        assert base_path is not None
        comps = load_components(base_path)
    text_mode = _text_training(cfg, source)
    if source == "scratch" and cfg.prompt_dropout == 0:
        log.warning(
            "scratch model trained with prompt_dropout=0: the empty prompt (SD3, and the "
            "unconditional branch of classifier-free guidance) is never seen in training"
        )
    check_prompts(prompts, comps.tokenizer, case_ids, truncate=cfg.truncate_prompts)

    noise_scheduler = DDPMScheduler.from_config(comps.scheduler.config)
    weight_dtype = (
        torch.float16 if mixed == "fp16" else torch.bfloat16 if mixed == "bf16" else torch.float32
    )
    vae, text_encoder, unet, tokenizer = comps.vae, comps.text_encoder, comps.unet, comps.tokenizer
    vae.requires_grad_(False)
    vae.to(device).eval()
    if weight_dtype != torch.float32:
        vae.to(dtype=weight_dtype)
    train_text = text_mode == "joint"
    text_encoder.requires_grad_(train_text)
    text_encoder.to(device)
    if not train_text and weight_dtype != torch.float32:
        text_encoder.to(dtype=weight_dtype)
    unet.train()
    if train_text:
        text_encoder.train()
    else:
        text_encoder.eval()

    ema_unet = ema_text = None
    if cfg.use_ema:
        ema_unet = EMAModel(
            unet.parameters(),
            decay=cfg.ema_decay,
            model_cls=UNet2DConditionModel,
            model_config=unet.config,
        )
        if train_text:
            ema_text = EMAModel(text_encoder.parameters(), decay=cfg.ema_decay)

    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text else [])
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=cfg.max_train_steps * accelerator.num_processes,
    )
    if train_text:
        unet, text_encoder, optimizer, lr_scheduler = accelerator.prepare(
            unet, text_encoder, optimizer, lr_scheduler
        )
    else:
        unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    for ema in (ema_unet, ema_text):
        if ema is not None:
            ema.to(device)
            accelerator.register_for_checkpointing(ema)

    # token ids of every training prompt and of the empty prompt (for prompt dropout)
    tok = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    empty = tokenizer(
        [""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids[0]
    pixels = to_model_pixels(images01, comps.image_channels)

    global_step, losses = 0, []
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = json.loads((resume_from / "trainer_state.json").read_text())
        global_step, losses = int(state["step"]), list(state["losses"])
        log.info("resumed from %s (step %d)", resume_from, global_step)

    accum = cfg.gradient_accumulation_steps
    n = pixels.shape[0]
    bar = tqdm(
        total=cfg.max_train_steps,
        initial=global_step,
        desc=f"train SD ({source})",
        mininterval=5,
        disable=not progress,
    )
    micro, window = global_step * accum, []
    proc = accelerator.process_index
    while global_step < cfg.max_train_steps:
        rng = np.random.default_rng([cfg.seed, proc, micro])
        idx = torch.as_tensor(rng.integers(0, n, size=cfg.train_batch_size))
        x = pixels[idx]
        if cfg.random_flip:
            flip = torch.as_tensor(rng.random(len(idx)) < 0.5)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        ids = tok[idx].clone()
        if cfg.prompt_dropout > 0:
            drop = torch.as_tensor(rng.random(len(idx)) < cfg.prompt_dropout)
            ids[drop] = empty
        gen = torch.Generator().manual_seed(image_seed(cfg.seed, micro, 11 + proc))
        with accelerator.accumulate(*([unet, text_encoder] if train_text else [unet])):
            with torch.no_grad():
                dist = vae.encode(x.to(device, dtype=weight_dtype)).latent_dist
                eps_z = torch.randn(dist.mean.shape, generator=gen).to(device, dist.mean.dtype)
                latents = (dist.mean + dist.std * eps_z) * vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=gen).to(device, latents.dtype)
            steps = torch.randint(
                0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen
            ).to(device)
            noisy = noise_scheduler.add_noise(latents, noise, steps)
            hidden = text_encoder(ids.to(device), return_dict=False)[0]
            if noise_scheduler.config.prediction_type == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, steps)
            else:
                target = noise
            pred = unet(noisy, steps, hidden, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        micro += 1
        window.append(float(loss.detach()))
        if not accelerator.sync_gradients:
            continue
        if ema_unet is not None:
            ema_unet.step(accelerator.unwrap_model(unet).parameters())
        if ema_text is not None:
            ema_text.step(accelerator.unwrap_model(text_encoder).parameters())
        global_step += 1
        step_loss = float(np.mean(window))
        window = []
        losses.append(step_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        _log_metrics({"loss": step_loss, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
        if cfg.checkpointing_steps and global_step % cfg.checkpointing_steps == 0:
            _save_checkpoint(
                accelerator, ckpt_root, global_step, losses, cfg.checkpoints_total_limit
            )
        if (
            cfg.sample_every
            and global_step % cfg.sample_every == 0
            and global_step < cfg.max_train_steps
        ):
            _grid_during_training(
                accelerator,
                comps,
                unet,
                text_encoder,
                ema_unet,
                ema_text,
                cohort,
                cfg,
                global_step,
                on_grid,
            )
    bar.close()
    if cfg.checkpointing_steps and not (ckpt_root / f"checkpoint-{global_step}").exists():
        _save_checkpoint(accelerator, ckpt_root, global_step, losses, cfg.checkpoints_total_limit)
    accelerator.wait_for_everyone()

    # final weights: EMA copied into the models
    unet_final = accelerator.unwrap_model(unet)
    text_final = accelerator.unwrap_model(text_encoder)
    if ema_unet is not None:
        ema_unet.copy_to(unet_final.parameters())
    if ema_text is not None:
        ema_text.copy_to(text_final.parameters())
    final = replace(
        comps,
        vae=_to_cpu_fp32(vae),
        unet=_to_cpu_fp32(unet_final).eval(),
        text_encoder=_to_cpu_fp32(text_final).eval(),
    )
    card = {
        "source": source,
        "base_model": str(base_path) if base_path else "",
        "resolution": cfg.resolution,
        "image_channels": final.image_channels,
        "train_steps": global_step,
        "ema": cfg.use_ema,
        "text_encoder_training": text_mode,
        "cohort_hash": getattr(cohort, "content_hash", ""),
        "cohort_image_size": int(cohort.images.shape[-1]),
        "classes": list(CLASSES),
        "final_loss": losses[-1] if losses else None,
        "config": to_dict(cfg),
    }
    model_dir = out / "model"
    if accelerator.is_main_process:
        save_components(final, model_dir, card, SourceBank.from_cohort(cohort, cfg.train_split))
        if cfg.grid_per_class:
            grids = training_grids(final, cohort, cfg)
            for cls, grid in grids.items():
                _log_image(grid, f"samples/final_{cls}.png")
            if on_grid is not None:
                on_grid(global_step, grids)
    seconds = time.perf_counter() - t0
    log.info("SD (%s) trained %d steps in %.0f s -> %s", source, global_step, seconds, model_dir)
    return SDTrainResult(model_dir, source, losses, vae_losses, global_step, seconds, card)


def _to_cpu_fp32(module: torch.nn.Module) -> torch.nn.Module:
    """Move to CPU and cast to fp32 only where needed (saved weights are fp32)."""
    module.to("cpu")
    if any(p.dtype != torch.float32 for p in module.parameters()):
        module.to(dtype=torch.float32)
    return module


def _latest_checkpoint(root: Path) -> Path | None:
    if not root.exists():
        return None
    found = [
        (int(p.name.split("-")[1]), p)
        for p in root.glob("checkpoint-*")
        if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").exists()
    ]
    return max(found)[1] if found else None


def _save_checkpoint(
    accelerator: Any, root: Path, step: int, losses: list[float], keep: int
) -> None:
    """accelerate state + trainer state, written to a temp folder and renamed."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        accelerator.save_state(str(tmp))
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "losses": losses}))
        _atomic_dir_replace(tmp, root / f"checkpoint-{step}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if keep and keep > 0:
        ckpts = sorted(
            (int(p.name.split("-")[1]), p)
            for p in root.glob("checkpoint-*")
            if p.name.split("-")[1].isdigit()
        )
        for _, p in ckpts[:-keep]:
            shutil.rmtree(p, ignore_errors=True)
    log.info("checkpoint %d saved", step)


def _grid_during_training(
    accelerator: Any,
    comps: SDComponents,
    unet: Any,
    text_encoder: Any,
    ema_unet: Any,
    ema_text: Any,
    cohort: Any,
    cfg: SDConfig,
    step: int,
    on_grid: Callable[[int, dict[str, np.ndarray]], None] | None,
) -> None:
    """SD2 grids per class with the EMA weights (swapped in, then restored)."""
    if not accelerator.is_main_process:
        return
    u = accelerator.unwrap_model(unet)
    te = accelerator.unwrap_model(text_encoder)
    swaps = [(e, m) for e, m in ((ema_unet, u), (ema_text, te)) if e is not None]
    for e, m in swaps:
        e.store(m.parameters())
        e.copy_to(m.parameters())
    was_training, te_training = u.training, te.training
    u.eval()
    te.eval()
    try:
        with accelerator.autocast():
            grids = training_grids(replace(comps, unet=u, text_encoder=te), cohort, cfg)
    finally:
        for e, m in swaps:
            e.restore(m.parameters())
        u.train(was_training)
        te.train(te_training)
    for cls, grid in grids.items():
        _log_image(grid, f"samples/step{step:06d}_{cls}.png")
    if on_grid is not None:
        on_grid(step, grids)


def training_grids(comps: SDComponents, cohort: Any, cfg: SDConfig) -> dict[str, np.ndarray]:
    """Per-class SD2 sample grids (``cfg.grid_per_class`` images) from training prompts."""
    from thyroaug.generators.base import GeneratorHandle, synthesize

    bank = SourceBank.from_cohort(cohort, cfg.train_split)
    gen = SDGenerator(comps, bank=bank, cfg=replace(cfg, truncate_prompts=True))
    handle = GeneratorHandle(generator=gen, uri="training")
    _, grids = synthesize(
        handle,
        cfg.grid_per_class,
        cfg.seed,
        mode="SD2",
        batch_size=cfg.gen_batch_size,
        progress=False,
    )
    return grids


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------


def make_scheduler(name: str, base: Any) -> Any:
    """The named inference scheduler built from ``base``'s config (``default`` keeps ``base``)."""
    from diffusers import (
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


@dataclass
class SourceBank:
    """The training cases SD conditions on: images, masks, prompts, labels and case ids.

    SD1 / SD3 start from a case image, SD4 from a case mask, SD1 / SD2 / SD4 use the case's
    prompt. For an image of class ``c`` and seed ``s`` the source is drawn uniformly (with
    replacement) from the class's cases by ``numpy.random.default_rng([s, c])``, so the choice
    depends on (seed, class) only, as the image itself does.
    """

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    case_ids: list[str]
    prompts: list[str]
    has_mask: list[bool]

    def __post_init__(self) -> None:
        n = len(self.case_ids)
        sizes = {len(self.images), len(self.masks), len(self.labels), len(self.prompts)}
        if sizes != {n} or len(self.has_mask) != n:
            raise GeneratorError("SourceBank: images, masks, labels, prompts, ids differ in length")

    def __len__(self) -> int:
        return len(self.case_ids)

    @classmethod
    def from_cohort(cls, cohort: Any, split: str | None = "train") -> SourceBank:
        """The cases of one split of a ``PreparedCohort`` (all rows when ``split`` is None)."""
        part = cohort.subset(split) if split else cohort
        table = part.table.reset_index(drop=True)
        if "prompt" not in table.columns:
            raise PromptError("the cohort table has no 'prompt' column")
        has = (
            table["has_mask"].astype(bool).tolist()
            if "has_mask" in table.columns
            else [bool(m.any()) for m in part.masks]
        )
        return cls(
            images=to_unit(part.images),
            masks=(torch.as_tensor(part.masks) > 0).to(torch.uint8),
            labels=torch.as_tensor(part.labels, dtype=torch.long),
            case_ids=table["case_id"].astype(str).tolist(),
            prompts=table["prompt"].fillna("").astype(str).tolist(),
            has_mask=has,
        )

    def counts(self) -> dict[str, int]:
        """Cases per class name."""
        c = np.bincount(self.labels.numpy(), minlength=len(CLASSES))
        return {name: int(c[i]) for i, name in enumerate(CLASSES)}

    def pick(self, label: int, seed: int, need_mask: bool = False) -> int:
        """Row of the source case for (label, seed).

        Raises:
            GeneratorError: no (masked) case of that class in the bank.
        """
        rows = np.flatnonzero(self.labels.numpy() == int(label))
        if need_mask:
            rows = rows[np.asarray(self.has_mask, dtype=bool)[rows]]
        if len(rows) == 0:
            kind = "masked case" if need_mask else "case"
            raise GeneratorError(
                f"no {kind} of class {CLASSES[int(label)]} in the generator's source bank; pass "
                "the condition explicitly or retrain on a cohort that has one"
            )
        rng = np.random.default_rng([int(seed), int(label)])
        return int(rows[rng.integers(len(rows))])

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``sources.safetensors`` and ``sources.csv`` into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        save_file(
            {
                "images": self.images.float().contiguous(),
                "masks": self.masks.to(torch.uint8).contiguous(),
                "labels": self.labels.long().contiguous(),
            },
            str(folder / "sources.safetensors"),
        )
        pd.DataFrame(
            {
                "case_id": self.case_ids,
                "label": [CLASSES[int(i)] for i in self.labels],
                "has_mask": self.has_mask,
                "prompt": self.prompts,
            }
        ).to_csv(folder / "sources.csv", index=False)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> SourceBank | None:
        """Read a bank written by ``save`` (None when ``folder`` holds none)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "sources.safetensors").exists():
            return None
        t = load_file(str(folder / "sources.safetensors"))
        table = pd.read_csv(folder / "sources.csv", keep_default_na=False, dtype=str)
        return cls(
            images=t["images"],
            masks=t["masks"],
            labels=t["labels"],
            case_ids=table["case_id"].tolist(),
            prompts=table["prompt"].tolist(),
            has_mask=[v.lower() == "true" for v in table["has_mask"]],
        )


@dataclass
class GenerationResult:
    """Images of one ``SDGenerator.generate`` call, with their seeds and retry counts."""

    images: torch.Tensor
    """float32 [N, 1, size, size] in [0, 1]."""
    seeds: list[int]
    """The seed each image finally came from (differs from the request after a retry)."""
    retries: list[int]
    still_collapsed: list[bool]


SAMPLING_FIELDS: tuple[str, ...] = (
    "num_inference_steps",
    "guidance_scale",
    "strength",
    "gen_batch_size",
    "black_threshold",
    "collapse_std",
    "max_retries",
    "truncate_prompts",
)


class SDGenerator:
    """Stable Diffusion sampling in the paper's four modes (implements ``base.Generator``).

    Args:
        model: an SD directory (str / Path; a source bank saved in it is loaded too) or
            ``SDComponents`` (used as they are: no move, no cast).
        bank: the source cases (default: the one saved in the model directory, if any).
        cfg: sampling defaults (steps, guidance, strength, batch, black test, retries); default:
            the config stored with the model, else the paper values.
        device: where to run (default: CUDA if available, else CPU).
        dtype: weights dtype (default: fp16 on CUDA, as the authors; fp32 on CPU).
        scheduler: inference scheduler (see ``make_scheduler``; default: ``cfg.scheduler``).
        image_size: side of returned images (default: the training cohort's image size).
    """

    def __init__(
        self,
        model: str | os.PathLike | SDComponents,
        *,
        bank: SourceBank | None = None,
        cfg: SDConfig | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        scheduler: str | None = None,
        image_size: int | None = None,
    ):
        from diffusers import StableDiffusionImg2ImgPipeline

        if isinstance(model, SDComponents):
            comps, self.card, self.model_dir = model, {}, None
            first = next(comps.unet.parameters())
            self.device, self.dtype = first.device, first.dtype
        else:
            self.device = torch.device(device) if device is not None else default_device()
            if dtype is None:
                dtype = torch.float16 if self.device.type == "cuda" else torch.float32
            self.dtype = dtype
            self.model_dir = check_sd_dir(model)
            comps = load_components(self.model_dir, torch_dtype=dtype)
            self.card = read_card(self.model_dir)
            if bank is None:
                bank = SourceBank.load(self.model_dir)
        self.cfg = cfg or _card_config(self.card)
        self.scheduler_name = scheduler or self.cfg.scheduler
        comps = replace(comps, scheduler=make_scheduler(self.scheduler_name, comps.scheduler))
        self.components = comps
        self.bank = bank
        self.image_size = int(
            image_size
            or self.card.get("cohort_image_size")
            or (bank.images.shape[-1] if bank is not None and len(bank) else comps.resolution)
        )
        self.txt2img = comps.pipeline()
        if not isinstance(model, SDComponents):
            self.txt2img.to(self.device)
        self.img2img = StableDiffusionImg2ImgPipeline(
            **self.txt2img.components, requires_safety_checker=False
        )
        for p in (self.txt2img, self.img2img):
            p.set_progress_bar_config(disable=True)

    # --- properties -------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The model's own tokenizer (its limit is the prompt limit)."""
        return self.components.tokenizer

    @property
    def resolution(self) -> int:
        """Pixel resolution the model generates at (before resizing to ``image_size``)."""
        return self.components.resolution

    # --- Generator protocol -----------------------------------------------------------------
    def method(self, mode: str | None = None) -> str:
        """The synthetic-set method of ``mode`` (SD1..SD4; a mode is required)."""
        if mode is None:
            raise GeneratorError(f"the SD generator needs a mode: one of {', '.join(MODES)}")
        return check_mode(str(mode).upper())

    def describe(self) -> dict[str, Any]:
        """Model and sampling provenance."""
        return {
            "source": self.card.get("source", ""),
            "base_model": self.card.get("base_model", ""),
            "train_steps": self.card.get("train_steps"),
            "resolution": self.resolution,
            "image_size": self.image_size,
            "scheduler": self.scheduler_name,
            "num_inference_steps": self.cfg.num_inference_steps,
            "guidance_scale": self.cfg.guidance_scale,
            "strength": self.cfg.strength,
            "max_retries": self.cfg.max_retries,
            "black_threshold": self.cfg.black_threshold,
            "cohort_hash": self.card.get("cohort_hash", ""),
            "bank_counts": self.bank.counts() if self.bank is not None else {},
        }

    def sample(
        self,
        labels: Sequence[int | str],
        seeds: Sequence[int],
        masks: torch.Tensor | None = None,
        *,
        mode: str | None = None,
        prompts: Sequence[str] | None = None,
        images: torch.Tensor | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        strength: float | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> GeneratedBatch:
        """One image per (label, seed) in ``mode``; conditions from the request or the bank.

        Args:
            labels: class names or indices (select the source case when none is given).
            seeds: one per image; the same (label, seed, inputs) give the same image.
            masks: SD4 masks ``[N, 1, S, S]`` (default: the source case's mask).
            mode: SD1..SD4 (required).
            prompts: one per image for SD1 / SD2 / SD4 (default: the source case's prompt).
            images: SD1 / SD3 start images ``[N, 1, S, S]`` in [0, 1] (default: source image).
            steps: denoising steps (default ``cfg.num_inference_steps``, paper 50; img2img runs
                ``int(steps * strength)`` of them, as diffusers does).
            guidance_scale, strength, batch_size: override the defaults.
            progress: tqdm bar over batches.

        Returns:
            GeneratedBatch with images ``[N, 1, image_size, image_size]`` and the columns
            source_id, prompt, retries, collapsed, steps, guidance_scale, strength, scheduler
            (the seed column of the set is the requested seed; ``final_seed`` the one used).

        Raises:
            GeneratorError: unknown mode / label, mismatched lengths, no bank for a missing input.
            PromptError: a prompt over the tokenizer limit (unless truncation is enabled).
        """
        mode = self.method(mode)
        idx = [label_index(lbl) for lbl in labels]
        seeds = [int(s) for s in seeds]
        n = len(idx)
        if len(seeds) != n:
            raise GeneratorError(f"{n} labels but {len(seeds)} seeds; give one per image")
        for name, given in (("prompts", prompts), ("images", images), ("masks", masks)):
            if given is not None and len(given) != n:
                raise GeneratorError(f"{name}: {len(given)} given for {n} images")
        need_prompt = mode in ("SD1", "SD2", "SD4") and prompts is None
        need_image = mode in ("SD1", "SD3") and images is None
        need_mask = mode == "SD4" and masks is None
        rows: list[int | None] = [None] * n
        if need_prompt or need_image or need_mask:
            if self.bank is None or len(self.bank) == 0:
                what = "prompt" if need_prompt else "image" if need_image else "mask"
                raise GeneratorError(
                    f"{mode} needs a {what} per image and this generator has no source bank; "
                    "pass it in the request"
                )
            rows = [self.bank.pick(c, s, need_mask=need_mask) for c, s in zip(idx, seeds)]
        bank = self.bank
        sel = torch.as_tensor([r if r is not None else 0 for r in rows], dtype=torch.long)
        if need_prompt:
            assert bank is not None
            prompts = [bank.prompts[r] for r in rows]  # type: ignore[index]
        if need_image:
            assert bank is not None
            images = bank.images[sel]
        if need_mask:
            assert bank is not None
            masks = bank.masks[sel]
        source_ids = [
            bank.case_ids[r] if (r is not None and bank is not None) else "request" for r in rows
        ]
        cfg = _override(
            self.cfg,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            strength=strength,
            gen_batch_size=batch_size,
        )
        res = self.generate(
            mode,
            seeds,
            prompts=prompts,
            images=images,
            masks=masks,
            cfg=cfg,
            size=self.image_size,
            case_ids=source_ids,
            progress=progress,
        )
        used_prompts = list(prompts) if prompts is not None and mode != "SD3" else [""] * n
        columns: dict[str, list[Any]] = {
            "source_id": source_ids,
            "prompt": used_prompts,
            "final_seed": res.seeds,
            "retries": res.retries,
            "collapsed": res.still_collapsed,
            "steps": [cfg.num_inference_steps] * n,
            "guidance_scale": [cfg.guidance_scale] * n,
            "strength": [cfg.strength if mode != "SD2" else ""] * n,
            "scheduler": [self.scheduler_name] * n,
        }
        return GeneratedBatch(images=res.images, columns=columns)

    # --- the pipelines ----------------------------------------------------------------------
    def check_prompts(
        self, prompts: list[str], case_ids: list[str] | None = None, truncate: bool = False
    ) -> list[str]:
        """``sd_tokenizer.check_prompts`` with this model's tokenizer."""
        return check_prompts(prompts, self.tokenizer, case_ids, truncate=truncate)

    @torch.no_grad()
    def _call(
        self,
        mode: str,
        prompts: list[str],
        init: torch.Tensor | None,
        seeds: list[int],
        cfg: SDConfig,
    ) -> torch.Tensor:
        """One pipeline call for a batch; returns [B, 1, R, R] in [0, 1] (R = resolution)."""
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        common = {
            "prompt": prompts,
            "num_inference_steps": cfg.num_inference_steps,
            "guidance_scale": cfg.guidance_scale,
            "generator": gens,
            "output_type": "pt",
        }
        if mode == "SD2":
            r = self.resolution
            out = self.txt2img(height=r, width=r, **common).images
        else:
            assert init is not None
            image = init.repeat(1, self.components.image_channels, 1, 1).to(self.device, self.dtype)
            out = self.img2img(image=image, strength=cfg.strength, **common).images
        return out.float().mean(dim=1, keepdim=True).cpu()

    def generate(
        self,
        mode: str,
        seeds: Sequence[int],
        prompts: Sequence[str] | None = None,
        images: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        cfg: SDConfig | None = None,
        size: int | None = None,
        case_ids: Sequence[str] | None = None,
        progress: bool = False,
    ) -> GenerationResult:
        """Generate one image per seed, batched, regenerating black / collapsed outputs.

        An output is collapsed when ``collapsed`` says so; it is regenerated with the seed
        ``image_seed(seed, 0, attempt)`` for attempt 1..``cfg.max_retries`` (batched together),
        and the retries are counted and logged. One still collapsed after that is kept (logged).

        Args:
            mode: SD1..SD4.
            seeds: one per image.
            prompts: one per image (SD1, SD2, SD4; SD3 uses the empty prompt).
            images: [N, 1, S, S] in [0, 1] (SD1, SD3).
            masks: [N, 1, S, S] 0/1 (SD4; the mask becomes the img2img start image).
            cfg: sampling settings (default: this generator's).
            size: output side length (default: the model resolution).
            case_ids: names used in prompt errors.
            progress: tqdm bar over batches.

        Returns:
            GenerationResult (images in [0, 1], the seed each image finally used, retries).

        Raises:
            GeneratorError: missing or mis-shaped inputs for the mode.
            PromptError: a prompt over the tokenizer limit (unless ``cfg.truncate_prompts``).
        """
        from tqdm.auto import tqdm

        check_mode(mode)
        cfg = cfg or self.cfg
        seeds = [int(s) for s in seeds]
        n = _request_size(mode, len(seeds), prompts, images, masks)
        r = self.resolution
        if mode == "SD3":
            plist = [""] * n
        else:
            assert prompts is not None
            ids = list(case_ids) if case_ids is not None else None
            plist = self.check_prompts([str(p) for p in prompts], ids, cfg.truncate_prompts)
        init: torch.Tensor | None = None
        if mode in ("SD1", "SD3"):
            assert images is not None
            init = resize(to_unit(images), r)
        elif mode == "SD4":
            assert masks is not None
            m = torch.as_tensor(masks).float()
            m = m[:, None] if m.ndim == 3 else m
            init = resize((m > 0.5).float(), r, mode="nearest")
        out = torch.empty(n, 1, r, r)
        used = list(seeds)
        retries = [0] * n
        bs = max(1, int(cfg.gen_batch_size))
        for start in tqdm(range(0, n, bs), desc=f"SD {mode}", disable=not progress):
            sl = slice(start, min(n, start + bs))
            out[sl] = self._call(mode, plist[sl], None if init is None else init[sl], used[sl], cfg)
        bad = collapsed(out, cfg.black_threshold, cfg.collapse_std)
        for attempt in range(1, cfg.max_retries + 1):
            todo = torch.nonzero(bad).flatten().tolist()
            if not todo:
                break
            log.info(
                "%s: %d black/collapsed output(s); retry %d/%d with new seeds",
                mode,
                len(todo),
                attempt,
                cfg.max_retries,
            )
            for i in todo:
                used[i] = image_seed(seeds[i], 0, attempt)
                retries[i] += 1
            for start in range(0, len(todo), bs):
                chunk = todo[start : start + bs]
                sub = None if init is None else init[chunk]
                out[chunk] = self._call(
                    mode, [plist[i] for i in chunk], sub, [used[i] for i in chunk], cfg
                )
            bad = collapsed(out, cfg.black_threshold, cfg.collapse_std)
        if bool(bad.any()):
            log.warning(
                "%s: %d output(s) still black/collapsed after %d retries (kept)",
                mode,
                int(bad.sum()),
                cfg.max_retries,
            )
        if sum(retries):
            log.info(
                "%s: %d retry generation(s) for %d image(s)",
                mode,
                sum(retries),
                sum(1 for x in retries if x),
            )
        out = torch.nan_to_num(out, nan=0.0).clamp(0, 1)
        if size is not None and size != r:
            out = resize(out, int(size)).clamp(0, 1)
        return GenerationResult(out, used, retries, [bool(b) for b in bad])


def _card_config(card: dict[str, Any]) -> SDConfig:
    """The SDConfig saved with a model (sampling fields only matter), else paper defaults."""
    import dataclasses

    saved = dict(card.get("config") or {})
    names = {f.name for f in dataclasses.fields(SDConfig)}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items() if k in names}
    try:
        return SDConfig(**kwargs)
    except (ConfigError, TypeError):
        log.warning("the model's saved config is not usable; using paper sampling defaults")
        return SDConfig()


def _override(cfg: SDConfig, **values: Any) -> SDConfig:
    """``cfg`` with the non-None ``values`` replaced (validated by SDConfig)."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return cfg
    try:
        return replace(cfg, **given)
    except ConfigError as exc:
        raise GeneratorError(str(exc)) from exc


def _request_size(
    mode: str,
    n: int,
    prompts: Sequence[str] | None,
    images: torch.Tensor | None,
    masks: torch.Tensor | None,
) -> int:
    """Number of rows of a request, checking the inputs each mode needs."""
    needs = {
        "SD1": ("prompts", "images"),
        "SD2": ("prompts",),
        "SD3": ("images",),
        "SD4": ("prompts", "masks"),
    }[mode]
    given = {"prompts": prompts, "images": images, "masks": masks}
    missing = [k for k in needs if given[k] is None]
    if missing:
        raise GeneratorError(f"{mode} ({MODE_DESCRIPTIONS[mode]}) needs {', '.join(missing)}")
    sizes = {k: len(given[k]) for k in needs}  # type: ignore[arg-type]
    sizes["seeds"] = n
    if len(set(sizes.values())) != 1:
        raise GeneratorError(f"{mode}: inputs have different lengths {sizes}")
    for k in ("images", "masks"):
        if k in needs:
            t = torch.as_tensor(given[k])
            square = t.shape[-1] == t.shape[-2]
            if t.ndim not in (3, 4) or (t.ndim == 4 and t.shape[1] != 1) or not square:
                raise GeneratorError(
                    f"{mode}: {k} must be square grayscale [N, 1, S, S], got {tuple(t.shape)}"
                )
    if n == 0:
        raise GeneratorError(f"{mode}: empty request")
    return n


# --------------------------------------------------------------------------------------------
# fidelity per mode (paper Table 3)
# --------------------------------------------------------------------------------------------


def fidelity_by_mode(
    generator: SDGenerator | str,
    cohort: Any,
    modes: Sequence[str] = MODES,
    *,
    per_class: int = 200,
    seed: int = 0,
    extractors: Sequence[Any] | None = None,
    split: str = "train",
    batch_size: int = 32,
    progress: bool = False,
    **sample_kwargs: Any,
) -> pd.DataFrame:
    """FID / KID of each SD mode against the cohort, class-wise and overall (paper Table 3).

    Each mode draws ``per_class`` images per class through the shared ``base.synthesize`` and
    is compared with ``thyroaug.evaluation.fidelity.fidelity_metrics`` (``per_class`` real and
    synthetic images per class, seeded; the paper uses 200).

    Args:
        generator: an ``SDGenerator`` or an MLflow model URI (``models:/thyroaug-sd@champion``).
        cohort: the prepared cohort; its ``split`` rows are the real images.
        modes: the modes to evaluate.
        per_class: images per class drawn from each set.
        seed: seed of the synthesis and of the metric draws.
        extractors: feature extractors (default: ``fidelity.default_extractors()``).
        split: the real split.
        batch_size: images per ``sample`` call.
        progress: tqdm bars.
        **sample_kwargs: passed to ``SDGenerator.sample`` (e.g. ``steps``).

    Returns:
        Long table with columns mode, extractor, group (DG/NG/NL/TI/overall), fid, kid, kid_std;
        ``table3`` pivots it into the paper's layout.
    """
    from thyroaug.evaluation.fidelity import default_extractors, fidelity_metrics
    from thyroaug.generators.base import GeneratorHandle, open_generator, synthesize

    if isinstance(generator, str):
        handle = open_generator(generator)
    else:
        handle = GeneratorHandle(generator=generator, uri="")
    real = cohort.subset(split) if split else cohort
    exts = list(extractors) if extractors is not None else default_extractors()
    rows = []
    for mode in modes:
        synth, _ = synthesize(
            handle,
            per_class,
            seed,
            mode=check_mode(mode),
            batch_size=batch_size,
            progress=progress,
            **sample_kwargs,
        )
        metrics = fidelity_metrics(
            real.images,
            real.labels,
            synth.images,
            synth.labels,
            exts,
            per_class=per_class,
            seed=seed,
        )
        for ext in exts:
            for group in (*CLASSES, "overall"):
                key = f"{ext.name}_{group}"
                if f"fid_{key}" in metrics:
                    rows.append(
                        {
                            "mode": mode,
                            "extractor": ext.name,
                            "group": group,
                            "fid": metrics[f"fid_{key}"],
                            "kid": metrics[f"kid_{key}"],
                            "kid_std": metrics[f"kid_std_{key}"],
                        }
                    )
        log.info("fidelity of %s computed (%d images per class)", mode, per_class)
    return pd.DataFrame(rows, columns=["mode", "extractor", "group", "fid", "kid", "kid_std"])


def table3(long: pd.DataFrame, extractor: str | None = None) -> pd.DataFrame:
    """Pivot ``fidelity_by_mode`` output to the paper's layout: rows classes + overall,
    columns (mode, FID / KID), for one extractor (default: the first one)."""
    name = extractor or str(long["extractor"].iloc[0])
    part = long[long["extractor"] == name]
    wide = part.pivot(index="group", columns="mode", values=["fid", "kid"])
    wide = wide.swaplevel(0, 1, axis=1).sort_index(axis=1, level=0)
    wide = wide.rename(columns={"fid": "FID", "kid": "KID"}, level=1)
    order = [g for g in (*CLASSES, "overall") if g in wide.index]
    return wide.loc[order]
