"""Synthetic sets: the hand-over format between generators (and CA) and the classifier.

A synthetic set is a folder (a local path or a downloaded MLflow artifact directory) holding
  ``images.safetensors``  tensors ``images`` float32 [N, 1, S, S] in the prepared cohort's intensity
                          range (clipped, not min-max stretched) and ``labels`` int64 [N];
  ``manifest.csv``        one row per image, in tensor order: ``index``, ``label`` (DG/NG/NL/TI),
                          ``method`` (FM, SD1..SD4, CA), ``generator_uri``, ``generator_version``,
                          ``seed``, ``source_id`` (case or mask id the image was conditioned on,
                          empty if none), plus free method-specific columns (solver, steps, ...);
  ``set.json``            summary: method, ``count``, per-class counts, cohort hash, image size,
                          created-by run id, any generator settings, ``tensor_sha256`` (the
                          hash ``tensor_sha256`` of images + labels), ``manifest_sha256`` (of
                          ``manifest.csv``'s bytes) and ``sha256`` (of set.json's own other
                          fields, ``utils.digest.json_sha256``), written last;
  ``grid_<CLASS>.png``    optional sample grids (not read back).
Writes are atomic: everything goes to a temporary sibling folder that is renamed at the end.

Loading refuses a set without complete provenance: ``set.json`` missing (a killed run or an
interrupted upload), a count or hash that does not match the files, or a truncated / corrupt file
(``ScenarioError``: one line naming the file, what it is and how to regenerate it). Sets saved
before the tensor hash was recorded are refused with a message to regenerate them, unless
``trust_legacy=True`` (then only the count is checked and a warning logged): their tensors cannot
be told apart from a damaged copy; sets saved before the manifest and set.json hashes were
recorded are checked by their tensor hash alone.

``resolve_set`` also refuses a set whose creating run (``created_by_run``) did not finish (a killed
or failed ``synthesize`` whose ``--out`` copy is complete), or whose run cannot be looked up,
unless ``allow_unfinished`` (then the set says so: ``LoadedSynthetic.unfinished``). It downloads
MLflow sets into a temporary ``thyroaug-synthetic-<METHOD>-*`` folder,
removes it once the set is in memory (``LoadedSynthetic.local_path`` is then None; ``ref`` says
where it came from), and on every call sweeps such folders older than a day left by crashed runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from thyroaug.contract import CLASSES, synthetic_artifact
from thyroaug.errors import ScenarioError
from thyroaug.utils.atomic import reraise_storage, staging_prefix, sweep_staging
from thyroaug.utils.digest import DIGEST_KEY, damaged, file_sha256, json_sha256

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
DOWNLOAD_PREFIX = "thyroaug-synthetic-"
DOWNLOAD_PREFIXES = (DOWNLOAD_PREFIX, "thyroaug-bank-")
"""Temp-folder prefixes of downloads with patient-derived data (sets, condition banks)."""
STALE_DOWNLOAD_S = 24 * 3600
"""Age after which a leftover download folder (a crashed run's) is removed."""
REGENERATE = "regenerate it with `thyroaug synthesize` (or `mlflow run . -e synthesize`)"
WHAT = "a synthetic set"
ALLOW_UNFINISHED = "--allow-unfinished-set"
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

        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()):
            raise ScenarioError(f"{folder} exists and is not empty; choose a new folder")
        folder.parent.mkdir(parents=True, exist_ok=True)
        sweep_staging(folder)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=staging_prefix(folder)))
        try:
            save_file(
                {"images": self.images.float().contiguous(), "labels": self.labels.long()},
                str(tmp / "images.safetensors"),
            )
            self.manifest.to_csv(tmp / "manifest.csv", index=False)
            info = {
                **{k: v for k, v in self.info.items() if k != DIGEST_KEY},
                "method": self.method,
                "count": len(self.manifest),
                "class_counts": self.class_counts(),
                "image_size": int(self.images.shape[-1]) if len(self.manifest) else None,
                "tensor_sha256": tensor_sha256(self.images, self.labels),
                "manifest_sha256": file_sha256(tmp / "manifest.csv"),
            }
            info = json.loads(json.dumps(info, default=str))  # as it reads back
            info[DIGEST_KEY] = json_sha256(info)
            (tmp / "set.json").write_text(json.dumps(info, indent=2, sort_keys=True))
            for name, grid in (grids or {}).items():
                img = grid if isinstance(grid, Image.Image) else Image.fromarray(np.asarray(grid))
                img.save(tmp / f"grid_{name}.png")
            if folder.exists():
                folder.rmdir()
            os.replace(tmp, folder)
        except Exception as exc:
            reraise_storage(exc, folder)  # a full disk is named as such, on the set's folder
            raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path, trust_legacy: bool = False) -> SyntheticSet:
        """Read a set written by ``save`` and check its provenance (see the module docstring).

        Args:
            folder: the set's folder.
            trust_legacy: accept a set whose ``set.json`` records no tensor hash (saved before
                hashes were recorded); its count is still checked.

        Raises:
            ScenarioError: a file missing, truncated or corrupt, or count / hash not matching.
        """
        folder = Path(folder)
        for name in ("images.safetensors", "manifest.csv", "set.json"):
            if not (folder / name).is_file():
                why = " (an interrupted run or upload?)" if name == "set.json" else ""
                raise ScenarioError(
                    f"{folder} is not a complete synthetic set: {name} is missing{why}; "
                    + REGENERATE
                )
        tensors = _read_tensors(folder / "images.safetensors")
        try:
            manifest = pd.read_csv(folder / "manifest.csv", keep_default_na=False)
            info = json.loads((folder / "set.json").read_text())
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            why = f"manifest.csv or set.json unreadable ({exc})"
            raise ScenarioError(damaged(folder, WHAT, why, REGENERATE)) from exc
        if not isinstance(info, dict):
            raise ScenarioError(damaged(folder, WHAT, "set.json is not a JSON object", REGENERATE))
        _check_provenance(folder, tensors, len(manifest), info, trust_legacy)
        return cls(tensors["images"], tensors["labels"], manifest, info)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """``images`` and ``labels`` of a set file; ScenarioError naming the file if damaged."""

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        why = f"{path.name} is truncated or corrupt ({exc})"
        raise ScenarioError(damaged(path.parent, WHAT, why, REGENERATE)) from exc
    missing = [k for k in ("images", "labels") if k not in tensors]
    if missing:
        why = f"{path.name} lacks tensor(s) {', '.join(missing)}"
        raise ScenarioError(damaged(path.parent, WHAT, why, REGENERATE))
    return tensors


