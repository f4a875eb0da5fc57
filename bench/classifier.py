"""Classifier training speed: our loop vs a bare PyTorch loop on the same tensors, same process.

Measures training images/s of one epoch for
  ours        ``thyroaug.classifier.train.fit`` (seeded permutation, channels_last, deterministic
              algorithms, per-epoch metrics; its train-phase time, eval excluded, is compared);
  bare        the same ResNet18 variant in the plainest loop (slice, forward, loss, backward,
              step), default memory format: the reference the goal is stated against (our
              images/s within 1.2x of it: ratio bare/ours <= 1.2);
  bare-cl     the bare loop in channels_last (separates loop overhead from the layout gain);
  torchvision the unmodified torchvision resnet18 (7x7/2 conv1, 3-channel input) in the bare
              loop, to show what the paper's stride-1 3x3 conv1 costs;
and the conventional-augmentation cost (``make_ca_set``) separately, in images/s.
Rounds are short (256 images) and interleaved, and medians are reported, so load from other
processes hits all loops alike; the epoch time is given for a quick-profile O+FM+CA epoch
(``--epoch-images``, default 1031 images: 231 originals + 2 x 400 synthetic).

Run: ``python bench/classifier.py`` (quick-profile size: 64 px, batch 32), add ``--threads 1`` on a
shared machine, or ``--size 128 --epoch-images 6555`` for the paper's input size and a paper-size
O+FM+CA epoch (2555 training cases + 2 x 4000).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from thyroaug.augment import make_ca_set
from thyroaug.classifier.config import ClassifierConfig
from thyroaug.classifier.model import build_resnet18
from thyroaug.classifier.train import cpu_name, fit
from thyroaug.config import resolve
from thyroaug.contract import CLASSES
from thyroaug.data.cohort import PreparedCohort


def make_data(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blob images whose radius and brightness depend on the class (like the tiny test cohort)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (n,), generator=g)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    radius = (0.18 + 0.04 * labels.float())[:, None, None]
    blob = (((xx - 0.5) ** 2 + (yy - 0.5) ** 2)[None] < radius**2).float()
    images = 0.05 + (0.4 + 0.15 * labels.float())[:, None, None] * blob
    images = (images + 0.03 * torch.randn(n, size, size, generator=g)).clamp(0, 1)
    return images[:, None].contiguous(), labels


def bare_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    channels_last: bool,
    gen: torch.Generator,
    channels: int = 1,
) -> float:
    """One plain training epoch; returns images/s."""
    model.train()
    perm = torch.randperm(len(y), generator=gen)
    t0 = time.perf_counter()
    for i in range(0, len(y) - 1, batch_size):
        idx = perm[i : i + batch_size]
        xb = x[idx]
        if channels > 1:
            xb = xb.expand(-1, channels, -1, -1)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), y[idx])
        loss.backward()
        opt.step()
    return len(y) / (time.perf_counter() - t0)


def bare_runner(
    kind: str, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int
) -> Callable[[], float]:
    """A closure running one bare epoch of the given kind (model built once, warmed up)."""
    torch.manual_seed(seed)
    channels = 1
    if kind == "torchvision":
        model: nn.Module = resnet18(weights=None, num_classes=len(CLASSES))
        channels = 3
    else:
        model, _ = build_resnet18(init="random")
    cl = kind == "bare-cl"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(seed)
    warm = min(len(y), 3 * batch_size)
    bare_epoch(model, opt, x[:warm], y[:warm], batch_size, cl, gen, channels)
    return lambda: bare_epoch(model, opt, x, y, batch_size, cl, gen, channels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image side (quick profile: 64)")
    parser.add_argument("--n-train", type=int, default=256, help="training images per round")
    parser.add_argument(
        "--epoch-images", type=int, default=1031, help="epoch size the epoch time is quoted for"
    )
    parser.add_argument("--n-val", type=int, default=32, help="validation images (ours only)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per loop")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--ca-per-class", type=int, default=100, help="CA images per class")
    parser.add_argument("--skip-torchvision", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load_before = os.getloadavg()

    x, y = make_data(args.n_train, args.size, seed=0)
    xv, yv = make_data(args.n_val, args.size, seed=1)
    cfg = resolve(
        ClassifierConfig,
        "quick",
        epochs=1,
        batch_size=args.batch_size,
        image_size=args.size,
        init="random",
        num_threads=threads,
    )
    warm = min(len(y), 3 * args.batch_size)
    fit(x[:warm], y[:warm], xv, yv, cfg, progress=False)  # warm-up (oneDNN primitives)

    def ours() -> float:
        res = fit(x, y, xv, yv, cfg, progress=False)
        return res.history[0]["train_images_per_s"]

    loops: dict[str, Callable[[], float]] = {"ours": ours}
    for kind in ("bare", "bare-cl") + (() if args.skip_torchvision else ("torchvision",)):
        loops[kind] = bare_runner(kind, x, y, args.batch_size, seed=0)
    rates: dict[str, list[float]] = {k: [] for k in loops}
    for _ in range(args.rounds):
        for kind, run in loops.items():
            rates[kind].append(run())

    # conventional augmentation: a quick-profile CA set from the training images
    cohort = PreparedCohort(
        images=x,
        masks=torch.zeros_like(x, dtype=torch.uint8),
        labels=y,
        table=pd.DataFrame(
            {
                "case_id": [f"c{i}" for i in range(len(y))],
                "label": [CLASSES[i] for i in y],
                "split": "train",
            }
        ),
    )
    t0 = time.perf_counter()
    ca = make_ca_set(cohort, per_class=args.ca_per_class, seed=0, progress=False)
    ca_seconds = time.perf_counter() - t0
    ca_rate = len(ca.labels) / ca_seconds

    med = {k: statistics.median(v) for k, v in rates.items()}
    epoch_s = {k: args.epoch_images / v for k, v in med.items()}
    ratio = med["bare"] / med["ours"]
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch threads {threads}")
    print(f"         torch {torch.__version__}, load average before/after "
          f"{load_before[0]:.2f}/{os.getloadavg()[0]:.2f}")  # fmt: skip
    print(
        f"setting: rounds of {args.n_train} training images of {args.size}x{args.size}, batch "
        f"{args.batch_size}, {args.rounds} interleaved rounds (median); epoch = "
        f"{args.epoch_images} images"
    )
    print(f"{'loop':<12} {'images/s':>9} {'epoch s':>8}  rounds")
    for kind in loops:
        rounds = ", ".join(f"{r:.1f}" for r in rates[kind])
        print(f"{kind:<12} {med[kind]:9.1f} {epoch_s[kind]:8.2f}  [{rounds}]")
    print(f"ratio bare/ours = {ratio:.2f} (goal <= 1.2); bare-cl/ours = "
          f"{med['bare-cl'] / med['ours']:.2f}")  # fmt: skip
    print(
        f"CA: {len(ca.labels)} images ({args.ca_per_class}/class) in {ca_seconds:.2f} s = "
        f"{ca_rate:.0f} images/s ({ca_seconds / epoch_s['ours'] * 100:.0f}% of one epoch of ours)"
    )
    if args.json:
        out = {
            "cpu": cpu_name(),
            "threads": threads,
            "torch": torch.__version__,
            "size": args.size,
            "n_train": args.n_train,
            "epoch_images": args.epoch_images,
            "epoch_seconds": epoch_s,
            "batch_size": args.batch_size,
            "images_per_s": med,
            "rounds": rates,
            "ratio_bare_over_ours": ratio,
            "ca_images_per_s": ca_rate,
            "load_average": [load_before[0], os.getloadavg()[0]],
        }
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2, default=lambda v: float(np.asarray(v)))


if __name__ == "__main__":
    main()
