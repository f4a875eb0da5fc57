"""The generator-family contract, checked for every registered family and for broken ones.

Every family in the registry (built-in or plug-in) passes ``check_family`` and has its MLproject
entry point and ``projects/`` script; a family that breaks a rule fails a named check, not deep in
a study; the import-linter contract covers a family nobody has written yet.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from thyroaug.generators import registry
from thyroaug.generators.base import GeneratedBatch
from thyroaug.generators.family import (
    FamilyContractError,
    FamilyTrainer,
    TrainedGenerator,
    TrainingJob,
    check_family,
    check_trained,
)
from thyroaug.generators.pyfunc_base import GeneratorModel
from thyroaug.generators.registry import GeneratorFamily

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = [f.name for f in registry.families()]
STUDY_PARAMS = {"profile", "cohort", "seed", "register", "alias", "resume"}


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_passes_the_static_contract(name: str) -> None:
    trainer = check_family(registry.family(name))
    assert issubclass(trainer.model_class, GeneratorModel)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_has_its_mlproject_entry_and_script(name: str) -> None:
    fam = registry.family(name)
    entry = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"][fam.entry_point]
    params = set(entry["parameters"])
    assert params >= STUDY_PARAMS, f"{fam.entry_point} lacks {STUDY_PARAMS - params}"
    assert f"python -m projects.{fam.entry_point} " in " ".join(entry["command"].split())
    parser = argparse.ArgumentParser()
    from thyroaug.generators.family import add_training_arguments

    add_training_arguments(parser, name, check_family(fam))
    known = {a.dest for a in parser._actions}
    assert params <= known, f"MLproject params without a command-line option: {params - known}"
    script = (ROOT / "projects" / f"{fam.entry_point}.py").read_text()
    assert f'run("{fam.train_command}")' in script


# --- broken families fail a named check ---------------------------------------------------------
class _Gen:
    def __init__(self, describe: dict[str, Any], size: int = 32, value: float = 0.5) -> None:
        self._describe, self.image_size, self.value = describe, size, value

    def method(self, mode: str | None = None) -> str:
        return "BROKEN"

    def describe(self) -> dict[str, Any]:
        return self._describe

    def sample(self, labels, seeds, masks=None, **kw) -> GeneratedBatch:
        return GeneratedBatch(
            torch.full((len(labels), 1, self.image_size, self.image_size), self.value)
        )


class _Model(GeneratorModel):
    generator_to_load: _Gen = _Gen({})

    def load_generator(self, folder: Path, device: str, bank: Any = None) -> Any:
        return self.generator_to_load


class _Trainer(FamilyTrainer):
    model_class = _Model

    def train(self, job: TrainingJob) -> TrainedGenerator:
        raise NotImplementedError


class NoTrain(FamilyTrainer):
    model_class = _Model


class ClashingOption(_Trainer):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--seed", type=int)


class RequiredOption(_Trainer):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--width", type=int, required=True)


class NotAPyfunc(_Trainer):
    model_class = object  # type: ignore[assignment]


class NoLoader(_Trainer):
    class model_class(GeneratorModel):
        pass


@pytest.fixture
def broken():
    """Register ``broken`` with one of this module's trainers; unregister afterwards."""

    def make(trainer: str) -> GeneratorFamily:
        fam = GeneratorFamily("broken", ("BROKEN",), f"{__name__}:{trainer}", "a broken family")
        registry.register_family(fam, replace=True)
        return fam

    yield make
    registry.unregister_family("broken")


@pytest.mark.parametrize(
    ("trainer", "message"),
    [
        ("NoTrain", "does not implement train"),
        ("ClashingOption", "redefines a common option"),
        ("RequiredOption", "none may be required"),
        ("NotAPyfunc", "not a pyfunc_base.GeneratorModel subclass"),
        ("NoLoader", "does not implement load_generator"),
        ("Missing", "cannot be imported"),
    ],
)
def test_a_broken_family_fails_check_family_by_name(broken, trainer: str, message: str) -> None:
    with pytest.raises(FamilyContractError, match=re.escape(message)) as err:
        check_family(broken(trainer))
    assert "generator family 'broken'" in str(err.value)


def _job(tmp_path: Path, content_hash: str = "abc") -> TrainingJob:
    cohort = argparse.Namespace(content_hash=content_hash)
    return TrainingJob.in_memory(cohort, "broken", tmp_path / "out")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("generator", "message"),
    [
        (_Gen({"image_size": 32}), "describe() lacks 'content_hash'"),
        (_Gen({"content_hash": "abc"}), "describe() lacks 'image_size'"),
        (_Gen({"content_hash": "other", "image_size": 32}), "not the cohort's 'abc'"),
        (_Gen({"content_hash": "abc", "image_size": 16}, size=16), "below the smoke classifier"),
        (_Gen({"content_hash": "abc", "image_size": 32}, value=1.5), "outside [0, 1]"),
    ],
)
def test_a_trained_generator_breaking_the_contract_is_refused(
    broken, tmp_path: Path, generator: _Gen, message: str
) -> None:
    broken("_Trainer")
    (tmp_path / "model").mkdir()
    _Model.generator_to_load = generator
    trained = TrainedGenerator(folder=tmp_path / "model", summary="")
    with pytest.raises(FamilyContractError, match=re.escape(message)):
        check_trained(_Trainer(), trained, _job(tmp_path), min_image_size=32)


