"""The chart's serving, training-runtime and network objects: one source of truth with the Python builders.

The objects the chart renders from values are compared with what `serving.manifests.render` and
`launch.trainjob.training_runtime` build from the same settings: the whole `spec` equal, the builders'
labels and annotations kept. The ConfigMap's settings load as a deepmoney configuration, and the jobs the
launcher renders from them run on the chart's TrainingRuntime and reach MLflow through its NetworkPolicy,
which is evaluated here on the labels KServe, Kubeflow Pipelines and the launcher give their pods.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepmoney.config import load_config
from deepmoney.launch.render import render_objects as render_job
from deepmoney.launch.trainjob import training_runtime
from deepmoney.serving.manifests import LLMSpec, StepSpec, llm_url, render, serving_runtime
from tests.test_chart import CHART, NAMESPACE, RELEASE, SCENARIOS, _helm, _render

FULLNAME = f"{RELEASE}-deepmoney"
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
SERVING = [p for p in SCENARIOS if (yaml.safe_load(p.read_text()) or {}).get("serving", {}).get("enabled")]


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if nested else value
    return merged


def _values(path: Path | None = None, **sets: Any) -> dict[str, Any]:
    """The chart's values after `path` (as helm merges them)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if path is not None:
        values = _merge(values, yaml.safe_load(path.read_text()) or {})
    return _merge(values, sets)


def _specs(values: dict[str, Any]) -> tuple[LLMSpec, StepSpec]:
    """The builders' specs for the chart's serving values."""
    serving, llm = values["serving"], values["serving"]["llm"]
    intake = serving["intake"]["modelUri"] if serving["intake"]["enabled"] else None
    spec = LLMSpec(model_uri=llm["modelUri"], gpus=llm["tensorParallelSize"] * llm["nodes"], nodes=llm["nodes"],
                   name=f"{FULLNAME}-llm", namespace=NAMESPACE, served_model_name=serving["servedModelName"],
                   max_model_len=llm["maxModelLen"], max_num_seqs=llm["maxNumSeqs"] or None,
                   gpu_resource=llm["gpuResource"], shm_size=llm["shmSize"], model_size_gb=llm["modelSizeGB"],
                   runtime=llm["runtime"]["name"] or None, cpu=llm["cpu"], memory=llm["memory"] or None,
                   runtime_image=llm["runtime"]["image"])  # fmt: skip
    image = f"{values['image']['repository']}:{values['image']['tag'] or APP_VERSION}"
    steps = StepSpec(image=image, llm_url=llm_url(spec), served_model_name=serving["servedModelName"],
                     namespace=NAMESPACE, market_data_secret=serving["marketData"]["existingSecret"] or None,
                     prefix=FULLNAME, router_timeout_s=serving["steps"]["routerTimeoutSeconds"],
                     cpu_request=serving["steps"]["cpuRequest"], cpu_limit=serving["steps"]["cpuLimit"],
                     memory=serving["steps"]["memory"], run_as_user=values["securityContext"]["runAsUser"],
                     intake_model_uri=intake)  # fmt: skip
    return spec, steps


def _same(built: dict[str, Any], rendered: dict[str, Any]) -> None:
    name = f"{built['kind']} {built['metadata']['name']}"
    assert rendered["apiVersion"] == built["apiVersion"], name
    assert rendered["spec"] == built["spec"], name
    assert rendered["metadata"].get("namespace") == built["metadata"].get("namespace"), name
    assert built["metadata"]["labels"].items() <= rendered["metadata"]["labels"].items(), name
    assert rendered["metadata"].get("annotations", {}) == built["metadata"].get("annotations", {}), name


def pod_settings(config_map: dict[str, Any], tmp_path: Path, stage: str = "pt") -> Any:
    """The chart's settings as a training pod reads them, with the run's own (stage, model, data, output) added."""
    settings = yaml.safe_load(config_map["data"]["deepmoney.yaml"])
    settings["train"] = {"stage": stage, "model": "s3://models/base", "data": "/workspace/pt",
                         "output": f"/workspace/runs/{stage}"}  # fmt: skip
    (tmp_path / "deepmoney.yaml").write_text(yaml.safe_dump(settings))
    return load_config(tmp_path / "deepmoney.yaml")


