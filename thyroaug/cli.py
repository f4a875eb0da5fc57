"""The ``thyroaug`` console script: ``thyroaug <command> ...`` (see ``thyroaug.jobs.commands``)."""

from __future__ import annotations

import sys

from thyroaug.jobs.commands import COMMANDS, build_parser, commands, main

__all__ = ["COMMANDS", "build_parser", "commands", "main"]

if __name__ == "__main__":
    sys.exit(main())