def test_a_bank_file_inside_the_model_folder_is_refused(broken, tmp_path: Path) -> None:
    broken("_Trainer")
    (tmp_path / "model").mkdir()
    (tmp_path / "bank").mkdir()
    for folder in ("model", "bank"):
        (tmp_path / folder / "cases.csv").write_text("case_id\nA001\n")
    _Model.generator_to_load = _Gen({"content_hash": "abc", "image_size": 32})
    trained = TrainedGenerator(folder=tmp_path / "model", summary="", bank=tmp_path / "bank")
    with pytest.raises(FamilyContractError, match=r"condition-bank file\(s\) \['cases.csv'\]"):
        check_trained(_Trainer(), trained, _job(tmp_path), min_image_size=32)
    (tmp_path / "model" / "cases.csv").unlink()
    check_trained(_Trainer(), trained, _job(tmp_path), min_image_size=32)


# --- import rules cover a family nobody has written yet ----------------------------------------
def _lint(tree: Path) -> subprocess.CompletedProcess:
    exe = Path(
        shutil.which("lint-imports") or Path(__import__("sys").executable).parent / "lint-imports"
    )
    return subprocess.run(
        [str(exe), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_import_rules_cover_a_new_family_without_editing_pyproject(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copytree(
        ROOT / "thyroaug", tree / "thyroaug", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(ROOT / "lint", tree / "lint", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    family = tree / "thyroaug" / "generators" / "zz_lint_probe"  # a name no real family has
    family.mkdir()
    (family / "__init__.py").write_text("")
    (family / "model.py").write_text("from thyroaug.generators.base import GeneratedBatch\n")
    kept = _lint(tree)
    assert kept.returncode == 0 and "0 broken" in kept.stdout, kept.stdout[-2000:]
    (family / "model.py").write_text("from thyroaug.generators.flow_matching import config\n")
    broken = _lint(tree)
    assert broken.returncode != 0
    assert "thyroaug.generators.zz_lint_probe is not allowed to import" in broken.stdout
    assert "thyroaug.generators.flow_matching" in broken.stdout
    (family / "model.py").write_text("")
    (tree / "thyroaug" / "generators" / "helpers.py").write_text(
        "import thyroaug.generators.zz_lint_probe\n"
    )
    shared = _lint(tree)
    assert shared.returncode != 0
    assert "generators.helpers is not allowed to import thyroaug.generators.zz_lint_probe" in (
        " ".join(shared.stdout.split())
    )


def test_a_renamed_copy_of_a_bank_file_is_still_found(broken, tmp_path: Path) -> None:
    broken("_Trainer")
    for folder in ("model", "bank"):
        (tmp_path / folder).mkdir()
    (tmp_path / "bank" / "cases.csv").write_text("case_id\nA001\n")
    (tmp_path / "bank" / "bank.json").write_text("{}")  # the bank's own record is not data
    (tmp_path / "model" / "bank.json").write_text("{}")
    (tmp_path / "model" / "settings.csv").write_text("case_id\nA001\n")  # same bytes, new name
    _Model.generator_to_load = _Gen({"content_hash": "abc", "image_size": 32})
    trained = TrainedGenerator(folder=tmp_path / "model", summary="", bank=tmp_path / "bank")
    with pytest.raises(FamilyContractError, match=r"copy of condition-bank file\(s\) \['cases"):
        check_trained(_Trainer(), trained, _job(tmp_path), min_image_size=32)
    job = _job(tmp_path)
    job.embed_sources = True  # asked for: the copy is what the option means
    check_trained(_Trainer(), trained, job, min_image_size=32)
    (tmp_path / "model" / "settings.csv").write_text("sigma\n0.05\n")
    with pytest.raises(FamilyContractError, match="--embed-sources was given"):
        check_trained(_Trainer(), trained, job, min_image_size=32)


def test_a_broken_family_stops_its_command_with_one_line(broken, capsys) -> None:
    from thyroaug.jobs.commands import main

    broken("ClashingOption")
    assert main(["train-broken", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("thyroaug train-broken: error: generator family 'broken' breaks")
    assert "Traceback" not in "\n".join(err)


def test_a_job_over_an_in_memory_cohort(tmp_path: Path) -> None:
    cohort = argparse.Namespace(content_hash="h1")
    job = TrainingJob.in_memory(cohort, "fm", tmp_path / "out", seed=3)  # type: ignore[arg-type]
    assert (job.cohort, job.content_hash, job.seed, job.profile) == (cohort, "h1", 3, "smoke")
