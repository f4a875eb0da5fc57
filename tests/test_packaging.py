"""Project files agree with each other: pyproject, conda.yaml, MLproject, projects/, docker/."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from projects._entry import normalise
from thyroaug.cli import build_parser, commands
from thyroaug.generators import registry

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_conda_env_lists_the_same_dependencies_as_pyproject() -> None:
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(_pyproject()["project"]["dependencies"])
    assert "python=3.11.7" in conda["dependencies"]  # exact: an offline pyenv can satisfy it


def test_python_env_lists_the_same_dependencies_as_pyproject() -> None:
    env = yaml.safe_load((ROOT / "python_env.yaml").read_text())
    assert sorted(env["dependencies"]) == sorted(_pyproject()["project"]["dependencies"])
    assert env["python"] == "3.11.7"  # exact: `mlflow run` builds it offline with pyenv
    assert yaml.safe_load((ROOT / "MLproject").read_text())["python_env"] == "python_env.yaml"


def test_torch_pins() -> None:
    deps = _pyproject()["project"]["dependencies"]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (ROOT / "docker" / dockerfile).read_text()
        assert "torch==2.14.1" in text and "torchvision==0.29.1" in text


def test_every_entry_point_has_a_thin_script_and_a_cli_command() -> None:
    mlproject = yaml.safe_load((ROOT / "MLproject").read_text())
    entries = mlproject["entry_points"]
    fixed = {"prepare_data", "synthesize", "train_classifier", "compare", "study", "tune"}
    families = {fam.entry_point for fam in registry.families()}  # train_fm, train_sd, plug-ins
    assert {"train_fm", "train_sd"} <= families
    assert set(entries) == fixed | families
    for name, spec in entries.items():
        script = ROOT / "projects" / f"{name}.py"
        assert script.exists(), script
        assert f"python -m projects.{name}" in spec["command"]
        command = script.read_text().split('run("')[1].split('")')[0]
        assert command in commands()
        for param in spec.get("parameters", {}):
            assert "{" + param + "}" in spec["command"], (name, param)


@pytest.mark.parametrize("command", sorted(commands()))
def test_entry_point_flags_exist_in_the_cli(command: str) -> None:
    """Every --flag that MLproject passes is accepted by the command's parser."""
    mlproject = yaml.safe_load((ROOT / "MLproject").read_text())
    parser = build_parser(only=command)
    sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    known = {s for a in sub._actions for s in a.option_strings}
    for name, spec in mlproject["entry_points"].items():
        script = (ROOT / "projects" / f"{name}.py").read_text()
        if f'run("{command}")' not in script:
            continue
        flags = {w for w in spec["command"].split() if w.startswith("--")}
        assert flags <= known, (name, sorted(flags - known))


def test_normalise_mlproject_parameters() -> None:
    argv = [
        "--manifest",
        "",
        "--per-class",
        "1000.0",
        "--register",
        "true",
        "--resume",
        "false",
        "--scenario",
        "O+FM",
        "--verbose",
    ]
    assert normalise(argv) == [
        "--per-class",
        "1000",
        "--register",
        "--scenario",
        "O+FM",
        "--verbose",
    ]


def test_compose_file_is_valid() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose (Debian package) not installed: cannot validate compose.yaml")
    out = subprocess.run(
        [exe, "-f", str(ROOT / "docker" / "compose.yaml"), "config"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert {"mlflow", "postgres", "minio", "create-bucket"} <= set(services)


def test_dockerfiles_copy_existing_paths() -> None:
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.cuda"):
        for line in (ROOT / "docker" / dockerfile).read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), (dockerfile, src)


def test_readme_starts_with_the_two_commands() -> None:
    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.strip()]
    block = lines[lines.index("```bash") + 1 : lines.index("```bash") + 3]
    assert block[0].startswith("python3 dev.py demo") and block[1].startswith("python3 dev.py test")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 dev.py test" in ci