def _check_provenance(
    folder: Path, tensors: dict[str, torch.Tensor], rows: int, info: dict[str, Any], trust: bool
) -> None:
    """set.json's own hash, count, tensor hash and manifest hash must describe these files (see
    ``SyntheticSet.load``); the tensor hash is computed once and kept in ``info``."""
    n = int(tensors["images"].shape[0]) if tensors["images"].ndim else 0
    problem = None
    if DIGEST_KEY in info and info[DIGEST_KEY] != json_sha256(info):
        problem = "set.json does not match its own hash (a value in it changed)"
    elif info.get("count") is not None and str(info["count"]) != str(n):
        problem = f"set.json records {info['count']} images, images.safetensors holds {n}"
    elif rows != n:
        problem = f"manifest.csv has {rows} rows for {n} images"
    elif info.get("manifest_sha256") and file_sha256(folder / "manifest.csv") != str(
        info["manifest_sha256"]
    ):
        problem = "manifest.csv does not match the hash in set.json"
    if problem:
        raise ScenarioError(damaged(folder, WHAT, problem, REGENERATE))
    recorded = info.get("tensor_sha256")
    if not recorded:
        if not trust:
            raise ScenarioError(
                f"{folder}: set.json records no tensor hash (a set saved by an older thyroaug), "
                f"so a damaged copy cannot be detected; {REGENERATE}, or accept it as is with "
                "trust_legacy=True"
            )
        log.warning("%s: legacy synthetic set without a tensor hash, trusted as is", folder)
        return
    actual = tensor_sha256(tensors["images"], tensors["labels"])
    if actual != recorded:
        why = (
            f"images.safetensors does not match the hash in set.json (recorded "
            f"{str(recorded)[:12]}..., found {actual[:12]}...)"
        )
        raise ScenarioError(damaged(folder, WHAT, why, REGENERATE))


