"""Training of the Stable Diffusion generator: ``train_sd``, the scratch stages and the loop.

``train_sd`` follows diffusers' ``train_text_to_image.py`` as the authors ran it (the step itself is
in ``train_step.py``); docs/generators.md, "Training".

diffusers, transformers and accelerate (seconds to import) load inside the functions, not with
``train-sd --help`` (whose trainer imports this module).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from tqdm.auto import tqdm

from thyroaug import CLASSES
from thyroaug.config import local_weights, to_dict
from thyroaug.errors import ConfigError, GeneratorError, PromptError
from thyroaug.generators.banks import BANK_ARTIFACT, write_bank
from thyroaug.generators.base import GeneratorHandle, synthesize
from thyroaug.generators.stable_diffusion.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_components,
    save_vae_stage,
    vae_stage_losses,
)
from thyroaug.generators.stable_diffusion.components import (
    SDComponents,
    build_text_encoder,
    build_unet,
    build_vae,
    check_sd_dir,
    default_device,
    load_components,
    sd_v1_scheduler_config,
    to_model_pixels,
    to_unit,
)
from thyroaug.generators.stable_diffusion.config import SDConfig
from thyroaug.generators.stable_diffusion.pipeline import SDGenerator
from thyroaug.generators.stable_diffusion.sources import SourceBank
from thyroaug.generators.stable_diffusion.tokenizer import (
    MODEL_MAX_LENGTH,
    check_prompts,
    train_clip_tokenizer,
)
from thyroaug.generators.stable_diffusion.train_step import (
    TrainState,
    final_components,
    finish_optimizer_step,
    mixed_precision,
    setup_training,
    train_step,
    weight_dtype_of,
)
from thyroaug.utils.resize import resize_images
from thyroaug.utils.seeds import derive_seed

log = logging.getLogger(__name__)

BASE_MODEL_ENV = "THYROAUG_SD_BASE"
GridCallback = Callable[[int, dict[str, np.ndarray]], None]


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


# --------------------------------------------------------------------------------------------
# inputs: source, images, MLflow logging
# --------------------------------------------------------------------------------------------


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


def _train_images(cohort: Any, cfg: SDConfig) -> tuple[torch.Tensor, list[str], list[str]]:
    part = cohort.subset(cfg.train_split) if cfg.train_split else cohort
    if len(part) == 0:
        raise GeneratorError(f"the cohort has no cases in split {cfg.train_split!r} to train on")
    if "prompt" not in part.table.columns:
        raise PromptError(
            "the cohort table has no 'prompt' column; rebuild it with thyroaug prepare"
        )
    images = resize_images(to_unit(part.images), cfg.resolution)
    prompts = part.table["prompt"].fillna("").astype(str).tolist()
    ids = part.table["case_id"].astype(str).tolist()
    return images, prompts, ids


@functools.lru_cache(maxsize=64)
def _logged_up_to(run_id: str, key: str) -> int:
    """The last step of ``key`` the run had when this process first logged it (-1: none)."""
    return max((m.step for m in MlflowClient().get_metric_history(run_id, key)), default=-1)


def _log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log to the active MLflow run, if any; a resumed run skips the steps the run already has."""
    run = mlflow.active_run()
    if run is None:
        return
    try:  # a tracking outage must not stop training: the checkpoints are what counts
        if step is not None:
            metrics = {k: v for k, v in metrics.items() if step > _logged_up_to(run.info.run_id, k)}
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
    except Exception as exc:  # the tracking client raises several types
        log.warning("step %s not logged to MLflow (%s); training goes on", step, type(exc).__name__)


def _log_image(array: np.ndarray, artifact_file: str) -> None:
    if mlflow.active_run() is not None:
        mlflow.log_image(array, artifact_file)


# --------------------------------------------------------------------------------------------
# scratch stages: tokenizer, text encoder, VAE
# --------------------------------------------------------------------------------------------


def train_vae(
    vae: Any, images01: torch.Tensor, cfg: SDConfig, device: torch.device, progress: bool = True
) -> list[float]:
    """Train a scratch VAE (L1 + ``vae_kl_weight`` * KL); set its latent scaling to 1 / std.

    Returns:
        The loss of every step.
    """
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
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, step, 7))
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
    # heavy: see the module docstring
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
        save_vae_stage(vae, vae_losses, vae_dir)
    if not vae_losses:
        vae_losses = vae_stage_losses(vae_dir)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet = build_unet(
        cfg, cfg.resolution // factor, vae.config.latent_channels, text_encoder.config.hidden_size
    )
    scheduler = PNDMScheduler.from_config(sd_v1_scheduler_config())
    return SDComponents(vae, text_encoder, tokenizer, unet, scheduler), vae_losses


