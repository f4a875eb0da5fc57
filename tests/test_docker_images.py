"""The images in docker/ can build and run the project: static checks (no Docker engine needed).

``tests/test_packaging.py`` already checks that both Dockerfiles mention the torch pins and copy
paths that exist. These tests read each Dockerfile as instructions and check what an image build
would find out minutes in (or on the cluster):

* the Python the image installs satisfies pyproject's ``requires-python`` and is 3.11 (an exact
  pin equals conda.yaml's and python_env.yaml's), and no ``apt-get install python3.X`` asks a
  Debian / Ubuntu release for a version its archive does not ship (the original CUDA-image bug:
  python3.11 on Ubuntu 24.04, whose archive has 3.12);
* every torch / torchvision pin equals pyproject's and the wheel index matches the base image
  (CPU wheels on a CPU base, ``cu130`` on CUDA 13.0); base images are pinned;
* the image's command runs the project's console script (or ``mlflow``), and ``python`` (what
  MLproject's entry points call) and the console script are on PATH; a C++ compiler is there for
  ``torch.compile``;
* the Kubernetes job template / backend config / README / compose name the same things.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.exceptions import MlflowException
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.cuda")

DISTRO_PYTHON: dict[str, str] = {
    "ubuntu:20.04": "3.8",
    "ubuntu:22.04": "3.10",
    "ubuntu:24.04": "3.12",
    "debian:11": "3.9",
    "debian:12": "3.11",
    "debian:13": "3.13",
}
"""The python3 each release's own archive ships (3.11 on Ubuntu needs the deadsnakes PPA)."""
CODENAMES: dict[str, str] = {
    "focal": "ubuntu:20.04",
    "jammy": "ubuntu:22.04",
    "noble": "ubuntu:24.04",
    "bullseye": "debian:11",
    "bookworm": "debian:12",
    "trixie": "debian:13",
}

ORIGINAL_CUDA_BUG = """\
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
RUN apt-get update \\
    && apt-get install -y --no-install-recommends python3.11 python3-pip git \\
    && rm -rf /var/lib/apt/lists/*
"""
"""The first steps of the CUDA image before it was fixed: they fail at `apt-get install`."""

MLFLOW_IMAGE_PLACEHOLDER = "{replaced with URI of Docker image created during Project execution}"
MLFLOW_COMMAND_PLACEHOLDER = "{replaced with MLflow Project entry point command}"
"""MLflow's Kubernetes backend overwrites the first container's image and command."""


# ------------------------------------------------------------------------------------------------
# a small Dockerfile reader
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined and ARG defaults substituted."""

    keyword: str
    args: str
    options: tuple[str, ...] = ()
    """Flags before the arguments (``--mount=...`` of RUN, ``--from=...`` of COPY)."""


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of ``text``: no comments, ``\\`` continuations joined, ``${ARG}`` filled."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1].rstrip() + " "
            continue
        logical.append(buf + line)
        buf = ""
    if buf.strip():
        logical.append(buf.strip())
    args: dict[str, str] = {}
    out = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = re.sub(
            r"\$\{(\w+)\}|\$(\w+)",
            lambda m: args.get(m.group(1) or m.group(2), m.group(0)),
            rest.strip(),
        )
        options = []
        while keyword in ("RUN", "COPY", "ADD") and rest.startswith("--"):  # --mount=..., --from=
            option, _, rest = rest.partition(" ")
            options.append(option)
            rest = rest.lstrip()
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip().strip('"')
        out.append(Instruction(keyword, rest, tuple(options)))
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions of the last build stage (from its FROM on)."""
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    assert starts, "no FROM instruction"
    return instructions[starts[-1] :]


def base_image(instructions: list[Instruction]) -> str:
    """The image the final stage starts from."""
    return final_stage(instructions)[0].args.split()[0]


def base_distro(image: str) -> str | None:
    """``ubuntu:24.04`` / ``debian:12`` / ... for an image name, or None when it cannot tell."""
    m = re.search(r"ubuntu[-:]?(\d\d\.\d\d)", image)
    if m:
        return f"ubuntu:{m.group(1)}"
    m = re.match(r"(?:docker\.io/)?(?:library/)?debian:(\d+)", image)
    if m:
        return f"debian:{m.group(1)}"
    for codename, distro in CODENAMES.items():
        if re.search(rf"(?<![a-z]){codename}(?![a-z])", image):
            return distro
    return None


