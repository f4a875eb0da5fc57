"""Benchmark: flow-matching sampling, ours against a MOTFM-style reference loop.

Same velocity net and weights, same batch, same Euler steps, side by side in one run:

* **reference**: the ``flow_matching`` library's ``ODESolver`` (what MOTFM's ``inferer.py`` calls
  per batch: ``model.eval()``, ``torch.no_grad``, fp32, contiguous tensors, ``time_grid =
  linspace(0, 1, steps)``, ``step_size = 1 / steps``, ``return_intermediates=True``), wrapping the
  net in MOTFM's calling convention (``forward(x, t, cond=one-hot [B, 1, 4], masks)``). If the
  library is not installed, a plain-torch loop doing the same per-step work: one velocity call of
  the same net and ``x + h * v`` per step, no grad, fp32, contiguous memory format.
* **ours**: ``FlowMatchingPipeline.generate`` with its default settings (what ``synthesize``
  runs), followed by the heap release that ``sample`` does after each call.
* **ours-fast**: ours after ``enable_fast_sampling()`` (``synthesize --fast``: channels-last +
  ``torch.compile``). Its warm-up is the compilation (a fresh inductor cache unless
  ``--compile-cache warm``; with ``--last-batch`` also the recompilation that a smaller last
  batch triggers); the table says after how many images that pays back against ``ours``.
* with ``--ablation``: ours with one piece of the default path switched off at a time (and all
  of them: the pipeline before these changes), to attribute the gain.

Every variant runs in its own process (spawned, same seed, so the same weights: allocator state
and ``torch.compile`` caches are per process) and the variants are timed in interleaved rounds
(reference, ours, ours-fast, ... repeated) so that load from other processes hits all alike. The
table gives the best round (least disturbed) in ms per image, the speed-up over the reference
as best/best, median/median and (one thread) best process CPU time (stable under load), GFLOP
per image (``FlopCounterMode`` on one forward, times the velocity evaluations) and the fraction
of two measured peaks on this machine: a 2048^3 fp32 matmul (``torch.mm``, i.e. MKL sgemm) and
a 3x3 convolution (64 -> 64 channels, 32 px, batch 32, channels-last, i.e. oneDNN). On CPUs
where MKL takes its AVX2 path (non-Intel) the convolution peak is the higher, truer roofline.
Thread count, CPU name and the load average are recorded. ``--profile`` prints where the time
goes (``torch.profiler`` by op class, reference and ours) instead of timing.

Nets: ``quick`` is the quick profile as configured, ``quick64`` the same net at 64 px (the
setting of earlier results), ``paper64`` / ``paper`` the paper net.

Usage:
    .venv/bin/python bench/fm_sampling.py --threads 1 \
        --out bench/results/fm_sampling-cpu-1thread.json
    .venv/bin/python bench/fm_sampling.py --threads 2 --ablation --compile off
    .venv/bin/python bench/fm_sampling.py --profile --nets quick64 --batch 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from thyroaug.config import resolve
from thyroaug.contract import CLASSES
from thyroaug.generators.flow_matching.config import FMConfig
from thyroaug.generators.flow_matching.fast_sampling import release_freed_heap
from thyroaug.generators.flow_matching.model import VelocityNet, count_parameters
from thyroaug.generators.flow_matching.pipeline import FlowMatchingPipeline
from thyroaug.generators.flow_matching.sampler import ODESampler, initial_noise

SYNTHESIZE_IMAGES = 400
"""A typical synthesize call of the quick profile: 100 images per class x 4 classes."""

ABLATIONS: dict[str, dict] = {
    "ours without channels_last": {"channels_last": False},
    "ours without oneDNN linear": {"onednn_linear": False},
    "ours without heap retention": {"retain_heap": False},
    "ours without mask-embedding cache": {"no_cond_cache": True},
    "ours with torchdiffeq odeint": {"odeint": True},
    "ours with all of these off (before)": {
        "channels_last": False,
        "onednn_linear": False,
        "retain_heap": False,
        "no_cond_cache": True,
        "odeint": True,
    },
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_both(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds of one call.

    On a CPU shared with other jobs wall time swings widely; the process CPU time of a
    one-thread run measures the work done and stays stable (it is not meaningful on a GPU).
    """
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """Best measured fp32 GFLOP/s of an n^3 matmul."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best = min(timed_both(lambda: a @ b, device)[0] for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def conv_peak(device: torch.device, repeats: int = 10) -> float:
    """Best measured fp32 GFLOP/s of a 3x3 convolution 64 -> 64 at 32 px, batch 32, NHWC."""
    fmt = torch.channels_last
    x = torch.randn(32, 64, 32, 32, device=device).contiguous(memory_format=fmt)
    w = torch.randn(64, 64, 3, 3, device=device).contiguous(memory_format=fmt)
    conv = torch.nn.functional.conv2d
    with torch.inference_mode():
        conv(x, w, padding=1)
        best = min(timed_both(lambda: conv(x, w, padding=1), device)[0] for _ in range(repeats))
    return 2 * 32 * 32 * 32 * 64 * 64 * 9 / best / 1e9


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


class MotfmStyle(nn.Module):
    """MOTFM's ``MergedModel`` calling convention around our net (cond = one-hot context)."""

    def __init__(self, net: VelocityNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None, masks=None) -> torch.Tensor:
        labels = cond[:, 0].argmax(-1) if cond is not None else None
        return self.net(x, t, labels, masks)