def _components_for_training(
    cfg: SDConfig,
    source: str,
    base_path: Path | None,
    images01: torch.Tensor,
    prompts: list[str],
    stages: Path,
    accelerator: Any,
    resume: bool,
    progress: bool,
) -> tuple[SDComponents, list[float]]:
    """The scratch parts (built / trained / reused stages) or the base model's parts."""
    if source == "scratch":
        # the main process builds the stages; the others then load what it saved
        main = accelerator.is_main_process
        with accelerator.main_process_first():
            return _prepare_scratch(
                cfg, images01, prompts, stages, resume or not main, progress and main
            )
    assert base_path is not None
    return load_components(base_path), []


# --------------------------------------------------------------------------------------------
# UNet training: the loop and its schedule (log, checkpoint, sample)
# --------------------------------------------------------------------------------------------


def _maybe_checkpoint(st: TrainState) -> None:
    cfg = st.cfg
    if cfg.checkpointing_steps and st.global_step % cfg.checkpointing_steps == 0:
        save_checkpoint(
            st.accelerator, st.ckpt_root, st.global_step, st.losses, cfg.checkpoints_total_limit
        )


def _maybe_grid(st: TrainState, cohort: Any, on_grid: GridCallback | None) -> None:
    """SD2 grids per class every ``cfg.sample_every`` steps (not at the last step)."""
    cfg, step = st.cfg, st.global_step
    if cfg.sample_every and step % cfg.sample_every == 0 and step < cfg.max_train_steps:
        _grid_during_training(st, cohort, on_grid)


def _train_loop(
    st: TrainState, cohort: Any, on_grid: GridCallback | None, desc: str, progress: bool
) -> None:
    """Optimizer steps up to ``cfg.max_train_steps``: log, checkpoint and sample on schedule."""
    cfg = st.cfg
    bar = tqdm(
        total=cfg.max_train_steps,
        initial=st.global_step,
        desc=desc,
        mininterval=5,
        disable=not progress,
    )
    while st.global_step < cfg.max_train_steps:
        st.window.append(train_step(st))
        if not st.accelerator.sync_gradients:
            continue
        step_loss = finish_optimizer_step(st)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        lr = st.lr_scheduler.get_last_lr()[0]
        _log_metrics({"loss": step_loss, "lr": lr}, step=st.global_step)
        _maybe_checkpoint(st)
        _maybe_grid(st, cohort, on_grid)
    bar.close()


# --------------------------------------------------------------------------------------------
# sample grids
# --------------------------------------------------------------------------------------------


def _grid_during_training(st: TrainState, cohort: Any, on_grid: GridCallback | None) -> None:
    """SD2 grids per class with the EMA weights (swapped in, then restored)."""
    accelerator = st.accelerator
    if not accelerator.is_main_process:
        return
    u = accelerator.unwrap_model(st.unet)
    te = accelerator.unwrap_model(st.text_encoder)
    swaps = [(e, m) for e, m in ((st.ema_unet, u), (st.ema_text, te)) if e is not None]
    for e, m in swaps:
        e.store(m.parameters())
        e.copy_to(m.parameters())
    was_training, te_training = u.training, te.training
    u.eval()
    te.eval()
    try:
        with accelerator.autocast():
            grids = training_grids(replace(st.comps, unet=u, text_encoder=te), cohort, st.cfg)
    finally:
        for e, m in swaps:
            e.restore(m.parameters())
        u.train(was_training)
        te.train(te_training)
    for cls, grid in grids.items():
        _log_image(grid, f"samples/step{st.global_step:06d}_{cls}.png")
    if on_grid is not None:
        on_grid(st.global_step, grids)


def training_grids(comps: SDComponents, cohort: Any, cfg: SDConfig) -> dict[str, np.ndarray]:
    """Per-class SD2 sample grids (``cfg.grid_per_class`` images) from training prompts."""
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
# train_sd
# --------------------------------------------------------------------------------------------


def _model_card(
    st: TrainState,
    final: SDComponents,
    source: str,
    base_path: Path | None,
    text_mode: str,
    cohort: Any,
) -> dict[str, Any]:
    cfg, losses = st.cfg, st.losses
    return {
        "source": source,
        "base_model": str(base_path) if base_path else "",
        "resolution": cfg.resolution,
        "image_channels": final.image_channels,
        "train_steps": st.global_step,
        "ema": cfg.use_ema,
        "text_encoder_training": text_mode,
        "cohort_hash": getattr(cohort, "content_hash", ""),
        "cohort_image_size": int(cohort.images.shape[-1]),
        "classes": list(CLASSES),
        "final_loss": losses[-1] if losses else None,
        "config": to_dict(cfg),
    }


