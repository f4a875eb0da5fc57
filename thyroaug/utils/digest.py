"""Digests that prove a cached file holds the bytes it was written with, and the one message a
mismatch gives.

``file_sha256`` streams a file; ``tensors_sha256`` covers named tensors plus string metadata (the
cohort cache); ``payload_sha256`` covers a nested checkpoint payload (torch's zip reader checks no
CRC, so a flipped byte in a ``.pt`` loads silently); ``json_sha256`` covers a JSON record without
its own digest field. Formats and where each is checked: docs/data.md, "Integrity of cached files".
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

BLOCK = 1 << 20
DIGEST_KEY = "sha256"
"""Key of the digest inside a checkpoint payload or a JSON record (``seal`` / ``unseal``)."""
MISMATCH = "its bytes do not match the digest written with it"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of the file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _raw(t: torch.Tensor) -> memoryview:
    """The tensor's bytes in memory order (native little-endian), without a copy when it is dense
    (a ``channels_last`` weight is read in its own order: torch saves and loads its strides)."""
    t = t.detach().cpu()
    if not t.is_contiguous():
        dense = t.permute(sorted(range(t.dim()), key=lambda d: -t.stride(d)))
        t = dense if dense.is_contiguous() else t.contiguous()
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def tensors_sha256(tensors: Iterable[tuple[str, torch.Tensor]], meta: Mapping[str, str]) -> str:
    """sha256 of string metadata (key, value; sorted by key), then each tensor's name, dtype,
    shape and bytes, in the order given."""
    digest = hashlib.sha256()
    for key in sorted(meta):
        digest.update(json.dumps([key, meta[key]]).encode() + b"\n")
    for name, t in tensors:
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode() + b"\n")
        digest.update(_raw(t))
    return digest.hexdigest()


def _feed(digest: Any, obj: Any) -> None:
    """Feed ``obj`` to ``digest``: containers in their order, tensors / arrays by their bytes."""
    if isinstance(obj, torch.Tensor):
        digest.update(f"T{obj.dtype}{list(obj.shape)}".encode())
        digest.update(_raw(obj))
    elif isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        digest.update(f"A{arr.dtype.str}{list(arr.shape)}".encode())
        digest.update(memoryview(arr.reshape(-1).view(np.uint8)))
    elif isinstance(obj, Mapping):
        digest.update(f"M{len(obj)}".encode())
        for key, value in obj.items():
            _feed(digest, key)
            _feed(digest, value)
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for item in obj:
            _feed(digest, item)
    elif isinstance(obj, np.generic):
        _feed(digest, obj.item())
    elif isinstance(obj, bytes | bytearray):
        digest.update(f"B{len(obj)}".encode() + bytes(obj))
    else:  # str, int, float, bool, None and other plain values: their repr round-trips
        digest.update(f"{type(obj).__name__}:{obj!r}".encode())
        digest.update(b"\x00")


def payload_sha256(payload: Any) -> str:
    """sha256 of a nested checkpoint payload (dicts and sequences in order, tensors by bytes)."""
    digest = hashlib.sha256()
    _feed(digest, payload)
    return digest.hexdigest()


def seal(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` plus its ``payload_sha256`` under ``DIGEST_KEY`` (to save it with)."""
    clean = {k: v for k, v in payload.items() if k != DIGEST_KEY}
    return {**clean, DIGEST_KEY: payload_sha256(clean)}


def unseal(saved: dict[str, Any]) -> tuple[dict[str, Any], bool | None]:
    """A loaded payload without its digest, and whether it matched (None: it had none)."""
    clean = {k: v for k, v in saved.items() if k != DIGEST_KEY}
    recorded = saved.get(DIGEST_KEY)
    if recorded is None:
        return clean, None
    return clean, payload_sha256(clean) == recorded


def json_sha256(record: Mapping[str, Any]) -> str:
    """sha256 of a JSON record's canonical form, without its ``DIGEST_KEY`` field."""
    clean = {k: v for k, v in record.items() if k != DIGEST_KEY}
    text = json.dumps(clean, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def shown(path: str | Path) -> str:
    """``path`` relative to the current folder when it lies inside it, else as given."""
    path = Path(path)
    try:
        return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd()) else str(path)
    except (OSError, ValueError):
        return str(path)


def damaged(path: str | Path, what: str, why: str, fix: str) -> str:
    """The one line for a damaged file: ``<path> (<what>) is damaged: <why>; <fix>``."""
    return f"{shown(path)} ({what}) is damaged: {why}; {fix}"
