"""Deviations from the paper that a study's runs record (the report's banner, ``deviation.*`` tags).

``find_deviations`` reads what the runs logged (``RunFacts``: params, tags, metrics as MLflow
stores them) and returns one line per deviation; ``docs/deviations.md`` explains each one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from thyroaug.contract import TAG_PRETRAINED, TAG_SOURCE
from thyroaug.evaluation.table3 import fidelity_long

PAPER = {"image_size": 128, "epochs": 300, "per_class_synthetic": 1000, "bootstrap": 1000}
"""The paper's classifier settings the deviations banner checks (sections 3.2, 3.2.4, 3.3.3)."""
PAPER_FM_EPOCHS = 200
"""The paper's flow-matching training epochs."""

STATISTICS_DEVIATION = (
    "significance from paired tests on the same external cases (exact McNemar for accuracy, "
    "paired bootstrap for macro-F1, DeLong for macro-AUC; Benjamini-Hochberg per metric); the "
    "paper's Wilcoxon rank-sum on bootstrap replicates is kept as a second figure"
)


@dataclass
class RunFacts:
    """What a run logged, as plain dicts (params and tags are strings, as MLflow stores them)."""

    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def _int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _which(names: Sequence[str], total: int) -> str:
    return "all scenarios" if len(names) == total else ", ".join(names)


def _classifier_deviations(classifier: Mapping[str, RunFacts]) -> dict[str, str]:
    out: dict[str, str] = {}
    n = len(classifier)
    random = [
        s
        for s, r in classifier.items()
        if str(r.params.get("pretrained", r.tags.get(TAG_PRETRAINED, ""))).lower()
        in ("false", "0", "no")
    ]
    if random:
        out["classifier_init"] = f"ResNet18 from random init, not ImageNet ({_which(random, n)})"
    checks = (
        ("image_size", "classifier input {v} px, paper {p} px", lambda s: True),
        ("epochs", "classifier trained {v} epochs, paper {p}", lambda s: True),
        (
            "per_class_synthetic",
            "{v} synthetic / CA images per class per method, paper {p}",
            lambda s: s != "O",
        ),
        ("bootstrap", "{v} bootstrap resamples per run (paper method), paper {p}", lambda s: True),
    )
    for key, text, applies in checks:
        seen = sorted(
            {
                v
                for s, r in classifier.items()
                if applies(s) and (v := _int(r.params.get(key))) is not None and v != PAPER[key]
            }
        )
        if seen:
            out[key] = text.format(v="/".join(map(str, seen)), p=PAPER[key])
    seeds = {r.params.get("seed") for r in classifier.values() if r.params.get("seed")}
    if len(seeds) == 1 and n > 0:
        out["single_seed"] = _single_seed_text(f"seed {next(iter(seeds))} for every scenario")
    return out


SINGLE_SEED = "1 training seed: differences include training noise that this study cannot measure"


def _single_seed_text(detail: str) -> str:
    return (
        f"{SINGLE_SEED} ({detail}; `thyroaug study --seeds 0,1,2,3,4` trains every scenario "
        "with several seeds; the paper does not state its seeds)"
    )


def _seed_deviation(
    seeds_per_scenario: Mapping[str, int], classifier: Mapping[str, RunFacts]
) -> dict[str, str]:
    """``single_seed`` from the number of training seeds of each scenario."""
    single = [s for s, k in seeds_per_scenario.items() if k <= 1]
    if not single:
        return {}
    if len(single) == len(seeds_per_scenario):
        seeds = {str(r.params.get("seed", "")) for r in classifier.values()}
        same = len(seeds) == 1 and "" not in seeds
        one = f"seed {next(iter(seeds))} for every scenario" if same else "one per scenario"
        return {"single_seed": _single_seed_text(one)}
    most = max(seeds_per_scenario.values())
    return {
        "single_seed": _single_seed_text(
            f"{', '.join(single)}; the other scenarios have up to {most} seeds"
        )
    }


def _generator_deviations(generators: Mapping[str, RunFacts]) -> dict[str, str]:
    out: dict[str, str] = {}
    sd = generators.get("train_sd")
    if sd is not None:
        source = sd.tags.get(TAG_SOURCE, sd.params.get("source", ""))
        if source == "scratch":
            out["sd_source"] = (
                "Stable Diffusion trained from scratch (compact model), not fine-tuned from SD v1.4"
            )
    fm = generators.get("train_fm")
    if fm is not None:
        epochs = _int(fm.params.get("epochs"))
        if epochs is not None and epochs != PAPER_FM_EPOCHS:
            out["fm_epochs"] = f"flow matching trained {epochs} epochs, paper {PAPER_FM_EPOCHS}"
    return out


def find_deviations(
    classifier: Mapping[str, RunFacts],
    generators: Mapping[str, RunFacts] | None = None,
    synth: Mapping[str, RunFacts] | None = None,
    paired_statistics: bool = True,
    seeds_per_scenario: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """Each deviation from the paper that the runs record, ``{key: one line}``.

    Args:
        classifier: {scenario: facts of its train_classifier run} (params ``pretrained``,
            ``image_size``, ``epochs``, ``per_class_synthetic``, ``bootstrap``, ``seed``).
        generators: {step (``train_sd`` / ``train_fm``): facts} (SD tag ``source``, FM
            ``epochs``).
        synth: {method: facts of its synthesize run} (fidelity metric names).
        paired_statistics: the comparison's significance comes from the paired tests.
        seeds_per_scenario: {scenario: number of training seeds compared}; when given,
            ``single_seed`` lists the scenarios with one seed (else: every scenario's one run
            has the same ``seed`` param).

    Keys: ``classifier_init``, ``image_size``, ``epochs``, ``per_class_synthetic``,
    ``bootstrap``, ``single_seed``, ``sd_source``, ``fm_epochs``, ``fidelity_no_inception``,
    ``statistics``.
    """
    out = _classifier_deviations(classifier)
    if seeds_per_scenario is not None:
        out.pop("single_seed", None)
        out.update(_seed_deviation(seeds_per_scenario, classifier))
    out.update(_generator_deviations(generators or {}))
    long = fidelity_long({m: f.metrics for m, f in (synth or {}).items()})
    extractors = sorted(set(long["extractor"].astype(str)))
    if extractors and not any("inception" in e for e in extractors):
        out["fidelity_no_inception"] = (
            f"no Inception FID: FID / KID on {', '.join(extractors)} features"
        )
    if paired_statistics:
        out["statistics"] = STATISTICS_DEVIATION
    return out


__all__ = [
    "PAPER",
    "PAPER_FM_EPOCHS",
    "SINGLE_SEED",
    "STATISTICS_DEVIATION",
    "RunFacts",
    "find_deviations",
]
