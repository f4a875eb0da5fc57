"""Device check: the paper path on one CUDA GPU in about 8 minutes, as one JSON summary.

Four parts, each with its own time budget (a part stops where its budget runs out and reports
what it measured so far; a part that needs CUDA on a machine without it is skipped, reason given):

  (a) flow-matching sampling: the paper (MOTFM-size) velocity net at 128 px, batch 16, 10 Euler
      steps, ms/img for ``FlowMatchingPipeline.generate`` in fp32 and under bf16 autocast, each
      against the reference loop of bench/fm_sampling.py (``flow_matching``'s ``ODESolver`` or
      its plain-torch equivalent) in the same precision; GFLOP/img and TFLOP/s;
  (b) classifier: one epoch of the paper ResNet18 config (``thyroaug.classifier.train.fit``) on a
      synthetic 128 px training set of the paper's size (2,200 images), img/s, against the bare
      loop of bench/classifier.py (``bare_epoch``) with the same ResNet18 variant and with the
      unmodified torchvision resnet18;
  (c) Stable Diffusion: 50-step sampling at 128 px (SD2 text-to-image and SD1 img2img) with the
      paper-size scratch components (random weights: speed does not depend on them), or a local
      diffusers SD directory from ``THYROAUG_SD_DIR``, ms/img of ``SDGenerator.generate``
      against the stock diffusers pipeline call of bench/sd_sampling.py;
  (d) a ``--profile paper`` smoke of the study on CUDA: ``thyroaug study`` has no epoch / step
      overrides (checked at run time), so its steps run directly, each as its own
      ``python -m thyroaug.cli`` process in a temporary THYROAUG_HOME with the local tracking
      store: prepare (phantom, scale 0.03) -> train-fm (1 epoch, registered) -> synthesize
      (4 per class, 2 Euler steps) -> train-classifier O and O+FM (1 epoch) -> compare.

The machine (GPU, driver, torch, CUDA, cuDNN, TF32 settings, CPU) is recorded in the JSON.

Usage:
    python bench/device_check.py                         # one CUDA GPU: parts a-d, ~8 min
    python bench/device_check.py --cpu-dry-run           # parts a-c at tiny sizes on the CPU
    python bench/device_check.py --cpu-dry-run --parts d # part d with the smoke profile on CPU
The JSON goes to ``--out`` (default bench/results/device_check.json, or
bench/results/device_check-cpu-dry-run.json with ``--cpu-dry-run``). Exit status 1 when a part
failed or found problems (not for a skip or a spent budget).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(ROOT), str(HERE)):  # the checkout's package, then the bench helpers
    if _path not in sys.path:
        sys.path.insert(0, _path)

PART_TITLES: dict[str, str] = {
    "a": "FM sampling (paper net, 128 px)",
    "b": "classifier epoch (paper ResNet18, 128 px)",
    "c": "SD sampling (50 steps, 128 px)",
    "d": "paper-profile study smoke (CUDA)",
}
DEFAULT_BUDGETS_S: dict[str, float] = {"a": 75, "b": 75, "c": 75, "d": 240}
"""Seconds per part on a GPU: 465 s of work plus start-up stays under 8 minutes."""
STUDY_ID = "device-check"
OWN_MODULES = ("thyroaug", "fm_sampling", "classifier", "sd_sampling", "projects")
"""A missing module of these is a bug (part failed), not a missing package (part skipped)."""


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one mode (the GPU check or the CPU dry run)."""

    fm_profile: str
    fm_batch: int
    fm_steps: int
    fm_rounds: int
    clf_images: int
    clf_size: int
    clf_rounds: int
    sd_profile: str
    sd_steps: int
    sd_batch: int
    sd_rounds: int
    study_profile: str
    study_scale: float


