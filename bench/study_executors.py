"""The quick study with the sequential executor vs ``--executor ray``, same machine, same inputs.

Runs ``thyroaug study --profile quick --scenarios <list>`` twice, each in a fresh
``THYROAUG_HOME`` (own phantom cohort, store and generators), once per executor, and reports the
wall time of each, per batch of steps (from the study's own echo lines), and the ratio
sequential / ray. Both runs produce the same numbers (each step is seeded; Ray runs each step with
1 thread, the sequential executor with all threads, so digits of the trained models may differ
in the last places across executors, not across repeats). The machine, its load before each run
and the Ray version are recorded. Results go to ``bench/results/study_executors-<cpus>cpu.json``.

Run: ``python bench/study_executors.py`` (default: 6 scenarios with FM, ~10-20 min on 2 cores);
``--scenarios all`` for the 18.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_once(executor: str, scenarios: str, home: Path) -> dict:
    """One study run; wall time, batch times from the ``[study] ...`` lines, exit code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(THYROAUG_HOME=str(home), THYROAUG_TRACKING="local")
    cmd = [sys.executable, "-m", "thyroaug.cli", "study", "--profile", "quick", "--scenarios",
           scenarios, "--executor", executor]  # fmt: skip
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    marks = re.findall(r"\[study\] (.+?) \((\d+) s\)", proc.stdout)
    return {
        "executor": executor,
        "returncode": proc.returncode,
        "wall_s": round(wall, 1),
        "load_before": round(load, 2),
        "batches": {name: int(sec) for name, sec in marks},
        "tail": proc.stdout[-400:] + proc.stderr[-800:] if proc.returncode else "",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="O,CA,O+CA,FM,O+FM,O+FM+CA")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = []
    for executor in ("sequential", "ray"):
        with tempfile.TemporaryDirectory(prefix=f"bench-study-{executor}-") as home:
            results.append(run_once(executor, args.scenarios, Path(home)))
            print(json.dumps(results[-1], indent=1), flush=True)
    seq, ray = results
    summary = {
        "machine": {
            "cpu": _cpu_name(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "scenarios": args.scenarios,
        "runs": results,
        "ratio_sequential_over_ray": round(seq["wall_s"] / ray["wall_s"], 2),
    }
    out = Path(args.out or ROOT / "bench" / "results" / f"study_executors-{os.cpu_count()}cpu.json")
    out.write_text(json.dumps(summary, indent=2))
    print(f"sequential {seq['wall_s']} s, ray {ray['wall_s']} s: ratio "
          f"{summary['ratio_sequential_over_ray']} -> {out}")  # fmt: skip
    return 0 if seq["returncode"] == ray["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
