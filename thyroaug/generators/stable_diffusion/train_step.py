"""One optimisation step of the Stable Diffusion UNet (and text encoder), as in diffusers.

``setup_training`` places the parts and builds EMA, AdamW and the LR schedule through
``accelerate``; ``train_step`` runs one micro-batch (noise-prediction MSE on VAE latents, seeded by
its index); ``finish_optimizer_step`` updates the EMA after a synced step.

diffusers (seconds to import) loads inside the functions, not with ``train-sd --help`` (whose
trainer imports this module).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from thyroaug.generators.stable_diffusion.components import (
    SDComponents,
    to_cpu_fp32,
    to_model_pixels,
)
from thyroaug.generators.stable_diffusion.config import SDConfig
from thyroaug.utils.seeds import derive_seed


@dataclass
class TrainState:
    """The models, optimizer and counters the training loop reads and updates."""

    cfg: SDConfig
    accelerator: Any
    comps: SDComponents
    unet: Any
    """The UNet as ``accelerator.prepare`` returned it (maybe wrapped)."""
    text_encoder: Any
    train_text: bool
    weight_dtype: torch.dtype
    noise_scheduler: Any
    optimizer: Any
    lr_scheduler: Any
    params: list[torch.nn.Parameter]
    ema_unet: Any
    ema_text: Any
    pixels: torch.Tensor
    """Training images in the VAE's pixel space [-1, 1]."""
    token_ids: torch.Tensor
    """Token ids of every training prompt."""
    empty_ids: torch.Tensor
    """Token ids of the empty prompt (prompt dropout)."""
    ckpt_root: Path
    global_step: int = 0
    losses: list[float] = field(default_factory=list)
    micro: int = 0
    """Micro-batches seen (seeds the batch draw and noise of the next one)."""
    window: list[float] = field(default_factory=list)
    """Micro-batch losses of the current optimizer step."""


def mixed_precision(cfg: SDConfig) -> str:
    """The configured mixed precision on a GPU; ``no`` (fp32) on the CPU."""
    return cfg.mixed_precision if torch.cuda.is_available() else "no"


def weight_dtype_of(mixed: str) -> torch.dtype:
    """The dtype of the frozen parts under ``mixed`` precision (fp16 / bf16 / fp32)."""
    return (
        torch.float16 if mixed == "fp16" else torch.bfloat16 if mixed == "bf16" else torch.float32
    )


def _place_models(
    comps: SDComponents, device: torch.device, weight_dtype: torch.dtype, train_text: bool
) -> None:
    """Freeze the VAE (and the text encoder unless trained), move and cast, set train modes."""
    vae, text_encoder = comps.vae, comps.text_encoder
    vae.requires_grad_(False)
    vae.to(device).eval()
    if weight_dtype != torch.float32:
        vae.to(dtype=weight_dtype)
    text_encoder.requires_grad_(train_text)
    text_encoder.to(device)
    if not train_text and weight_dtype != torch.float32:
        text_encoder.to(dtype=weight_dtype)
    comps.unet.train()
    if train_text:
        text_encoder.train()
    else:
        text_encoder.eval()


def _make_ema(cfg: SDConfig, comps: SDComponents, train_text: bool) -> tuple[Any, Any]:
    """EMA of the UNet (and of the text encoder when trained); (None, None) without EMA."""
    from diffusers import UNet2DConditionModel  # heavy: see the module docstring
    from diffusers.training_utils import EMAModel

    if not cfg.use_ema:
        return None, None
    unet = comps.unet
    ema_unet = EMAModel(
        unet.parameters(),
        decay=cfg.ema_decay,
        model_cls=UNet2DConditionModel,
        model_config=unet.config,
    )
    ema_text = (
        EMAModel(comps.text_encoder.parameters(), decay=cfg.ema_decay) if train_text else None
    )
    return ema_unet, ema_text


