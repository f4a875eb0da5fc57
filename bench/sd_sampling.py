"""Stable Diffusion sampling speed per mode: our generator vs the stock diffusers pipeline call.

For each mode (SD1 image + prompt, SD2 prompt, SD3 image, SD4 mask + prompt) and the same model,
batch, steps, guidance and strength, in the same process:
  ours   ``SDGenerator.generate`` (tensor in / out, per-image seeded generators, batched, the
         black-output check; retries would add time but are counted, not forced);
  stock  the call the authors make (``Inference_combined.py``): ``pipe(prompt=[...],
         image=[PIL images])`` / ``pipe(prompt=[...], height=, width=)`` with PIL outputs;
and GFLOP per image of one batch (``torch.utils.flop_counter.FlopCounterMode``: UNet with
classifier-free guidance doubles its batch; img2img runs int(steps * strength) steps, so SD1/3/4
cost about 0.8 of SD2 at strength 0.8). Rounds are interleaved and medians reported, so load from
other processes hits both alike. Anchor: the paper reports 1.25 s per 128 px image with 50 steps
on an RTX 4090 (SD v1.4, fp16).

Run: ``python bench/sd_sampling.py`` (a quick-profile-size model with random weights: speed does
not depend on the weights) or ``python bench/sd_sampling.py --model outputs/sd/quick/model``
(any local SD directory) with ``--steps 50 --batch 8 --rounds 3``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from thyroaug.classifier.train import cpu_name
from thyroaug.config import resolve
from thyroaug.contract import CLASSES
from thyroaug.generators.stable_diffusion.checkpoint import save_components
from thyroaug.generators.stable_diffusion.components import (
    SDComponents,
    build_text_encoder,
    build_unet,
    build_vae,
    sd_v1_scheduler_config,
)
from thyroaug.generators.stable_diffusion.config import MODES, SDConfig
from thyroaug.generators.stable_diffusion.pipeline import SDGenerator
from thyroaug.generators.stable_diffusion.tokenizer import train_clip_tokenizer

PAPER_S_PER_IMAGE = 1.25
PROMPT = (
    "anterior thyroid scintigraphy, nodular goiter, enlarged gland, increased heterogeneous "
    "uptake, multiple hot and cold nodules in both lobes, low background, faint salivary glands"
)


def random_quick_model(folder: str, profile: str = "quick") -> str:
    """A randomly initialised scratch model of the profile's size, saved to ``folder``."""
    from diffusers import PNDMScheduler

    cfg = resolve(SDConfig, profile)
    words = [f"{PROMPT}, {c.lower()}" for c in CLASSES] * 5
    tok = train_clip_tokenizer(words, os.path.join(folder, "tok"), cfg.tokenizer_vocab_size, 1)
    vae = build_vae(cfg)
    te = build_text_encoder(cfg, tok)
    factor = 2 ** (len(cfg.vae_block_channels) - 1)
    unet = build_unet(cfg, cfg.resolution // factor, cfg.vae_latent_channels, cfg.text_hidden_size)
    comps = SDComponents(vae, te, tok, unet, PNDMScheduler.from_config(sd_v1_scheduler_config()))
    out = os.path.join(folder, "model")
    save_components(comps, out, {"source": "random", "resolution": cfg.resolution})
    return out


def inputs(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blob images in [0, 1] and their masks."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    r = 0.2 + 0.1 * torch.rand(n, 1, 1, generator=g)
    mask = (((xx - 0.5) ** 2 + (yy - 0.5) ** 2)[None] < r**2).float()
    img = (0.05 + 0.7 * mask + 0.03 * torch.randn(n, size, size, generator=g)).clamp(0, 1)
    return img[:, None], mask[:, None]


def to_pil(x: torch.Tensor, channels: int) -> list[Image.Image]:
    """[N, 1, S, S] in [0, 1] -> PIL images in the VAE's channel mode (L or RGB)."""
    arr = (x[:, 0].numpy() * 255).round().astype(np.uint8)
    mode = "RGB" if channels == 3 else "L"
    return [Image.fromarray(a).convert(mode) for a in arr]


def stock_call(gen: SDGenerator, mode: str, prompts: list[str], init: list | None, cfg: Any):
    """The authors' call: prompts (+ PIL images), default PIL output."""
    kw = {"num_inference_steps": cfg.num_inference_steps, "guidance_scale": cfg.guidance_scale}
    if mode == "SD2":
        r = gen.resolution
        return gen.txt2img(prompt=prompts, height=r, width=r, **kw).images
    return gen.img2img(prompt=prompts, image=init, strength=cfg.strength, **kw).images


def gflop_per_image(fn, n: int) -> float:
    """GFLOP of ``fn()`` (one batch of n images) per image."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / n / 1e9


def sd14_reference_gflop(resolution: int = 128, steps: int = 50, strength: float = 0.8) -> dict:
    """GFLOP per image of the SD v1.4 architecture (the authors' model), counted on the meta
    device (no weights needed): UNet with classifier-free guidance per step, VAE encode / decode.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)  # SD v1 defaults
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            in_channels=3,
            out_channels=3,
            latent_channels=4,
        )
    lat = resolution // 8

    def count(fn) -> float:
        c = FlopCounterMode(display=False)
        with c, torch.no_grad():
            fn()
        return c.get_total_flops() / 1e9

    step = count(
        lambda: unet(
            torch.randn(2, 4, lat, lat, device="meta"),
            torch.tensor([1, 1], device="meta"),
            torch.randn(2, 77, 768, device="meta"),
        )
    )
    dec = count(lambda: vae.decode(torch.randn(1, 4, lat, lat, device="meta")))
    enc = count(lambda: vae.encode(torch.randn(1, 3, resolution, resolution, device="meta")))
    img2img_steps = int(steps * strength)
    return {
        "unet_params_m": sum(p.numel() for p in unet.parameters()) / 1e6,
        "unet_step_cfg_gflop": step,
        "txt2img_gflop_per_image": steps * step + dec,
        "img2img_gflop_per_image": img2img_steps * step + enc + dec,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local SD directory (default: random quick-size model)")
    parser.add_argument("--profile", default="quick", help="size of the random model")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (paper 50)")
    parser.add_argument("--batch", type=int, default=8, help="images per call")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per mode")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or random_quick_model(tmp, args.profile)
        gen = SDGenerator(model, device="cpu" if not torch.cuda.is_available() else None)
        cfg = replace(
            gen.cfg, num_inference_steps=args.steps, gen_batch_size=args.batch, max_retries=0
        )
        n = args.batch
        images, masks = inputs(n, gen.resolution, 0)  # at the model resolution, as the authors
        prompts = [PROMPT] * n
        seeds = list(range(n))
        ch = gen.components.image_channels
        results = {}
        for mode in args.modes.split(","):
            cond = {"SD1": images, "SD3": images, "SD4": masks}.get(mode)
            pil = None if cond is None else to_pil(cond, ch)
            p = [""] * n if mode == "SD3" else prompts

            def ours(mode=mode, p=p):
                return gen.generate(
                    mode,
                    seeds,
                    prompts=p,
                    images=images if mode in ("SD1", "SD3") else None,
                    masks=masks if mode == "SD4" else None,
                    cfg=cfg,
                )

            def stock(mode=mode, p=p, pil=pil):
                return stock_call(gen, mode, p, pil, cfg)

            ours()  # warm-up (allocator, lazy init)
            stock()
            t_ours, t_stock = [], []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                ours()
                t_ours.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                stock()
                t_stock.append(time.perf_counter() - t0)
            gflop = gflop_per_image(ours, n)
            mo, ms = statistics.median(t_ours), statistics.median(t_stock)
            results[mode] = {
                "ours_images_per_s": n / mo,
                "stock_images_per_s": n / ms,
                "ours_s_per_image": mo / n,
                "stock_s_per_image": ms / n,
                "ratio_ours_over_stock": (n / mo) / (n / ms),
                "gflop_per_image": gflop,
                "rounds_ours_s": t_ours,
                "rounds_stock_s": t_stock,
            }
    threads = torch.get_num_threads()
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch threads {threads}, {device}"
    )
    print(
        f"model {args.model or 'random ' + args.profile}: {gen.resolution} px, steps "
        f"{args.steps}, batch {n}, guidance {cfg.guidance_scale}, strength {cfg.strength}, "
        f"scheduler {gen.scheduler_name}; load average before/after "
        f"{load_before:.1f}/{os.getloadavg()[0]:.1f}"
    )
    head = ("mode", "ours img/s", "stock img/s", "ratio", "s/img", "GFLOP/img")
    print(f"{head[0]:<5} {head[1]:>10} {head[2]:>11} {head[3]:>6} {head[4]:>7} {head[5]:>9}")
    for mode, r in results.items():
        print(
            f"{mode:<5} {r['ours_images_per_s']:10.2f} {r['stock_images_per_s']:11.2f} "
            f"{r['ratio_ours_over_stock']:6.2f} {r['ours_s_per_image']:7.3f} "
            f"{r['gflop_per_image']:9.2f}"
        )
    ref = sd14_reference_gflop(128, args.steps, cfg.strength)
    print(f"anchor: paper {PAPER_S_PER_IMAGE} s/img (SD v1.4 at 128 px, 50 steps, RTX 4090, fp16)")
    print(
        f"SD v1.4 architecture at 128 px ({ref['unet_params_m']:.0f} M UNet parameters): "
        f"{ref['txt2img_gflop_per_image']:.0f} GFLOP/img text-to-image, "
        f"{ref['img2img_gflop_per_image']:.0f} GFLOP/img img2img at {args.steps} steps"
    )
    if args.json:
        out = {
            "machine": cpu_name(),
            "cpus": os.cpu_count(),
            "threads": threads,
            "device": device,
            "model": args.model or f"random-{args.profile}",
            "resolution": gen.resolution,
            "steps": args.steps,
            "batch": n,
            "paper_s_per_image": PAPER_S_PER_IMAGE,
            "sd14_reference": ref,
            "results": results,
        }
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
