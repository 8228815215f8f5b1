"""The project image's Dockerfile, kept consistent with the package it installs (no container engine here).

It cannot be built on this machine, so what it names is checked against the sources of truth: the
package version and image tag (`deepmoney.kube.default_image`), the torch pin of scripts/install.sh,
the extras in pyproject.toml, the entrypoints the pods and components run, the non-root uid the
manifests ask for, and — by building the real wheel — that the non-Python files the package reads
at run time (prompts, data) are inside what `pip install .` puts into the image.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from deepmoney.config import LaunchConfig
from deepmoney.kube import IMAGE_REPOSITORY, default_image
from deepmoney.serving.manifests import StepSpec
from tests.conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]


def _arg(name: str) -> str:
    """The default of `ARG name=...` in the Dockerfile."""
    match = re.search(rf"^ARG {name}=\"?([^\"\n]+)\"?$", DOCKERFILE, re.MULTILINE)
    assert match, f"no ARG {name}= in the Dockerfile"
    return match.group(1)


def test_the_image_is_tagged_with_the_package_version_never_latest() -> None:
    assert _arg("DEEPMONEY_VERSION") == VERSION
    assert default_image() == f"{IMAGE_REPOSITORY}:{VERSION}"  # the installed package is this checkout's
    script = (ROOT / "scripts" / "build-image.sh").read_text(encoding="utf-8")
    for text in (DOCKERFILE, script):
        code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        assert not [line for line in code if "latest" in line]
    for line in re.findall(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE):
        assert ":" in line, f"FROM {line}: an unpinned base image"
    built = subprocess.run(["bash", str(ROOT / "scripts" / "build-image.sh"), "--push"], capture_output=True,
                           text=True, env={"PATH": "/usr/bin:/bin", "CONTAINER_ENGINE": "echo"})  # fmt: skip
    assert built.returncode == 0, built.stderr
    build, push, tag = built.stdout.strip().splitlines()  # `echo` stands in for docker: the commands it would run
    assert tag == default_image() and build == f"build --build-arg DEEPMONEY_VERSION={VERSION} --tag {tag} ."
    assert push == f"push {tag}"


def test_torch_and_the_extras_are_the_ones_the_package_declares() -> None:
    install = (ROOT / "scripts" / "install.sh").read_text(encoding="utf-8")
    cpu_pin = re.search(r'"torch==([0-9.]+)"', install)
    assert cpu_pin and _arg("TORCH_VERSION") == cpu_pin.group(1)  # one torch version, CPU and CUDA
    torch_range = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    minimum = tuple(int(x) for x in torch_range.split(">=")[1].split("."))
    assert tuple(int(x) for x in _arg("TORCH_VERSION").split(".")[:2]) >= minimum[:2]
    installed = re.search(r'pip install "\.\[([a-z,]+)\]"', DOCKERFILE)
    assert installed, "the Dockerfile does not install the package with its extras"
    extras = set(installed.group(1).split(","))
    declared = set(PYPROJECT["project"]["optional-dependencies"])
    assert extras <= declared and extras == {"train", "serve", "cluster", "pipelines", "postgres"}
    assert "pip check" in DOCKERFILE


def test_the_entrypoints_the_image_runs_exist() -> None:
    assert PYPROJECT["project"]["scripts"]["deepmoney"] == "deepmoney.cli:main"
    assert re.search(r'^CMD \["deepmoney", "--help"\]$', DOCKERFILE, re.MULTILINE)
    for module in ("deepmoney", "deepmoney.train", "deepmoney.launch.detached"):  # pods and launchers run these
        path = ROOT / Path(*module.split("."))
        assert (path / "__main__.py").is_file() or path.with_suffix(".py").is_file(), module
    result = subprocess.run([sys.executable, "-m", "deepmoney.train", "--help"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0 and "--launcher" in result.stdout


def test_the_image_runs_as_the_uid_the_manifests_ask_for() -> None:
    user = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE, re.MULTILINE)
    assert user, "the image must name a numeric non-root USER"
    uid = int(user.group(1))
    assert uid != 0 and uid == LaunchConfig.model_fields["run_as_user"].default == StepSpec.run_as_user
    chart = yaml.safe_load((ROOT / "helm" / "deepmoney" / "values.yaml").read_text(encoding="utf-8"))
    assert chart["securityContext"]["runAsUser"] == uid  # the chart's pods, the same user
    assert f"--uid {uid}" in DOCKERFILE


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    admitted = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE, re.MULTILINE):
        *sources, _ = line.split()
        copied.update(s.rstrip("/") for s in sources)
    assert copied == admitted == {"pyproject.toml", "README.md", "deepmoney"}


@pytest.mark.slow
def test_the_wheel_carries_every_file_the_package_reads(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "deepmoney", source / "deepmoney", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                            "--wheel-dir", str(tmp_path / "dist"), str(source)], capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("deepmoney-*.whl")
    in_wheel = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("deepmoney/")}
    in_tree = {p.relative_to(source).as_posix() for p in (source / "deepmoney").rglob("*") if p.is_file()}
    assert in_tree - in_wheel == set(), "files the installed package would lack (add them to package-data)"