def reference_sampler(net: VelocityNet, steps: int) -> tuple[Callable, str]:
    """MOTFM's per-batch sampling: flow_matching's ODESolver (or the plain-torch equivalent)."""
    model = MotfmStyle(net).eval()
    grid = torch.linspace(0, 1, steps)
    try:
        from importlib.metadata import version

        from flow_matching.solver import ODESolver

        solver = ODESolver(velocity_model=model)

        def run(x0, cond, masks):
            with torch.no_grad():
                sol = solver.sample(
                    time_grid=grid.to(x0.device),
                    x_init=x0,
                    method="euler",
                    step_size=1.0 / steps,
                    return_intermediates=True,
                    cond=cond,
                    masks=masks,
                )
            return sol[-1]

        return run, f"flow_matching {version('flow_matching')} ODESolver"
    except ImportError:
        # flow_matching's ODESolver hands torchdiffeq a grid of step_size 1/steps and keeps the
        # states at the time_grid points; per step: one velocity call and x + h * v, no grad.
        def run(x0, cond, masks):
            x, h = x0, 1.0 / steps
            states = [x]
            with torch.no_grad():
                for k in range(steps):
                    t = torch.full((), k * h, device=x.device)
                    x = x + h * model(x, t, cond=cond, masks=masks)
                    states.append(x)
            return states[-1]

        return run, "plain-torch Euler loop, no_grad, fp32, NCHW (flow_matching not installed)"


class _OdeintSampler(ODESampler):
    """The sampler as it was: torchdiffeq's ``odeint`` for the fixed-step solvers too."""

    def integrate(self, velocity, x0):
        return self.integrate_odeint(velocity, x0)


def build_net(cfg: FMConfig, device: torch.device) -> VelocityNet:
    """The benchmark net: seeded init, MONAI's zero-initialised tensors given small values."""
    torch.manual_seed(0)
    net = VelocityNet(cfg).to(device).eval()
    with torch.no_grad():  # a trained-like net: MONAI zero-initialises some projections
        for p in net.parameters():
            if float(p.abs().sum()) == 0.0:
                p.normal_(0.0, 0.02)
    return net


def make_inputs(cfg: FMConfig, batch: int, device: torch.device):
    size = cfg.image_size
    x0 = initial_noise(range(batch), (1, size, size)).to(device)
    labels = torch.arange(batch, device=device) % len(CLASSES)
    masks = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(1)) > 0.5
    masks = masks.float().to(device)
    cond = torch.nn.functional.one_hot(labels, len(CLASSES)).float()[:, None, :]
    return x0, labels, masks, cond