@dataclass
class LoadedSynthetic:
    """A synthetic set plus where it came from (for logging exactly which set was used).

    ``local_path`` is the set's folder on disk, or None when it was a temporary download (removed
    once loaded: ``ref`` names the run / URI); ``sha256`` is the set's ``tensor_sha256`` (checked
    against set.json when loaded); ``unfinished`` says why its creating run is not known to have
    finished when it was used anyway (``resolve_set(allow_unfinished=True)``), else "".
    """

    method: str
    data: SyntheticSet
    ref: str
    local_path: str | None = None
    sha256: str = ""
    unfinished: str = ""

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


def tensor_sha256(images: torch.Tensor, labels: torch.Tensor) -> str:
    """Content hash of an in-memory set (images as float32 bytes + labels)."""
    h = hashlib.sha256()
    h.update(images.float().contiguous().numpy().tobytes())
    h.update(labels.long().contiguous().numpy().tobytes())
    return h.hexdigest()


def sweep_stale_downloads(
    max_age_s: float = STALE_DOWNLOAD_S, folder: str | Path | None = None
) -> list[Path]:
    """Remove this user's ``thyroaug-synthetic-*`` / ``thyroaug-bank-*`` download folders older
    than ``max_age_s``.

    ``resolve_set`` and ``generators.banks.fetch_bank`` remove their downloads themselves; what
    is left comes from processes that were killed.

    Args:
        max_age_s: age (seconds since the folder last changed) from which a folder is stale.
        folder: where to look (default: the system temporary folder).

    Returns:
        The folders removed.
    """
    root = Path(folder) if folder is not None else Path(tempfile.gettempdir())
    uid = os.getuid() if hasattr(os, "getuid") else None
    now, removed = time.time(), []
    try:
        candidates = [p for prefix in DOWNLOAD_PREFIXES for p in root.glob(f"{prefix}*")]
    except OSError:
        return []
    for path in candidates:
        try:
            st = path.lstat()
        except OSError:
            continue
        mine = uid is None or st.st_uid == uid
        if stat.S_ISDIR(st.st_mode) and mine and now - st.st_mtime >= max_age_s:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("removed %d stale synthetic download folder(s) in %s", len(removed), root)
    return removed


def _download(method: str, ref: str, dst: Path, hint: str) -> Path:
    """Download the set ``ref`` (run id or artifact URI) into ``dst``; ScenarioError if not."""

    try:
        if _RUN_ID.match(ref):
            return Path(
                mlflow.artifacts.download_artifacts(
                    run_id=ref, artifact_path=synthetic_artifact(method), dst_path=str(dst)
                )
            )
        if _URI.match(ref) and not re.match(r"^[a-zA-Z]:[\\/]", ref):
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(dst)))
    except Exception as exc:  # MLflow raises many types for missing runs/artifacts
        raise ScenarioError(
            f"synthetic set {method}={ref!r} could not be downloaded: {exc}; check the "
            f"run id / URI{', or ' + hint if hint else ''}"
        ) from exc
    raise ScenarioError(
        f"synthetic set {method}={ref!r}: no such folder, and not a run id or an "
        f"artifact URI{'; ' + hint if hint else ''}"
    )


