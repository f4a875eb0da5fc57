"""The prepared cohort: every case as tensors plus a table, saved as one safetensors file.

File layout and its byte digest: ``docs/data.md``, "The prepared cohort" and "Integrity of cached
files".
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from thyroaug.contract import CLASSES
from thyroaug.errors import CohortFileError, ThyroaugError
from thyroaug.utils.atomic import atomic_path
from thyroaug.utils.digest import DIGEST_KEY, MISMATCH, damaged, shown, tensors_sha256
from thyroaug.utils.resize import resize_images, resize_masks

log = logging.getLogger(__name__)

COHORT_FILE = "cohort.safetensors"
TENSORS: tuple[str, ...] = ("images", "masks", "labels")
WHAT = "the prepared cohort cache"
_UNSEALED_WARNED: set[str] = set()


def rebuild_command(path: Path, settings: dict[str, Any] | None = None) -> str:
    """The `thyroaug prepare` command that rebuilds the cohort at ``path`` (from its settings)."""
    source = (settings or {}).get("data_source") or {}
    if source.get("kind") == "phantom" and source.get("scale"):
        inputs = f"--phantom-scale {source['scale']}"
    elif source.get("kind") == "manifest":
        inputs = f"--manifest <{source.get('name') or 'manifest'}>"
    else:
        inputs = "<its inputs>"
    size = (settings or {}).get("size")
    sized = f" --size {size}" if size and int(size) != 128 else ""
    return f"`thyroaug prepare {inputs}{sized} --out {shown(path.parent)} --force`"


def _damaged(path: Path, why: str, settings: dict[str, Any] | None = None) -> CohortFileError:
    fix = f"rebuild it with {rebuild_command(path, settings)}"
    return CohortFileError(damaged(path, WHAT, why, fix))


@dataclass
class PreparedCohort:
    """Images, masks, labels and a per-case table, aligned by row."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    table: pd.DataFrame
    content_hash: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.table)
        for name in ("images", "masks", "labels"):
            if getattr(self, name).shape[0] != n:
                raise ThyroaugError(
                    f"PreparedCohort: {name} has {getattr(self, name).shape[0]} rows, table has {n}"
                )

    def __len__(self) -> int:
        return len(self.table)

    @property
    def size(self) -> int:
        """Image side length in pixels."""
        return int(self.images.shape[-1])

    def indices(self, split: str) -> np.ndarray:
        """Row indices of one split (train / val / external)."""
        return np.flatnonzero(self.table["split"].to_numpy() == split)

    def subset(self, split_or_index: str | np.ndarray) -> PreparedCohort:
        """A new cohort with the rows of a split name or an index array."""
        idx = self.indices(split_or_index) if isinstance(split_or_index, str) else split_or_index
        t = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return PreparedCohort(
            images=self.images[t],
            masks=self.masks[t],
            labels=self.labels[t],
            table=self.table.iloc[np.asarray(idx)].reset_index(drop=True),
            content_hash=self.content_hash,
            settings=dict(self.settings),
        )

    def resized(self, size: int) -> PreparedCohort:
        """The cohort at ``size`` px (``utils.resize``); the same object if it has that size."""
        if self.size == size:
            return self
        return PreparedCohort(
            images=resize_images(self.images, size),
            masks=resize_masks(self.masks, size),
            labels=self.labels,
            table=self.table,
            content_hash=self.content_hash,
            settings={**self.settings, "resized_to": size},
        )

    def counts(self) -> pd.DataFrame:
        """Case counts per center x class (columns in CLASSES order, plus total)."""
        tab = pd.crosstab(self.table["center"], self.table["label"])
        tab = tab.reindex(columns=list(CLASSES), fill_value=0)
        tab["total"] = tab.sum(axis=1)
        return tab

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file in the same folder, then rename)."""
        path = Path(path)
        if path.is_dir() or path.suffix != ".safetensors":
            path = path / COHORT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "table": self.table.to_json(orient="records"),
            "content_hash": self.content_hash,
            "settings": json.dumps(self.settings, sort_keys=True, default=str),
            "classes": json.dumps(list(CLASSES)),
        }
        tensors = {
            "images": self.images.contiguous(),
            "masks": self.masks.contiguous(),
            "labels": self.labels.contiguous(),
        }
        meta[DIGEST_KEY] = tensors_sha256(tensors.items(), meta)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PreparedCohort:
        """Read a cohort written by ``save`` (a file, or a folder holding ``COHORT_FILE``) and
        check its bytes against the digest written with it (a cache without one: see
        ``_check_digest``).

        Raises:
            CohortFileError: no file there, or a truncated / corrupt / inconsistent one, or bytes
                that do not match its digest (one line naming the file and the command that
                rebuilds it).
        """
        path = Path(path)
        if path.is_dir():
            path = path / COHORT_FILE
        if not path.is_file():
            raise CohortFileError(
                f"no prepared cohort at {path}; run `thyroaug prepare` (or `mlflow run . -e "
                "prepare_data`) first"
            )
        meta, tensors = _read(path)
        try:
            settings = json.loads(meta.get("settings", "{}"))
        except (TypeError, ValueError):
            settings = {}
        _check_digest(path, meta, tensors, settings)
        try:
            classes = json.loads(meta.get("classes", "[]"))
            table = pd.DataFrame.from_records(json.loads(meta["table"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise _damaged(path, f"its case table is missing or unreadable ({exc})") from exc
        if classes and tuple(classes) != CLASSES:
            raise CohortFileError(f"{path}: class order {classes} differs from {list(CLASSES)}")
        _check_tensors(path, tensors, len(table))
        return cls(
            images=tensors["images"],
            masks=tensors["masks"],
            labels=tensors["labels"],
            table=table,
            content_hash=meta.get("content_hash", ""),
            settings=settings,
        )


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and the three tensors of a cohort file; CohortFileError if it is damaged."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            missing = [k for k in TENSORS if k not in set(f.keys())]
            if missing:
                raise _damaged(path, f"tensor(s) {', '.join(missing)} missing")
            tensors = {k: f.get_tensor(k) for k in TENSORS}
    except SafetensorError as exc:
        raise _damaged(path, f"not a readable safetensors file ({exc})") from exc
    except PermissionError as exc:
        raise CohortFileError(
            f"{shown(path)} ({WHAT}) cannot be read: permission denied; give this user read "
            "access to it"
        ) from exc
    except OSError as exc:
        raise _damaged(path, f"cannot be read ({exc})") from exc
    return meta, tensors


def _check_tensors(path: Path, tensors: dict[str, torch.Tensor], rows: int) -> None:
    """Shapes and values ``save`` writes: [N, 1, S, S] images / masks, N labels in range."""
    images, masks, labels = (tensors[k] for k in TENSORS)
    problems = []
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
        problems.append(f"images have shape {list(images.shape)}, expected [N, 1, S, S]")
    if tuple(masks.shape) != tuple(images.shape):
        problems.append(f"masks have shape {list(masks.shape)}, images {list(images.shape)}")
    if labels.ndim != 1 or (
        labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < len(CLASSES)
    ):
        problems.append(f"labels are not class indices 0..{len(CLASSES) - 1}")
    counts = {k: int(t.shape[0]) if t.ndim else 0 for k, t in tensors.items()}
    if set(counts.values()) != {rows}:
        problems.append(f"{counts} rows but the case table has {rows}")
    if problems:
        raise _damaged(path, "; ".join(problems))


def _check_digest(
    path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor], settings: dict[str, Any]
) -> None:
    """The tensors and metadata must hash to the digest ``save`` wrote (``tensors_sha256``).

    A cache written before digests were recorded has none: it is trusted by its content hash, as
    before, with one warning per file and process (``thyroaug prepare`` rebuilds it with one).
    """
    recorded = meta.get(DIGEST_KEY)
    if recorded is None:
        if str(path) not in _UNSEALED_WARNED:
            _UNSEALED_WARNED.add(str(path))
            log.warning(
                "%s (%s) has no byte digest (an older thyroaug wrote it): only its content hash "
                "vouches for it, a damaged byte would go unnoticed; %s adds one",
                shown(path),
                WHAT,
                rebuild_command(path, settings),
            )
        return
    others = {k: v for k, v in meta.items() if k != DIGEST_KEY}
    if tensors_sha256(((k, tensors[k]) for k in TENSORS), others) != recorded:
        raise _damaged(path, MISMATCH, settings)
