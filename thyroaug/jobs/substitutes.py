"""The paper profile uses the paper's pretrained models or says loudly what it uses instead.

Three inputs of the paper cannot ship with the project (no downloads at run time): ImageNet
ResNet18 weights (classifier init), Stable Diffusion v1.4 (fine-tuned for SD1-SD4) and the FID
Inception-v3 weights. With ``--profile paper`` a job refuses to start when one it needs is missing,
unless ``--allow-substitutes`` is given; then the substitute is used (random init, a latent
diffusion model trained from scratch, ResNet-feature FID only) and the run carries one
``deviation.<key>`` tag per substitution, which the compare report lists in its banner.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from thyroaug.contract import deviation_tag
from thyroaug.errors import ConfigError

NEEDS: dict[str, tuple[str, str]] = {
    "classifier_init": (
        "ImageNet ResNet18 weights (THYROAUG_RESNET18_WEIGHTS=resnet18-f37072fd.pth)",
        "the ResNet18 trains from random initialisation",
    ),
    "sd_source": (
        "a local Stable Diffusion v1.4 directory (--base-model DIR or THYROAUG_SD_BASE)",
        "a compact latent diffusion model is trained from scratch",
    ),
    "fidelity_no_inception": (
        "the FID Inception-v3 weights (THYROAUG_INCEPTION_WEIGHTS=pt_inception-2015-12-05-"
        "6726825d.pth)",
        "FID/KID use the O classifier's ResNet18 features only",
    ),
}


def missing(keys: Iterable[str], base_model: str | None = None) -> dict[str, str]:
    """{key: what replaces it} for each of ``keys`` whose paper input is not on this machine."""
    out: dict[str, str] = {}
    for key in keys:
        if key == "classifier_init":
            from thyroaug.classifier.model import find_weights

            present = find_weights() is not None
        elif key == "sd_source":
            from thyroaug.config import local_weights
            from thyroaug.generators.stable_diffusion.train import BASE_MODEL_ENV

            present = bool(base_model) or local_weights(BASE_MODEL_ENV, "stable-diffusion-v1-4")
        else:
            from thyroaug.evaluation.fidelity import inception_weights

            present = inception_weights() is not None
        if not present:
            out[key] = NEEDS[key][1]
    return out


def check(profile: str, keys: Iterable[str], allow: bool, base_model: str | None = None) -> dict:
    """Refuse a ``paper`` run without its pretrained inputs unless ``allow``; {key: substitute}.

    Raises:
        ConfigError: naming every missing input, where to put it, and ``--allow-substitutes``.
    """
    if profile != "paper":
        return {}
    subs = missing(keys, base_model)
    if subs and not allow:
        lines = "\n".join(f"  - {NEEDS[k][0]}: otherwise {v}" for k, v in subs.items())
        raise ConfigError(
            f"the paper profile needs the paper's pretrained inputs, missing here:\n{lines}\n"
            "Put them in place (nothing is downloaded), or pass --allow-substitutes to run with "
            "the substitutes (every report then lists them as deviations from the paper)."
        )
    return subs


def add_argument(parser: argparse.ArgumentParser) -> None:
    """``--allow-substitutes``."""
    parser.add_argument(
        "--allow-substitutes",
        action="store_true",
        help="paper profile: run even without the paper's pretrained inputs (ImageNet ResNet18, "
        "SD v1.4, Inception), using substitutes that every report lists as deviations",
    )


def tag(subs: dict[str, str]) -> None:
    """One ``deviation.<key>`` tag per substitution on the active run."""
    import mlflow

    if subs:
        mlflow.set_tags({deviation_tag(k): v for k, v in subs.items()})