def _tokenize(tokenizer: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of every training prompt and of the empty prompt (for prompt dropout)."""
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
    return tok, empty


def setup_training(
    cfg: SDConfig,
    accelerator: Any,
    comps: SDComponents,
    train_text: bool,
    weight_dtype: torch.dtype,
    images01: torch.Tensor,
    prompts: list[str],
    ckpt_root: Path,
) -> TrainState:
    """Noise scheduler, placed models, EMA, AdamW + LR schedule through ``accelerator.prepare``."""
    from diffusers import DDPMScheduler  # heavy: see the module docstring
    from diffusers.optimization import get_scheduler

    noise_scheduler = DDPMScheduler.from_config(comps.scheduler.config)
    _place_models(comps, accelerator.device, weight_dtype, train_text)
    ema_unet, ema_text = _make_ema(cfg, comps, train_text)
    unet, text_encoder = comps.unet, comps.text_encoder
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
            ema.to(accelerator.device)
            accelerator.register_for_checkpointing(ema)
    token_ids, empty_ids = _tokenize(comps.tokenizer, prompts)
    return TrainState(
        cfg=cfg,
        accelerator=accelerator,
        comps=comps,
        unet=unet,
        text_encoder=text_encoder,
        train_text=train_text,
        weight_dtype=weight_dtype,
        noise_scheduler=noise_scheduler,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        params=params,
        ema_unet=ema_unet,
        ema_text=ema_text,
        pixels=to_model_pixels(images01, comps.image_channels),
        token_ids=token_ids,
        empty_ids=empty_ids,
        ckpt_root=ckpt_root,
    )


def _micro_batch(st: TrainState) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """Pixels, token ids and noise generator of the next micro-batch (seeded by its index)."""
    cfg, proc = st.cfg, st.accelerator.process_index
    rng = np.random.default_rng([cfg.seed, proc, st.micro])
    idx = torch.as_tensor(rng.integers(0, st.pixels.shape[0], size=cfg.train_batch_size))
    x = st.pixels[idx]
    if cfg.random_flip:
        flip = torch.as_tensor(rng.random(len(idx)) < 0.5)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    ids = st.token_ids[idx].clone()
    if cfg.prompt_dropout > 0:
        drop = torch.as_tensor(rng.random(len(idx)) < cfg.prompt_dropout)
        ids[drop] = st.empty_ids
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, st.micro, 11 + proc))
    return x, ids, gen


def train_step(st: TrainState) -> float:
    """One micro-batch: noise-prediction MSE on VAE latents, backward, (accumulated) update."""
    x, ids, gen = _micro_batch(st)
    accelerator, vae, scheduler = st.accelerator, st.comps.vae, st.noise_scheduler
    device = accelerator.device
    models = [st.unet, st.text_encoder] if st.train_text else [st.unet]
    with accelerator.accumulate(*models):
        with torch.no_grad():
            dist = vae.encode(x.to(device, dtype=st.weight_dtype)).latent_dist
            eps_z = torch.randn(dist.mean.shape, generator=gen).to(device, dist.mean.dtype)
            latents = (dist.mean + dist.std * eps_z) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen).to(device, latents.dtype)
        steps = torch.randint(
            0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen
        ).to(device)
        noisy = scheduler.add_noise(latents, noise, steps)
        hidden = st.text_encoder(ids.to(device), return_dict=False)[0]
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, steps)
        else:
            target = noise
        pred = st.unet(noisy, steps, hidden, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(st.params, st.cfg.max_grad_norm)
        st.optimizer.step()
        st.lr_scheduler.step()
        st.optimizer.zero_grad(set_to_none=True)
    st.micro += 1
    return float(loss.detach())


def finish_optimizer_step(st: TrainState) -> float:
    """EMA update, step counter and the step's mean loss (after gradients were synced)."""
    if st.ema_unet is not None:
        st.ema_unet.step(st.accelerator.unwrap_model(st.unet).parameters())
    if st.ema_text is not None:
        st.ema_text.step(st.accelerator.unwrap_model(st.text_encoder).parameters())
    st.global_step += 1
    step_loss = float(np.mean(st.window))
    st.window = []
    st.losses.append(step_loss)
    return step_loss


def final_components(st: TrainState) -> SDComponents:
    """The trained parts on the CPU in fp32, with the EMA weights copied into the models."""
    unet_final = st.accelerator.unwrap_model(st.unet)
    text_final = st.accelerator.unwrap_model(st.text_encoder)
    if st.ema_unet is not None:
        st.ema_unet.copy_to(unet_final.parameters())
    if st.ema_text is not None:
        st.ema_text.copy_to(text_final.parameters())
    return replace(
        st.comps,
        vae=to_cpu_fp32(st.comps.vae),
        unet=to_cpu_fp32(unet_final).eval(),
        text_encoder=to_cpu_fp32(text_final).eval(),
    )