def _by_name(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


CASES = [(p.stem, p, {}) for p in SERVING] + [
    ("defaults", None, {"serving": {"enabled": True, "llm": {"modelUri": "hf://deepmoney/champion"}}}),
    ("cluster-runtime-tp4", None, {"serving": {"enabled": True, "llm": {
        "modelUri": "gs://models/champion", "tensorParallelSize": 4, "memory": "400Gi", "gpuResource": "amd.com/gpu",
        "runtime": {"create": "cluster", "name": "deepmoney-hf"}}, "steps": {"routerTimeoutSeconds": 900}}}),
]  # fmt: skip


@pytest.mark.parametrize(("label", "path", "sets"), CASES, ids=[c[0] for c in CASES])
def test_the_chart_serves_what_the_builders_render(helm: Path, label: str, path: Path | None,
                                                   sets: dict[str, Any], tmp_path: Path) -> None:  # fmt: skip
    values = _values(path, **sets)
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    rendered = _by_name(_render(helm, "-f", str(tmp_path / "values.yaml")))
    llm, steps = _specs(values)
    create = values["serving"]["llm"]["runtime"]["create"]
    built = render(llm, steps)
    if create != "none":
        built.insert(0, serving_runtime(llm, cluster_wide=create == "cluster"))
    for obj in built:
        _same(obj, rendered.pop((obj["kind"], obj["metadata"]["name"])))
    # nothing else serves: what remains is MLflow, RBAC, the ConfigMap, NetworkPolicies and the helm tests
    assert not {kind for kind, _ in rendered} & {"InferenceService", "InferenceGraph", "ServingRuntime",
                                                "ClusterServingRuntime"}  # fmt: skip
    assert len([o for o in built if o["kind"] == "InferenceService"]) == 1 + len(steps.steps())


def test_the_trainer_runtime_is_the_one_the_jobs_run_on(helm: Path, tmp_path: Path) -> None:
    scenario = CHART / "ci" / "trainer-v2-values.yaml"
    objects = _by_name(_render(helm, "-f", str(scenario)))
    name = f"{FULLNAME}-torch"
    rendered = objects[("TrainingRuntime", name)]
    image = f"ghcr.io/deepmoney/deepmoney:{APP_VERSION}"
    _same(training_runtime(name, NAMESPACE, image), rendered)
    # the chart's settings, as a pod would read them, send the launcher's TrainJob to that runtime
    config = pod_settings(objects[("ConfigMap", f"{FULLNAME}-config")], tmp_path)
    _, job = render_job(config, "trainjob", nodes=2, gpus_per_node=8)
    assert job["spec"]["runtimeRef"] == {"name": name, "apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime"}
    assert job["metadata"]["namespace"] == NAMESPACE
    assert job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["name"] \
        == rendered["spec"]["template"]["spec"]["replicatedJobs"][0]["name"]  # fmt: skip


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.stem)
def test_the_configmap_holds_settings_deepmoney_loads(helm: Path, values: Path, tmp_path: Path) -> None:
    config_map = next(o for o in _render(helm, "-f", str(values)) if o["kind"] == "ConfigMap")
    (tmp_path / "deepmoney.yaml").write_text(config_map["data"]["deepmoney.yaml"])
    config = load_config(tmp_path / "deepmoney.yaml")  # extra="forbid": a misspelt setting fails here
    assert config.launch.namespace == NAMESPACE  # jobs go where the pipeline's Role lets them


# --- NetworkPolicies, evaluated -----------------------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        operator, key, values = expression["operator"], expression["key"], expression.get("values", [])
        present = key in labels
        if (operator == "In" and labels.get(key) not in values) or (operator == "NotIn" and labels.get(key) in values):
            return False
        if (operator == "Exists" and not present) or (operator == "DoesNotExist" and present):
            return False
    return True


def _allowed(policies: list[dict[str, Any]], source: dict[str, str], target: dict[str, str], port: int) -> bool:
    """Whether a pod labelled `source` may open `port` on a pod labelled `target` (both in the release namespace)."""

    def rule_lets(rule: dict[str, Any], peer_labels: dict[str, str], key: str) -> bool:
        ports = rule.get("ports")
        if ports and not any(p.get("port") in (None, port) for p in ports):
            return False
        peers = rule.get(key)
        if not peers:
            return True
        return any("podSelector" in p and "namespaceSelector" not in p and _selects(p["podSelector"], peer_labels)
                   for p in peers)  # fmt: skip

    def passes(direction: str, pod: dict[str, str], peer: dict[str, str], key: str) -> bool:
        applying = [p["spec"] for p in policies
                    if direction in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], pod)]  # fmt: skip
        return not applying or any(rule_lets(r, peer, key) for p in applying for r in p.get(direction.lower(), []))

    return passes("Egress", source, target, "to") and passes("Ingress", target, source, "from")