def make_runner(variant: str, cfg: FMConfig, batch: int, steps: int, device: torch.device):
    """(run(), its name, a function giving a runner for another batch size or None)."""
    net = build_net(cfg, device)
    if variant == "reference":
        ref_run, name = reference_sampler(net, steps)

        def runner_for(b: int) -> Callable[[], torch.Tensor]:
            x0, _, masks, cond = make_inputs(cfg, b, device)
            return lambda: ref_run(x0, cond, masks)

        return runner_for(batch), "reference: " + name, None
    opts = dict(ABLATIONS.get(variant, {}))
    no_cond_cache = opts.pop("no_cond_cache", False)
    sampler = _OdeintSampler("euler", steps) if opts.pop("odeint", False) else None
    pipe = FlowMatchingPipeline(net, device=device, **opts)
    if variant == "ours-fast":
        pipe.enable_fast_sampling()
    if no_cond_cache:  # put the embedding back into the view: evaluated at every step again
        view = pipe._sampling_net
        if view.cond_embedding is not None:
            view.net.controlnet.controlnet_cond_embedding = view.cond_embedding
            view.cond_embedding = None
    sampler = sampler or ODESampler("euler", steps)

    def runner_for(b: int) -> Callable[[], torch.Tensor]:
        x0, labels, masks, _ = make_inputs(cfg, b, device)

        def run() -> torch.Tensor:
            out = pipe.generate(x0, labels, masks, sampler)
            if pipe.retain_heap:
                release_freed_heap()  # what sample() does after each call
            return out

        return run

    label = {"ours": "ours: defaults", "ours-fast": "ours-fast: enable_fast_sampling()"}
    return runner_for(batch), label.get(variant, variant), runner_for


def worker(
    conn,
    variant: str,
    cfg: FMConfig,
    batch: int,
    steps: int,
    device: str,
    threads: int,
    last_batch: bool,
):
    """One variant in its own process: warm up, then time one call per 'run' message."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    run, name, runner_for = make_runner(variant, cfg, batch, steps, dev)
    warm, _ = timed_both(run, dev)  # warm-up (and compilation)
    extra = {}
    if variant == "ours-fast" and runner_for is not None and last_batch:
        # a synthesize call ends with a smaller batch (400 = 12 x 32 + 16): one more compile
        other = max(1, batch // 2)
        first, _ = timed_both(runner_for(other), dev)
        again, _ = timed_both(runner_for(other), dev)
        extra = {"other_batch": other, "other_batch_first_call_s": first, "other_batch_s": again}
    conn.send({"name": name, "warmup_s": warm, "threads": torch.get_num_threads(), **extra})
    while True:
        msg = conn.recv()
        if msg == "run":
            conn.send(timed_both(run, dev))
        elif msg == "out":
            conn.send(run().cpu().numpy())  # inference tensors do not go through shared memory
        else:
            break


def flops_per_forward(net: VelocityNet, size: int, device: torch.device) -> float:
    """FLOPs of one velocity evaluation for one image."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 1, size, size, device=device)
    t = torch.full((1,), 0.5, device=device)
    labels = torch.zeros(1, dtype=torch.long, device=device)
    masks = torch.ones(1, 1, size, size, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, t, labels, masks)
    return float(counter.get_total_flops())


