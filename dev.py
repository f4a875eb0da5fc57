#!/usr/bin/env python3
"""One-file bootstrap: create the project's virtual environment if needed, then run a job.

    python3 dev.py demo    set up .venv and run the main job (the quick study of all 18 scenarios on
                           the phantom cohort, independent steps in parallel on a local Ray
                           instance, tracked in the local SQLite MLflow store)
    python3 dev.py test    set up .venv and run the test suite (pytest; "no tests" is a failure)
    python3 dev.py setup   only set up .venv

Needs nothing but Python >= 3.11. The environment is rebuilt only when pyproject.toml changes
(a hash stamp in .venv), so a second run reuses it. Extra arguments go to the job
(e.g. `python3 dev.py test -k prompts`, `python3 dev.py demo --scenarios O,CA`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".thyroaug-stamp"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def _stamp() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def setup() -> None:
    """Create .venv and install the project (editable, with dev extras) unless up to date."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may run under any python3
        sys.exit(f"thyroaug needs Python >= 3.11, this is {sys.version.split()[0]}")
    if STAMP.exists() and STAMP.read_text() == _stamp() and (BIN / "thyroaug").exists():
        return
    if not (BIN / "python").exists():
        print(f"[dev] creating virtual environment in {VENV.name}/", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("[dev] installing thyroaug and its dependencies (first time: a few minutes)", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(_stamp())


def main(argv: list[str]) -> int:
    job = argv[0] if argv else "help"
    rest = argv[1:]
    if job not in ("demo", "test", "setup"):
        print(__doc__)
        return 0 if job in ("help", "-h", "--help") else 2
    setup()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if job == "setup":
        return 0
    if job == "demo":
        cmd = [str(BIN / "thyroaug"), "study", "--profile", "quick", "--executor", "ray", *rest]
        return subprocess.run(cmd, cwd=ROOT, env=env).returncode
    rc = subprocess.run([str(BIN / "python"), "-m", "pytest", *rest], cwd=ROOT, env=env).returncode
    if rc == 5:
        print("[dev] pytest collected no tests: that is a failure", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