def _pod(obj: dict[str, Any], **kserve: str) -> dict[str, str]:
    """A pod's labels as KServe gives them: the object's labels plus its own."""
    return {**obj["metadata"]["labels"], **kserve}


def test_the_network_policies_let_through_only_the_chain(helm: Path, tmp_path: Path) -> None:
    objects = _render(helm, "-f", str(CHART / "ci" / "gpu-tp8-values.yaml"))
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    found = _by_name(objects)
    graph = found[("InferenceGraph", FULLNAME)]
    router = _pod(graph, **{"serving.kserve.io/inferencegraph": FULLNAME})
    steps = {s: _pod(found[("InferenceService", f"{FULLNAME}-{s}")],
                     **{"serving.kserve.io/inferenceservice": f"{FULLNAME}-{s}"})
             for s in ("intake", "sectors", "method", "data", "analysis")}  # fmt: skip
    llm_obj = found[("InferenceService", f"{FULLNAME}-llm")]
    llm = _pod(llm_obj, **{"serving.kserve.io/inferenceservice": f"{FULLNAME}-llm"})
    mlflow = found[("Deployment", f"{FULLNAME}-mlflow")]["spec"]["template"]["metadata"]["labels"]
    job = render_job(pod_settings(found[("ConfigMap", f"{FULLNAME}-config")], tmp_path), "pytorchjob", nodes=2,
                     gpus_per_node=8)[1]  # fmt: skip
    trainer = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"]
    pipeline_task = {"pipelines.kubeflow.org/v2_component": "true", "pipeline/runid": "r1"}
    stranger = {"app": "notebook"}
    for step in steps.values():
        assert _allowed(policies, router, step, 8080)
        assert not _allowed(policies, stranger, step, 8080) and not _allowed(policies, llm, step, 8080)
        assert _allowed(policies, step, llm, 8080)
        assert not _allowed(policies, step, mlflow, 5000)  # the chain never writes to the registry
    assert not _allowed(policies, router, llm, 8080) and not _allowed(policies, stranger, llm, 8080)
    assert _allowed(policies, llm, llm, 6379)  # head and workers of a multi-node LLM talk among themselves
    assert _allowed(policies, trainer, mlflow, 5000) and _allowed(policies, pipeline_task, mlflow, 5000)
    assert not _allowed(policies, stranger, mlflow, 5000) and not _allowed(policies, trainer, mlflow, 22)

    # the steps' egress: DNS and the LLM; the market database for data and analysis; the object store for the intake
    def egress_ports(step: str) -> set[int]:
        return {rule["ports"][0]["port"] for p in policies if "Egress" in p["spec"]["policyTypes"]
                and _selects(p["spec"]["podSelector"], steps[step]) for rule in p["spec"]["egress"]}  # fmt: skip

    assert {s: egress_ports(s) for s in steps} == {"intake": {53, 8080, 9000}, "sectors": {53, 8080},
                                                   "method": {53, 8080}, "data": {53, 8080, 5432},
                                                   "analysis": {53, 8080, 5432}}  # fmt: skip
    assert not _allowed(policies, steps["sectors"], stranger, 443)


def test_serving_values_that_cannot_work_are_refused(helm: Path) -> None:
    cases = [
        (["--set", "serving.enabled=true"], "serving.llm.modelUri is required"),
        (["--set", "serving.enabled=true", "--set", "serving.llm.modelUri=ftp://x/y"], "/serving/llm/modelUri"),
        (["--set", "serving.enabled=true", "--set", "serving.llm.modelUri=s3://m/c", "--set", "serving.llm.nodes=2"],
         "ReadWriteMany PVC"),
        (["--set", "serving.enabled=true", "--set", "serving.llm.modelUri=pvc://m/c", "--set", "serving.llm.nodes=2",
          "--set", "serving.llm.runtime.create=namespaced"], "one node only"),
        (["--set", "serving.enabled=true", "--set", "serving.llm.modelUri=s3://m/c", "--set",
          "serving.intake.enabled=true"], "serving.intake.modelUri is required"),
        (["--set", "serving.llm.shmSize=16G"], "/serving/llm/shmSize"),
        (["--set", "training.runtime.create=true"], "needs pipeline.trainingApi trainjob"),
        (["--set", "config.launch.namespace=other"], "release namespace ml only"),
    ]  # fmt: skip
    for args, message in cases:
        result = _helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
