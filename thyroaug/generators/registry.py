"""Generator families: which generators exist, by name and method.

A *family* is one trainable generator (flow matching ``fm``, Stable Diffusion ``sd``); it offers
one or more *methods* - the scenario parts and synthetic-set names its samples go by (``FM``;
``SD1``..``SD4``, the four inference modes of one fine-tuned SD). Everything that depends on "which
generators are there" asks this registry instead of naming FM or SD: the scenario grammar, the
study, the CLI (``train-<family>``), ``compare`` and the error hints. What a family must provide is
``generators.family`` (``FamilyTrainer``); docs/adding-a-generator.md walks through adding one.

Families come from three places, in this order: the built-in list at the end of this module; the
``thyroaug.generators`` entry-point group of installed distributions; the modules named in
``$THYROAUG_PLUGINS`` (comma-separated, imported when this module is first imported - in every
process, so also in the fresh one `mlflow run` starts). A plug-in module calls ``register_family``.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from importlib.metadata import entry_points

from thyroaug.contract import CA, CHAMPION, ORIGINAL, registered_name, train_step
from thyroaug.errors import ConfigError

log = logging.getLogger(__name__)

PLUGINS_ENV = "THYROAUG_PLUGINS"
"""Comma-separated modules imported after the built-in families (each registers its family)."""
ENTRY_POINT_GROUP = "thyroaug.generators"
"""Entry-point group of installed plug-ins (each entry point names a module to import)."""


@dataclass(frozen=True)
class GeneratorFamily:
    """A registered generator family.

    Attributes:
        name: short lower-case id (``fm``): registered model ``thyroaug-<name>``, CLI command
            ``train-<name>``, MLproject entry point and run step ``train_<name>``, default
            working folder ``outputs/<name>/<profile>``.
        methods: scenario parts / synthetic-set methods it produces, in canonical order; a family
            with several is sampled with ``--mode <METHOD>``.
        trainer: ``module:Class`` of its ``generators.family.FamilyTrainer`` (imported only when
            the family trains).
        description: one line for ``thyroaug --help``.
    """

    name: str
    methods: tuple[str, ...]
    trainer: str
    description: str

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

    @property
    def label(self) -> str:
        """The ``method`` tag of its training run: the one method, else the name upper-cased."""
        return self.methods[0] if len(self.methods) == 1 else self.name.upper()

    def champion_uri(self, alias: str = CHAMPION) -> str:
        """``models:/thyroaug-<name>@champion``."""
        return f"models:/{self.registered_name}@{alias}"

    def mode_args(self, method: str) -> list[str]:
        """Extra ``synthesize`` arguments that select ``method`` (``--mode SD1``; none for one)."""
        return ["--mode", method] if len(self.methods) > 1 else []


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
    module, sep, cls = family.trainer.partition(":")
    if not (sep and module and cls.isidentifier()):
        raise ConfigError(
            f"generator family {family.name!r}: trainer {family.trainer!r} must read "
            "'package.module:FamilyTrainerSubclass'"
        )
    taken = {m: f.name for f in _FAMILIES.values() if f.name != family.name for m in f.methods}
    for m in family.methods:
        if m != m.upper() or not m.isalnum() or m in (ORIGINAL, CA):
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


def load_plugins() -> list[str]:
    """Import the plug-in modules of installed entry points and ``$THYROAUG_PLUGINS``; returns
    the modules imported. An entry point or module that fails to import is an error that names it.

    Raises:
        ConfigError: a plug-in module cannot be imported.
    """
    names = [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]
    names += [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    done = []
    for name in dict.fromkeys(names):
        try:
            importlib.import_module(name)
        except Exception as exc:  # any import failure of a plug-in is the user's to fix
            raise ConfigError(
                f"generator plug-in {name!r} (from ${PLUGINS_ENV} or the {ENTRY_POINT_GROUP!r} "
                f"entry points) cannot be imported: {type(exc).__name__}: {exc}"
            ) from exc
        done.append(name)
    return done


# Built-in families (a family added to the package adds its register_family call here).
# Registration order is the canonical order of scenario parts (O+SD1+FM+CA).
register_family(
    GeneratorFamily(
        name="sd",
        methods=("SD1", "SD2", "SD3", "SD4"),
        trainer="thyroaug.generators.stable_diffusion.trainer:SDTrainer",
        description="train the Stable Diffusion generator",
    )
)
register_family(
    GeneratorFamily(
        name="fm",
        methods=("FM",),
        trainer="thyroaug.generators.flow_matching.trainer:FMTrainer",
        description="train the flow-matching generator",
    )
)
load_plugins()