def _run_words(instructions: list[Instruction]) -> list[list[str]]:
    """Each shell command of every RUN (split at ``&&`` / ``;``) as words."""
    commands = []
    for ins in instructions:
        if ins.keyword != "RUN":
            continue
        lexer = shlex.shlex(ins.args, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in lexer:
            if token in ("&&", "||", ";", "|"):
                if words:
                    commands.append(words)
                words = []
            else:
                words.append(token)
        if words:
            commands.append(words)
    return commands


def apt_packages(instructions: list[Instruction]) -> list[str]:
    """Packages of every ``apt-get install`` / ``apt install`` in RUN instructions."""
    pkgs = []
    for words in _run_words(instructions):
        if words[0] in ("apt-get", "apt") and "install" in words:
            after = words[words.index("install") + 1 :]
            pkgs += [w for w in after if not w.startswith("-")]
    return pkgs


def apt_python_problems(text: str) -> list[str]:
    """``apt-get install python3.X`` lines that the base image's release cannot satisfy."""
    instructions = parse_dockerfile(text)
    distro = base_distro(base_image(instructions))
    problems = []
    for pkg in apt_packages(final_stage(instructions)):
        m = re.fullmatch(r"python(3\.\d+)(-[a-z]+)?", pkg)
        if m and distro in DISTRO_PYTHON and m.group(1) != DISTRO_PYTHON[distro]:
            problems.append(
                f"{pkg}: {distro}'s archive ships python{DISTRO_PYTHON[distro]}, not {m.group(1)}"
            )
    return problems


def python_versions(instructions: list[Instruction]) -> set[str]:
    """Python versions the final image provides: official python base, uv, or apt python3.X."""
    stage = final_stage(instructions)
    found = set()
    m = re.match(r"(?:docker\.io/)?(?:library/)?python:(\d+\.\d+(?:\.\d+)?)", base_image(stage))
    if m:
        found.add(m.group(1))
    for words in _run_words(stage):
        if words[:3] == ["uv", "python", "install"]:
            found.update(w for w in words[3:] if re.fullmatch(r"\d+\.\d+(\.\d+)?", w))
        if words[:2] == ["uv", "venv"]:
            for flag in ("--python", "-p"):
                if flag in words:
                    found.add(words[words.index(flag) + 1])
    for pkg in apt_packages(stage):
        m = re.fullmatch(r"python(3\.\d+)", pkg)
        if m:
            found.add(m.group(1))
    return found


def env_vars(instructions: list[Instruction]) -> dict[str, str]:
    """``ENV`` values of the final stage (``KEY=VALUE`` form)."""
    out: dict[str, str] = {}
    for ins in final_stage(instructions):
        if ins.keyword == "ENV":
            for word in shlex.split(ins.args):
                key, sep, value = word.partition("=")
                if sep:
                    out[key] = value
    return out


def command_argv(instructions: list[Instruction]) -> list[str]:
    """The container's default argv: last ENTRYPOINT + last CMD (exec form required)."""
    stage = final_stage(instructions)
    argv: list[str] = []
    for keyword in ("ENTRYPOINT", "CMD"):
        last = [ins for ins in stage if ins.keyword == keyword]
        if last:
            value = json.loads(last[-1].args)  # shell form would not parse: exec form only
            assert isinstance(value, list), (keyword, value)
            argv += value
    return argv


def _dockerfile(name: str) -> list[Instruction]:
    return parse_dockerfile((DOCKER / name).read_text())


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pin(name: str) -> str:
    deps = _pyproject()["project"]["dependencies"]
    (spec,) = [d for d in deps if re.match(rf"{name}\s*==", d)]
    return spec.split("==", 1)[1].strip()


def _environment_pythons() -> set[str]:
    """The exact Python of the project's other environment files (conda.yaml, python_env.yaml)."""
    pins = set()
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pins |= {d.split("=", 1)[1] for d in conda["dependencies"] if str(d).startswith("python=")}
    if (ROOT / "python_env.yaml").exists():
        pins.add(str(yaml.safe_load((ROOT / "python_env.yaml").read_text())["python"]))
    return pins


# ------------------------------------------------------------------------------------------------
# the reader itself, and the original bug
# ------------------------------------------------------------------------------------------------
def test_release_table_refuses_the_original_cuda_image() -> None:
    problems = apt_python_problems(ORIGINAL_CUDA_BUG)
    assert problems == ["python3.11: ubuntu:24.04's archive ships python3.12, not 3.11"]
    assert apt_python_problems(ORIGINAL_CUDA_BUG.replace("ubuntu24.04", "ubuntu22.04"))
    ok_2204 = "FROM nvidia/cuda:12.8.1-runtime-ubuntu22.04\nRUN apt-get install -y python3.10\n"
    ok_2404 = "FROM ubuntu:noble\nRUN apt-get update && apt-get install -y python3.12-venv\n"
    assert apt_python_problems(ok_2204) == [] and apt_python_problems(ok_2404) == []
    assert apt_python_problems("FROM ubuntu:noble\nRUN apt install python3.11-dev\n")


def test_reader_understands_args_continuations_and_stages() -> None:
    text = (
        "FROM ghcr.io/x/builder:1.0 AS build\nRUN apt-get install -y python3.9\n"
        "# the image\nFROM ubuntu:22.04\nARG PY=3.11.4\n"
        "RUN --mount=from=uv,source=/uv,target=/bin/uv uv python install ${PY} \\\n"
        "    # comment inside\n    && uv venv -p $PY /v\n"
        'ENV A=1 \\\n    PATH=/v/bin:$PATH\nCMD ["thyroaug", "--help"]\n'
    )
    ins = parse_dockerfile(text)
    assert base_image(ins) == "ubuntu:22.04" and base_distro("ubuntu:22.04") == "ubuntu:22.04"
    assert python_versions(ins) == {"3.11.4"}  # the builder stage's apt python does not count
    (run,) = [i for i in ins if i.keyword == "RUN" and i.options]
    assert run.options == ("--mount=from=uv,source=/uv,target=/bin/uv",)
    assert run.args.startswith("uv python install 3.11.4")
    assert env_vars(ins)["PATH"] == "/v/bin:$PATH"
    assert command_argv(ins) == ["thyroaug", "--help"]
    assert base_distro("python:3.11-slim-bookworm") == "debian:12"
    assert base_distro("nvidia/cuda:13.0.1-base-ubuntu24.04") == "ubuntu:24.04"


# ------------------------------------------------------------------------------------------------
# Python, torch, base images
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_python_is_the_projects(dockerfile: str) -> None:
    ins = _dockerfile(dockerfile)
    versions = python_versions(ins)
    assert len(versions) == 1, f"{dockerfile}: one Python expected, found {sorted(versions)}"
    (version,) = versions
    requires = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert Version(version) in requires, (dockerfile, version, str(requires))
    assert Version(version).release[:2] == (3, 11), (dockerfile, version)
    if len(Version(version).release) == 3:  # an exact pin is the other environments' pin
        assert {version} == _environment_pythons(), (dockerfile, version)
    assert apt_python_problems((DOCKER / dockerfile).read_text()) == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_torch_pins_and_wheel_index_match(dockerfile: str) -> None:
    ins = _dockerfile(dockerfile)
    run = " ".join(i.args for i in ins if i.keyword == "RUN")
    for name in ("torch", "torchvision"):
        pins = re.findall(rf"(?<![\w-]){name}==([\w.+]+)", run)
        assert pins and set(pins) == {_pin(name)}, (dockerfile, name, pins)
    for words in _run_words(ins):  # no unpinned torch anywhere
        assert not {"torch", "torchvision"} & set(words), (dockerfile, words)
    indexes = set(re.findall(r"download\.pytorch\.org/whl/(\w+)", run))
    cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)\.", base_image(ins))
    expected = f"cu{cuda.group(1)}{cuda.group(2)}" if cuda else "cpu"
    assert indexes == {expected}, (dockerfile, indexes, expected)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_are_pinned(dockerfile: str) -> None:
    ins = _dockerfile(dockerfile)
    stages = {i.args.split()[-1] for i in ins if i.keyword == "FROM" and " as " in i.args.lower()}
    images = [i.args.split()[0] for i in ins if i.keyword == "FROM"]
    for option in (o for i in ins for o in i.options):  # COPY --from=X, RUN --mount=from=X,...
        m = re.search(r"(?:^--from=|[=,]from=)([^,\s]+)", option)
        if m and m.group(1) not in stages:
            images.append(m.group(1))
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag not in ("", "latest"), (dockerfile, image)
        assert re.search(r"\d", tag), (dockerfile, image)  # a version, not a moving alias


