"""The generator registry: built-in families, validation, plug-in loading."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from thyroaug.errors import ConfigError
from thyroaug.generators import registry
from thyroaug.generators.registry import GeneratorFamily
from thyroaug.jobs.commands import commands
from thyroaug.scenarios import Scenario, parts

TRAINER = "thyroaug.generators.flow_matching.trainer:FMTrainer"


def test_the_paper_parts_are_registered_in_canonical_order() -> None:
    methods = registry.generator_methods()
    paper = ("SD1", "SD2", "SD3", "SD4", "FM")
    assert [m for m in methods if m in paper] == list(paper)  # other families may follow
    assert parts()[0] == "O" and parts()[-1] == "CA" and set(paper) <= set(parts())
    fm, sd = registry.family("fm"), registry.family_of("SD3")
    assert fm.registered_name == "thyroaug-fm"
    assert fm.champion_uri() == "models:/thyroaug-fm@champion"
    assert sd.mode_args("SD3") == ["--mode", "SD3"] and fm.mode_args("FM") == []
    assert (sd.label, fm.label) == ("SD", "FM")


def test_every_family_has_its_training_command() -> None:
    for fam in registry.families():
        assert commands()[fam.train_command] == ("thyroaug.jobs.train_generator", fam.description)


@pytest.mark.parametrize(
    "bad",
    [
        GeneratorFamily("fm", ("FM",), TRAINER, "duplicate family"),
        GeneratorFamily("gan", ("FM",), TRAINER, "method taken"),
        GeneratorFamily("gan", ("CA",), TRAINER, "reserved part"),
        GeneratorFamily("gan", ("gan",), TRAINER, "lower-case method"),
        GeneratorFamily("Gan", ("GAN",), TRAINER, "upper-case family"),
        GeneratorFamily("gan", (), TRAINER, "no method"),
        GeneratorFamily("gan", ("GAN",), "thyroaug.generators.gan.trainer", "no class in trainer"),
    ],
)
def test_bad_families_are_refused(bad: GeneratorFamily) -> None:
    with pytest.raises(ConfigError):
        registry.register_family(bad)
    assert "gan" not in [f.name for f in registry.families()]


def test_old_registered_model_class_paths_still_resolve() -> None:
    for module, name in [
        ("thyroaug.generators.pyfunc", "FMGeneratorModel"),
        ("thyroaug.generators.sd_pyfunc", "SDGeneratorModel"),
    ]:
        cls = pickle.loads(f"c{module}\n{name}\n.".encode())
        assert cls.__name__ == name


def _fresh_process(code: str, **env: str) -> subprocess.CompletedProcess:
    import os
    from pathlib import Path

    here = Path(__file__).parent
    full = {**os.environ, "PYTHONPATH": str(here), **env}
    return subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120
    )


def test_plugins_named_in_the_environment_register_in_a_fresh_process() -> None:
    code = (
        "from thyroaug.generators import registry\n"
        "from thyroaug.scenarios import Scenario\n"
        "print(registry.family_of('MEAN').name, Scenario.parse('MEAN+O').name)\n"
    )
    done = _fresh_process(code, THYROAUG_PLUGINS="plugin_mean")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["mean", "O+MEAN"]


def test_a_plugin_that_does_not_import_is_named() -> None:
    done = _fresh_process(
        "import thyroaug.generators.registry", THYROAUG_PLUGINS="no_such_plugin_module"
    )
    assert done.returncode != 0
    assert "generator plug-in 'no_such_plugin_module'" in done.stderr
    assert "THYROAUG_PLUGINS" in done.stderr


def test_a_plugin_family_parses_in_scenarios_and_unregisters(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    import plugin_mean

    if "mean" not in [f.name for f in registry.families()]:
        registry.register_family(plugin_mean.FAMILY)
    try:
        assert Scenario.parse("MEAN+O+CA").name == "O+MEAN+CA"
        assert registry.generator_methods()[-1] == "MEAN"
    finally:
        registry.unregister_family("mean")
    with pytest.raises(Exception, match="MEAN"):
        Scenario.parse("O+MEAN")
