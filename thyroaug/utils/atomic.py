"""Atomic writes: a later step never reads a half-written file or folder.

Everything is written to a temporary sibling (same file system, so ``os.replace`` is a rename)
and renamed into place when complete. A crash leaves a hidden ``.<name>.tmp-<pid>-*`` sibling,
which the next write of ``<name>`` removes once its writer is gone (``sweep_staging``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep_staging(target: str | Path) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>-*`` / ``.<name>.old-<pid>-*`` siblings of ``target`` left by
    writer processes that no longer run (killed mid-write); returns what was removed."""
    target = Path(target)
    removed = []
    for kind in ("tmp", "old"):
        try:
            candidates = list(target.parent.glob(f".{target.name}.{kind}-*"))
        except OSError:
            return removed
        for path in candidates:
            pid = path.name[len(f".{target.name}.{kind}-") :].split("-", 1)[0]
            if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def staging_prefix(target: Path, kind: str = "tmp") -> str:
    """Name prefix of a staging sibling of ``target`` written by this process."""
    return f".{target.name}.{kind}-{os.getpid()}-"


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it to ``path`` if the block succeeds.

    Args:
        path: the final file.
        mode: optional permission bits for the final file (e.g. ``0o600`` for credentials).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_staging(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=staging_prefix(path, "tmp"))
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(folder: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``folder``; rename it to ``folder`` if the block succeeds.

    Args:
        folder: the final folder. If it exists it must be empty, unless ``replace`` is set, in
            which case the old folder is removed only after the new one is complete.
        replace: allow replacing an existing non-empty folder.

    Raises:
        FileExistsError: ``folder`` exists, is not empty and ``replace`` is False.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not replace:
        raise FileExistsError(f"{folder} exists and is not empty")
    folder.parent.mkdir(parents=True, exist_ok=True)
    sweep_staging(folder)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=staging_prefix(folder, "tmp")))
    try:
        yield tmp
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=staging_prefix(folder, "old")))
            os.replace(folder, old / "previous")
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str, mode: int | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"), mode)


def write_json(path: str | Path, obj: Any, mode: int | None = None) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically (``str`` for unknown types)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str), mode)
