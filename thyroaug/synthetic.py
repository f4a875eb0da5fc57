"""Synthetic sets: the hand-over format between generators (and CA) and the classifier.

A synthetic set is a folder (a local path or a downloaded MLflow artifact directory) holding
  ``images.safetensors``  tensors ``images`` float32 [N, 1, S, S] in the prepared cohort's intensity
                          range (clipped, not min-max stretched) and ``labels`` int64 [N];
  ``manifest.csv``        one row per image, in tensor order: ``index``, ``label`` (DG/NG/NL/TI),
                          ``method`` (FM, SD1..SD4, CA), ``generator_uri``, ``generator_version``,
                          ``seed``, ``source_id`` (case or mask id the image was conditioned on,
                          empty if none), plus free method-specific columns (solver, steps, ...);
  ``set.json``            summary: method, per-class counts, cohort hash, image size, created-by
                          run id, and any generator settings;
  ``grid_<CLASS>.png``    optional sample grids (not read back).
Writes are atomic: everything goes to a temporary sibling folder that is renamed at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from thyroaug.contract import CLASSES, synthetic_artifact
from thyroaug.errors import ScenarioError

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
REQUIRED_COLUMNS: tuple[str, ...] = (
    "index",
    "label",
    "method",
    "generator_uri",
    "generator_version",
    "seed",
    "source_id",
)


@dataclass
class SyntheticSet:
    """Images + labels + provenance of one synthetic set."""

    images: torch.Tensor
    labels: torch.Tensor
    manifest: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.labels.shape[0] != n or len(self.manifest) != n:
            raise ScenarioError(
                f"synthetic set: {n} images, {self.labels.shape[0]} labels, "
                f"{len(self.manifest)} manifest rows; they must match"
            )
        missing = [c for c in REQUIRED_COLUMNS if c not in self.manifest.columns]
        if missing:
            raise ScenarioError(f"synthetic set manifest lacks column(s): {', '.join(missing)}")
        if n and self.images.ndim != 4:
            shape = tuple(self.images.shape)
            raise ScenarioError(f"synthetic images must be [N,1,S,S], got {shape}")
        if n and not torch.isfinite(self.images).all():
            raise ScenarioError("synthetic set contains NaN/inf pixels")

    @property
    def method(self) -> str:
        """The generating method (FM, SD1..SD4, CA)."""
        methods = set(self.manifest["method"].astype(str)) or {self.info.get("method", "")}
        if len(methods) != 1:
            raise ScenarioError(f"synthetic set mixes methods {sorted(methods)}")
        return methods.pop()

    def class_counts(self) -> dict[str, int]:
        """Number of images per class, in CLASSES order."""
        counts = np.bincount(self.labels.numpy(), minlength=len(CLASSES))
        return {c: int(counts[i]) for i, c in enumerate(CLASSES)}

    def save(self, folder: str | Path, grids: dict[str, Any] | None = None) -> Path:
        """Write the set atomically to ``folder`` (which must not exist or be empty).

        Args:
            folder: destination directory.
            grids: optional {class name: PIL image or (H, W[, 3]) uint8 array} sample grids.
        """
        from PIL import Image
        from safetensors.torch import save_file

        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()):
            raise ScenarioError(f"{folder} exists and is not empty; choose a new folder")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
        try:
            save_file(
                {"images": self.images.float().contiguous(), "labels": self.labels.long()},
                str(tmp / "images.safetensors"),
            )
            self.manifest.to_csv(tmp / "manifest.csv", index=False)
            info = {
                **self.info,
                "method": self.method,
                "count": len(self.manifest),
                "class_counts": self.class_counts(),
                "image_size": int(self.images.shape[-1]) if len(self.manifest) else None,
            }
            (tmp / "set.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
            for name, grid in (grids or {}).items():
                img = grid if isinstance(grid, Image.Image) else Image.fromarray(np.asarray(grid))
                img.save(tmp / f"grid_{name}.png")
            if folder.exists():
                folder.rmdir()
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SyntheticSet:
        """Read a set written by ``save``; raises ScenarioError naming what is missing."""
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in ("images.safetensors", "manifest.csv"):
            if not (folder / name).exists():
                raise ScenarioError(
                    f"{folder} is not a synthetic set: {name} is missing (produce one with "
                    "`thyroaug synthesize` / `mlflow run . -e synthesize`)"
                )
        tensors = load_file(str(folder / "images.safetensors"))
        manifest = pd.read_csv(folder / "manifest.csv", keep_default_na=False)
        info_path = folder / "set.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        return cls(tensors["images"], tensors["labels"], manifest, info)


@dataclass
class LoadedSynthetic:
    """A synthetic set plus where it came from (for logging exactly which set was used)."""

    method: str
    data: SyntheticSet
    ref: str
    local_path: str | None = None
    sha256: str = ""

    def describe(self) -> dict[str, Any]:
        """Provenance dict (ref, path, hash, counts, the set's info) for params/artifacts."""
        return {
            "method": self.method,
            "ref": self.ref,
            "local_path": self.local_path,
            "sha256": self.sha256,
            "count": len(self.data.manifest),
            "class_counts": self.data.class_counts(),
            "info": self.data.info,
        }


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_sha256(images: torch.Tensor, labels: torch.Tensor) -> str:
    """Content hash of an in-memory set (images as float32 bytes + labels)."""
    h = hashlib.sha256()
    h.update(images.float().contiguous().numpy().tobytes())
    h.update(labels.long().contiguous().numpy().tobytes())
    return h.hexdigest()


def resolve_set(
    method: str, ref: str, download_dir: str | Path | None = None, hint: str = ""
) -> LoadedSynthetic:
    """Load the synthetic set that ``ref`` points to and check it is a ``method`` set.

    Args:
        method: the scenario part it stands for (FM, SD1..SD4, CA).
        ref: a local folder, an MLflow artifact URI, or a bare run id (-> ``synthetic/<method>``).
        download_dir: where MLflow downloads go (default: a fresh temporary folder).
        hint: how to produce a missing set (appended to the error message).

    Raises:
        ScenarioError: nothing found at ``ref``, a download failure, or a set of another method.
    """
    path = Path(ref).expanduser()
    if path.exists():
        local = path
    else:
        import mlflow

        dst = str(download_dir or tempfile.mkdtemp(prefix=f"thyroaug-synthetic-{method}-"))
        try:
            if _RUN_ID.match(ref):
                local = Path(
                    mlflow.artifacts.download_artifacts(
                        run_id=ref, artifact_path=synthetic_artifact(method), dst_path=dst
                    )
                )
            elif _URI.match(ref) and not re.match(r"^[a-zA-Z]:[\\/]", ref):
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=dst))
            else:
                raise ScenarioError(
                    f"synthetic set {method}={ref!r}: no such folder, and not a run id or an "
                    f"artifact URI{'; ' + hint if hint else ''}"
                )
        except ScenarioError:
            raise
        except Exception as exc:  # MLflow raises many types for missing runs/artifacts
            raise ScenarioError(
                f"synthetic set {method}={ref!r} could not be downloaded: {exc}; check the "
                f"run id / URI{', or ' + hint if hint else ''}"
            ) from exc
    data = SyntheticSet.load(local)
    if data.method != method:
        raise ScenarioError(
            f"synthetic set {ref!r} holds method {data.method!r} images, but was given as {method}"
        )
    images_file = local / "images.safetensors"
    sha = _sha256_file(images_file) if images_file.exists() else ""
    log.info("synthetic %s: %d images from %s", method, len(data.manifest), ref)
    return LoadedSynthetic(method, data, ref, str(local), sha)
