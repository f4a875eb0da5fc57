"""Condition banks kept out of the registry: training cases live with the run, not the model.

``write_bank`` / ``read_bank`` write and check a bank folder (the family's files plus ``bank.json``:
cohort hash, case count, a sha256 per file and one of itself; private permissions), ``log_bank``
logs it as the training run's ``condition_bank/`` artifact, ``fetch_bank`` loads it for a loader
with access (one warning and None otherwise) and ``bank_config`` is what the logged model holds
instead. Why: docs/generators.md, "Condition banks stay with the run".
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import mlflow

from thyroaug.errors import GeneratorError
from thyroaug.generators.base import ConditionBank
from thyroaug.utils.atomic import atomic_dir
from thyroaug.utils.digest import DIGEST_KEY, MISMATCH, damaged, file_sha256, json_sha256

log = logging.getLogger(__name__)

BANK_ARTIFACT = "condition_bank"
"""Run artifact path of a generator's condition bank."""
BANK_FILE = "bank.json"
BANK_FORMAT = "thyroaug-condition-bank/1"
NO_BANK = ("", "none", "off", "false")
EMBEDDED_WARNING = (
    "WARNING - THIS REGISTERED MODEL CONTAINS PATIENT DATA: it was trained with --embed-sources, "
    "so its files hold {cases} training case(s) ({what}) of cohort {cohort}. Anyone with READ on "
    "this registered model can download them. Re-train without --embed-sources to keep them with "
    "the training run only."
)

B = TypeVar("B", bound=ConditionBank)


def write_bank(bank: ConditionBank, folder: str | Path, *, family: str, cohort_hash: str) -> Path:
    """Write ``bank`` (its own ``save``) plus ``bank.json`` to ``folder`` atomically, private."""
    folder = Path(folder)
    with atomic_dir(folder, replace=True) as tmp:
        bank.save(tmp)  # type: ignore[attr-defined]
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        meta = {
            "format": BANK_FORMAT,
            "family": family,
            "cohort_hash": cohort_hash,
            "cases": len(bank),
            "counts": bank.counts(),
            "files": files,
        }
        meta[DIGEST_KEY] = json_sha256(meta)
        (tmp / BANK_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        for path in tmp.iterdir():
            os.chmod(path, 0o600)
        os.chmod(tmp, 0o700)
    return folder


def read_bank(
    folder: str | Path, load: Callable[[Path], B], *, family: str, cohort_hash: str = ""
) -> B:
    """Read a folder written by ``write_bank``, checking family, cohort and file hashes.

    Raises:
        GeneratorError: naming the folder / file and what is wrong.
    """
    folder = Path(folder)
    path = folder / BANK_FILE
    what = f"the index of a {family!r} condition bank"
    fix = _fix(family)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        why = f"it is not a readable condition bank index ({exc})"
        raise GeneratorError(damaged(path, what, why, fix)) from exc
    if not isinstance(meta, dict) or meta.get(DIGEST_KEY, json_sha256(meta)) != json_sha256(meta):
        raise GeneratorError(damaged(path, what, MISMATCH, fix))
    if meta.get("format") != BANK_FORMAT or meta.get("family") != family:
        raise GeneratorError(
            f"{path}: a {meta.get('family')!r} bank of format {meta.get('format')!r}; this "
            f"{family!r} generator needs {BANK_FORMAT!r}"
        )
    if cohort_hash and meta.get("cohort_hash") != cohort_hash:
        raise GeneratorError(
            f"{path}: bank of cohort {meta.get('cohort_hash')!r}, the generator was trained on "
            f"{cohort_hash!r}"
        )
    what = f"a file of a {family!r} condition bank"
    for name, digest in dict(meta.get("files") or {}).items():
        file = folder / name
        if not file.is_file():
            raise GeneratorError(damaged(file, what, "it is missing", fix))
        if file_sha256(file) != digest:
            why = f"its bytes do not match the sha256 in {BANK_FILE}"
            raise GeneratorError(damaged(file, what, why, fix))
    return load(folder)


def _fix(family: str) -> str:
    return (
        f"train the generator again with `thyroaug train-{family}` (its bank is written with the "
        "training run), or point condition_bank at an intact copy"
    )


def log_bank(folder: str | Path) -> str:
    """Log ``folder`` as the active run's ``condition_bank/`` artifact; return its URI."""
    run = mlflow.active_run()
    if run is None:
        raise GeneratorError("log_bank needs an active MLflow run")
    mlflow.log_artifacts(str(folder), BANK_ARTIFACT)
    return f"runs:/{run.info.run_id}/{BANK_ARTIFACT}"


def fetch_bank(
    spec: str | None, load: Callable[[Path], B], *, family: str, cohort_hash: str = ""
) -> B | None:
    """The bank named by ``spec`` (local folder or artifact URI), or None if absent / refused.

    A download goes to a private ``thyroaug-bank-*`` temp folder removed after reading. Any
    failure (no access, missing, another cohort, changed files) is one warning line and None.
    """
    spec = (spec or "").strip()
    if spec.lower() in NO_BANK:
        return None
    local = Path(spec)
    try:
        if "://" not in spec and local.is_dir():
            return read_bank(local, load, family=family, cohort_hash=cohort_hash)
        return _download_and_read(spec, load, family=family, cohort_hash=cohort_hash)
    except Exception as exc:  # access / network / format: the bank is optional by design
        reason = str(exc).splitlines()[0][:400] if str(exc) else type(exc).__name__
        log.warning(
            "condition bank %s not loaded (%s); requests must bring their own conditions",
            spec,
            reason,
        )
        return None


def _download_and_read(uri: str, load: Callable[[Path], B], *, family: str, cohort_hash: str) -> B:
    tmp = Path(tempfile.mkdtemp(prefix="thyroaug-bank-"))
    try:
        got = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp)))
        try:
            return read_bank(got, load, family=family, cohort_hash=cohort_hash)
        except GeneratorError as exc:  # name the artifact, not the removed download
            raise GeneratorError(str(exc).replace(str(got), uri.rstrip("/"))) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bank_config(uri: str | None, cohort_hash: str) -> dict[str, Any]:
    """The ``model_config`` a logged generator carries: where its bank is, never the bank."""
    return {"condition_bank": uri or "none", "cohort_hash": cohort_hash, "reveal_sources": False}


def reveal(config: Mapping[str, Any] | None) -> bool:
    """Whether answers may carry source ids and bank prompts (operator opt-in only)."""
    value = (config or {}).get("reveal_sources", False)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def embedded_files(folder: str | Path, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` a model folder holds (an embedded bank, e.g. ``sources.safetensors``)."""
    return [n for n in names if (Path(folder) / n).exists()]
