"""The paper profile uses the paper's pretrained models or says loudly what it uses instead.

Three inputs of the paper cannot ship with the project (no downloads at run time): ImageNet
ResNet18 weights (classifier init), the FID Inception-v3 weights (``NEEDS`` here) and Stable
Diffusion v1.4 (the SD family reports it: ``FamilyTrainer.missing_paper_inputs``). With
``--profile paper`` a job refuses to start when one it needs is missing, unless
``--allow-substitutes`` is given; then the substitute is used (random init, ResNet-feature FID
only, a latent diffusion model trained from scratch) and the run carries one ``deviation.<key>``
tag per substitution, which the compare report lists in its banner.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping

import mlflow

from thyroaug.classifier.model import find_weights
from thyroaug.contract import deviation_tag
from thyroaug.errors import ConfigError

NEEDS: dict[str, tuple[str, str]] = {
    "classifier_init": (
        "ImageNet ResNet18 weights (THYROAUG_RESNET18_WEIGHTS=resnet18-f37072fd.pth)",
        "the ResNet18 trains from random initialisation",
    ),
    "fidelity_no_inception": (
        "the FID Inception-v3 weights (THYROAUG_INCEPTION_WEIGHTS=pt_inception-2015-12-05-"
        "6726825d.pth)",
        "FID/KID use the O classifier's ResNet18 features only",
    ),
}


def missing(keys: Iterable[str]) -> dict[str, str]:
    """{key: what replaces it} for each of ``keys`` whose paper input is not on this machine."""
    out: dict[str, str] = {}
    for key in keys:
        if key == "classifier_init":
            present = find_weights() is not None
        else:
            from thyroaug.evaluation.fidelity import (
                inception_weights,  # torchmetrics stack: only for this key
            )

            present = inception_weights() is not None
        if not present:
            out[key] = NEEDS[key][1]
    return out


def check(profile: str, keys: Iterable[str], allow: bool) -> dict[str, str]:
    """Refuse a ``paper`` run without the pretrained inputs ``keys`` (of ``NEEDS``) unless
    ``allow``; returns {key: substitute}.

    Raises:
        ConfigError: naming every missing input, where to put it, and ``--allow-substitutes``.
    """
    if profile != "paper":
        return {}
    subs = missing(keys)
    return refuse_or_accept(profile, {k: (NEEDS[k][0], v) for k, v in subs.items()}, allow)


def refuse_or_accept(
    profile: str, missing_inputs: Mapping[str, tuple[str, str]], allow: bool
) -> dict[str, str]:
    """The refusal of ``check`` for inputs already found missing: {key: (what, substitute)}.

    Raises:
        ConfigError: a ``paper`` run with missing inputs and without ``allow``.
    """
    if profile != "paper":
        return {}
    subs = {k: substitute for k, (_, substitute) in missing_inputs.items()}
    if subs and not allow:
        lines = "\n".join(f"  - {what}: otherwise {sub}" for what, sub in missing_inputs.values())
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

    if subs:
        mlflow.set_tags({deviation_tag(k): v for k, v in subs.items()})
