"""Benchmark: flow-matching sampling, ours against a MOTFM-style reference loop.

Same velocity net and weights, same batch, same Euler steps, in one process:

* **reference**: the ``flow_matching`` library's ``ODESolver`` (what MOTFM's ``inferer.py`` calls
  per batch: ``model.eval()``, ``torch.no_grad``, fp32, contiguous tensors, ``time_grid =
  linspace(0, 1, steps)``, ``step_size = 1 / steps``, ``return_intermediates=True``), wrapping the
  net in MOTFM's calling convention (``forward(x, t, cond=one-hot [B, 1, 4], masks)``). If the
  library is not installed, a plain-torch loop doing the same per-step work (documented below).
* **ours**: ``FlowMatchingPipeline.generate`` (torchdiffeq ``odeint`` on the same grid under
  ``torch.inference_mode``), reported with channels-last on/off and ``torch.compile`` on/off.

Also reported: GFLOP per image (``torch.utils.flop_counter.FlopCounterMode`` on one forward, times
the number of velocity evaluations), the machine's measured fp32 matmul peak (a 2048^3 matmul in
the same run) and the fraction of it each variant reaches. Variants are timed in interleaved
rounds (ref, ours, ours, ... repeated) so that load from other processes hits all alike; the table
reports the best round (least disturbed), the ratio of medians and, for CPU runs, the ratio of
best process CPU times (stable under load with ``--threads 1``). Results print as a table and,
with ``--out``, are written as JSON with the machine description.

Usage:
    .venv/bin/python bench/fm_sampling.py                      # quick net, 64 px, batch 8
    .venv/bin/python bench/fm_sampling.py --nets quick,paper64 --paper-batch 2
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from thyroaug.config import resolve
from thyroaug.contract import CLASSES
from thyroaug.generators.flow_matching.config import FMConfig
from thyroaug.generators.flow_matching.model import VelocityNet, count_parameters
from thyroaug.generators.flow_matching.pipeline import FlowMatchingPipeline
from thyroaug.generators.flow_matching.sampler import ODESampler, initial_noise


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls (after the caller's warm-up)."""
    return [t for t, _ in timed_both(fn, device, repeats)]


