"""The paper profile refuses to run without the paper's pretrained inputs unless told."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from thyroaug.errors import ConfigError
from thyroaug.generators.family import TrainingJob
from thyroaug.generators.stable_diffusion.trainer import SDTrainer
from thyroaug.jobs import substitutes


def _sd_job(tmp_path: Path, **options: object) -> TrainingJob:
    args = argparse.Namespace(**{"base_model": None, "source": None, "set": [], **options})
    return TrainingJob("sd", "paper", tmp_path / "cohort", 0, tmp_path / "sd", options=args)


def _sd_missing(job: TrainingJob) -> dict[str, tuple[str, str]]:
    return {i.key: (i.what, i.substitute) for i in SDTrainer().missing_paper_inputs(job)}


def test_paper_profile_names_every_missing_input(tmp_path, monkeypatch) -> None:
    for var in ("THYROAUG_RESNET18_WEIGHTS", "THYROAUG_SD_BASE", "THYROAUG_INCEPTION_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("THYROAUG_WEIGHTS_DIR", raising=False)
    keys = ["classifier_init", "fidelity_no_inception"]
    with pytest.raises(ConfigError) as err:
        substitutes.check("paper", keys, allow=False)
    sd = _sd_missing(_sd_job(tmp_path))
    assert set(sd) == {"sd_source"}
    with pytest.raises(ConfigError) as sd_err:
        substitutes.refuse_or_accept("paper", sd, allow=False)
    text = str(err.value) + str(sd_err.value)
    for needed in (
        "ImageNet ResNet18",
        "Stable Diffusion v1.4",
        "Inception",
        "--allow-substitutes",
    ):
        assert needed in text
    subs = substitutes.check("paper", keys, allow=True)
    assert set(subs) == set(keys)
    assert set(substitutes.refuse_or_accept("paper", sd, allow=True)) == {"sd_source"}
    assert substitutes.check("quick", keys, allow=False) == {}  # quick lists them in its banner
    assert substitutes.refuse_or_accept("quick", sd, allow=False) == {}


def test_a_present_input_is_no_substitution(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "resnet18-f37072fd.pth"
    weights.write_bytes(b"x")
    monkeypatch.setenv("THYROAUG_RESNET18_WEIGHTS", str(weights))
    assert substitutes.check("paper", ["classifier_init"], allow=False) == {}
    assert _sd_missing(_sd_job(tmp_path, base_model=str(tmp_path))) == {}


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