def bench_net(name: str, cfg: FMConfig, batch: int, args, device: torch.device) -> dict:
    steps = args.steps
    net = build_net(cfg, device)
    gflop_img = flops_per_forward(net, cfg.image_size, device) * steps / 1e9
    variants = ["reference", "ours"]
    if args.compile == "on" and name in compile_nets(args):
        variants.append("ours-fast")
    if args.ablation:
        variants += list(ABLATIONS)
    ctx = mp.get_context("spawn")
    env_before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    cache = tempfile.TemporaryDirectory(prefix="fm-bench-inductor-")
    if args.compile_cache == "cold":
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name  # inherited by the spawned workers
    workers = []
    try:
        for variant in variants:  # warm-ups one after another (compilation is not disturbed)
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker,
                args=(
                    child,
                    variant,
                    cfg,
                    batch,
                    steps,
                    str(device),
                    args.threads,
                    args.last_batch,
                ),
                daemon=True,
            )
            proc.start()
            info = parent.recv()
            workers.append((variant, parent, proc, info))
            print(f"  ready: {info['name']} (warm-up {info['warmup_s']:.1f} s)", flush=True)
        times: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        for _ in range(args.repeats):  # interleaved rounds
            for variant, conn, _, _ in workers:
                conn.send("run")
                times[variant].append(conn.recv())
        outs = {}
        for variant, conn, _, _ in workers:
            conn.send("out")
            outs[variant] = torch.from_numpy(conn.recv())
    finally:
        for _, conn, proc, _ in workers:
            with contextlib.suppress(OSError):
                conn.send("quit")
            proc.join(timeout=30)
        if env_before is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = env_before
        cache.cleanup()

    ref_walls = [w for w, _ in times["reference"]]
    ref_cpu = min(c for _, c in times["reference"])
    results = []
    for variant, _, _, info in workers:
        walls = [w for w, _ in times[variant]]
        cpus = [c for _, c in times[variant]]
        best, median = min(walls), statistics.median(walls)
        results.append(
            {
                "variant": info["name"],
                "key": variant,
                "threads": info["threads"],
                "best_s": best,
                "median_s": median,
                "times_s": walls,
                "cpu_s": cpus,
                "ms_per_image": 1000 * best / batch,
                "ms_per_image_median": 1000 * median / batch,
                "images_per_s": batch / best,
                "speedup_vs_reference": min(ref_walls) / best,
                "speedup_vs_reference_median": statistics.median(ref_walls) / median,
                "speedup_vs_reference_cpu_time": ref_cpu / min(cpus),
                "gflop_per_s": gflop_img * batch / best,
                "warmup_s": info["warmup_s"],
                "max_abs_diff_vs_reference": float(
                    (outs[variant].float() - outs["reference"].float()).abs().max()
                ),
                **{k: v for k, v in info.items() if k.startswith("other_batch")},
            }
        )
    params = count_parameters(net)
    report = {
        "net": name,
        "image_size": cfg.image_size,
        "batch": batch,
        "steps": steps,
        "params_unet": params["unet"],
        "params_controlnet": params["controlnet"],
        "gflop_per_forward_per_image": gflop_img / steps,
        "gflop_per_image": gflop_img,
        "results": results,
    }
    by_key = {r["key"]: r for r in results}
    if "ours-fast" in by_key:
        ours, fast = by_key["ours"], by_key["ours-fast"]
        saving = (ours["median_s"] - fast["median_s"]) / batch  # s per image, medians
        cost = fast["warmup_s"] + fast.get("other_batch_first_call_s", 0.0)
        report["compile_payback"] = {
            "compile_s": cost,
            "saving_s_per_image": saving,
            "break_even_images": cost / saving if saving > 0 else None,
            "synthesize_images": SYNTHESIZE_IMAGES,
            "pays_back_within_one_synthesize_call": bool(
                saving > 0 and cost < saving * SYNTHESIZE_IMAGES
            ),
            "inductor_cache": args.compile_cache,
        }
    return report


# --- --profile: where the time goes ------------------------------------------------------------
OP_CLASSES: dict[str, tuple[str, ...]] = {
    "conv (oneDNN)": ("aten::mkldnn_convolution",),
    "conv 1x1 (THNN + sgemm)": ("aten::_slow_conv2d_forward",),
    "linear (MKL sgemm)": ("aten::addmm", "aten::mm", "aten::bmm"),
    "linear (oneDNN)": ("mkldnn::_linear_pointwise",),
    "attention (SDPA)": ("aten::_scaled_dot_product_flash_attention_for_cpu",),
    "group_norm": ("aten::native_group_norm",),
    "layer_norm": ("aten::native_layer_norm",),
    "silu / gelu": ("aten::silu", "aten::gelu"),
    "add / mul": ("aten::add", "aten::add_", "aten::mul", "aten::mul_"),
    "copy / cat": ("aten::copy_", "aten::cat"),
    "up / down sampling": ("aten::upsample_nearest2d", "aten::avg_pool2d"),
}