def _save_model(
    final: SDComponents,
    model_dir: Path,
    card: dict[str, Any],
    cohort: Any,
    cfg: SDConfig,
    step: int,
    on_grid: GridCallback | None,
    embed_sources: bool = False,
) -> None:
    """The generator folder, its source bank and the final per-class sample grids.

    The bank goes to ``<output>/condition_bank`` (inside the folder too with ``embed_sources``).
    """
    bank = SourceBank.from_cohort(cohort, cfg.train_split)
    card.update(train_cases=len(bank), embedded_sources=bool(embed_sources))
    save_components(final, model_dir, card, bank if embed_sources else None)
    write_bank(bank, model_dir.parent / BANK_ARTIFACT, family="sd", cohort_hash=card["cohort_hash"])
    if cfg.grid_per_class:
        grids = training_grids(final, cohort, cfg)
        for cls, grid in grids.items():
            _log_image(grid, f"samples/final_{cls}.png")
        if on_grid is not None:
            on_grid(step, grids)


def train_sd(
    cohort: Any,
    cfg: SDConfig,
    output_dir: str | os.PathLike,
    base_model: str | os.PathLike | None = None,
    resume: bool = False,
    on_grid: GridCallback | None = None,
    progress: bool = True,
    embed_sources: bool = False,
) -> SDTrainResult:
    """Train the Stable Diffusion generator on a prepared cohort and save it.

    Layout of ``output_dir``: ``model/`` (the final diffusers directory, EMA weights),
    ``condition_bank/`` (the source bank: training images, masks, prompts, case ids; inside
    ``model/`` too with ``embed_sources``), ``checkpoints/checkpoint-<step>/`` (accelerate state
    + EMA + trainer state) and, for a scratch model, ``stages/`` (tokenizer, text encoder init,
    trained VAE).

    Args:
        cohort: a ``PreparedCohort``; its ``cfg.train_split`` rows (images + prompts) train.
        cfg: the configuration (``resolve(SDConfig, profile, ...)``).
        output_dir: where checkpoints and the model go.
        base_model: a local diffusers SD directory to fine-tune (overrides ``cfg.base_model``).
        resume: continue from the newest checkpoint in ``output_dir`` (and reuse finished
            scratch stages); without one, start afresh.
        on_grid: called with (step, {class: uint8 grid}) whenever a sample grid is made.
        progress: show tqdm bars.
        embed_sources: also put the source bank inside ``model/`` (registry readers get it).

    Returns:
        SDTrainResult with the model directory and the loss curve. Per-step losses, learning rate
        and sample grids also go to the active MLflow run, if any.

    Raises:
        ConfigError, PromptError, GeneratorError: bad settings, over-long prompts, empty split.
    """
    from accelerate import Accelerator  # heavy: see the module docstring

    t0 = time.perf_counter()
    out = Path(output_dir)
    source, base_path = resolve_source(cfg, base_model)
    images01, prompts, case_ids = _train_images(cohort, cfg)
    ckpt_root = out / "checkpoints"
    resume_from = latest_checkpoint(ckpt_root) if resume else None
    if resume and resume_from is None:
        log.info("resume requested but no checkpoint in %s: starting from step 0", ckpt_root)

    mixed = mixed_precision(cfg)
    accelerator = Accelerator(
        mixed_precision=mixed, gradient_accumulation_steps=cfg.gradient_accumulation_steps
    )
    comps, vae_losses = _components_for_training(
        cfg, source, base_path, images01, prompts, out / "stages", accelerator, resume, progress
    )
    text_mode = _text_training(cfg, source)
    if source == "scratch" and cfg.prompt_dropout == 0:
        log.warning(
            "scratch model trained with prompt_dropout=0: the empty prompt (SD3, and the "
            "unconditional branch of classifier-free guidance) is never seen in training"
        )
    check_prompts(prompts, comps.tokenizer, case_ids, truncate=cfg.truncate_prompts)
    st = setup_training(
        cfg,
        accelerator,
        comps,
        text_mode == "joint",
        weight_dtype_of(mixed),
        images01,
        prompts,
        ckpt_root,
    )
    if resume_from is not None:
        st.global_step, st.losses = load_checkpoint(accelerator, resume_from)
        log.info("resumed from %s (step %d)", resume_from, st.global_step)
    st.micro = st.global_step * cfg.gradient_accumulation_steps

    _train_loop(st, cohort, on_grid, f"train SD ({source})", progress)
    if cfg.checkpointing_steps and not (ckpt_root / f"checkpoint-{st.global_step}").exists():
        save_checkpoint(
            accelerator, ckpt_root, st.global_step, st.losses, cfg.checkpoints_total_limit
        )
    accelerator.wait_for_everyone()

    final = final_components(st)
    card = _model_card(st, final, source, base_path, text_mode, cohort)
    model_dir = out / "model"
    if accelerator.is_main_process:
        _save_model(final, model_dir, card, cohort, cfg, st.global_step, on_grid, embed_sources)
    seconds = time.perf_counter() - t0
    log.info("SD (%s) trained %d steps in %.0f s -> %s", source, st.global_step, seconds, model_dir)
    return SDTrainResult(model_dir, source, st.losses, vae_losses, st.global_step, seconds, card)
