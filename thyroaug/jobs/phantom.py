"""`thyroaug phantom`: simulate the nine-center phantom cohort (files + manifest)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from thyroaug.contract import CLASSES
from thyroaug.phantom.scanners import ALL_CENTERS
from thyroaug.phantom.simulate import simulate_cohort
from thyroaug.phantom.writer import FORMAT_CHOICES, SUMMARY_NAME


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `thyroaug phantom`."""
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="1 = the paper's Table 1 counts (2954 cases); e.g. 0.1 for a quick cohort",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    parser.add_argument(
        "--centers",
        default=None,
        help=f"center letters to simulate, e.g. ABC (default: all of {ALL_CENTERS})",
    )
    parser.add_argument(
        "--formats",
        choices=FORMAT_CHOICES,
        default="mixed",
        help="mixed = each center's own file habits (DICOM, PNG, JPEG; NIfTI/PNG masks)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty --out folder"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Simulate, then print what was written."""

    start = time.perf_counter()
    out = simulate_cohort(
        args.out,
        scale=args.scale,
        seed=args.seed,
        centers=args.centers,
        formats=args.formats,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    summary = json.loads((out / SUMMARY_NAME).read_text(encoding="utf-8"))
    print(f"phantom cohort written to {out} in {seconds:.1f} s")
    print(f"{'center':<8}" + "".join(f"{c:>6}" for c in CLASSES) + f"{'total':>7}  files")
    for center, counts in summary["counts"].items():
        files = summary["files"][center]
        print(
            f"{center:<8}"
            + "".join(f"{counts[c]:>6}" for c in CLASSES)
            + f"{sum(counts.values()):>7}  {files['image']} / {files['mask']}"
        )
    print(
        f"total {summary['total']} cases, {summary['patients']} patients "
        f"({summary['repeat_scans']} repeat scans); manifest: {out / 'manifest.csv'}"
    )
    return 0
