"""`thyroaug <command> ...`: parse a command line and run the command (also in-process).

Each command is one module of ``thyroaug.jobs`` defining
``add_arguments(parser: argparse.ArgumentParser) -> None`` and ``run(args) -> int``; every
generator family adds ``train-<family>`` (``jobs.train_generator``, one module for all). Modules
are imported only when their command runs, so `thyroaug phantom` does not import torch.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import logging
import os
import sys
from collections.abc import Sequence

from thyroaug.errors import ThyroaugError
from thyroaug.generators import registry
from thyroaug.utils.atomic import storage_errno, storage_line

COMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("thyroaug.jobs.phantom", "simulate a phantom cohort (files + manifest)"),
    "prepare": ("thyroaug.jobs.prepare", "validate a manifest and build the prepared cohort cache"),
    "train-classifier": (
        "thyroaug.jobs.train_classifier",
        "train + evaluate the ResNet18 for a scenario",
    ),
    "synthesize": ("thyroaug.jobs.synthesize", "write a synthetic set from a generator"),
    "compare": (
        "thyroaug.jobs.compare",
        "compare a study's runs: paired tests, CIs, heatmaps, report",
    ),
    "study": ("thyroaug.jobs.study", "run the whole study as nested MLflow runs"),
    "tune": ("thyroaug.jobs.tune", "Optuna search over classifier hyperparameters"),
    "serve": (
        "thyroaug.jobs.serve",
        "serve a registered generator behind body-size, content-type and error-body limits",
    ),
}


TRAIN_GENERATOR = "thyroaug.jobs.train_generator"


def commands() -> dict[str, tuple[str, str]]:
    """Command name -> (module, help): the fixed commands plus one per generator family."""
    out = dict(COMMANDS)
    for fam in registry.families():
        out.setdefault(fam.train_command, (TRAIN_GENERATOR, fam.description))
    return out


def _attach(parser: argparse.ArgumentParser, name: str, module_name: str) -> None:
    """Add command ``name``'s arguments to ``parser`` and set its ``_run``."""
    module = importlib.import_module(module_name)
    if module_name == TRAIN_GENERATOR:
        fam = next(f for f in registry.families() if f.train_command == name)
        module.add_arguments(parser, fam)
        parser.set_defaults(_run=functools.partial(module.run, family=fam))
    else:
        module.add_arguments(parser)
        parser.set_defaults(_run=module.run)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; with ``only`` set, import just that command's module."""
    parser = argparse.ArgumentParser(prog="thyroaug", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in commands().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only == name:
            _attach(p, name, module_name)
    return parser


class CommandError(ThyroaugError):
    """A command run in-process (``run_command``) stopped: its exit code and its own message."""

    def __init__(self, argv: Sequence[str], code: int, message: str) -> None:
        self.argv, self.code, self.message = list(argv), code, message
        super().__init__(message or f"thyroaug {' '.join(argv)} exited with {code}")


def run_command(argv: Sequence[str]) -> int:
    """Run ``thyroaug <argv>`` in this process; raise ``CommandError`` instead of printing.

    Argument errors (argparse exits) become ``CommandError`` too, with argparse's message.
    """

    argv = list(argv)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser = build_parser(only=argv[0] if argv else None)
            args = parser.parse_args(argv)
    except ThyroaugError as exc:
        raise CommandError(argv, 2, str(exc)) from exc
    except SystemExit as exc:
        code = int(exc.code or 0)
        if code:
            raise CommandError(argv, code, stderr.getvalue().strip().splitlines()[-1]) from None
        return 0
    try:
        return int(args._run(args) or 0)
    except ThyroaugError as exc:
        raise CommandError(argv, 2, str(exc)) from exc
    except Exception as exc:
        line = storage_line(exc, _then(args))
        if line is None:
            raise
        raise CommandError(argv, 2, line) from exc


def _then(args: argparse.Namespace) -> str:
    """How to go on after a storage failure: ``--resume`` where the command has it."""
    return "rerun with --resume" if hasattr(args, "resume") else "rerun the command"


def _end_runs_failed() -> None:
    """End the command's MLflow runs still RUNNING as FAILED (after a storage failure MLflow's
    own attempt may have failed: the disk was full when it ran)."""
    mlflow = sys.modules.get("mlflow")  # only if the command tracked anything: never import it
    if mlflow is None:
        return
    try:
        while mlflow.active_run() is not None:
            mlflow.end_run("FAILED")
        last = mlflow.last_active_run()
        if last is not None and last.info.status == "RUNNING":
            mlflow.MlflowClient().set_terminated(last.info.run_id, status="FAILED")
    except Exception:  # the store is still unwritable: the stale-run sweep ends it KILLED later
        logging.getLogger(__name__).debug("could not end the run FAILED", exc_info=True)


def _quiet_storage_tracebacks() -> None:
    """Log records carrying a storage failure (MLflow logs SQLite's "disk is full" with its
    traceback) keep their first line and the reason, without the traceback: the command's own
    one-line error says what happened and what to do."""
    make = logging.getLogRecordFactory()

    def factory(name, level, fn, lno, msg, args, exc_info, *rest, **kw):  # type: ignore[no-untyped-def]
        code = storage_errno(exc_info[1]) if exc_info and exc_info[1] is not None else None
        if code is not None:
            try:
                text = str(msg % args if args else msg).strip().splitlines() or [""]
            except (TypeError, ValueError):  # a record that does not format: keep its template
                text = str(msg).strip().splitlines() or [""]
            msg, args, exc_info = f"{text[0]} ({os.strerror(code)})", (), None
        return make(name, level, fn, lno, msg, args, exc_info, *rest, **kw)

    logging.setLogRecordFactory(factory)


def private_files() -> int:
    """Files this process writes from now on are private (umask 077: 0600 files, 0700 folders):
    cohort caches, checkpoints, banks and the local artifact store hold patient data. The
    environment variable ``THYROAUG_UMASK`` (octal, e.g. ``022``) overrides. Returns the old mask.
    """

    text = os.environ.get("THYROAUG_UMASK", "077").strip()
    try:
        mask = int(text, 8)
    except ValueError:
        raise SystemExit(
            f"thyroaug: THYROAUG_UMASK={text!r} is not an octal mask such as 077"
        ) from None
    return os.umask(mask & 0o777)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script. Returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in commands():
        command = None
    try:  # a generator family that breaks its contract is found while its options are built
        parser = build_parser(only=command)
    except ThyroaugError as exc:
        print(f"thyroaug {command}: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    private_files()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        _quiet_storage_tracebacks()
    try:
        return int(args._run(args) or 0)
    except ThyroaugError as exc:
        print(f"thyroaug {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a full / read-only / forbidden disk is not a bug: one line
        line = storage_line(exc, _then(args))
        if line is None:
            raise
        _end_runs_failed()
        print(f"thyroaug {args.command}: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
