"""The Helm chart, with a real `helm` binary: lint, render every ci/ scenario, validate each object, check hardening.

Core kinds are validated with kubernetes-validate at the chart's lowest Kubernetes version (strict: unknown
fields fail). The MLflow server's rendered command is run here, on loopback against moto's S3, to prove its
arguments work with this MLflow and that its host check lets the Service names in and keeps other hosts out.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import crd_schema
from tests.conftest import ROOT, S3Endpoint

CHART = ROOT / "helm" / "deepmoney"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
NAMESPACE = "ml"
RELEASE = "dm"
CUSTOM_GROUPS = {"serving.kserve.io", "trainer.kubeflow.org", "kubeflow.org"}

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() != "x86_64", reason="the helm binary is for Linux x86_64"
)


def _helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def _render(helm: Path, *args: str) -> list[dict[str, Any]]:
    result = _helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _chart() -> dict[str, Any]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))


def _kube_version() -> str:
    """The lowest Kubernetes version the chart declares (kubeVersion ">=1.29.0-0" -> 1.29.0)."""
    match = re.search(r">=\s*(\d+\.\d+)", _chart()["kubeVersion"])
    assert match, _chart()["kubeVersion"]
    return f"{match.group(1)}.0"


def _pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for obj in objects:
        if obj["kind"] == "Pod":
            specs.append((obj["metadata"]["name"], obj["spec"]))
        elif obj["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            specs.append((obj["metadata"]["name"], obj["spec"]["template"]["spec"]))
    return specs


def test_the_chart_lints_strictly_in_every_scenario(helm: Path) -> None:
    assert {p.name for p in SCENARIOS} >= {"minimal-values.yaml", "external-postgres-values.yaml"}
    for values in SCENARIOS:
        result = _helm(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, "-f", str(values))
        assert result.returncode == 0, f"{values.name}: {result.stdout}{result.stderr}"


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.stem)
def test_every_rendered_object_validates_and_is_hardened(helm: Path, values: Path) -> None:
    import kubernetes_validate

    objects = _render(helm, "-f", str(values))
    app_version = str(_chart()["appVersion"])
    for obj in objects:
        if obj["apiVersion"].split("/")[0] in CUSTOM_GROUPS:
            if crd_schema.CRDS_PRESENT:  # against the upstream CRD in ../shared/crds
                crd_schema.validate(obj)
        else:
            kubernetes_validate.validate(obj, _kube_version(), strict=True)  # raises on an unknown or mistyped field
        assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE and labels["app.kubernetes.io/version"] == app_version
        assert labels["app.kubernetes.io/managed-by"] == "Helm" and labels["app.kubernetes.io/name"] == "deepmoney"
    assert not [o for o in objects if o["kind"] == "Secret"]  # Secrets are referenced, never created from values
    assert not [o for o in objects if o["kind"].startswith("Cluster")]  # nothing cluster-wide
    specs = _pod_specs(objects)
    assert specs
    for name, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] and pod["runAsUser"] > 0 and pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name  # MLflow and the test pod never call the API
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"], name
            assert security["capabilities"]["drop"] == ["ALL"], name
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
            assert container["image"].endswith(f":{app_version}"), container["image"]  # pinned, never latest


def test_the_pipeline_role_allows_what_the_components_do_and_no_more(helm: Path) -> None:
    def rules(*args: str) -> dict[str, set[str]]:
        role = next(o for o in _render(helm, *args) if o["kind"] == "Role")
        return {f"{g}/{r}": set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"]
                for r in rule["resources"]}  # fmt: skip

    job_verbs = {"create", "get", "list", "watch", "delete"}
    v1 = rules()
    assert v1.pop("kubeflow.org/pytorchjobs") == job_verbs
    assert rules("--set", "pipeline.trainingApi=trainjob")["trainer.kubeflow.org/trainjobs"] == job_verbs
    assert v1 == {
        "serving.kserve.io/inferenceservices": job_verbs | {"update"},  # the deploy step replaces what it applied
        "serving.kserve.io/inferencegraphs": job_verbs | {"update"},
        "/configmaps": {"create", "get"},  # the job's configuration
        "/pods": {"get", "list", "watch"},
        "/pods/log": {"get", "list", "watch"},
        "/events": {"get", "list", "watch"},
    }
    objects = _render(helm)
    binding = next(o for o in objects if o["kind"] == "RoleBinding")
    account = next(o for o in objects if o["kind"] == "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": NAMESPACE}]  # fmt: skip


def test_bad_values_are_refused_with_what_to_fix(helm: Path) -> None:
    cases = [
        (["--set", "image.tag=latest"], "/image/tag"),
        (["--set", "mlflow.backendStore.type=postgres"], "postgres.existingSecret is required"),
        (["--set", "mlflow.artifacts.destination=/local/dir"], "/mlflow/artifacts/destination"),
        (["--set", "pipeline.trainingApi=mpijob"], "/pipeline/trainingApi"),
        (["--set", "mlflow.replicas=3"], "replicas"),  # not a value: sqlite has one writer
    ]
    for args, message in cases:
        result = _helm(helm, "template", RELEASE, str(CHART), *args)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.integration
def test_the_rendered_mlflow_command_serves_and_checks_the_host(helm: Path, s3_endpoint: S3Endpoint,
                                                                tmp_path: Path) -> None:  # fmt: skip
    """The Deployment's own command and arguments, run here: the server starts with them, answers the probes'
    Host and the in-cluster Service names, and refuses another Host (DNS-rebinding protection)."""
    import requests

    s3_endpoint.client().create_bucket(Bucket="deepmoney-mlflow")
    port = _free_port()
    deployment = next(o for o in _render(helm, "--set", f"mlflow.port={port}") if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the pod's /mlflow volume, here
    args = [a.replace("$(MLFLOW_BACKEND_STORE_URI)", store).replace("--host=0.0.0.0", "--host=127.0.0.1")
            for a in container["args"]]  # fmt: skip
    command = [sys.executable if container["command"][0] == "python" else container["command"][0],
               *container["command"][1:], *args]  # fmt: skip
    assert env["MLFLOW_BACKEND_STORE_URI"] == "sqlite:////mlflow/mlflow.db"
    environment = {**os.environ, **s3_endpoint.env, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint.url, "HOME": str(tmp_path)}
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}{container['readinessProbe']['httpGet']['path']}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        # The host check (health endpoints are exempt from it, so the probes pass whatever Host the kubelet sends).
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
        service = next(o for o in _render(helm) if o["kind"] == "Service")["metadata"]["name"]
        for host in (service, f"{service}.{NAMESPACE}.svc:{port}", f"{service}.{NAMESPACE}.svc.cluster.local"):
            assert requests.get(api, headers={"Host": host}, timeout=5).status_code == 200, host
        assert requests.get(api, headers={"Host": "attacker.example.com"}, timeout=5).status_code == 403
    finally:
        os.killpg(process.pid, 15)
        process.wait(30)
        shutil.rmtree(tmp_path / "mlruns", ignore_errors=True)
