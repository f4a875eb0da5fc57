"""Generator families: the one place that says which generators exist and how to drive them.

A *family* is one trainable generator (flow matching ``fm``, Stable Diffusion ``sd``); it offers
one or more *methods* - the scenario parts and synthetic-set names its samples go by (``FM``;
``SD1``..``SD4``, the four inference modes of one fine-tuned SD). Everything that depends on "which
generators are there" asks this registry instead of naming FM or SD: the scenario grammar
(``thyroaug.scenarios``), the study (which training and synthesis steps to run), the CLI (one
``train-<family>`` command per family), ``compare`` (Table 3 rows) and the error hints.

Adding a generator = a folder under ``generators/``, one ``register_family`` call (below for the
built-in ones, or in a plug-in module), one MLproject entry point, its tests. See
``docs/adding-a-generator.md``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from thyroaug.contract import CHAMPION, registered_name, train_step
from thyroaug.errors import ConfigError


@dataclass(frozen=True)
class GeneratorFamily:
    """How the rest of the package drives one generator family.

    Attributes:
        name: short family id (``fm``); the registered model is ``thyroaug-<name>``, the CLI
            command ``train-<name>``, the MLproject entry point and run step ``train_<name>``.
        methods: scenario parts / synthetic-set methods this family produces, in canonical order.
            A family with several methods is sampled with ``--mode <METHOD>``.
        train_job: module of the training command (defines ``add_arguments(parser)`` and
            ``run(args) -> int``; trains, logs and, with ``--register``, registers the model).
        description: one line for ``thyroaug --help``.
        pyfunc_class: ``module:Class`` of the family's MLflow pyfunc (documentation; loading goes
            through MLflow, which unpickles the class itself).
        resumable: the training command takes ``--output DIR --resume`` (checkpoints in DIR; a
            missing checkpoint starts afresh), so a killed study continues inside the step.
    """

    name: str
    methods: tuple[str, ...]
    train_job: str
    description: str
    pyfunc_class: str = ""
    resumable: bool = False

    @property
    def registered_name(self) -> str:
        """``thyroaug-<name>``."""
        return registered_name(self.name)

    @property
    def train_command(self) -> str:
        """CLI command that trains the family (``train-fm``)."""
        return f"train-{self.name}"

    @property
    def entry_point(self) -> str:
        """MLproject entry point / run step tag of the training (``train_fm``)."""
        return train_step(self.name)

    def champion_uri(self, alias: str = CHAMPION) -> str:
        """``models:/thyroaug-<name>@champion``."""
        return f"models:/{self.registered_name}@{alias}"

    def mode_args(self, method: str) -> list[str]:
        """Extra ``synthesize`` arguments that select ``method`` (``--mode SD1``; none for one)."""
        return ["--mode", method] if len(self.methods) > 1 else []

    def train_module(self) -> Any:
        """Import and return the training command's module."""
        return importlib.import_module(self.train_job)


_FAMILIES: dict[str, GeneratorFamily] = {}


def register_family(family: GeneratorFamily, replace: bool = False) -> GeneratorFamily:
    """Add a family. Its methods must be new upper-case names (not ``O`` / ``CA``).

    Raises:
        ConfigError: the name or a method is taken (unless ``replace``) or malformed.
    """
    if not family.name.isidentifier() or family.name != family.name.lower():
        raise ConfigError(f"generator family name {family.name!r}: use a lower-case identifier")
    if not family.methods:
        raise ConfigError(f"generator family {family.name!r} declares no method")
    taken = {m: f.name for f in _FAMILIES.values() if f.name != family.name for m in f.methods}
    for m in family.methods:
        if m != m.upper() or not m.isalnum() or m in ("O", "CA"):
            raise ConfigError(f"method {m!r} of family {family.name!r}: use upper-case letters")
        if m in taken:
            raise ConfigError(f"method {m} is already produced by family {taken[m]!r}")
    if family.name in _FAMILIES and not replace:
        raise ConfigError(f"generator family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family (tests and plug-ins that clean up after themselves)."""
    _FAMILIES.pop(name, None)


def families() -> tuple[GeneratorFamily, ...]:
    """Registered families in registration order (the canonical order of their methods)."""
    return tuple(_FAMILIES.values())


def generator_methods() -> tuple[str, ...]:
    """Every method of every family, canonical order (``SD1``..``SD4``, ``FM``, plug-ins...)."""
    return tuple(m for f in _FAMILIES.values() for m in f.methods)


def family(name: str) -> GeneratorFamily:
    """The family called ``name``.

    Raises:
        ConfigError: no such family (the message lists the registered ones).
    """
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown generator family {name!r}; registered: {', '.join(_FAMILIES)}"
        ) from None


def family_of(method: str) -> GeneratorFamily:
    """The family producing ``method`` (``SD2`` -> the ``sd`` family).

    Raises:
        ConfigError: no registered family produces it.
    """
    for fam in _FAMILIES.values():
        if method in fam.methods:
            return fam
    raise ConfigError(
        f"no generator produces {method!r}; generator methods: {', '.join(generator_methods())}"
    )


# Built-in families. Registration order = canonical order of scenario parts (SD1..SD4, then FM).
register_family(
    GeneratorFamily(
        name="sd",
        methods=("SD1", "SD2", "SD3", "SD4"),
        train_job="thyroaug.jobs.train_sd",
        description="train the Stable Diffusion generator",
        pyfunc_class="thyroaug.generators.stable_diffusion.pyfunc:SDGeneratorModel",
        resumable=True,
    )
)
register_family(
    GeneratorFamily(
        name="fm",
        methods=("FM",),
        train_job="thyroaug.jobs.train_fm",
        description="train the flow-matching generator",
        pyfunc_class="thyroaug.generators.flow_matching.pyfunc:FMGeneratorModel",
        resumable=True,
    )
)
