"""The paper profile refuses to run without the paper's pretrained inputs unless told."""

from __future__ import annotations

import pytest

from thyroaug.errors import ConfigError
from thyroaug.jobs import substitutes


def test_paper_profile_names_every_missing_input(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("THYROAUG_RESNET18_WEIGHTS", "THYROAUG_SD_BASE", "THYROAUG_INCEPTION_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("THYROAUG_WEIGHTS_DIR", raising=False)
    keys = ["classifier_init", "sd_source", "fidelity_no_inception"]
    with pytest.raises(ConfigError) as err:
        substitutes.check("paper", keys, allow=False)
    text = str(err.value)
    for needed in (
        "ImageNet ResNet18",
        "Stable Diffusion v1.4",
        "Inception",
        "--allow-substitutes",
    ):
        assert needed in text
    subs = substitutes.check("paper", keys, allow=True)
    assert set(subs) == set(keys)
    assert substitutes.check("quick", keys, allow=False) == {}  # quick lists them in its banner


def test_a_present_input_is_no_substitution(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "resnet18-f37072fd.pth"
    weights.write_bytes(b"x")
    monkeypatch.setenv("THYROAUG_RESNET18_WEIGHTS", str(weights))
    assert substitutes.check("paper", ["classifier_init"], allow=False) == {}
    assert substitutes.check("paper", ["sd_source"], allow=True, base_model=str(tmp_path)) == {}


def test_train_classifier_paper_refuses_before_any_run(tracking_home, monkeypatch, capsys) -> None:
    from mlflow import MlflowClient

    from thyroaug.jobs.commands import main

    monkeypatch.delenv("THYROAUG_RESNET18_WEIGHTS", raising=False)
    monkeypatch.delenv("THYROAUG_WEIGHTS_DIR", raising=False)
    from conftest import make_tiny_cohort

    make_tiny_cohort().save(tracking_home / "cohort")
    code = main(["train-classifier", "--scenario", "O", "--profile", "paper",
                 "--cohort", str(tracking_home / "cohort")])  # fmt: skip
    assert code == 2 and "--allow-substitutes" in capsys.readouterr().err
    client = MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(exps) == []  # refused before a run was created
