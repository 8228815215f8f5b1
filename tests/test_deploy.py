"""The pipeline's deploy step against the Kubernetes API emulator, with a fake KServe controller, and a real chain.

`serve render`'s objects are applied with the real Kubernetes client over HTTP on loopback (created, then
replaced on a second deploy), waited on until a fake controller marks them Ready, and the smoke request
goes to a real chain server (the KServe ModelServer in this process, its LLM a scripted OpenAI server).
"""

from __future__ import annotations

from typing import Any

import pytest

from deepmoney.config import load_config
from deepmoney.llm.scripted_server import ScriptedOpenAIServer
from deepmoney.pipeline.deploy import DeployFailed, apply_objects, plural_of, smoke, wait_ready
from deepmoney.serving import manifests as m
from deepmoney.serving.client import chain_url
from tests.kube_emulator import FakeController, KubeEmulator, condition, kube_fixture  # noqa: F401

NS = "analysts"
LLM = m.LLMSpec("s3://models/deepmoney/3", gpus=1, namespace=NS, attention_heads=8, kv_heads=8)
STEPS = m.StepSpec(image="ghcr.io/deepmoney/deepmoney:0.1.0", llm_url=m.llm_url(LLM), namespace=NS)


def _objects() -> list[dict[str, Any]]:
    return m.render(LLM, STEPS)


def _serve_kserve(kube: KubeEmulator) -> None:
    kube.register("serving.kserve.io/v1beta1", "inferenceservices", "InferenceService", subresources=("status",))
    kube.register("serving.kserve.io/v1alpha1", "inferencegraphs", "InferenceGraph", subresources=("status",))


def _ready_later(kube: KubeEmulator, obj: dict[str, Any], delay: float, ready: dict | None = None) -> FakeController:
    name = obj["metadata"]["name"]
    status = ready or {"conditions": [condition("Ready")], "url": f"http://{name}.{NS}.svc.cluster.local"}
    return FakeController(kube, plural_of(obj), NS, name, [(delay, lambda k: k.set_status(plural_of(obj), NS, name,
                                                                                            status))])  # fmt: skip


def test_deploy_applies_waits_for_ready_and_a_second_deploy_replaces(kube: KubeEmulator) -> None:
    _serve_kserve(kube)
    objects = _objects()
    controllers = [_ready_later(kube, obj, 0.1 + 0.05 * i) for i, obj in enumerate(objects)]
    for controller in controllers:
        controller.start()
    done = apply_objects(kube.api_client(), objects, NS)
    assert [d["action"] for d in done] == ["created"] * len(objects)
    assert [d["name"] for d in done] == [o["metadata"]["name"] for o in objects]
    urls = wait_ready(kube.api_client(), objects, NS, timeout=30, poll=0.05)
    for controller in controllers:
        controller.join()
    graph = next(o for o in objects if o["kind"] == "InferenceGraph")["metadata"]["name"]
    assert urls[graph] == f"http://{graph}.{NS}.svc.cluster.local"
    stored = kube.get("inferenceservices", NS, objects[0]["metadata"]["name"])
    assert stored["spec"] == objects[0]["spec"]
    before = stored["metadata"]["resourceVersion"]
    again = apply_objects(kube.api_client(), objects, NS)
    assert {d["action"] for d in again} == {"replaced"}
    assert kube.get("inferenceservices", NS, objects[0]["metadata"]["name"])["metadata"]["resourceVersion"] != before
    assert len(kube.list_objects("inferenceservices", NS)) == sum(o["kind"] == "InferenceService" for o in objects)


def test_a_failed_service_and_one_never_ready_are_reported_in_one_line(kube: KubeEmulator) -> None:
    _serve_kserve(kube)
    objects = _objects()
    failing = {"conditions": [condition("Ready", "False", reason="RevisionFailed",
                                        message="storage-initializer: s3://models/deepmoney/3 not found")]}  # fmt: skip
    with _ready_later(kube, objects[0], 0.1, failing):
        apply_objects(kube.api_client(), objects, NS)
        with pytest.raises(DeployFailed, match=r"InferenceService analysts/deepmoney-llm failed: RevisionFailed: "
                                               r"storage-initializer") as caught:  # fmt: skip
            wait_ready(kube.api_client(), objects, NS, timeout=30, poll=0.05)
    assert "\n" not in str(caught.value)


