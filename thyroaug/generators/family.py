"""The generator-family contract: what every family provides, and the checks that hold it to it.

A family (flow matching ``fm``, Stable Diffusion ``sd``, a plug-in) is a ``GeneratorFamily``
record in ``generators.registry`` whose ``trainer`` names a ``FamilyTrainer`` subclass. The one
training command, ``thyroaug train-<family>`` (``jobs.train_generator``), parses
``add_common_arguments`` plus the trainer's own options, prepares the cohort, opens the tracked
run, calls ``FamilyTrainer.train`` with a ``TrainingJob``, writes and logs the condition bank,
checks the result (``check_trained``), logs and registers the model and describes the run. The
study runs that command with ``study_arguments``. ``check_family`` verifies everything that can be
verified without training. Walk-through: docs/adding-a-generator.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from thyroaug.config import PROFILE_NAMES
from thyroaug.contract import CHAMPION, DEFAULT_COHORT_DIR, EXPERIMENT
from thyroaug.data.cohort import PreparedCohort
from thyroaug.errors import GeneratorError
from thyroaug.generators import registry
from thyroaug.generators.banks import BANK_ARTIFACT, BANK_FILE, bank_config, write_bank
from thyroaug.generators.base import ConditionBank, Generator, model_card
from thyroaug.generators.pyfunc_base import (
    GeneratorModel,
    LoggedGenerator,
    log_generator,
    pip_requirements,
)
from thyroaug.generators.registry import GeneratorFamily
from thyroaug.utils.digest import file_sha256

REQUIRED_DESCRIBE_KEYS: tuple[str, ...] = ("content_hash", "image_size")
"""Keys ``Generator.describe()`` must return: ``synthesize`` stamps a set with the cohort hash
(the champion lookup filters on it) and the classifier checks the image size."""

DEFAULT_MAX_COUNT = 64
"""Most images one served request may ask for, unless the family or ``--max-count`` says."""


class FamilyContractError(GeneratorError):
    """A generator family does not follow the contract; the message lists every problem."""

    def __init__(self, family: str, problems: Sequence[str]) -> None:
        self.family, self.problems = family, list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"generator family {family!r} breaks the family contract "
            f"(docs/adding-a-generator.md):\n{lines}"
        )


# --------------------------------------------------------------------------------------------
# the command line every family's training shares
# --------------------------------------------------------------------------------------------
def add_common_arguments(parser: argparse.ArgumentParser, family: str) -> None:
    """The options of every ``thyroaug train-<family>`` (the study passes some of them)."""
    parser.add_argument(
        "--profile",
        default="quick",
        choices=PROFILE_NAMES,
        help="settings profile: paper (GPU), quick (CPU demo), smoke (tests); default quick",
    )
    parser.add_argument(
        "--cohort", help=f"prepared cohort (default $THYROAUG_HOME/{DEFAULT_COHORT_DIR})"
    )
    parser.add_argument(
        "--output", help=f"checkpoints + generator folder (default outputs/{family}/<profile>)"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint in --output, if any"
    )
    parser.add_argument(
        "--register", action="store_true", help=f"register the model as thyroaug-{family}"
    )
    parser.add_argument(
        "--alias",
        default=CHAMPION,
        help=f"registry alias of the new version with --register (default {CHAMPION}; 'none')",
    )
    parser.add_argument("--max-count", type=int, help="most images one served request may ask")
    parser.add_argument(
        "--embed-sources",
        action="store_true",
        help="put the condition bank (training images/masks, case ids, prompts) INSIDE the logged "
        "and registered model, readable by anyone with READ on the registry (default: it stays "
        "with the training run as the artifact condition_bank/, the model only refers to it)",
    )
    parser.add_argument(
        "--allow-substitutes",
        action="store_true",
        help="paper profile: run even without the paper's pretrained inputs, using substitutes "
        "that every report lists as deviations",
    )
    parser.add_argument("--experiment", help=f"MLflow experiment (default {EXPERIMENT})")
    parser.add_argument("--run-name", help=f"MLflow run name (default train-{family}-<profile>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def study_arguments(
    family: str, *, profile: str, cohort: Path | str, seed: int, output: Path | str
) -> list[str]:
    """The command line the study runs for a family (``train-<family>`` first)."""
    return [
        f"train-{family}",
        "--profile", profile,
        "--cohort", str(cohort),
        "--seed", str(seed),
        "--register", "--alias", CHAMPION,
        "--output", str(output),
        "--resume",
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# what the command hands the family, and what the family hands back
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PaperInput:
    """A pretrained input of the paper profile that is missing here, and what replaces it."""

    key: str  # deviation key, e.g. "sd_source"
    what: str  # what to put in place, e.g. "a local Stable Diffusion v1.4 directory (...)"
    substitute: str  # what is used instead, e.g. "a compact latent diffusion model ..."


@dataclass
class TrainingJob:
    """One training command as the family sees it.

    Attributes:
        family: the family name.
        profile: ``paper`` / ``quick`` / ``smoke``.
        cohort_file: the prepared cohort; ``cohort`` loads it on first use (train on
            ``cohort.subset("train")``, never on the external centers).
        seed: the training seed.
        output: a local folder of the job's own (checkpoints, the generator folder, the bank).
        resume: continue from a checkpoint in ``output`` when there is one.
        embed_sources: the user asked for the condition bank inside the model folder.
        max_count: ``--max-count`` (None: the family's default).
        progress: show progress bars.
        tracking: this process logs to the active MLflow run (False on non-main ranks of a
            multi-process launch: train your shard, log and write nothing).
        options: the parsed command line, including the family's own options.
    """

    family: str
    profile: str
    cohort_file: Path
    seed: int
    output: Path
    resume: bool = False
    embed_sources: bool = False
    max_count: int | None = None
    progress: bool = True
    tracking: bool = True
    options: argparse.Namespace = field(default_factory=argparse.Namespace)
    _cohort: PreparedCohort | None = field(default=None, repr=False)

    @property
    def cohort(self) -> PreparedCohort:
        """The prepared cohort, loaded from ``cohort_file`` on first use."""
        if self._cohort is None:
            self._cohort = PreparedCohort.load(self.cohort_file)
        return self._cohort

    @classmethod
    def in_memory(
        cls, cohort: PreparedCohort, family: str, output: Path, profile: str = "smoke", **kw: Any
    ) -> TrainingJob:
        """A job over a cohort already in memory (tests, notebooks); ``kw``: other fields."""
        job = cls(family, profile, Path("<in memory>"), kw.pop("seed", 0), Path(output), **kw)
        job._cohort = cohort
        return job

    def write_bank(self, bank: ConditionBank) -> Path:
        """Write the training cases the generator conditions on to ``output/condition_bank``
        (private files, per-file sha256, cohort hash) - never into the model folder."""
        return write_bank(
            bank, self.output / BANK_ARTIFACT, family=self.family, cohort_hash=self.content_hash
        )

    @property
    def content_hash(self) -> str:
        return self.cohort.content_hash


@dataclass
class TrainedGenerator:
    """What ``FamilyTrainer.train`` returns.

    Attributes:
        folder: the saved generator folder (config JSON, safetensors, README card): weights and
            settings only, no training image, mask, case id or per-class aggregate of a few cases.
        summary: one or two sentences for the run's description (the model URI is appended).
        metrics: final metrics for the run.
        history: per-step metrics ``{name: [value at step 1, 2, ...]}`` the run must hold; steps
            the run already has (logged during training, or before a resume) are not re-logged.
        bank: the folder ``TrainingJob.write_bank`` wrote, if the generator has a condition bank.
        tags: extra run tags.
        card: the registry description (``base.model_card``); None: a generic card.
        request_params: request params the served model accepts, ``(name, type, default)``.
        requirements: pip packages the model needs when loaded, besides the base ones.
        max_count: most images one served request may ask for by default (``--max-count``
            overrides it; None: ``DEFAULT_MAX_COUNT``).
    """

    folder: Path
    summary: str
    metrics: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    bank: Path | None = None
    tags: dict[str, str] = field(default_factory=dict)
    card: str | None = None
    request_params: list[tuple[str, str, Any]] = field(default_factory=list)
    requirements: tuple[str, ...] = ()
    max_count: int | None = None


class FamilyTrainer(ABC):
    """How a family trains and logs its generator; subclass it once per family.

    Attributes:
        model_class: the family's pyfunc (a ``pyfunc_base.GeneratorModel`` subclass that
            implements ``load_generator``).
        folder_logger: optional; see below.
    """

    model_class: ClassVar[type[GeneratorModel]]
    folder_logger: ClassVar[Callable[..., LoggedGenerator] | None] = None
    """The family's own ``log_<family>_generator(folder, *, registered_name, alias, max_count,
    bank_uri)`` (its card, tags and signature); None: ``log_model``'s generic logging."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:  # noqa: B027 (optional)
        """Add the family's own options (never one of ``add_common_arguments``)."""

    @abstractmethod
    def train(self, job: TrainingJob) -> TrainedGenerator:
        """Train on ``job.cohort``'s train split, save the generator folder under
        ``job.output`` and return it; resume from ``job.output`` when ``job.resume``."""

    def settings(self, job: TrainingJob) -> Mapping[str, Any]:
        """The job's resolved settings (e.g. ``to_dict(resolve(MyConfig, job.profile, ...))``),
        logged as run params before training starts."""
        return {}

    def checkpoint_run_id(self, output: Path) -> str | None:
        """The MLflow run a checkpoint in ``output`` was trained in (so ``--resume`` continues
        that run); None: no checkpoint, or the family keeps none."""
        return None

    def missing_paper_inputs(self, job: TrainingJob) -> list[PaperInput]:
        """Pretrained inputs the paper profile needs that are not on this machine."""
        return []

    def log_model(
        self,
        trained: TrainedGenerator,
        job: TrainingJob,
        *,
        registered_name: str | None,
        alias: str | None,
        bank_uri: str | None,
    ) -> LoggedGenerator:
        """Log ``trained.folder`` as the pyfunc ``generator-<family>`` of the active run (and
        register it): through ``folder_logger`` when the family has one, else generically."""
        max_count = trained.max_count or DEFAULT_MAX_COUNT
        if self.folder_logger is not None:
            return self.folder_logger(
                trained.folder,
                registered_name=registered_name,
                alias=alias,
                max_count=max_count,
                bank_uri=bank_uri,
            )
        model = self.model_class(max_count=max_count)
        tags = {
            "method": registry.family(job.family).label,
            "profile": job.profile,
            "content_hash": job.content_hash,
            "embedded_sources": str(bool(embedded_bank_files(trained))).lower(),
        }
        card = trained.card or model_card(
            f"thyroaug {job.family} generator",
            method=", ".join(registry.family(job.family).methods),
            profile=job.profile,
            content_hash=job.content_hash,
            train_cases=len(job.cohort.indices("train")),
            metrics=trained.metrics,
        )
        return log_generator(
            model,
            trained.folder,
            name=f"generator-{job.family}",
            card=card,
            registered_name=registered_name,
            alias=alias,
            params=trained.request_params or None,
            requirements=pip_requirements(*trained.requirements),
            metadata={"thyroaug_generator": job.family, **tags},
            tags=tags,
            model_config=bank_config(bank_uri, job.content_hash),
        )


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------
def load_trainer(family: GeneratorFamily) -> FamilyTrainer:
    """Import and instantiate the family's trainer (``module:Class``).

    Raises:
        FamilyContractError: it cannot be imported, is not a ``FamilyTrainer`` or lacks a method.
    """
    module_name, _, class_name = family.trainer.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise FamilyContractError(
            family.name, [f"trainer {family.trainer!r} cannot be imported: {exc}"]
        ) from exc
    if not (inspect.isclass(cls) and issubclass(cls, FamilyTrainer)):
        raise FamilyContractError(
            family.name, [f"trainer {family.trainer!r} is not a FamilyTrainer subclass"]
        )
    if inspect.isabstract(cls):
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        raise FamilyContractError(
            family.name, [f"trainer {family.trainer!r} does not implement {', '.join(missing)}"]
        )
    return cls()