def creator_state(info: dict[str, Any]) -> tuple[str, str] | None:
    """(run id, why it does not count as finished) for a set whose ``created_by_run`` did not
    FINISH or cannot be looked up in the tracking store; None when it finished or none is named.
    """
    run_id = str(info.get("created_by_run") or "")
    if not run_id:
        return None
    try:
        status = MlflowClient().get_run(run_id).info.status
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return run_id, "is not in this tracking store (made with another store, or deleted)"
        return run_id, f"cannot be looked up: the tracking store is unreachable ({_first(exc)})"
    except Exception as exc:  # a store that does not answer raises requests' / OS errors
        return run_id, f"cannot be looked up: the tracking store is unreachable ({_first(exc)})"
    return None if status == "FINISHED" else (run_id, f"is {status}, not FINISHED")


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]


def _check_creator(method: str, ref: str, info: dict[str, Any], allow: bool) -> str:
    """ "" when the set's creating run finished; else refuse it, or (``allow``) warn and return
    the reason recorded with the set."""
    state = creator_state(info)
    if state is None:
        return ""
    run_id, why = state
    note = f"its creating run {run_id} {why}"
    if not allow:
        raise ScenarioError(
            f"synthetic set {method}={ref}: {note}, so the set may be what a killed or failed "
            f"`thyroaug synthesize` left behind; {REGENERATE}, or pass {ALLOW_UNFINISHED} to use "
            "it anyway (the run is tagged with it)"
        )
    log.warning("synthetic set %s=%s used although %s (%s)", method, ref, note, ALLOW_UNFINISHED)
    return f"{method}: run {run_id} {why}"


def resolve_set(
    method: str,
    ref: str,
    download_dir: str | Path | None = None,
    hint: str = "",
    trust_legacy: bool = False,
    allow_unfinished: bool = False,
) -> LoadedSynthetic:
    """Load the synthetic set that ``ref`` points to and check it is a ``method`` set.

    Args:
        method: the scenario part it stands for (FM, SD1..SD4, CA).
        ref: a local folder, an MLflow artifact URI, or a bare run id (-> ``synthetic/<method>``).
        download_dir: where MLflow downloads go and stay (default: a temporary folder that is
            removed once the set is loaded; ``local_path`` is then None).
        hint: how to produce a missing set (appended to the error message).
        trust_legacy: accept a set saved without a tensor hash (``SyntheticSet.load``).
        allow_unfinished: use a set whose creating run did not finish or cannot be looked up
            (one warning; ``LoadedSynthetic.unfinished`` says why).

    Raises:
        ScenarioError: nothing found at ``ref``, a download failure, an incomplete or damaged
            set, a set of another method, or (without ``allow_unfinished``) one whose creating
            run did not finish or cannot be looked up.
    """
    sweep_stale_downloads()
    path = Path(ref).expanduser()
    temporary = None
    if path.exists():
        local = path
    else:
        if download_dir is None:
            temporary = Path(tempfile.mkdtemp(prefix=f"{DOWNLOAD_PREFIX}{method}-"))
        try:
            local = _download(method, ref, temporary or Path(download_dir), hint)
        except BaseException:
            if temporary is not None:
                shutil.rmtree(temporary, ignore_errors=True)
            raise
    try:
        data = SyntheticSet.load(local, trust_legacy=trust_legacy)
        if data.method != method:
            raise ScenarioError(
                f"synthetic set {ref!r} holds method {data.method!r} images, but was given as "
                f"{method}"
            )
        sha = str(data.info.get("tensor_sha256") or tensor_sha256(data.images, data.labels))
    finally:
        if temporary is not None:  # the tensors are in memory: drop the ~260 MB download
            shutil.rmtree(temporary, ignore_errors=True)
    unfinished = _check_creator(method, ref, data.info, allow_unfinished)
    log.info("synthetic %s: %d images from %s", method, len(data.manifest), ref)
    return LoadedSynthetic(method, data, ref, None if temporary else str(local), sha, unfinished)
