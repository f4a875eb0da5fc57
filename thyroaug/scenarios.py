"""Scenario grammar and training-set assembly (paper sections 3.2 and 4).

A scenario names what the classifier trains on, as parts joined by ``+``:
  ``O``                   the original training cases (centers A–F, training split);
  ``SD1`` … ``SD4``, ``FM`` a synthetic set from a generator (1000 images per class in the paper);
                          the generator parts are whatever ``generators.registry`` lists;
  ``CA``                  conventionally augmented images made from the original training images
                          (1000 per class in the paper; ``thyroaug.augment``, seeded).
Parts may be written in any order (``CA+O+FM`` is ``O+FM+CA``); the canonical name puts ``O`` first,
then the generator parts in registry order (SD1, SD2, SD3, SD4, FM, then plug-ins), then ``CA``.
Any non-empty combination without repeats is valid; the paper's 18 are ``PAPER_SCENARIOS``.

Validation and external cases are never augmented and never mixed with synthetic images:
``assert_not_augmented`` checks an evaluation set against the cohort, and ``check_no_leakage``
refuses synthetic sets conditioned on validation/external cases.

Synthetic sets (format: ``thyroaug.synthetic``) are passed as ``METHOD=REF`` where REF is a local
folder, an MLflow artifact URI (``runs:/<run_id>/synthetic/FM``, ``mlflow-artifacts:/...``,
``s3://...``) or a bare run id (then ``synthetic/<METHOD>`` of that run).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from thyroaug.augment import make_ca_set
from thyroaug.contract import CA, CLASSES, ORIGINAL, synthetic_artifact
from thyroaug.data.cohort import PreparedCohort
from thyroaug.errors import ScenarioError
from thyroaug.generators import registry
from thyroaug.synthetic import LoadedSynthetic, SyntheticSet, resolve_set, tensor_sha256
from thyroaug.utils.resize import resize_images

log = logging.getLogger(__name__)

CONVENTIONAL = CA


def generator_methods() -> tuple[str, ...]:
    """Scenario parts made by a registered generator (SD1..SD4, FM, plug-ins), canonical order."""
    return registry.generator_methods()


def parts() -> tuple[str, ...]:
    """All scenario parts in canonical order: ``O``, the generator methods, ``CA``."""
    return (ORIGINAL, *generator_methods(), CONVENTIONAL)


PAPER_SCENARIOS: tuple[str, ...] = (
    "O",
    "CA",
    "SD1",
    "SD2",
    "SD3",
    "SD4",
    "FM",
    "O+CA",
    "O+SD1",
    "O+SD2",
    "O+SD3",
    "O+SD4",
    "O+FM",
    "O+SD1+CA",
    "O+SD2+CA",
    "O+SD3+CA",
    "O+SD4+CA",
    "O+FM+CA",
)
"""The paper's 18 training strategies (section 3.2.3 / Table 2), in canonical form and order."""


@dataclass(frozen=True)
class Scenario:
    """A parsed scenario: its parts in canonical order."""

    parts: tuple[str, ...]

    @classmethod
    def parse(cls, text: str | Scenario) -> Scenario:
        """Parse ``"CA+O+FM"``-style text (case and spaces ignored).

        Raises:
            ScenarioError: empty text, an unknown part (the message lists the valid ones) or a part
                named twice.
        """
        if isinstance(text, Scenario):
            return text
        valid = parts()
        if not isinstance(text, str) or not text.strip():
            raise ScenarioError(
                f"empty scenario {text!r}; write parts joined by '+', e.g. O+FM+CA "
                f"(parts: {', '.join(valid)})"
            )
        raw = [p.strip() for p in text.split("+")]
        names = [p.upper() for p in raw]
        unknown = [r for r, p in zip(raw, names) if p not in valid]
        if unknown:
            raise ScenarioError(
                f"scenario {text!r}: unknown part(s) {', '.join(repr(u) for u in unknown)}; valid "
                f"parts are {', '.join(valid)} joined by '+' (e.g. O+FM+CA)"
            )
        dups = sorted({p for p in names if names.count(p) > 1}, key=valid.index)
        if dups:
            raise ScenarioError(f"scenario {text!r}: part(s) {', '.join(dups)} named twice")
        return cls(tuple(sorted(names, key=valid.index)))

    @property
    def name(self) -> str:
        """Canonical name, e.g. ``O+FM+CA``."""
        return "+".join(self.parts)

    def __str__(self) -> str:
        return self.name

    @property
    def uses_original(self) -> bool:
        """Whether the original training cases are part of the training set."""
        return ORIGINAL in self.parts

    @property
    def synthetic_methods(self) -> tuple[str, ...]:
        """Every synthetic part (generators then CA), canonical order."""
        return tuple(p for p in self.parts if p != ORIGINAL)

    @property
    def generator_methods(self) -> tuple[str, ...]:
        """The parts that need a generator's synthetic set (SD1..SD4, FM, plug-ins)."""
        return tuple(p for p in self.parts if p in generator_methods())

    @property
    def uses_ca(self) -> bool:
        """Whether conventionally augmented images are part of the training set."""
        return CONVENTIONAL in self.parts


