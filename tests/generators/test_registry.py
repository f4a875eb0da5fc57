"""The generator registry: built-in families, validation, and a plug-in family end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from thyroaug.errors import ConfigError
from thyroaug.generators import registry
from thyroaug.generators.registry import GeneratorFamily
from thyroaug.jobs.commands import commands
from thyroaug.scenarios import Scenario, parts


def test_builtin_families_give_the_paper_parts() -> None:
    assert registry.generator_methods() == ("SD1", "SD2", "SD3", "SD4", "FM")
    assert parts() == ("O", "SD1", "SD2", "SD3", "SD4", "FM", "CA")
    fm, sd = registry.family("fm"), registry.family_of("SD3")
    assert (
        fm.registered_name == "thyroaug-fm" and fm.champion_uri() == "models:/thyroaug-fm@champion"
    )
    assert sd.mode_args("SD3") == ["--mode", "SD3"] and fm.mode_args("FM") == []
    assert {"train-fm", "train-sd"} <= set(commands())


@pytest.mark.parametrize(
    "bad",
    [
        GeneratorFamily("fm", ("FM",), "x", "duplicate family"),
        GeneratorFamily("gan", ("FM",), "x", "method taken"),
        GeneratorFamily("gan", ("CA",), "x", "reserved part"),
        GeneratorFamily("gan", ("gan",), "x", "lower-case method"),
        GeneratorFamily("Gan", ("GAN",), "x", "upper-case family"),
        GeneratorFamily("gan", (), "x", "no method"),
    ],
)
def test_bad_families_are_refused(bad: GeneratorFamily) -> None:
    with pytest.raises(ConfigError):
        registry.register_family(bad)
    assert "gan" not in [f.name for f in registry.families()]


def test_old_registered_model_class_paths_still_resolve() -> None:
    import pickle

    for module, name in [
        ("thyroaug.generators.pyfunc", "FMGeneratorModel"),
        ("thyroaug.generators.sd_pyfunc", "SDGeneratorModel"),
    ]:
        cls = pickle.loads(f"c{module}\n{name}\n.".encode())
        assert cls.__name__ == name


@pytest.mark.slow
def test_a_plugin_family_runs_a_smoke_study(tracking_home: Path) -> None:
    """docs/adding-a-generator.md, proven: one register_family call, no other module edited."""
    from mean_family import FAMILY

    from thyroaug.jobs.study import run_study

    registry.register_family(FAMILY)
    try:
        assert Scenario.parse("MEAN+O").name == "O+MEAN"
        out = run_study("smoke", "O,O+MEAN", study_id="plugin", echo=lambda _: None)
    finally:
        registry.unregister_family(FAMILY.name)
    assert out["missing"] == []
    client = MlflowClient()
    runs = client.search_runs(
        [client.get_experiment_by_name("thyroaug").experiment_id],
        f"tags.mlflow.parentRunId = '{out['parent_run_id']}' and attributes.status = 'FINISHED'",
    )
    steps = {r.data.tags.get("study_step") for r in runs}
    assert {"train_mean", "synthesize_MEAN", "classifier_O", "classifier_O+MEAN"} <= steps
    version = client.search_model_versions("name = 'thyroaug-mean'")
    assert len(version) == 1
    (synth,) = [r for r in runs if r.data.tags.get("study_step") == "synthesize_MEAN"]
    assert synth.data.params["per_class"] == "8"
