"""Shared by the entry-point scripts: MLproject parameter strings -> `thyroaug` CLI arguments.

MLproject parameters always arrive as strings. Three conventions keep MLproject simple: ``auto`` /
``none`` (or an empty value, which MLflow passes as ``''``) mean "not given" (the flag is dropped,
so the job uses the profile's or generator's own value), ``true`` / ``false`` switch a flag on /
off, and whole-number floats (``1000.0``, from ``type: float``) become integers.
"""

from __future__ import annotations

import re
import sys

from thyroaug.cli import main


def normalise(argv: list[str]) -> list[str]:
    """Drop empty-valued flags, turn true/false into bare flags, 1000.0 -> 1000."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        value = argv[i + 1] if i + 1 < len(argv) else None
        if arg.startswith("--") and value is not None and not value.startswith("--"):
            i += 2
            if value in ("", "''", '""', "auto", "none"):  # "not given": the job's default
                continue
            if value.lower() in ("true", "false"):
                if value.lower() == "true":
                    out.append(arg)
                continue
            if re.fullmatch(r"-?\d+\.0+", value):
                value = value.split(".")[0]
            out += [arg, value]
        else:
            out.append(arg)
            i += 1
    return out


def run(command: str) -> None:
    """Run ``thyroaug <command>`` with the normalised arguments; exit with its code."""
    sys.exit(main([command, *normalise(sys.argv[1:])]))