def parse_scenario(text: str | Scenario) -> Scenario:
    """``Scenario.parse``: the canonical ``Scenario`` for a scenario string."""
    return Scenario.parse(text)


def canonical(text: str | Scenario) -> str:
    """Canonical name of a scenario string (``"CA+O+FM"`` -> ``"O+FM+CA"``)."""
    return Scenario.parse(text).name


def how_to_produce(method: str) -> str:
    """One line telling a user how to make the synthetic set a scenario part needs."""
    fam = registry.family_of(method)
    extra = f" -P mode={method}" if fam.mode_args(method) else ""
    return (
        f"produce one with `mlflow run . -e synthesize -P generator={fam.champion_uri()}{extra}` "
        f"(or `thyroaug synthesize ...`), then pass it as "
        f"--synthetic {method}=runs:/<run_id>/{synthetic_artifact(method)} (or a local folder)"
    )


def require_synthetic(scenario: str | Scenario, given: Iterable[str]) -> None:
    """Raise if a generator part of ``scenario`` has no synthetic set among ``given`` methods.

    Raises:
        ScenarioError: naming each missing method and how to produce its set.
    """
    sc = Scenario.parse(scenario)
    have = {m.upper() for m in given}
    missing = [m for m in sc.generator_methods if m not in have]
    if missing:
        raise ScenarioError(
            f"scenario {sc} needs synthetic set(s) {', '.join(missing)} and none was given "
            "(until the generators have run, only O and CA scenarios can train); "
            + "; ".join(f"{m}: {how_to_produce(m)}" for m in missing)
        )


def _item_split() -> re.Pattern[str]:
    """Splits ``"FM=...,SD1=..."`` at commas that start a new ``METHOD=`` pair."""
    names = "|".join(re.escape(m) for m in (*generator_methods(), CONVENTIONAL))
    return re.compile(rf",\s*(?=(?:{names})\s*=)", re.IGNORECASE)


def parse_synthetic_args(items: Iterable[str] | None) -> dict[str, str]:
    """``["FM=runs:/abc/synthetic/FM", ...]`` -> ``{"FM": "runs:/abc/synthetic/FM"}``.

    An item may also hold several comma-separated pairs (``"FM=...,SD1=..."``, the form an
    MLproject string parameter carries); an empty item is ignored.

    Raises:
        ScenarioError: an item without ``=``, an unknown method, or a method given twice.
    """
    refs: dict[str, str] = {}
    pairs = [p for item in items or [] for p in _item_split().split(item) if p.strip()]
    for item in pairs:
        method, sep, ref = item.partition("=")
        method = method.strip().upper()
        if not sep or not ref.strip():
            raise ScenarioError(
                f"--synthetic {item!r}: expected METHOD=REF, e.g. FM=runs:/<id>/..."
            )
        if method not in (*generator_methods(), CONVENTIONAL):
            raise ScenarioError(
                f"--synthetic {item!r}: unknown method {method!r}; valid: "
                f"{', '.join((*generator_methods(), CONVENTIONAL))}"
            )
        if method in refs:
            raise ScenarioError(f"--synthetic: method {method} given twice")
        refs[method] = ref.strip()
    return refs


def resolve_synthetic(
    method: str,
    ref: str,
    download_dir: str | Path | None = None,
    allow_unfinished: bool = False,
) -> LoadedSynthetic:
    """``synthetic.resolve_set`` with a hint on how to produce a missing generator set."""
    hint = how_to_produce(method) if method in generator_methods() else ""
    return resolve_set(method, ref, download_dir, hint=hint, allow_unfinished=allow_unfinished)