def add_training_arguments(
    parser: argparse.ArgumentParser, family: str, trainer: FamilyTrainer
) -> None:
    """The options of ``thyroaug train-<family>``: the common ones, then the family's.

    Raises:
        FamilyContractError: the family redefines a common option.
    """
    add_common_arguments(parser, family)
    try:
        trainer.add_arguments(parser)
    except argparse.ArgumentError as exc:
        raise FamilyContractError(
            family,
            [f"add_arguments redefines a common option ({exc}); the common options are "
             "added by the training command itself"],
        ) from exc  # fmt: skip


def check_family(family: GeneratorFamily) -> FamilyTrainer:
    """Everything about a family that can be checked without training it.

    The trainer imports and implements ``train``; its ``model_class`` is a ``GeneratorModel``
    with ``load_generator``; its options do not clash with the common ones, and the command line
    the study runs parses.

    Raises:
        FamilyContractError: listing every problem found.
    """
    trainer = load_trainer(family)
    problems = []
    model = getattr(trainer, "model_class", None)
    if not (inspect.isclass(model) and issubclass(model, GeneratorModel)):
        problems.append("its trainer's model_class is not a pyfunc_base.GeneratorModel subclass")
    elif model.load_generator is GeneratorModel.load_generator:
        problems.append(f"{model.__name__} does not implement load_generator(folder, device)")
    parser = argparse.ArgumentParser(prog=f"thyroaug {family.train_command}")
    add_training_arguments(parser, family.name, trainer)
    argv = study_arguments(family.name, profile="smoke", cohort="c", seed=0, output="o")[1:]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            _, unknown = parser.parse_known_args(argv)
    except SystemExit:  # a required option of the family's that the study does not pass
        unknown = argv
    if unknown:
        problems.append(
            f"the study's command line does not parse ({' '.join(argv)}): the family may add "
            "options, but none may be required"
        )
    if problems:
        raise FamilyContractError(family.name, problems)
    return trainer


