"""Atomic writes: a later step never reads a half-written file or folder.

Everything is written to a temporary sibling (same file system, so ``os.replace`` is a rename)
and renamed into place when complete. A crash leaves a hidden ``.<name>.tmp-<pid>-*`` sibling,
which the next write of ``<name>`` removes once its writer is gone (``sweep_staging``).

A write that fails for lack of space or permission (``STORAGE_ERRNOS``), whatever library wraps
the error (torch's zip writer, safetensors, SQLite), is re-raised as an ``OSError`` naming the
final file; ``storage_line`` turns it into the one line a user reads.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STORAGE_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "no space left",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
}
"""Errors of the storage rather than of the program: named as such, never a traceback."""
_SQLITE = {13: errno.ENOSPC, 8: errno.EROFS}  # SQLITE_FULL, SQLITE_READONLY
_TEXTS = (
    (re.compile(r"\(os error (\d+)\)"), None),  # Rust (safetensors): "... (os error 28)"
    (re.compile(r"database or disk is full"), errno.ENOSPC),  # SQLite
    (re.compile(r"readonly database"), errno.EROFS),
    (re.compile(r"No space left on device"), errno.ENOSPC),
)
FILE_KINDS: tuple[tuple[str, str], ...] = (
    ("cohort.safetensors", "the prepared cohort cache"),
    ("state.pt", "the classifier's resume checkpoint"),
    ("best.pt", "the classifier's best-weights checkpoint"),
    ("checkpoint.pt", "the flow-matching checkpoint"),
    ("unsent_epoch_metrics.json", "the buffer of unsent metrics"),
    ("images.safetensors", "a synthetic set"),
    ("mlflow.db", "the tracking store (SQLite)"),
)
"""File name -> what it is, for messages about a file a user did not name."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes / contexts and wrapped originals (SQLAlchemy ``orig``), each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop(0)
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        orig = getattr(item, "orig", None)
        todo.extend(
            [item.__cause__, item.__context__, orig if isinstance(orig, BaseException) else None]
        )


def storage_errno(exc: BaseException) -> int | None:
    """The ``STORAGE_ERRNOS`` code behind ``exc`` (through wrappers), or None."""
    for item in _chain(exc):
        code = getattr(item, "errno", None)
        if isinstance(item, OSError) and code in STORAGE_ERRNOS:
            return code
        sqlite = _SQLITE.get(getattr(item, "sqlite_errorcode", -1) & 0xFF)
        if sqlite:
            return sqlite
        text = str(item)
        for pattern, fixed in _TEXTS:
            found = pattern.search(text)
            if found and (fixed or int(found.group(1)) in STORAGE_ERRNOS):
                return fixed or int(found.group(1))
    return None


def storage_file(exc: BaseException) -> str | None:
    """The file a storage error names (the first ``OSError.filename`` in the chain)."""
    for item in _chain(exc):
        name = getattr(item, "filename", None)
        if isinstance(item, OSError) and name:
            return os.fsdecode(name)
    return None


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system holding ``path`` (or its nearest existing parent)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def file_kind(path: str | Path) -> str:
    """What a file is (``FILE_KINDS``, a run artifact under ``mlartifacts``), or ""."""
    path = Path(path)
    for name, kind in FILE_KINDS:
        if path.name == name:
            return kind
    return "a run artifact" if "mlartifacts" in path.parts else ""


def storage_line(exc: BaseException, then: str, file: str | Path | None = None) -> str | None:
    """One line for a storage failure, or None when ``exc`` is not one.

    ``no space left on the file system at <mount> while writing <file> (<what>); free space and
    <then>`` (and the permission / read-only equivalents).

    Args:
        exc: the exception raised (any wrapper of the ``OSError``).
        then: how to go on once fixed, e.g. ``rerun with --resume``.
        file: the file being written when the error does not name one.
    """
    code = storage_errno(exc)
    if code is None:
        return None
    target = storage_file(exc) or (str(file) if file else None)
    kind = file_kind(target) if target else ""
    what = f"{target} ({kind})" if target and kind else (target or "a file")
    where = Path(target) if target else Path.cwd()
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied on {where.parent if target else where} while writing {what}; "
            f"make it writable for this user and {then}"
        )
    place = f"the file system at {mount_point(where)}"
    if code == errno.EROFS:
        return (
            f"read-only file system at {mount_point(where)} while writing {what}; write to a "
            f"writable folder (THYROAUG_HOME, --out) and {then}"
        )
    return f"{STORAGE_ERRNOS[code]} on {place} while writing {what}; free space and {then}"


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
    except Exception as exc:
        reraise_storage(exc, path)
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def reraise_storage(exc: Exception, path: Path) -> None:
    """Re-raise a storage failure hidden in a library's error as an ``OSError`` naming ``path``."""
    code = storage_errno(exc)
    if code is not None and not (isinstance(exc, OSError) and exc.filename):
        raise OSError(code, os.strerror(code), str(path)) from exc


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
    except Exception as exc:
        reraise_storage(exc, folder)
        raise
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
