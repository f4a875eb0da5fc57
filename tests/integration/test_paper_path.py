"""The ``paper`` profile's networks on the CPU at 128 px: one training step and one sampling step.

The paper profile is meant for a GPU, so the rest of the suite runs the ``smoke`` / ``quick``
sizes. These tests build every paper-size network once and push one batch of 1-2 images through
the same code the paper-profile commands run, so a shape, dtype or config mistake that only shows
at paper size fails here rather than an hour into a GPU job:

* **classifier**: the ResNet18 variant of ``resolve(ClassifierConfig, "paper")`` (3x3/1 conv1,
  max-pool kept, dropout 0.2, Adam 1e-4 / wd 1e-5, channels-last) trained for one epoch of one
  batch by ``thyroaug.classifier.train.fit``, then one eval forward;
* **flow matching**: the MOTFM-size ``VelocityNet`` (MONAI UNet 71.2 M + ControlNet 31.2 M
  parameters) with one Adam step (lr 1e-4, gradient clipping, EMA update) on the conditional-OT
  loss, then one Euler step of ``FlowMatchingPipeline`` from noise with the EMA weights. MONAI
  zero-initialises the output convolutions, so from a fresh init a first step reaches only the
  UNet's last conv; the step is therefore taken from a trained-like start (all-zero tensors given
  small random values, as bench/fm_sampling.py does), where the gradient reaches every layer;
* **Stable Diffusion**: the paper profile's source is ``auto``: fine-tune a local SD v1.4
  directory when one is given (``--base-model`` / ``THYROAUG_SD_BASE``), otherwise build the
  scratch latent-diffusion model at the paper profile's scratch sizes. Nothing is downloaded, so
  these tests build the scratch parts exactly as ``thyroaug train-sd --profile paper`` does
  without SD v1.4: a CLIP BPE tokenizer trained on prompts, ``build_text_encoder`` (256 wide,
  4 layers), ``build_vae`` (blocks 64/128/256/256, so 128 px images become 4 x 16 x 16 latents)
  and ``build_unet`` (blocks 128/256/512 on the 16 x 16 latents), at the paper resolution
  128 px. One VAE step (``train_vae``), one UNet + text-encoder step (``setup_training`` /
  ``train_step``: AdamW 1e-5, clipping, EMA; joint text-encoder training as for every scratch
  model), then one classifier-free-guided PNDM step in latent space and a VAE decode.

The only departure from the paper settings is SD's gradient accumulation: the paper accumulates
4 micro-batches of 1 image per update; here one micro-batch makes the update (accumulation 1), so
the step costs a quarter of the CPU time and runs the identical code. Runs on 2 torch threads;
about 2 minutes on a 2-core CPU (the FM step dominates: ~51 GFLOP per forward at 128 px).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from thyroaug.config import resolve
from thyroaug.contract import CLASSES

pytestmark = pytest.mark.slow

SIZE = 128
ZERO_CONVS = (
    "unet.out.2.",
    "controlnet.controlnet_down_blocks.",
    "controlnet.controlnet_mid_block.",
)
"""Zero-initialised output convolutions of the MOTFM velocity net (MONAI ``zero_module``)."""
SCORE_PATH = re.compile(r"transformer_blocks\.\d+\.(norm2|attn2\.to_q|attn2\.to_k)\.")
"""Where attention scores come from in the cross-attention of MONAI's transformer blocks: the
queries (``norm2`` -> ``attn2.to_q``) and the keys (``attn2.to_k``)."""


@pytest.fixture(scope="module", autouse=True)
def _two_threads() -> Iterator[None]:
    """Paper-size nets: two intra-op threads (the suite's default is one), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _moved(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    """Names of the parameters whose values differ from ``before``."""
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` bright-disc images in [0, 1] and their 0/1 masks, [n, 1, SIZE, SIZE]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    radius = 0.2 + 0.1 * torch.rand(n, 1, 1, generator=g)
    mask = (((xx - 0.5) ** 2 + (yy - 0.5) ** 2)[None] < radius**2).float()
    noise = 0.03 * torch.randn(n, SIZE, SIZE, generator=g)
    return (0.05 + 0.7 * mask + noise).clamp(0, 1)[:, None], mask[:, None]


# ------------------------------------------------------------------------------------------------
# classifier
# ------------------------------------------------------------------------------------------------
def test_paper_classifier_one_epoch_and_eval_forward() -> None:
    from thyroaug.classifier.config import ClassifierConfig
    from thyroaug.classifier.model import build_resnet18
    from thyroaug.classifier.train import fit

    cfg = resolve(ClassifierConfig, "paper", epochs=1, num_threads=2, device="cpu")
    assert (cfg.image_size, cfg.conv1_stride, cfg.keep_maxpool) == (SIZE, 1, True)
    assert (cfg.lr, cfg.weight_decay, cfg.dropout) == (1e-4, 1e-5, 0.2)
    images, _ = _blobs(3, seed=0)
    labels = torch.tensor([0, 2, 1])
    # the weights fit() starts from: it seeds cfg.seed right before building the same model
    torch.manual_seed(cfg.seed)
    init, _ = build_resnet18(
        len(CLASSES),
        init=cfg.init,
        conv1_stride=cfg.conv1_stride,
        keep_maxpool=cfg.keep_maxpool,
        dropout=cfg.dropout,
    )
    before = _snapshot(init)

    result = fit(images[:2], labels[:2], images[2:], labels[2:], cfg, progress=False)

    (epoch,) = result.history  # one epoch of one batch of 2 = one Adam step
    assert torch.isfinite(torch.tensor([epoch["train_loss"], epoch["val_loss"]])).all()
    model = result.model
    assert not model.training
    moved = _moved(before, model)
    assert moved == set(before), f"unchanged after the step: {sorted(set(before) - moved)}"

    maps: list[torch.Tensor] = []
    hook = model.layer4.register_forward_hook(lambda _m, _i, out: maps.append(out))
    x = images[:1].contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        logits = model(x)
    hook.remove()
    assert logits.shape == (1, len(CLASSES)) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert maps[0].shape == (1, 512, 8, 8)  # 128 px -> 8 x 8 at stage 4 (the Grad-CAM grid)


# ------------------------------------------------------------------------------------------------
# flow matching
# ------------------------------------------------------------------------------------------------
def test_paper_flow_matching_one_step_and_one_euler_step() -> None:
    from thyroaug.generators.flow_matching.config import FMConfig
    from thyroaug.generators.flow_matching.model import (
        VelocityNet,
        count_parameters,
        flow_matching_loss,
    )
    from thyroaug.generators.flow_matching.pipeline import FlowMatchingPipeline
    from thyroaug.generators.flow_matching.sampler import (
        ODESampler,
        from_data_range,
        initial_noise,
    )
    from thyroaug.generators.flow_matching.train import make_ema

    cfg = resolve(FMConfig, "paper")
    assert (cfg.image_size, cfg.conditioning, cfg.solver, cfg.steps) == (
        SIZE,
        "class+mask",
        "euler",
        10,
    )
    torch.manual_seed(cfg.seed)
    net = VelocityNet(cfg)
    counts = count_parameters(net)
    assert round(counts["unet"] / 1e6, 1) == 71.2 and round(counts["controlnet"] / 1e6, 1) == 31.2

    # MONAI zero-initialises the UNet's output conv (and the ControlNet's output convs, so the
    # mask branch starts as a no-op): from a fresh init one step would reach that conv only.
    zero_convs = [n for n, _ in net.named_parameters() if n.startswith(ZERO_CONVS)]
    params = dict(net.named_parameters())
    assert zero_convs and all(float(params[n].detach().abs().sum()) == 0 for n in zero_convs)
    # A trained-like start instead (as bench/fm_sampling.py): every all-zero tensor gets small
    # random values, so the step's gradient reaches every layer of the paper-size graph.
    with torch.no_grad():
        for p in net.parameters():
            if float(p.abs().sum()) == 0.0:
                p.normal_(0.0, 0.02)

    # one training step as train._train_epoch takes it (without accelerate: one CPU process)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    ema = make_ema(net, cfg.ema_decay)
    images, masks = _blobs(1, seed=1)
    x1 = from_data_range(images)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(x1.shape, generator=g)
    t = torch.rand(1, generator=g)
    labels = torch.tensor([1])
    before = _snapshot(net)
    net.train()
    loss = flow_matching_loss(net, x0, x1, t, labels, masks)
    loss.backward()
    grad_max = {
        n: (float(p.grad.detach().abs().max()) if p.grad is not None else None)
        for n, p in net.named_parameters()
    }
    torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.update_parameters(net)

    assert loss.ndim == 0 and torch.isfinite(loss)
    no_grad = sorted(n for n, v in grad_max.items() if v is None)
    assert no_grad == [], no_grad[:5]  # class context, mask branch, every block is in the graph
    # The class context is ONE token: softmax over one key is 1 whatever the scores, so the
    # cross-attention's queries and keys (norm2 -> to_q, to_k) get only rounding noise as
    # gradient; the class enters through to_v / to_out alone (a per-class feature offset).
    scores = {n for n in grad_max if SCORE_PATH.search(n)}
    largest = max(v for v in grad_max.values() if v is not None)
    assert scores and all(grad_max[n] <= 1e-6 * largest for n in scores)
    moved = _moved(before, net)
    assert set(before) - scores <= moved, sorted(set(before) - scores - moved)[:5]
    assert any(n.startswith("controlnet.") for n in moved)

    # one Euler step of the sampler on a batch of 1, with the EMA weights (what synthesis uses)
    pipe = FlowMatchingPipeline(ema.module, device="cpu")
    noise = initial_noise([7], (1, SIZE, SIZE))
    out = pipe.generate(noise, labels, masks, ODESampler("euler", 1))
    assert out.shape == (1, 1, SIZE, SIZE) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    with torch.inference_mode():
        velocity = ema.module(noise, torch.zeros(()), labels, masks)
    torch.testing.assert_close(out, noise + velocity, rtol=1e-4, atol=1e-4)  # x(1) = x0 + 1 * v


# ------------------------------------------------------------------------------------------------
# Stable Diffusion (scratch path at the paper profile's sizes)
# ------------------------------------------------------------------------------------------------
def test_paper_stable_diffusion_scratch_step_and_one_scheduler_step(tmp_path: Path) -> None:
    from accelerate import Accelerator
    from diffusers import PNDMScheduler

    from thyroaug.generators.stable_diffusion.components import (
        SDComponents,
        build_text_encoder,
        build_unet,
        build_vae,
        sd_v1_scheduler_config,
    )
    from thyroaug.generators.stable_diffusion.config import SDConfig
    from thyroaug.generators.stable_diffusion.tokenizer import (
        MODEL_MAX_LENGTH,
        train_clip_tokenizer,
    )
    from thyroaug.generators.stable_diffusion.train import resolve_source, train_vae
    from thyroaug.generators.stable_diffusion.train_step import (
        finish_optimizer_step,
        setup_training,
        train_step,
    )

    paper = resolve(SDConfig, "paper", base_model="", source="scratch")
    assert (paper.resolution, paper.train_batch_size, paper.gradient_accumulation_steps) == (
        SIZE,
        1,
        4,
    )
    assert resolve_source(paper) == ("scratch", None)
    cfg = dataclasses.replace(paper, gradient_accumulation_steps=1)  # see the module docstring

    prompts = [
        f"anterior thyroid scintigraphy, {name}, enlarged gland, homogeneous uptake"
        for name in ("diffuse goiter", "nodular goiter", "normal", "thyroiditis")
    ]
    tokenizer = train_clip_tokenizer(
        prompts * 3, tmp_path / "tokenizer", cfg.tokenizer_vocab_size, 1, MODEL_MAX_LENGTH
    )
    text_encoder = build_text_encoder(cfg, tokenizer)
    vae = build_vae(cfg)
    factor = 2 ** (len(cfg.vae_block_channels) - 1)
    latent = cfg.resolution // factor
    unet = build_unet(cfg, latent, cfg.vae_latent_channels, text_encoder.config.hidden_size)
    assert (factor, latent) == (8, 16)
    assert text_encoder.config.hidden_size == 256 and text_encoder.config.num_hidden_layers == 4

    # scratch stage: one VAE step (L1 + KL, AdamW) on a batch of 2, then its latent scale
    images, _ = _blobs(2, seed=3)
    vae_before = _snapshot(vae)
    vae_losses = train_vae(
        vae, images, dataclasses.replace(cfg, vae_steps=1), torch.device("cpu"), False
    )
    assert len(vae_losses) == 1 and torch.isfinite(torch.tensor(vae_losses)).all()
    assert _moved(vae_before, vae), "the VAE step changed nothing"
    assert vae.config.scaling_factor > 0

    # one UNet + text-encoder optimisation step, as train_sd runs it (joint text training)
    comps = SDComponents(
        vae, text_encoder, tokenizer, unet, PNDMScheduler.from_config(sd_v1_scheduler_config())
    )
    accelerator = Accelerator(mixed_precision="no", gradient_accumulation_steps=1, cpu=True)
    st = setup_training(
        cfg, accelerator, comps, True, torch.float32, images, prompts[:2], tmp_path / "ckpt"
    )
    assert isinstance(st.optimizer.optimizer, torch.optim.AdamW)
    assert st.optimizer.param_groups[0]["lr"] == cfg.learning_rate == 1e-5
    unet_before, text_before = _snapshot(unet), _snapshot(text_encoder)
    st.window.append(train_step(st))
    assert accelerator.sync_gradients
    step_loss = finish_optimizer_step(st)
    assert st.global_step == 1 and torch.isfinite(torch.tensor(step_loss))
    assert _moved(unet_before, unet) == set(unet_before)
    # the BPE vocabulary is larger than the prompts' tokens: unused embedding rows still decay
    assert _moved(text_before, text_encoder) == set(text_before)

    # one classifier-free-guided PNDM step in latent space (what each pipeline step does), decode
    unet.eval()
    text_encoder.eval()
    scheduler = PNDMScheduler.from_config(sd_v1_scheduler_config())
    scheduler.set_timesteps(cfg.num_inference_steps)
    ids = tokenizer(
        ["", prompts[1]], padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids  # fmt: skip
    g = torch.Generator().manual_seed(4)
    latents = torch.randn(1, cfg.vae_latent_channels, latent, latent, generator=g)
    latents = latents * scheduler.init_noise_sigma
    step_t = scheduler.timesteps[0]
    with torch.inference_mode():
        hidden = text_encoder(ids)[0]
        model_in = scheduler.scale_model_input(torch.cat([latents, latents]), step_t)
        uncond, cond = unet(model_in, step_t, encoder_hidden_states=hidden).sample.chunk(2)
        eps = uncond + cfg.guidance_scale * (cond - uncond)
        stepped = scheduler.step(eps, step_t, latents).prev_sample
        decoded = vae.decode(stepped / vae.config.scaling_factor).sample
    assert hidden.shape == (2, MODEL_MAX_LENGTH, 256)
    assert eps.shape == latents.shape == stepped.shape == (1, 4, latent, latent)
    assert stepped.dtype == torch.float32 and torch.isfinite(stepped).all()
    assert not torch.equal(stepped, latents)
    assert decoded.shape == (1, 1, SIZE, SIZE) and torch.isfinite(decoded).all()