def embedded_bank_files(trained: TrainedGenerator) -> list[str]:
    """Files of the condition bank (``bank.json`` aside) with an identical copy, by sha256, in
    the model folder: patient data a registry reader could download."""
    if trained.bank is None or not Path(trained.bank).is_dir():
        return []
    bank = {
        file_sha256(p): p.name
        for p in Path(trained.bank).iterdir()
        if p.is_file() and p.name != BANK_FILE
    }
    inside = {file_sha256(p) for p in Path(trained.folder).rglob("*") if p.is_file()}
    return sorted(name for digest, name in bank.items() if digest in inside)


def check_trained(
    trainer: FamilyTrainer, trained: TrainedGenerator, job: TrainingJob, min_image_size: int
) -> Generator:
    """Load the saved generator back and check what the rest of the platform relies on.

    ``describe()`` carries the cohort's ``content_hash`` and ``image_size``; the image size is
    at least ``min_image_size`` (the profile's classifier input); the folder holds no condition
    bank unless ``--embed-sources``; ``sample`` returns float32 ``[N, 1, S, S]`` in [0, 1].

    Raises:
        FamilyContractError: listing every problem found.
    """
    folder = Path(trained.folder)
    if not folder.is_dir():
        raise FamilyContractError(job.family, [f"train() returned {folder}, not a folder"])
    model = trainer.model_class()
    if model.bank_family:  # as pyfunc_base.GeneratorModel.load_context calls it
        bank = model.read_bank(Path(trained.bank)) if trained.bank is not None else None
        generator = model.load_generator(folder, "cpu", bank)
    else:
        generator = model.load_generator(folder, "cpu")
    described = generator.describe()
    problems = [
        f"describe() lacks {key!r}" for key in REQUIRED_DESCRIBE_KEYS if key not in described
    ]
    if described.get("content_hash", job.content_hash) != job.content_hash:
        problems.append(
            f"describe()['content_hash'] is {described['content_hash']!r}, not the cohort's "
            f"{job.content_hash!r}"
        )
    size = int(getattr(generator, "image_size", described.get("image_size", 0)) or 0)
    if size < min_image_size:
        problems.append(
            f"image size {size} px is below the {job.profile} classifier's {min_image_size} px "
            "(its sets could not train that classifier)"
        )
    copies = embedded_bank_files(trained)
    if copies and not job.embed_sources:
        problems.append(f"the model folder holds a copy of condition-bank file(s) {copies}")
    if job.embed_sources and trained.bank is not None and not copies:
        problems.append(
            "--embed-sources was given but the model folder holds no copy of the condition "
            "bank: refuse the option in train() if the family does not support it"
        )
    fam = registry.family(job.family)
    for method in fam.methods:
        mode = {"mode": method} if len(fam.methods) > 1 else {}
        out = generator.sample([0], [0], **mode).images
        if tuple(out.shape) != (1, 1, size, size) or out.dtype != torch.float32:
            problems.append(
                f"sample() for {method} gave {tuple(out.shape)} {out.dtype}, not float32 "
                f"[1, 1, {size}, {size}]"
            )
        elif float(out.min()) < 0 or float(out.max()) > 1:
            problems.append(f"sample() for {method} gave values outside [0, 1] (clip them)")
    if problems:
        raise FamilyContractError(job.family, problems)
    return generator