def check_compatible(
    loaded: LoadedSynthetic,
    cohort: PreparedCohort,
    train_size: int | None = None,
    allow_other_cohort: bool = False,
) -> None:
    """A set must reach the training resolution and come from this cohort.

    The classifier trains at ``train_size = min(cohort size, profile image_size)``; cohort and
    synthetic images larger than that are downsampled once (antialiased). A set whose images are
    smaller than the training size would need upsampling and is refused. Without ``train_size``
    the set must match the cohort's size exactly.

    A set made by a generator trained on another cohort (its ``cohort_hash`` differs) is refused
    unless ``allow_other_cohort``: its conditions and training images belong to other cases.

    Raises:
        ScenarioError: channel or image size mismatch, or another cohort's set.
    """
    data = loaded.data
    target = min(cohort.size, train_size) if train_size else cohort.size
    if len(data.manifest):
        channels, size = int(data.images.shape[-3]), int(data.images.shape[-1])
        ok = channels == int(cohort.images.shape[-3]) and (
            size >= target if train_size else size == cohort.size
        )
        if not ok:
            raise ScenarioError(
                f"synthetic set {loaded.method} ({loaded.ref}) has images "
                f"{tuple(data.images.shape[-3:])}, but training needs {cohort.images.shape[-3]}"
                f"x{target}x{target} (cohort {cohort.size} px); generate the set at this size "
                "or train the classifier at a smaller --image-size"
            )
    set_hash = data.info.get("cohort_hash")
    if set_hash and cohort.content_hash and set_hash != cohort.content_hash:
        message = (
            f"synthetic set {loaded.method} ({loaded.ref}) was made by a generator trained on "
            f"cohort {set_hash}, but this cohort is {cohort.content_hash}"
        )
        if not allow_other_cohort:
            raise ScenarioError(
                f"{message}; use a set made for this cohort (train the generator on it, or pass "
                "the cohort it was made for with --cohort), or --allow-other-cohort"
            )
        log.warning("%s (allowed by --allow-other-cohort)", message)


def check_no_leakage(sets: Mapping[str, SyntheticSet], cohort: PreparedCohort) -> None:
    """Refuse synthetic images conditioned on validation or external cases.

    Raises:
        ScenarioError: a set's ``source_id`` names a val/external case id.
    """
    held_out = set(cohort.table.loc[cohort.table["split"] != "train", "case_id"].astype(str))
    for method, data in sets.items():
        sources = set(data.manifest["source_id"].astype(str)) - {""}
        leaked = sorted(sources & held_out)
        if leaked:
            raise ScenarioError(
                f"synthetic set {method} has images conditioned on {len(leaked)} validation/"
                f"external case(s) (e.g. {leaked[:3]}); generators may only see training cases"
            )


def assert_not_augmented(eval_set: PreparedCohort, cohort: PreparedCohort, split: str) -> None:
    """Check an evaluation set is exactly the cohort's ``split`` rows (no synthetic, no CA).

    Raises:
        ScenarioError: other rows, other order, or pixels that differ from the cohort's.
    """
    if split not in ("val", "external"):
        raise ScenarioError(f"evaluation split must be val or external, got {split!r}")
    idx = cohort.indices(split)
    ids = eval_set.table["case_id"].astype(str).tolist()
    if ids != cohort.table["case_id"].astype(str).iloc[idx].tolist() or set(
        eval_set.table["split"]
    ) - {split}:
        raise ScenarioError(f"{split} set does not hold exactly the cohort's {split} cases")
    if not torch.equal(eval_set.images, cohort.images[torch.as_tensor(idx)]) or not torch.equal(
        eval_set.labels, cohort.labels[torch.as_tensor(idx)]
    ):
        raise ScenarioError(
            f"{split} images/labels differ from the cohort's: they must never be "
            "augmented or replaced by synthetic images"
        )


