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