def profile_net(cfg: FMConfig, batch: int, steps: int, device: torch.device) -> None:
    """torch.profiler breakdown by op class for the reference loop and ours (one call each)."""
    from torch.profiler import ProfilerActivity, profile

    net = build_net(cfg, device)
    x0, labels, masks, cond = make_inputs(cfg, batch, device)
    ref_run, _ = reference_sampler(net, steps)
    pipe = FlowMatchingPipeline(build_net(cfg, device), device=device)
    sampler = ODESampler("euler", steps)
    runs = {
        "reference": lambda: ref_run(x0, cond, masks),
        "ours": lambda: pipe.generate(x0, labels, masks, sampler),
    }
    conv_flops = {"aten::mkldnn_convolution", "aten::_slow_conv2d_forward"}
    for label, run in runs.items():
        run()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            wall, cpu = timed_both(run, device)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        flops: dict[str, float] = {}
        for e in prof.key_averages(group_by_input_shape=True):
            shapes = e.input_shapes
            if e.key in conv_flops and len(shapes) > 1 and len(shapes[1]) == 4:
                x, w = shapes[0], shapes[1]  # stride-1 "same" convolutions dominate
                flops[e.key] = flops.get(e.key, 0.0) + e.count * 2 * x[0] * x[2] * x[3] * (
                    w[0] * w[1] * w[2] * w[3]
                )
            elif e.key in ("aten::addmm", "aten::mm", "mkldnn::_linear_pointwise") and shapes:
                a = shapes[1] if e.key == "aten::addmm" else shapes[0]
                b = shapes[2] if e.key == "aten::addmm" else shapes[1]
                if len(a) >= 2 and len(b) == 2:
                    rows = 1
                    for d in a[:-1]:
                        rows *= d
                    n = b[0] if e.key == "mkldnn::_linear_pointwise" else b[1]
                    flops[e.key] = flops.get(e.key, 0.0) + e.count * 2 * rows * a[-1] * n
        print(
            f"\n{label}: batch {batch}, {steps} steps, {torch.get_num_threads()} thread(s): "
            f"wall {1000 * wall / batch:.1f} ms/img, CPU {1000 * cpu / batch:.1f} ms/img, "
            f"in ops {total / 1000 / batch:.1f} ms/img"
        )
        seen = 0.0
        for name, keys in OP_CLASSES.items():
            t = sum(e.self_cpu_time_total for e in events if e.key in keys)
            seen += t
            if not t:
                continue
            fl = sum(flops.get(k, 0.0) for k in keys)
            rate = f"{fl / (t / 1e6) / 1e9:7.1f} GFLOP/s" if fl else ""
            print(f"  {name:26s} {100 * t / total:5.1f} %  {t / 1000 / batch:6.2f} ms/img {rate}")
        print(f"  {'other ops':26s} {100 * (total - seen) / total:5.1f} %")
        outside = wall * 1e6 - total
        share = 100 * outside / (wall * 1e6)
        print(f"  outside ops (Python, dispatch, waits): {share:.1f} % of wall")


