"""What the Stable Diffusion generator writes to disk and reads back (every folder atomically).

The generator folder (``save_components``, ``read_card``, ``card_config``) and the training state
(``checkpoints/checkpoint-<step>/``, the scratch VAE stage); layout: docs/generators.md, "Files".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thyroaug.errors import ConfigError
from thyroaug.generators.stable_diffusion.components import SDComponents
from thyroaug.generators.stable_diffusion.config import MODE_DESCRIPTIONS, SDConfig
from thyroaug.utils.atomic import atomic_dir
from thyroaug.utils.digest import damaged, file_sha256

if TYPE_CHECKING:
    from thyroaug.generators.stable_diffusion.sources import SourceBank

log = logging.getLogger(__name__)

MODEL_CARD_FILE = "thyroaug_sd.json"
TRAINER_STATE_FILE = "trainer_state.json"
STAGE_LOSSES_FILE = "losses.json"
CHECKPOINT_WHAT = "a Stable Diffusion training checkpoint"

# --------------------------------------------------------------------------------------------
# the generator folder
# --------------------------------------------------------------------------------------------


def save_components(
    components: SDComponents,
    out_dir: str | os.PathLike,
    card: dict[str, Any] | None = None,
    bank: SourceBank | None = None,
) -> Path:
    """Save as a diffusers SD directory (atomic: temp sibling, then rename; replaces ``out_dir``).

    Args:
        components: the five parts.
        out_dir: the generator folder.
        card: the thyroaug model card, written as ``thyroaug_sd.json`` and ``README.md``.
        bank: the source bank to embed (``--embed-sources``), or None.

    Returns:
        The folder.
    """
    out = Path(out_dir)
    with atomic_dir(out, replace=True) as tmp:
        components.pipeline().save_pretrained(str(tmp), safe_serialization=True)
        info = dict(card or {})
        (tmp / MODEL_CARD_FILE).write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
        (tmp / "README.md").write_text(_readme(info))
        if bank is not None:
            bank.save(tmp)
    return out


def _readme(info: dict[str, Any]) -> str:
    base = info.get("base_model") or "none"
    lines = [
        "# thyroaug Stable Diffusion generator",
        "",
        "A diffusers Stable Diffusion directory (vae, unet, text_encoder, tokenizer, scheduler)",
        "for thyroid scintigraphy, without safety checker. Load it offline with",
        "`StableDiffusionPipeline.from_pretrained(dir, safety_checker=None,",
        "local_files_only=True)`. `sources.*` hold the training cases SD1/SD3/SD4 start from.",
        "",
        f"- source: {info.get('source', '?')} (base: {base})",
        f"- resolution: {info.get('resolution', '?')} px, channels: {info.get('image_channels')}",
        f"- optimizer steps: {info.get('train_steps', '?')} (EMA weights: {info.get('ema')})",
        f"- text encoder: {info.get('text_encoder_training', '?')}",
        f"- cohort hash: {info.get('cohort_hash', '')}",
        "",
        "Modes: " + "; ".join(f"{m}: {d}" for m, d in MODE_DESCRIPTIONS.items()),
        "",
    ]
    return "\n".join(lines)


def read_card(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The thyroaug model card of a saved directory ({} for a foreign SD directory)."""
    path = Path(model_dir) / MODEL_CARD_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def card_config(card: dict[str, Any]) -> SDConfig:
    """The SDConfig saved with a model (sampling fields only matter), else paper defaults."""
    saved = dict(card.get("config") or {})
    names = {f.name for f in dataclasses.fields(SDConfig)}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items() if k in names}
    try:
        return SDConfig(**kwargs)
    except (ConfigError, TypeError):
        log.warning("the model's saved config is not usable; using paper sampling defaults")
        return SDConfig()


# --------------------------------------------------------------------------------------------
# training state
# --------------------------------------------------------------------------------------------