# ------------------------------------------------------------------------------------------------
# what runs in the container
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_command_runs_the_console_script_or_mlflow(dockerfile: str) -> None:
    argv = command_argv(_dockerfile(dockerfile))
    scripts = set(_pyproject()["project"]["scripts"])
    assert argv and argv[0] in scripts | {"mlflow"}, (dockerfile, argv)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_python_and_console_script_are_on_path(dockerfile: str) -> None:
    """MLproject's entry points run ``python -m projects.<name>``; the image's CMD runs the
    console script: both must be found on PATH, not only ``python3.11``."""
    mlproject = yaml.safe_load((ROOT / "MLproject").read_text())
    assert all(e["command"].split()[0] == "python" for e in mlproject["entry_points"].values())
    ins = _dockerfile(dockerfile)
    venvs = [w[-1] for w in _run_words(ins) if w[:2] == ["uv", "venv"]]
    if re.match(r"(?:docker\.io/)?(?:library/)?python:", base_image(ins)):
        assert not venvs  # pip installs into the image's /usr/local (python, scripts on PATH)
        return
    assert len(venvs) == 1, (dockerfile, venvs)
    env = env_vars(ins)
    assert env.get("PATH", "").split(":")[0] == f"{venvs[0]}/bin", (dockerfile, env.get("PATH"))
    assert env.get("VIRTUAL_ENV") == venvs[0]  # `uv pip install` targets the venv


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_a_compiler_for_torch_compile(dockerfile: str) -> None:
    pkgs = set(apt_packages(_dockerfile(dockerfile)))
    assert pkgs & {"g++", "build-essential"}, (dockerfile, sorted(pkgs))