def compile_nets(args: argparse.Namespace) -> list[str]:
    """The nets that get an ours-fast row (compiling costs minutes per net)."""
    return (args.compile_nets or args.nets.split(",")[0]).split(",")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--nets",
        default="quick64,quick",
        help="comma list of quick (the quick profile as configured), quick64 (its net at 64 px, "
        "the size of earlier results), paper64, paper",
    )
    parser.add_argument("--batch", type=int, default=32, help="batch of the quick nets")
    parser.add_argument("--paper-batch", type=int, default=2, help="batch of the paper net")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--compile", choices=("on", "off"), default="on", help="ours-fast row")
    parser.add_argument(
        "--compile-nets", default="", help="comma list of nets with ours-fast (default: the first)"
    )
    parser.add_argument(
        "--compile-cache",
        choices=("cold", "warm"),
        default="cold",
        help="ours-fast compiles with a fresh inductor cache (cold) or the user's (warm)",
    )
    parser.add_argument(
        "--last-batch",
        action="store_true",
        help="ours-fast: also time the recompilation a half-size last batch triggers",
    )
    parser.add_argument("--ablation", action="store_true", help="ours minus one piece at a time")
    parser.add_argument("--profile", action="store_true", help="op-class profile, no timing")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    configs = {
        "quick": (resolve(FMConfig, "quick"), args.batch),
        "quick64": (resolve(FMConfig, "quick", image_size=64), args.batch),
        "paper64": (resolve(FMConfig, "paper", image_size=64), args.paper_batch),
        "paper": (resolve(FMConfig, "paper"), args.paper_batch),
    }
    if args.profile:
        for name in args.nets.split(","):
            cfg, batch = configs[name]
            profile_net(cfg, batch, args.steps, device)
        return
    machine = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_before": loadavg(),
    }
    peak, cpeak = matmul_peak(device), conv_peak(device)
    print(json.dumps(machine))
    report = {"machine": machine, "nets": []}
    for name in args.nets.split(","):
        cfg, batch = configs[name]
        res = bench_net(name, cfg, batch, args, device)
        # load from other jobs can depress either measurement: keep the best of before / after
        peak, cpeak = max(peak, matmul_peak(device)), max(cpeak, conv_peak(device))
        for r in res["results"]:
            r["fraction_of_matmul_peak"] = r["gflop_per_s"] / peak
            r["fraction_of_conv_peak"] = r["gflop_per_s"] / cpeak
        res["matmul_2048_fp32_gflop_per_s"] = peak
        res["conv3x3_fp32_gflop_per_s"] = cpeak
        report["nets"].append(res)
        print(
            f"\n{name}: {res['image_size']} px, batch {batch}, {res['steps']} Euler steps, "
            f"{machine['cpu'] if device.type == 'cpu' else machine['device']}, "
            f"{machine['threads']} thread(s); peaks: matmul {peak:.1f}, conv {cpeak:.1f} GFLOP/s; "
            f"{res['params_unet'] / 1e6:.2f} M + {res['params_controlnet'] / 1e6:.2f} M params, "
            f"{res['gflop_per_image']:.1f} GFLOP/image"
        )
        head = f"{'variant (best of interleaved rounds)':44s} {'ms/img':>7s} {'med':>7s}"
        head += f" {'x ref':>6s} {'x med':>6s} {'x cpu':>6s} {'%mm':>6s} {'%conv':>6s}"
        print(f"{head} {'warm-up':>8s} {'diff':>8s}")
        for r in res["results"]:
            print(
                f"{r['variant'][:44]:44s} {r['ms_per_image']:7.1f} "
                f"{r['ms_per_image_median']:7.1f} {r['speedup_vs_reference']:6.2f} "
                f"{r['speedup_vs_reference_median']:6.2f} "
                f"{r['speedup_vs_reference_cpu_time']:6.2f} "
                f"{100 * r['fraction_of_matmul_peak']:6.1f} "
                f"{100 * r['fraction_of_conv_peak']:6.1f} "
                f"{r['warmup_s']:7.1f}s {r['max_abs_diff_vs_reference']:8.1e}"
            )
        pay = res.get("compile_payback")
        if pay:
            even = pay["break_even_images"]
            print(
                f"torch.compile ({pay['inductor_cache']} cache): {pay['compile_s']:.1f} s to "
                f"compile{' (incl. the smaller last batch)' if args.last_batch else ''}, saves "
                f"{1000 * pay['saving_s_per_image']:.1f} ms/img -> break-even "
                f"{'never' if even is None else f'{even:.0f} images'}; a synthesize call of "
                f"{pay['synthesize_images']} images: "
                + (
                    "pays back"
                    if pay["pays_back_within_one_synthesize_call"]
                    else "does not pay back"
                )
            )
    machine["loadavg_after"] = loadavg()
    machine["matmul_2048_fp32_gflop_per_s"] = peak
    machine["conv3x3_fp32_gflop_per_s"] = cpeak
    print(f"load average before {machine['loadavg_before']}, after {machine['loadavg_after']}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