@dataclass
class TrainingSet:
    """The assembled training images of a scenario, with the origin of every row."""

    images: torch.Tensor
    labels: torch.Tensor
    sources: np.ndarray
    ids: np.ndarray
    scenario: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def counts(self) -> pd.DataFrame:
        """Images per source (rows: O, methods) x class (columns in CLASSES order, plus total)."""
        df = pd.DataFrame({"source": self.sources, "label": [CLASSES[i] for i in self.labels]})
        tab = pd.crosstab(df["source"], df["label"]).reindex(columns=list(CLASSES), fill_value=0)
        order = [p for p in parts() if p in tab.index]
        tab = tab.loc[order]
        tab["total"] = tab.sum(axis=1)
        return tab


def _take_per_class(
    data: SyntheticSet, per_class: int | None, rng: np.random.Generator, method: str
) -> np.ndarray:
    """Row indices: ``per_class`` random images of each class (all of them if None or fewer)."""
    labels = data.labels.numpy()
    keep = []
    for ci, name in enumerate(CLASSES):
        rows = np.flatnonzero(labels == ci)
        if per_class is not None and rows.size > per_class:
            rows = np.sort(rng.choice(rows, size=per_class, replace=False))
        elif per_class is not None and rows.size < per_class:
            log.warning(
                "synthetic set %s has %d %s images, fewer than the %d per class asked for; "
                "using all of them",
                method,
                rows.size,
                name,
                per_class,
            )
        keep.append(rows)
    return np.concatenate(keep)


def assemble_training_set(
    scenario: str | Scenario,
    train: PreparedCohort,
    synthetic: Mapping[str, SyntheticSet] | None = None,
    *,
    per_class: int | None = 1000,
    seed: int = 0,
    progress: bool = True,
) -> TrainingSet:
    """The training images of ``scenario``: O (if named) + each synthetic set + CA.

    Args:
        scenario: scenario string or ``Scenario``.
        train: the cohort's training split (only ``split == "train"`` rows are accepted).
        synthetic: {method: set} for the generator parts (and optionally a ready CA set).
        per_class: images per class taken from each synthetic set (a seeded random subset when a
            set holds more; all when None). CA is generated with this many per class.
        seed: seeds the subset choice and the CA set.
        progress: progress bar while generating CA.

    Raises:
        ScenarioError: a generator part without a set (the message says how to produce one) or
            rows outside the training split.
    """

    sc = Scenario.parse(scenario)
    synthetic = dict(synthetic or {})
    bad = train.table.loc[train.table["split"] != "train", "case_id"].astype(str).tolist()
    if bad:
        raise ScenarioError(
            f"training set of {sc}: {len(bad)} case(s) are not in the training split "
            f"(e.g. {bad[:3]}); validation/external cases are never used for training"
        )
    require_synthetic(sc, synthetic)
    images, labels, sources, ids = [], [], [], []
    details: dict[str, Any] = {}
    if sc.uses_original:
        images.append(train.images.float())
        labels.append(train.labels.long())
        sources.append(np.full(len(train), ORIGINAL, dtype=object))
        ids.append(train.table["case_id"].astype(str).to_numpy(dtype=object))
        details[ORIGINAL] = {"count": len(train)}
    for method in sc.synthetic_methods:
        if method == CONVENTIONAL and method not in synthetic:
            data = make_ca_set(train, per_class=per_class or 1000, seed=seed, progress=progress)
            details[method] = {"generated": True, "seed": seed, "per_class": per_class}
            rows = np.arange(len(data.manifest))
        else:
            data = synthetic[method]
            if data.method != method:
                raise ScenarioError(f"set given for {method} holds {data.method} images")
            rng = np.random.default_rng([int(seed), parts().index(method)])
            rows = _take_per_class(data, per_class, rng, method)
            details[method] = {"generated": False, "available": len(data.manifest)}
        if len(data.manifest) and data.images.shape[1:] != train.images.shape[1:]:
            raise ScenarioError(
                f"synthetic set {method} images are {tuple(data.images.shape[1:])}, training "
                f"images {tuple(train.images.shape[1:])}; resize both to the same size first"
            )
        t = torch.as_tensor(rows, dtype=torch.int64)
        images.append(data.images[t].float())
        labels.append(data.labels[t].long())
        sources.append(np.full(rows.size, method, dtype=object))
        ids.append(np.array([f"{method}:{int(i)}" for i in rows], dtype=object))
        details[method]["count"] = int(rows.size)
    out = TrainingSet(
        images=torch.cat(images),
        labels=torch.cat(labels),
        sources=np.concatenate(sources),
        ids=np.concatenate(ids),
        scenario=sc.name,
        details=details,
    )
    log.info("training set %s: %d images (%s)", sc, len(out), out.counts()["total"].to_dict())
    return out