GPU_SIZES = Sizes(
    fm_profile="paper",
    fm_batch=16,
    fm_steps=10,
    fm_rounds=3,
    clf_images=2200,
    clf_size=128,
    clf_rounds=2,
    sd_profile="paper",
    sd_steps=50,
    sd_batch=16,
    sd_rounds=2,
    study_profile="paper",
    study_scale=0.03,
)
DRY_RUN_SIZES = Sizes(
    fm_profile="smoke",
    fm_batch=2,
    fm_steps=10,
    fm_rounds=2,
    clf_images=64,
    clf_size=32,
    clf_rounds=1,
    sd_profile="smoke",
    sd_steps=3,
    sd_batch=2,
    sd_rounds=1,
    study_profile="smoke",
    study_scale=0.03,
)


class BudgetSpent(Exception):
    """A part's time budget ran out (its results so far are kept)."""


class StepFailed(Exception):
    """A study step exited non-zero."""


class PartSkipped(Exception):
    """A part cannot run on this machine (the message says why)."""


@dataclass
class Budget:
    """Seconds a part may take, counted from its start."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def check(self, done: str, need: float = 0.0) -> None:
        """Raise ``BudgetSpent`` unless more than ``need`` seconds are left after ``done``."""
        if self.left() <= need:
            raise BudgetSpent(f"budget of {self.seconds:.0f} s spent after {done}")


@dataclass
class Context:
    """What every part needs: the device, the sizes, where to print."""

    device: torch.device
    sizes: Sizes
    dry_run: bool
    lines: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        """Print a human line now and keep it for the JSON."""
        print(line, flush=True)
        self.lines.append(line)


def bench_module(name: str) -> ModuleType:
    """A helper module of bench/ (fm_sampling, classifier, sd_sampling), imported on demand."""
    return importlib.import_module(name)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_of(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of one call, GPU work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# machine
# ------------------------------------------------------------------------------------------------
def project_dependencies() -> dict[str, list[str]]:
    """pyproject's dependencies that are not installed here, or installed at another version."""
    import tomllib
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    missing, other = [], []
    for dep in deps:
        req = Requirement(dep)
        try:
            have = version(req.name)
        except PackageNotFoundError:
            missing.append(req.name)
            continue
        if req.specifier and not req.specifier.contains(have.split("+")[0], prereleases=True):
            other.append(f"{req.name} {have} (pyproject: {req.specifier})")
    return {"missing": missing, "other_version": other}