def timed_both(
    fn: Callable[[], object], device: torch.device, repeats: int
) -> list[tuple[float, float]]:
    """(wall-clock, process CPU) seconds of ``repeats`` calls.

    On a CPU shared with other jobs wall time swings widely; the process CPU time of a
    one-thread run measures the work done and stays stable (it is not meaningful on a GPU).
    """
    out = []
    for _ in range(repeats):
        sync(device)
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        out.append((time.perf_counter() - w0, time.process_time() - c0))
    return out


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """Best measured fp32 GFLOP/s of an n^3 matmul (measured before and after the runs)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best = min(timed(lambda: a @ b, device, repeats))
    return 2 * n**3 / best / 1e9


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

        return run, "plain-torch Euler loop (flow_matching not installed)"


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


def bench_net(
    name: str,
    cfg: FMConfig,
    batch: int,
    steps: int,
    repeats: int,
    device: torch.device,
    peak: float,
    compile_mode: str,
) -> dict:
    torch.manual_seed(0)
    net = VelocityNet(cfg).to(device).eval()
    with torch.no_grad():  # a trained-like net: MONAI zero-initialises some projections
        for p in net.parameters():
            if float(p.abs().sum()) == 0.0:
                p.normal_(0.0, 0.02)
    size = cfg.image_size
    gflop_img = flops_per_forward(net, size, device) * steps / 1e9
    x0 = initial_noise(range(batch), (1, size, size)).to(device)
    labels = torch.arange(batch, device=device) % len(CLASSES)
    masks = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(1)) > 0.5
    masks = masks.float().to(device)
    cond = torch.nn.functional.one_hot(labels, len(CLASSES)).float()[:, None, :]

    ref_run, ref_name = reference_sampler(net, steps)
    t0 = time.perf_counter()
    ref_out = ref_run(x0, cond, masks)  # warm-up
    runners: list[tuple[str, Callable[[], torch.Tensor], float]] = [
        ("reference: " + ref_name, lambda: ref_run(x0, cond, masks), time.perf_counter() - t0)
    ]
    sampler = ODESampler("euler", steps)
    variants = [("ours: inference_mode", False, False), ("ours: + channels_last", True, False)]
    if compile_mode == "on":
        variants.append(("ours: + channels_last + torch.compile", True, True))
    diffs = [0.0]
    for label, channels_last, compiled in variants:
        pipe = FlowMatchingPipeline(
            copy.deepcopy(net), device=device, channels_last=channels_last, compile=compiled
        )
        t0 = time.perf_counter()
        out = pipe.generate(x0, labels, masks, sampler)  # warm-up (and compilation)
        warm = time.perf_counter() - t0
        diffs.append(float((out - ref_out).abs().max()))
        runners.append((label, lambda p=pipe: p.generate(x0, labels, masks, sampler), warm))
    # Interleaved rounds: on a shared machine, load changes hit every variant alike.
    times: list[list[float]] = [[] for _ in runners]
    cpu: list[list[float]] = [[] for _ in runners]
    for _ in range(repeats):
        for k, (_, fn, _) in enumerate(runners):
            ((wall, proc),) = timed_both(fn, device, 1)
            times[k].append(wall)
            cpu[k].append(proc)

    ref_best = min(times[0])
    results = []
    for (label, _, warm), ts, cs, diff in zip(runners, times, cpu, diffs):
        best, median = min(ts), statistics.median(ts)
        ips = batch / best
        results.append(
            {
                "variant": label,
                "best_s": best,
                "median_s": median,
                "times_s": ts,
                "cpu_s": cs,
                "images_per_s": ips,
                "ms_per_image": 1000 * best / batch,
                "speedup_vs_reference": ref_best / best,
                "speedup_vs_reference_median": statistics.median(times[0]) / median,
                "speedup_vs_reference_cpu_time": min(cpu[0]) / min(cs),
                "gflop_per_s": gflop_img * ips,
                "fraction_of_matmul_peak": gflop_img * ips / peak,
                "warmup_s": warm,
                "max_abs_diff_vs_reference": diff,
            }
        )
    params = count_parameters(net)
    return {
        "net": name,
        "image_size": size,
        "batch": batch,
        "steps": steps,
        "params_unet": params["unet"],
        "params_controlnet": params["controlnet"],
        "gflop_per_forward_per_image": gflop_img / steps,
        "gflop_per_image": gflop_img,
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="quick", help="comma list of quick, paper64, paper")
    parser.add_argument("--batch", type=int, default=8, help="batch of the quick net")
    parser.add_argument("--paper-batch", type=int, default=2, help="batch of the paper net")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", choices=("on", "off"), default="on")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak = matmul_peak(device)
    machine = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "matmul_2048_fp32_gflop_per_s": peak,
    }
    print(json.dumps(machine))
    configs = {
        "quick": (resolve(FMConfig, "quick"), args.batch),
        "paper64": (resolve(FMConfig, "paper", image_size=64), args.paper_batch),
        "paper": (resolve(FMConfig, "paper"), args.paper_batch),
    }
    report = {"machine": machine, "nets": []}
    for name in args.nets.split(","):
        cfg, batch = configs[name]
        res = bench_net(name, cfg, batch, args.steps, args.repeats, device, peak, args.compile)
        again = matmul_peak(device)  # load from other jobs can depress either measurement
        if again > peak:
            for r in res["results"]:
                r["fraction_of_matmul_peak"] *= peak / again
            peak = machine["matmul_2048_fp32_gflop_per_s"] = again
        res["matmul_2048_fp32_gflop_per_s"] = peak
        report["nets"].append(res)
        print(
            f"\n{name}: {res['image_size']} px, batch {batch}, {res['steps']} Euler steps, "
            f"matmul peak {peak:.1f} GFLOP/s, "
            f"{res['params_unet'] / 1e6:.2f} M + {res['params_controlnet'] / 1e6:.2f} M params, "
            f"{res['gflop_per_forward_per_image']:.2f} GFLOP/forward, "
            f"{res['gflop_per_image']:.1f} GFLOP/image"
        )
        head = f"{'variant (best round)':46s} {'img/s':>7s} {'ms/img':>8s} {'x ref':>6s}"
        head += f" {'x ref med':>9s} {'x ref cpu':>9s} {'%peak':>6s} {'warm-up s':>9s}"
        print(f"{head} {'diff':>8s}")
        for r in res["results"]:
            print(
                f"{r['variant']:46s} {r['images_per_s']:7.2f} {r['ms_per_image']:8.1f} "
                f"{r['speedup_vs_reference']:6.2f} {r['speedup_vs_reference_median']:9.2f} "
                f"{r['speedup_vs_reference_cpu_time']:9.2f} "
                f"{100 * r['fraction_of_matmul_peak']:6.1f} {r['warmup_s']:9.1f} "
                f"{r['max_abs_diff_vs_reference']:8.1e}"
            )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