def test_a_service_never_ready_is_reported_after_the_timeout(kube: KubeEmulator) -> None:
    _serve_kserve(kube)
    objects = _objects()
    apply_objects(kube.api_client(), objects, NS)
    with pytest.raises(DeployFailed, match=r"not Ready after 0 s: InferenceService deepmoney-llm") as caught:
        wait_ready(kube.api_client(), objects, NS, timeout=0.2, poll=0.05)
    assert "\n" not in str(caught.value) and "kubectl describe" in str(caught.value)


def test_transient_api_failures_are_retried_and_a_refusal_is_not(kube: KubeEmulator) -> None:
    _serve_kserve(kube)
    objects = _objects()
    kube.fail_next("POST", "inferenceservices", 503, 2)
    assert apply_objects(kube.api_client(), objects[:1], NS)[0]["action"] == "created"
    kube.fail_next("PUT", "inferenceservices", 422, 1, message="spec.predictor: Invalid value")
    with pytest.raises(DeployFailed, match=r"the cluster refused InferenceService analysts/deepmoney-llm: 422"):
        apply_objects(kube.api_client(), objects[:1], NS)


def test_the_smoke_request_needs_all_three_steps_answered() -> None:
    from deepmoney.serving.server import BackgroundServer, ServeOptions
    from tests.test_serving import analyst

    with ScriptedOpenAIServer(responder=analyst, models=("analyst",)) as llm:
        options = ServeOptions(config=load_config(), llm=f"{llm.base_url}#analyst", port=0)
        with BackgroundServer(options) as server:
            answered = smoke(chain_url(server.url), timeout=60)
            assert answered["status"] == 200 and answered["sectors"]
            with pytest.raises(DeployFailed, match=r"did not answer the smoke request \(404"):
                smoke(server.url + "/v1/models/nothing:predict", timeout=60)


@pytest.mark.integration
def test_the_deploy_stage_serves_the_registered_champion(kube: KubeEmulator, mlflow_server: str, tmp_path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """stages.deploy end to end: the champion's storage URI from a real MLflow registry, `serve render`'s objects
    applied through a kubeconfig to the emulator, Ready from the fake controller, the smoke request to a real chain
    (the graph's status.url)."""
    import yaml
    from mlflow import MlflowClient

    from deepmoney.pipeline import stages
    from deepmoney.serving.render import render_objects
    from deepmoney.serving.server import BackgroundServer, ServeOptions
    from tests.test_serving import analyst

    _serve_kserve(kube)
    name = "deepmoney-deployed"
    client = MlflowClient(mlflow_server)
    client.create_registered_model(name)
    for version in (1, 2):
        client.create_model_version(name, source=f"s3://models/deepmoney/{version}")
    client.set_registered_model_alias(name, "champion", "2")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": kube.url}}],
        "users": [{"name": "tester", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester", "namespace": NS}}],
    }))  # fmt: skip
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    overrides = {"launch": {"kubeconfig": str(kubeconfig), "poll_seconds": 0.05}}
    with ScriptedOpenAIServer(responder=analyst, models=("analyst",)) as llm:
        options = ServeOptions(config=load_config(), llm=f"{llm.base_url}#analyst", port=0)
        with BackgroundServer(options) as chain:
            expected = render_objects(model_uri="s3://models/deepmoney/2", gpus=1, nodes=None, image=None,
                                      namespace=NS, model_config=None, kind="inferenceservice",
                                      market_data_secret=None, served_model_name="deepmoney")  # fmt: skip
            controllers = []
            for obj in expected:
                ready = {"conditions": [condition("Ready")]}
                if obj["kind"] == "InferenceGraph":
                    ready["url"] = chain_url(chain.url)
                controllers.append(FakeController(kube, plural_of(obj), NS, obj["metadata"]["name"],
                                                  [(0.05, lambda k, o=obj, r=ready: k.set_status(
                                                      plural_of(o), NS, o["metadata"]["name"], r))],
                                                  appear_timeout=120).start())  # fmt: skip
            result = stages.deploy(name, NS, gpus=1, timeout=120, overrides=overrides)
            for controller in controllers:
                controller.join()
    assert result["model_uri"] == "s3://models/deepmoney/2"  # the champion's weights, not version 1's
    assert result["graph_url"] == chain_url(chain.url) and result["smoke"]["status"] == 200
    assert [a["name"] for a in result["applied"]] == [o["metadata"]["name"] for o in expected]
    for obj in expected:
        assert kube.get(plural_of(obj), NS, obj["metadata"]["name"])["spec"] == obj["spec"]