def _run_quiet(argv: list[str], timeout: float = 10.0) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def machine_info(device: torch.device) -> dict[str, Any]:
    """GPU, driver, torch / CUDA / cuDNN versions, precision switches, CPU, commit."""
    from thyroaug.classifier.train import cpu_name

    info: dict[str, Any] = {
        "device": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "commit": _run_quiet(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) or None,
        "project_dependencies": project_dependencies(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        smi = "nvidia-smi --query-gpu=driver_version --format=csv,noheader"
        driver = _run_quiet(smi.split()).splitlines() if shutil.which("nvidia-smi") else []
        info.update(
            gpu=torch.cuda.get_device_name(device),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            driver=driver[0] if driver else None,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    return info


# ------------------------------------------------------------------------------------------------
# (a) flow-matching sampling
# ------------------------------------------------------------------------------------------------
def part_fm(ctx: Context, budget: Budget, out: dict[str, Any]) -> None:
    """FM sampler vs the reference loop, fp32 and bf16 autocast (bf16: CUDA only)."""
    from thyroaug.config import resolve
    from thyroaug.generators.flow_matching.config import FMConfig
    from thyroaug.generators.flow_matching.model import count_parameters
    from thyroaug.generators.flow_matching.pipeline import FlowMatchingPipeline
    from thyroaug.generators.flow_matching.sampler import ODESampler

    fm = bench_module("fm_sampling")
    dev, s = ctx.device, ctx.sizes
    cfg = resolve(FMConfig, s.fm_profile)
    net = fm.build_net(cfg, dev)  # seeded, MONAI's zero-initialised tensors given small values
    params = count_parameters(net)
    gflop_img = fm.flops_per_forward(net, cfg.image_size, dev) * s.fm_steps / 1e9
    x0, labels, masks, cond = fm.make_inputs(cfg, s.fm_batch, dev)
    ref_run, ref_name = fm.reference_sampler(net, s.fm_steps)
    sampler = ODESampler("euler", s.fm_steps)
    out.update(
        net=s.fm_profile,
        image_size=cfg.image_size,
        batch=s.fm_batch,
        steps=s.fm_steps,
        params_unet=params["unet"],
        params_controlnet=params["controlnet"],
        gflop_per_image=gflop_img,
        reference=ref_name,
    )
    ctx.say(
        f"(a) FM sampler: {s.fm_profile} net {cfg.image_size} px "
        f"({params['unet'] / 1e6:.1f} M + {params['controlnet'] / 1e6:.1f} M params), "
        f"batch {s.fm_batch}, {s.fm_steps} Euler steps, {gflop_img:.0f} GFLOP/img; "
        f"reference = {ref_name}"
    )
    precisions = ["fp32"]
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        precisions.append("bf16")
    else:
        out["note"] = "bf16 autocast rows need CUDA with bf16 (FlowMatchingPipeline: CUDA only)"

    def reference(precision: str) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                return ref_run(x0, cond, masks)

        return run

    def ours(precision: str) -> Callable[[], torch.Tensor]:
        autocast = "bf16" if precision == "bf16" else "no"
        pipe = FlowMatchingPipeline(net, device=dev, autocast=autocast)
        return lambda: pipe.generate(x0, labels, masks, sampler)

    variants: dict[str, Callable[[], torch.Tensor]] = {}
    for precision in precisions:
        variants[f"reference {precision}"] = reference(precision)
        variants[f"ours {precision}"] = ours(precision)
    outputs: dict[str, torch.Tensor] = {}
    warmup: dict[str, float] = {}
    for name, fn in variants.items():  # warm-up: allocator, cuDNN / cuBLAS handles
        t0 = time.perf_counter()
        outputs[name] = fn().float()
        sync(dev)
        warmup[name] = time.perf_counter() - t0
        budget.check(f"warm-up of {name}")
    times: dict[str, list[float]] = {name: [] for name in variants}
    rows: dict[str, dict[str, Any]] = {}
    out["variants"] = rows
    try:
        for r in range(s.fm_rounds):  # interleaved rounds: a disturbance hits all variants alike
            for name, fn in variants.items():
                times[name].append(seconds_of(fn, dev))
                budget.check(f"round {r + 1} of {name}")
    finally:
        ref32 = outputs["reference fp32"]
        for name, ts in times.items():
            if not ts:
                continue
            precision = name.split()[-1]
            ref_ts = times[f"reference {precision}"]
            best = min(ts)
            rows[name] = {
                "ms_per_image": 1000 * best / s.fm_batch,
                "median_ms_per_image": 1000 * statistics.median(ts) / s.fm_batch,
                "images_per_s": s.fm_batch / best,
                "tflop_per_s": gflop_img * s.fm_batch / best / 1e3,
                "speedup_vs_reference_same_precision": min(ref_ts) / best if ref_ts else None,
                "max_abs_diff_vs_reference_fp32": float((outputs[name] - ref32).abs().max()),
                "warmup_s": warmup[name],
                "times_s": ts,
            }
        for name, row in rows.items():
            ratio = row["speedup_vs_reference_same_precision"]
            ctx.say(
                f"    {name:<16} {row['ms_per_image']:9.2f} ms/img  {row['tflop_per_s']:7.2f} "
                f"TFLOP/s  {ratio:.2f}x the reference's speed  max|diff| vs ref fp32 "
                f"{row['max_abs_diff_vs_reference_fp32']:.1e}"
            )
        if "ours bf16" in rows and "ours fp32" in rows:
            gain = rows["ours fp32"]["ms_per_image"] / rows["ours bf16"]["ms_per_image"]
            out["bf16_speedup_over_fp32"] = gain
            ctx.say(f"    bf16 autocast: x{gain:.2f} over fp32 (ours)")


# ------------------------------------------------------------------------------------------------
# (b) classifier epoch
# ------------------------------------------------------------------------------------------------
def part_classifier(ctx: Context, budget: Budget, out: dict[str, Any]) -> None:
    """One paper-config epoch (``fit``) vs bare loops (bench/classifier.py), images/s."""
    from torchvision.models import resnet18

    from thyroaug.classifier.config import ClassifierConfig
    from thyroaug.classifier.model import build_resnet18
    from thyroaug.classifier.train import fit
    from thyroaug.config import resolve
    from thyroaug.contract import CLASSES

    clf = bench_module("classifier")
    dev, s = ctx.device, ctx.sizes
    x, y = clf.make_data(s.clf_images, s.clf_size, seed=0)
    xv, yv = clf.make_data(64, s.clf_size, seed=1)
    cfg = resolve(
        ClassifierConfig,
        "paper",
        epochs=1,
        init="random",
        image_size=s.clf_size,
        device=dev.type,
        num_threads=torch.get_num_threads() if dev.type == "cpu" else 0,
    )
    bs = cfg.batch_size
    out.update(
        images=s.clf_images,
        image_size=s.clf_size,
        batch_size=bs,
        deterministic=cfg.deterministic,
        channels_last=cfg.channels_last,
    )
    ctx.say(
        f"(b) classifier: paper config (ResNet18 3x3/1 conv1, Adam 1e-4, batch {bs}, "
        f"channels_last {cfg.channels_last}, deterministic {cfg.deterministic}), one epoch of "
        f"{s.clf_images} synthetic {s.clf_size} px images"
    )
    warm = min(len(y), 3 * bs)
    fit(x[:warm], y[:warm], xv, yv, cfg, progress=False)  # CUDA context, cuDNN handles
    budget.check("warm-up of ours")
    xd, yd = x.to(dev), y.to(dev)

    def bare(kind: str) -> Callable[[], float]:
        """A bare loop of bench/classifier.py on the device; returns images/s of one epoch."""
        torch.manual_seed(0)
        channels = 1
        if kind == "bare torchvision resnet18":
            model: torch.nn.Module = resnet18(weights=None, num_classes=len(CLASSES))
            channels = 3
        else:
            model, _ = build_resnet18(init="random")
        model = model.to(dev)
        cl = kind == "bare paper variant, channels_last"
        if cl:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(0)
        clf.bare_epoch(model, opt, xd[:warm], yd[:warm], bs, cl, gen, channels)  # warm-up

        def run() -> float:
            seconds = seconds_of(
                lambda: clf.bare_epoch(model, opt, xd, yd, bs, cl, gen, channels), dev
            )
            return len(yd) / seconds

        return run

    def ours(config: ClassifierConfig) -> Callable[[], float]:
        def run() -> float:
            result = fit(x, y, xv, yv, config, progress=False)
            return float(result.history[0]["train_images_per_s"])  # train phase, synced

        return run

    loops: dict[str, Callable[[], float]] = {
        "ours (fit, paper config)": ours(cfg),
        "ours, deterministic off": ours(replace(cfg, deterministic=False)),
    }
    for kind in (
        "bare paper variant",
        "bare paper variant, channels_last",
        "bare torchvision resnet18",
    ):
        loops[kind] = bare(kind)
        budget.check(f"warm-up of {kind}")
    rates: dict[str, list[float]] = {k: [] for k in loops}
    try:
        for r in range(s.clf_rounds):
            for kind, run in loops.items():
                rates[kind].append(run())
                budget.check(f"round {r + 1} of {kind}")
    finally:
        best = {k: max(v) for k, v in rates.items() if v}
        out["images_per_s"] = best
        out["rounds_images_per_s"] = rates
        ours_rate = best.get("ours (fit, paper config)")
        for kind, rate in best.items():
            ratio = ""
            if ours_rate and kind.startswith("bare"):
                ratio = f"  ours runs at {ours_rate / rate:.2f}x this loop's img/s"
            ctx.say(f"    {kind:<36} {rate:9.1f} img/s  epoch {len(y) / rate:7.2f} s{ratio}")
        if ours_rate and "bare torchvision resnet18" in best:
            out["ours_over_bare_torchvision"] = ours_rate / best["bare torchvision resnet18"]
        if ours_rate and "bare paper variant" in best:
            out["ours_over_bare_same_model"] = ours_rate / best["bare paper variant"]


# ------------------------------------------------------------------------------------------------
# (c) Stable Diffusion sampling
# ------------------------------------------------------------------------------------------------
def part_sd(ctx: Context, budget: Budget, out: dict[str, Any]) -> None:
    """SDGenerator.generate vs the stock diffusers call (bench/sd_sampling.py), ms/img."""
    from thyroaug.generators.stable_diffusion.pipeline import SDGenerator

    sd = bench_module("sd_sampling")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    dev, s = ctx.device, ctx.sizes
    local = os.environ.get("THYROAUG_SD_DIR", "")
    with tempfile.TemporaryDirectory(prefix="thyroaug-sd-check-") as tmp:
        t0 = time.perf_counter()
        model = local or sd.random_quick_model(tmp, s.sd_profile)
        gen = SDGenerator(model, device=dev)  # fp16 on CUDA (the authors' inference dtype)
        cfg = replace(
            gen.cfg, num_inference_steps=s.sd_steps, gen_batch_size=s.sd_batch, max_retries=0
        )
        n = s.sd_batch
        images, _ = sd.inputs(n, gen.resolution, 0)
        prompts = [sd.PROMPT] * n
        seeds = list(range(n))
        unet_m = sum(p.numel() for p in gen.components.unet.parameters()) / 1e6
        out.update(
            model=local or f"random scratch model, {s.sd_profile} profile sizes",
            resolution=gen.resolution,
            unet_params_m=unet_m,
            dtype=str(gen.dtype),
            scheduler=gen.scheduler_name,
            steps=s.sd_steps,
            batch=n,
            guidance=cfg.guidance_scale,
            strength=cfg.strength,
            build_s=time.perf_counter() - t0,
            paper_s_per_image=sd.PAPER_S_PER_IMAGE,
        )
        ctx.say(
            f"(c) SD sampling: {out['model']} ({gen.resolution} px, UNet {unet_m:.1f} M, "
            f"{gen.dtype}), {s.sd_steps} steps, batch {n}, guidance {cfg.guidance_scale}"
        )
        rows: dict[str, dict[str, Any]] = {}
        out["modes"] = rows
        for mode in ("SD2", "SD1"):
            pil = None if mode == "SD2" else sd.to_pil(images, gen.components.image_channels)

            def ours(mode: str = mode) -> object:
                init = images if mode == "SD1" else None
                return gen.generate(mode, seeds, prompts=prompts, images=init, cfg=cfg)

            def stock(mode: str = mode, pil: list | None = pil) -> object:
                return sd.stock_call(gen, mode, prompts, pil, cfg)

            ours()
            stock()
            budget.check(f"warm-up of {mode}")
            t_ours: list[float] = []
            t_stock: list[float] = []
            try:
                for r in range(s.sd_rounds):
                    t_ours.append(seconds_of(ours, dev))
                    t_stock.append(seconds_of(stock, dev))
                    budget.check(f"round {r + 1} of {mode}")
            finally:
                if t_ours and t_stock:
                    mo, ms = min(t_ours), min(t_stock)
                    rows[mode] = {
                        "ours_ms_per_image": 1000 * mo / n,
                        "stock_ms_per_image": 1000 * ms / n,
                        "ours_over_stock_speed": ms / mo,
                        "rounds_ours_s": t_ours,
                        "rounds_stock_s": t_stock,
                    }
                    ctx.say(
                        f"    {mode}: ours {1000 * mo / n:8.1f} ms/img, stock diffusers call "
                        f"{1000 * ms / n:8.1f} ms/img (ours at {ms / mo:.2f}x the stock speed)"
                    )
        ctx.say(
            f"    anchor: paper {sd.PAPER_S_PER_IMAGE} s/img (SD v1.4, 128 px, 50 steps, "
            "RTX 4090, fp16); set THYROAUG_SD_DIR to a local SD v1.4 directory to compare"
        )


# ------------------------------------------------------------------------------------------------
# (d) paper-profile study smoke
# ------------------------------------------------------------------------------------------------
def command_flags(command: str) -> set[str]:
    """The ``--flags`` one ``thyroaug`` command accepts (its parser, no import side effects)."""
    from thyroaug.jobs.commands import build_parser

    parser = build_parser(only=command)
    sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    return {flag for action in sub._actions for flag in action.option_strings}


def study_steps(home: Path, profile: str, scale: float) -> list[tuple[str, list[str]]]:
    """The study's steps for O and O+FM with tiny step counts (``@name``: filled in later)."""
    q = {
        "cohort": shlex.quote(str(home / "cohort")),
        "phantom": shlex.quote(str(home / "phantom")),
        "fm": shlex.quote(str(home / "fm")),
        "synthetic": shlex.quote(str(home / "synthetic")),
        "profile": profile,
        "scale": scale,
        "study": STUDY_ID,
    }
    commands = {
        "prepare": "prepare --phantom-scale {scale} --phantom-dir {phantom} --out {cohort}"
        " --no-progress",
        "train-fm": "train-fm --profile {profile} --cohort {cohort} --output {fm} --epochs 1"
        " --register --no-progress",
        "synthesize": "synthesize --generator @generator --per-class 4 --steps 2"
        " --cohort {cohort} --no-fidelity --out {synthetic} --no-progress",
        "train-classifier O": "train-classifier --scenario O --profile {profile} --cohort {cohort}"
        " --epochs 1 --bootstrap 20 --study-id {study} --no-progress --allow-substitutes",
        "train-classifier O+FM": "train-classifier --scenario O+FM --profile {profile}"
        " --cohort {cohort} --synthetic FM=@synthetic --per-class 4 --epochs 1 --bootstrap 20"
        " --study-id {study} --no-progress --allow-substitutes",
        "compare": "compare --study-id {study}",
    }
    return [(name, shlex.split(text.format(**q))) for name, text in commands.items()]


def _tail(text: str, chars: int = 1500) -> str:
    return text[-chars:]


def _run_step(
    name: str, argv: list[str], home: Path, env: dict[str, str], budget: Budget
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """One ``python -m thyroaug.cli`` step under the part's remaining budget."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "thyroaug.cli", *argv],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(budget.left(), 1.0),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BudgetSpent(f"budget of {budget.seconds:.0f} s spent during {name}") from exc
    record = {
        "step": name,
        "argv": argv,
        "returncode": proc.returncode,
        "seconds": time.perf_counter() - t0,
        "tail": _tail(proc.stdout + proc.stderr),
    }
    return record, proc


def part_study(ctx: Context, budget: Budget, out: dict[str, Any]) -> None:
    """Run the study's steps for O and O+FM with 1 epoch / 2 sampling steps, in order.

    O+FM first gets the synthetic set as the study hands it over (``runs:/<id>/synthetic/FM``);
    if that fails, the failure is recorded under ``problems`` and the step is retried with the
    local copy ``synthesize --out`` kept, so the rest of the path is still checked.
    """
    s = ctx.sizes
    missing = project_dependencies()["missing"]
    if missing:
        raise PartSkipped(
            f"the project's environment is incomplete here (not installed: {', '.join(missing)}); "
            "run it where `pip install .` ran, e.g. in the docker/Dockerfile.cuda image"
        )
    study = sorted(command_flags("study"))
    overrides = [f for f in study if f in ("--epochs", "--set", "--max-steps", "--steps")]
    out.update(study_flags=study, study_overrides=overrides, profile=s.study_profile)
    problems: list[str] = []
    out["problems"] = problems
    ctx.say(
        f"(d) study smoke, --profile {s.study_profile}, phantom scale {s.study_scale}: "
        + (
            f"`thyroaug study` has {', '.join(overrides)} but the steps run directly here"
            if overrides
            else "`thyroaug study` has no epoch / step overrides, so its steps run directly"
        )
    )
    with tempfile.TemporaryDirectory(prefix="thyroaug-device-check-") as tmp:
        home = Path(tmp)
        steps = study_steps(home, s.study_profile, s.study_scale)
        for name, argv in steps:  # a drifted flag fails now, not after minutes of training
            unknown = {w for w in argv if w.startswith("--")} - command_flags(argv[0])
            if unknown:
                raise StepFailed(
                    f"{name}: `thyroaug {argv[0]}` has no {', '.join(sorted(unknown))}"
                )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "THYROAUG_"))}
        env.update(THYROAUG_HOME=str(home), THYROAUG_TRACKING="local", PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        found: dict[str, str] = {"local_synthetic": str(home / "synthetic" / "FM")}
        records: list[dict[str, Any]] = []
        out["steps"] = records
        for name, template in steps:
            budget.check(f"the step before {name}", need=5.0)
            argv = [re.sub(r"@(\w+)", lambda m: found[m.group(1)], w) for w in template]
            record, proc = _run_step(name, argv, home, env, budget)
            records.append(record)
            ctx.say(f"    {name:<22} exit {proc.returncode}  {record['seconds']:6.1f} s")
            if proc.returncode != 0 and "@synthetic" in " ".join(template):
                problems.append(f"{name} with {found['synthetic']}: {_tail(record['tail'], 400)}")
                ctx.say(f"    PROBLEM: {name} fails with the study's runs:/ reference; retrying")
                local = [w.replace(found["synthetic"], found["local_synthetic"]) for w in argv]
                record, proc = _run_step(f"{name} (local copy)", local, home, env, budget)
                records.append(record)
                ctx.say(
                    f"    {record['step']:<22} exit {proc.returncode}  {record['seconds']:6.1f} s"
                )
            if proc.returncode != 0:
                raise StepFailed(f"{name} exited {proc.returncode}: {_tail(record['tail'], 600)}")
            if m := re.search(r"^registered: (\S+)", proc.stdout, re.M):
                found["generator"] = m.group(1)
            elif m := re.search(r"^model URI: (\S+)", proc.stdout, re.M):
                found.setdefault("generator", m.group(1))
            if m := re.search(r"^synthetic set: (\S+)", proc.stdout, re.M):
                found["synthetic"] = m.group(1)
            if m := re.search(r"device[= ](cuda\S*)", proc.stdout + proc.stderr):
                out.setdefault("device_seen_in_logs", m.group(1))
        out["references"] = found


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------
PARTS: dict[str, Callable[[Context, Budget, dict[str, Any]], None]] = {
    "a": part_fm,
    "b": part_classifier,
    "c": part_sd,
    "d": part_study,
}


def skip_reason(key: str, ctx: Context) -> str | None:
    """Why a part does not run here, or None."""
    if ctx.device.type == "cuda":
        return None
    if not ctx.dry_run:
        return (
            "no CUDA device visible (torch.cuda.is_available() is False); "
            "`--cpu-dry-run` runs parts a-c at tiny sizes on the CPU"
        )
    return None


def run_part(key: str, ctx: Context, budget_s: float) -> dict[str, Any]:
    """Run one part under its budget; never raises (the error goes into the result)."""
    out: dict[str, Any] = {"title": PART_TITLES[key], "budget_s": budget_s}
    reason = skip_reason(key, ctx)
    if reason:
        ctx.say(f"({key}) {PART_TITLES[key]}: skipped: {reason}")
        return {**out, "status": "skipped", "reason": reason}
    budget = Budget(budget_s)
    status = "ok"
    try:
        PARTS[key](ctx, budget, out)
    except BudgetSpent as exc:
        status, out["reason"] = "partial", str(exc)
        ctx.say(f"    stopped: {exc}")
    except PartSkipped as exc:
        status, out["reason"] = "skipped", str(exc)
        ctx.say(f"    skipped: {exc}")
    except Exception as exc:
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if missing and missing.split(".")[0] not in OWN_MODULES:
            status = "skipped"
            out["reason"] = f"Python package {missing!r} is not installed here (pyproject lists it)"
            ctx.say(f"    skipped: {out['reason']}")
        else:
            status, out["error"] = "failed", f"{type(exc).__name__}: {exc}"
            out["traceback"] = _tail(traceback.format_exc(), 3000)
            ctx.say(f"    FAILED: {type(exc).__name__}: {exc}")
    finally:
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    if status == "ok" and out.get("problems"):
        status = "problems"
    out["status"] = status
    out["seconds"] = budget.seconds - budget.left()
    ctx.say(f"    ({key}) {status} in {out['seconds']:.1f} s (budget {budget_s:.0f} s)")
    return out


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers worth a glance (printed as JSON at the end)."""
    parts = report["parts"]
    short: dict[str, Any] = {
        "machine": {k: report["machine"].get(k) for k in ("gpu", "torch", "cuda", "device")},
        "status": {k: v["status"] for k, v in parts.items()},
    }
    a = parts.get("a", {}).get("variants", {})
    short["fm_ms_per_image"] = {k: round(v["ms_per_image"], 3) for k, v in a.items()}
    b = parts.get("b", {}).get("images_per_s", {})
    short["classifier_images_per_s"] = {k: round(v, 1) for k, v in b.items()}
    c = parts.get("c", {}).get("modes", {})
    short["sd_ms_per_image"] = {
        k: {"ours": round(v["ours_ms_per_image"], 2), "stock": round(v["stock_ms_per_image"], 2)}
        for k, v in c.items()
    }
    d = parts.get("d", {}).get("steps", [])
    short["study_steps_s"] = {r["step"]: round(r.get("seconds", -1), 1) for r in d}
    short["problems"] = [p for part in parts.values() for p in part.get("problems", [])]
    short["total_s"] = round(report["total_s"], 1)
    return short


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the parts, write the JSON; exit 1 when a part failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", help="comma list of a, b, c, d (default a,b,c,d; dry run a,b,c)")
    parser.add_argument(
        "--cpu-dry-run", action="store_true", help="tiny sizes on the CPU, to prove the script"
    )
    parser.add_argument("--out", help="JSON path (default bench/results/device_check*.json)")
    for key in PARTS:
        parser.add_argument(
            f"--budget-{key}",
            type=float,
            default=DEFAULT_BUDGETS_S[key],
            help=f"seconds for part {key} (default {DEFAULT_BUDGETS_S[key]:.0f})",
        )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dry = bool(args.cpu_dry_run)
    device = torch.device("cpu" if dry or not torch.cuda.is_available() else "cuda")
    parts = (args.parts or ("a,b,c" if dry else "a,b,c,d")).split(",")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}: choose from a, b, c, d")
    ctx = Context(device=device, sizes=DRY_RUN_SIZES if dry else GPU_SIZES, dry_run=dry)
    default_out = "device_check-cpu-dry-run.json" if dry else "device_check.json"
    out_path = Path(args.out) if args.out else HERE / "results" / default_out
    t0 = time.perf_counter()
    if dry:
        ctx.say("CPU dry run: tiny sizes that prove the script runs; the numbers are no benchmark")
    machine = machine_info(device)
    ctx.say(
        f"device check ({'CPU dry run' if dry else device.type}): "
        f"{machine.get('gpu') or machine['cpu']}, torch {machine['torch']}"
        + (f", CUDA {machine['cuda']}" if device.type == "cuda" else "")
    )
    report: dict[str, Any] = {
        "mode": "cpu-dry-run" if dry else "device",
        "machine": machine,
        "sizes": asdict(ctx.sizes),
        "parts": {},
    }
    for key in parts:
        report["parts"][key] = run_part(key, ctx, getattr(args, f"budget_{key}"))
    report["total_s"] = time.perf_counter() - t0
    report["lines"] = ctx.lines
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(summary(report), indent=1))
    print(f"written: {out_path}")
    return 1 if any(p["status"] in ("failed", "problems") for p in report["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