SyntheticInput = SyntheticSet | LoadedSynthetic | str | Path
"""What a caller may pass for a synthetic set: the set, a resolved set, or a reference."""


@dataclass
class ScenarioData:
    """Everything a scenario trains and is evaluated on, at the classifier's input size."""

    scenario: Scenario
    train: TrainingSet
    val: PreparedCohort
    external: PreparedCohort
    synthetic: dict[str, LoadedSynthetic] = field(default_factory=dict)
    input_size: int = 0


def _load_synthetic(
    scenario: Scenario, synthetic: Mapping[str, SyntheticInput] | None, allow_unfinished: bool
) -> dict[str, LoadedSynthetic]:
    require_synthetic(scenario, (synthetic or {}).keys())  # fail before any download
    loaded: dict[str, LoadedSynthetic] = {}
    for key, item in (synthetic or {}).items():
        method = key.upper()
        if method not in scenario.synthetic_methods:
            log.warning("synthetic set %s given but scenario %s does not use it", method, scenario)
            continue
        if isinstance(item, LoadedSynthetic):
            loaded[method] = item
        elif isinstance(item, SyntheticSet):
            sha = tensor_sha256(item.images, item.labels)
            loaded[method] = LoadedSynthetic(method, item, "<in-memory>", None, sha)
        else:
            loaded[method] = resolve_synthetic(method, str(item), allow_unfinished=allow_unfinished)
    return loaded


def prepare_scenario_data(
    cohort: PreparedCohort,
    scenario: str | Scenario,
    image_size: int,
    synthetic: Mapping[str, SyntheticInput] | None = None,
    *,
    per_class: int | None = None,
    seed: int = 0,
    progress: bool = True,
    allow_other_cohort: bool = False,
    allow_unfinished: bool = False,
) -> ScenarioData:
    """Load and check synthetic sets, resize once to the input size, assemble, check eval sets.

    Args:
        cohort: the prepared cohort.
        scenario: the scenario (text or parsed).
        image_size: the classifier's input size; larger images are downsampled once (never
            upsampled: a smaller cohort trains at its own size).
        synthetic: {method: set | loaded set | folder | artifact URI | run id}.
        per_class: synthetic / CA images per class (None: all of each set).
        seed: seed of the subsampling and of CA.
        progress: show progress bars.
        allow_other_cohort: accept sets made for another cohort (see ``check_compatible``).
        allow_unfinished: accept sets whose creating run did not finish or cannot be looked up
            (``synthetic.resolve_set``).

    Raises:
        ScenarioError: missing / incompatible / leaking / unfinished synthetic sets, or an empty
            split.
    """
    sc = Scenario.parse(scenario)
    loaded = _load_synthetic(sc, synthetic, allow_unfinished)
    for item in loaded.values():
        check_compatible(item, cohort, image_size, allow_other_cohort)
    check_no_leakage({m: item.data for m, item in loaded.items()}, cohort)
    if cohort.size < image_size:
        log.warning(
            "cohort images are %d px, below image_size %d: training at %d px (no upsampling)",
            cohort.size,
            image_size,
            cohort.size,
        )
    resized = cohort.resized(min(cohort.size, image_size))
    sets = {
        m: SyntheticSet(
            resize_images(item.data.images, resized.size),
            item.data.labels,
            item.data.manifest,
            item.data.info,
        )
        for m, item in loaded.items()
    }
    splits = {s: resized.subset(s) for s in ("train", "val", "external")}
    empty = [s for s, part in splits.items() if len(part) == 0]
    if empty:
        raise ScenarioError(
            f"cohort has no {', '.join(empty)} case(s); the classifier needs training, validation "
            "and external cases (see `thyroaug prepare --train-centers/--external-centers`)"
        )
    train = assemble_training_set(
        sc,
        splits["train"],
        sets,
        per_class=per_class,
        seed=seed,
        progress=progress,
    )
    assert_not_augmented(splits["val"], resized, "val")
    assert_not_augmented(splits["external"], resized, "external")
    return ScenarioData(sc, train, splits["val"], splits["external"], loaded, resized.size)