def _checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every ``checkpoint-<step>`` under ``root``, oldest first."""
    return sorted(
        (int(p.name.split("-")[1]), p)
        for p in root.glob("checkpoint-*")
        if p.name.split("-")[1].isdigit()
    )


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint folder under ``root`` (None when there is none)."""
    if not root.exists():
        return None
    found = [(s, p) for s, p in _checkpoints(root) if (p / TRAINER_STATE_FILE).exists()]
    return max(found)[1] if found else None


def checkpoint_run_id(root: Path) -> str | None:
    """The MLflow run the newest checkpoint under ``root`` was trained in (None if unknown)."""
    folder = latest_checkpoint(Path(root))
    if folder is None:
        return None
    return json.loads((folder / TRAINER_STATE_FILE).read_text()).get("mlflow_run_id")


def save_checkpoint(
    accelerator: Any, root: Path, step: int, losses: list[float], keep: int
) -> None:
    """accelerate state + trainer state (with a sha256 of every file) in ``root/checkpoint-<step>``;
    keeps the newest ``keep``."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    # mlflow loads to train: the SD pipeline (inference) imports this module for read_card
    import mlflow

    run = mlflow.active_run()
    state = {"step": step, "losses": losses, "mlflow_run_id": run.info.run_id if run else None}
    with atomic_dir(root / f"checkpoint-{step}", replace=True) as tmp:
        accelerator.save_state(str(tmp))
        state["files"] = {
            p.relative_to(tmp).as_posix(): file_sha256(p)
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        (tmp / TRAINER_STATE_FILE).write_text(json.dumps(state))
    if keep and keep > 0:
        for _, p in _checkpoints(root)[:-keep]:
            shutil.rmtree(p, ignore_errors=True)
    log.info("checkpoint %d saved", step)


def verify_checkpoint(folder: Path) -> dict[str, Any]:
    """The trainer state of ``folder``, after checking every file against the sha256 recorded
    with it (a checkpoint saved before they were recorded is taken as it is).

    Raises:
        ConfigError: ``trainer_state.json`` unreadable, or a file missing or changed (one line
            naming the file and how to go on).
    """
    fix = (
        f"delete {folder} and rerun `thyroaug train-sd` with --resume (it continues from the "
        "checkpoint before, or starts over)"
    )
    path = folder / TRAINER_STATE_FILE
    try:
        state = json.loads(path.read_text())
        files = dict(state.get("files") or {})
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        why = f"it is unreadable ({type(exc).__name__})"
        raise ConfigError(damaged(path, CHECKPOINT_WHAT, why, fix)) from exc
    for name, digest in files.items():
        file = folder / name
        if not file.is_file():
            raise ConfigError(damaged(file, CHECKPOINT_WHAT, "it is missing", fix))
        if file_sha256(file) != digest:
            why = f"its bytes do not match the sha256 in {TRAINER_STATE_FILE}"
            raise ConfigError(damaged(file, CHECKPOINT_WHAT, why, fix))
    return state


def load_checkpoint(accelerator: Any, folder: Path) -> tuple[int, list[float]]:
    """Restore the accelerate state saved in ``folder`` once its files are verified
    (``verify_checkpoint``); return (optimizer step, losses)."""
    state = verify_checkpoint(folder)
    accelerator.load_state(str(folder))
    return int(state["step"]), list(state["losses"])


def save_vae_stage(vae: Any, losses: list[float], folder: Path) -> None:
    """The trained scratch VAE (``save_pretrained``) and its loss curve, written atomically."""
    with atomic_dir(folder, replace=True) as tmp:
        vae.save_pretrained(str(tmp))
        (tmp / STAGE_LOSSES_FILE).write_text(json.dumps(losses))


def vae_stage_losses(folder: Path) -> list[float]:
    """The loss curve saved with a VAE stage ([] when none)."""
    path = folder / STAGE_LOSSES_FILE
    return json.loads(path.read_text()) if path.exists() else []