# ------------------------------------------------------------------------------------------------
# Kubernetes, compose, README
# ------------------------------------------------------------------------------------------------
def test_kubernetes_config_and_template_agree() -> None:
    config = json.loads((DOCKER / "kubernetes_config.json").read_text())
    template_path = ROOT / config["kube-job-template-path"]
    assert template_path == DOCKER / "kubernetes_job_template.yaml" and template_path.exists()
    repo = config["repository-uri"]
    assert ":" not in repo.split("/")[-1] and "@" not in repo  # MLflow appends :<git sha>
    job = yaml.safe_load(template_path.read_text())
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    # MLflow overwrites these with <repository-uri>:<sha>@<digest> and the entry point command
    assert container["image"] == MLFLOW_IMAGE_PLACEHOLDER
    assert container["command"] == [MLFLOW_COMMAND_PLACEHOLDER]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1  # the CUDA image's jobs


def test_readme_and_dockerfiles_name_the_same_images() -> None:
    readme = (ROOT / "README.md").read_text()
    cluster = next(p for p in readme.split("\n- ") if p.startswith("**cluster**"))
    assert "docker/kubernetes_job_template.yaml" in cluster and "docker/Dockerfile.cuda" in cluster
    for dockerfile, tag in (
        ("Dockerfile.cpu", "thyroaug:cpu"),
        ("Dockerfile.cuda", "thyroaug:cuda"),
    ):
        text = (DOCKER / dockerfile).read_text()
        assert f"docker build -f docker/{dockerfile} -t {tag} ." in text, dockerfile


@pytest.mark.xfail(
    strict=True,
    raises=(AttributeError, AssertionError, MlflowException),
    reason="MLproject declares no docker_env (its environment is python_env.yaml / conda.yaml), "
    "so MLflow's Kubernetes backend (mlflow.projects.docker.validate_docker_env) has no image to "
    "build the jobs FROM; a docker_env in the same MLproject would turn every `mlflow run .` "
    "into a Docker run",
)
def test_kubernetes_backend_builds_from_the_cuda_image() -> None:
    from mlflow.projects._project_spec import load_project
    from mlflow.projects.docker import validate_docker_env

    project = load_project(str(ROOT))
    validate_docker_env(project)
    assert project.docker_env["image"] == "thyroaug:cuda"


def test_compose_mlflow_server_satisfies_the_client_pin() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    image = compose["services"]["mlflow"]["image"]
    name, _, tag = image.rpartition(":")
    assert name == "ghcr.io/mlflow/mlflow", image
    (spec,) = [
        d for d in _pyproject()["project"]["dependencies"] if re.match(r"mlflow\s*[<>=!~]", d)
    ]
    assert Version(tag.lstrip("v")) in SpecifierSet(spec[len("mlflow") :]), (image, spec)
