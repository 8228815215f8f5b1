"""The KServe objects that serve the chain: rendered, checked against the upstream CRDs, refused when inconsistent."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from deepmoney.errors import UserError
from deepmoney.kube import to_yaml
from deepmoney.serving import manifests as m
from tests import crd_schema
from tests.crd_schema import needs_crds

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "kserve"
LLM_URL = "http://deepmoney-llm-predictor.ml.svc.cluster.local/openai/v1"
STEPS = m.StepSpec(image="ghcr.io/deepmoney/deepmoney:0.1.0", llm_url=LLM_URL, namespace="ml")
STEPS_WITH_DB = m.StepSpec(image="ghcr.io/deepmoney/deepmoney:0.1.0", llm_url=LLM_URL, market_data_secret="market-db")
WITH_INTAKE = m.StepSpec(image="ghcr.io/deepmoney/deepmoney:0.1.0", llm_url=LLM_URL, namespace="ml",
                         intake_model_uri="s3://models/deepmoney-intake/1")  # fmt: skip

ONE_GPU = m.LLMSpec("s3://models/deepmoney/champion", gpus=1, namespace="ml")
DEEPSEEK_67B = m.LLMSpec("s3://models/deepmoney/champion", gpus=8, attention_heads=64, kv_heads=8)
TWO_NODES = m.LLMSpec("pvc://deepmoney-models/champion", gpus=16, nodes=2, attention_heads=64, kv_heads=8)


def _gpus(resources: dict) -> tuple[str, str]:
    return resources["requests"]["nvidia.com/gpu"], resources["limits"]["nvidia.com/gpu"]


def _llm(objects: list[dict]) -> dict:
    (llm,) = [o for o in objects if o["metadata"]["labels"]["app.kubernetes.io/component"] == "llm"]
    return llm


# --- every rendering validates against the CRDs ----------------------------------------------------


@needs_crds
@pytest.mark.parametrize(
    ("llm", "steps", "kind"),
    [
        (ONE_GPU, STEPS, "inferenceservice"),
        (DEEPSEEK_67B, STEPS_WITH_DB, "inferenceservice"),
        (TWO_NODES, STEPS, "inferenceservice"),
        (DEEPSEEK_67B, STEPS, "llminferenceservice"),
        (TWO_NODES, STEPS_WITH_DB, "llminferenceservice"),
        (DEEPSEEK_67B, WITH_INTAKE, "inferenceservice"),
    ],
    ids=["1gpu", "8gpu-67b", "2nodes", "llmisvc-8gpu", "llmisvc-2nodes", "with-intake"],
)
def test_every_object_matches_its_crd(llm: m.LLMSpec, steps: m.StepSpec, kind: str) -> None:
    objects = m.render(llm, steps, kind)
    services = len(steps.steps())
    assert [o["kind"] for o in objects][-services - 1 :] == ["InferenceService"] * services + ["InferenceGraph"]
    for obj in objects:
        crd_schema.validate(obj)


@needs_crds
def test_namespaced_serving_runtime_matches_its_crd() -> None:
    objects = m.render(ONE_GPU, STEPS, with_runtime=True)
    runtime = objects[0]
    crd_schema.validate(runtime)
    assert runtime["kind"] == "ServingRuntime" and runtime["metadata"]["namespace"] == "ml"
    # Named like the ClusterServingRuntime, so that the InferenceService's `runtime` finds this one first.
    assert runtime["metadata"]["name"] == objects[1]["spec"]["predictor"]["model"]["runtime"]
    assert runtime["spec"]["supportedModelFormats"][0]["name"] == "huggingface"
    assert runtime["spec"]["volumes"] == [{"name": "devshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]


def _reference_objects() -> list:
    if not REFERENCE.is_dir():
        return []
    return [
        pytest.param(doc, id=f"{path.name}:{doc['kind']}:{doc['metadata']['name']}")
        for path in sorted(REFERENCE.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc
    ]


@needs_crds
@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"the KServe reference samples are not at {REFERENCE}")
@pytest.mark.parametrize("obj", _reference_objects())
def test_the_validator_accepts_upstream_objects(obj: dict) -> None:
    crd_schema.validate(obj)


@needs_crds
def test_the_validator_rejects_a_misspelt_field() -> None:
    isvc = m.llm_inference_service(DEEPSEEK_67B)
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["modle"] = bad["spec"]["predictor"].pop("model")
    with pytest.raises(AssertionError, match=r"spec\.predictor: .*'modle' was unexpected"):
        crd_schema.validate(bad)
    deep = copy.deepcopy(isvc)
    deep["spec"]["predictor"]["model"]["resources"]["limit"] = deep["spec"]["predictor"]["model"]["resources"].pop(
        "limits"
    )
    with pytest.raises(AssertionError, match=r"spec\.predictor\.model\.resources: .*'limit' was unexpected"):
        crd_schema.validate(deep)


@needs_crds
def test_the_validator_rejects_wrong_types_bad_names_and_unknown_versions() -> None:
    isvc = m.llm_inference_service(TWO_NODES)
    wrong_type = copy.deepcopy(isvc)
    wrong_type["spec"]["predictor"]["workerSpec"]["tensorParallelSize"] = "8"
    with pytest.raises(AssertionError, match=r"spec\.predictor\.workerSpec\.tensorParallelSize: '8' is not of type"):
        crd_schema.validate(wrong_type)
    bad_name = copy.deepcopy(isvc)
    bad_name["metadata"]["name"] = "DeepMoney_LLM"
    with pytest.raises(AssertionError, match="not a DNS-1123 name"):
        crd_schema.validate(bad_name)
    typo = copy.deepcopy(isvc)
    typo["metadata"]["lables"] = typo["metadata"].pop("labels")
    with pytest.raises(AssertionError, match="'lables' is not an ObjectMeta field"):
        crd_schema.validate(typo)
    graph = m.inference_graph(STEPS)
    graph["spec"]["nodes"]["root"]["steps"][1]["dependency"] = "Strict"
    with pytest.raises(AssertionError, match=r"steps\[1\]\.dependency: 'Strict' is not one of"):
        crd_schema.validate(graph)
    with pytest.raises(AssertionError, match="not a served version"):
        crd_schema.validate({**isvc, "apiVersion": "serving.kserve.io/v1alpha9"})


# --- the LLM -----------------------------------------------------------------------------------------


def test_one_gpu_inference_service() -> None:
    isvc = m.llm_inference_service(ONE_GPU)
    assert isvc["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": "Standard"}
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "huggingface"}
    assert model["runtime"] == "kserve-huggingfaceserver"
    assert model["storageUri"] == "s3://models/deepmoney/champion"
    assert model["args"] == [
        "--model_name=deepmoney",
        "--backend=vllm",
        "--tensor-parallel-size=1",
        "--max_model_len=4096",
    ]
    assert _gpus(model["resources"]) == ("1", "1")
    assert model["resources"]["requests"] == model["resources"]["limits"]
    assert model["volumeMounts"] == [{"name": "devshm", "mountPath": "/dev/shm"}]
    assert predictor["volumes"] == [{"name": "devshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]
    assert "workerSpec" not in predictor


def test_probes_allow_the_weights_to_load() -> None:
    model = m.llm_inference_service(DEEPSEEK_67B)["spec"]["predictor"]["model"]
    startup = model["startupProbe"]
    assert startup["httpGet"] == {"path": "/v2/models/deepmoney/ready", "port": 8080}
    assert model["readinessProbe"]["httpGet"] == {"path": "/v2/models/deepmoney/ready", "port": 8080}
    assert model["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    allowed = startup["periodSeconds"] * startup["failureThreshold"]
    assert allowed >= m.startup_allowance_s(130.0) >= 130 / m.LOAD_GB_PER_S
    bigger = m.llm_inference_service(m.LLMSpec("s3://b/m", gpus=8, model_size_gb=400))["spec"]["predictor"]["model"]
    assert bigger["startupProbe"]["failureThreshold"] > startup["failureThreshold"]


def test_deepseek_67b_shape_takes_tensor_parallel_8() -> None:
    model = m.llm_inference_service(DEEPSEEK_67B)["spec"]["predictor"]["model"]
    assert "--tensor-parallel-size=8" in model["args"]
    assert _gpus(model["resources"]) == ("8", "8")
    # Host memory covers the weights' page cache and the memory-backed /dev/shm, which counts against the limit.
    assert model["resources"]["limits"]["memory"] == "162Gi"


def test_two_nodes_use_the_multinode_runtime_and_worker_spec() -> None:
    isvc = m.llm_inference_service(TWO_NODES)
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    assert annotations["serving.kserve.io/autoscalerClass"] == "none"
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == "kserve-huggingfaceserver-multinode"
    assert model["storageUri"] == "pvc://deepmoney-models/champion"
    # The runtime hands workerSpec's sizes to vLLM; a flag or an env var here would clash with it.
    assert not any(a.startswith(("--tensor-parallel-size", "--pipeline-parallel-size")) for a in model["args"])
    assert "env" not in model
    worker = predictor["workerSpec"]
    assert (worker["tensorParallelSize"], worker["pipelineParallelSize"]) == (8, 2)
    (container,) = worker["containers"]
    assert container["name"] == "worker-container"
    assert _gpus(container["resources"]) == ("8", "8") == _gpus(model["resources"])
    assert worker["volumes"] == predictor["volumes"] == [m._shm_volume("shm", "16Gi")]
    # The runtime's probes are exec health checks: only their timing is set, never a second handler.
    for probe in (model["startupProbe"], container["startupProbe"]):
        assert not {"httpGet", "exec", "tcpSocket", "grpc"} & set(probe)
        assert probe["periodSeconds"] * probe["failureThreshold"] >= m.startup_allowance_s(130.0)


def test_an_unusual_gpu_resource_is_declared_for_multi_node() -> None:
    spec = m.LLMSpec("pvc://models/champion", gpus=4, nodes=2, gpu_resource="nvidia.com/mig-3g.40gb")
    isvc = m.llm_inference_service(spec)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/gpu-resource-types"] == '["nvidia.com/mig-3g.40gb"]'
    assert isvc["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/mig-3g.40gb"] == "2"


def test_llm_inference_service_single_node() -> None:
    llm = m.llm_inference_service_v1alpha2(DEEPSEEK_67B)
    assert llm["apiVersion"] == "serving.kserve.io/v1alpha2" and llm["kind"] == "LLMInferenceService"
    spec = llm["spec"]
    assert spec["model"] == {"uri": "s3://models/deepmoney/champion", "name": "deepmoney"}
    assert spec["parallelism"] == {"tensor": 8}
    assert spec["replicas"] == 1 and "scaling" not in spec  # the CRD makes them exclusive
    (main,) = spec["template"]["containers"]
    assert main["name"] == "main"
    assert _gpus(main["resources"]) == ("8", "8")
    assert {"name": "VLLM_ADDITIONAL_ARGS", "value": "--max-model-len 4096"} in main["env"]  # no max_num_seqs set
    assert "worker" not in spec


def test_llm_inference_service_across_nodes() -> None:
    spec = m.llm_inference_service_v1alpha2(TWO_NODES)["spec"]
    assert spec["parallelism"] == {"tensor": 8, "pipeline": 2}
    (worker,) = spec["worker"]["containers"]
    assert worker["name"] == "main" and _gpus(worker["resources"]) == ("8", "8")
    # Every LeaderWorkerSet pod fetches the weights itself, so object storage works too.
    s3 = m.llm_inference_service_v1alpha2(m.LLMSpec("s3://b/m", gpus=16, nodes=2))
    assert s3["spec"]["model"]["uri"] == "s3://b/m"


# --- the steps and the graph ------------------------------------------------------------------------


def test_one_step_service_per_step() -> None:
    services = m.step_inference_services(STEPS)
    assert [s["metadata"]["name"] for s in services] == [f"deepmoney-{s}" for s in m.STEPS]
    for step, isvc in zip(m.STEPS, services, strict=True):
        (container,) = isvc["spec"]["predictor"]["containers"]
        assert container["name"] == "kserve-container"
        assert container["image"] == "ghcr.io/deepmoney/deepmoney:0.1.0"
        assert container["command"] == [
            "deepmoney",
            "serve",
            "--steps",
            step,
            "--llm",
            f"{LLM_URL}#deepmoney",
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
        ]
        assert container["readinessProbe"]["httpGet"] == {"path": f"/v2/models/{step}/ready", "port": 8080}
        assert set(container["resources"]) == {"requests", "limits"}
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True and isinstance(security["runAsUser"], int)
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
        assert isvc["spec"]["predictor"]["volumes"] == [{"name": "tmp", "emptyDir": {}}]
        assert all(e["name"] != "DEEPMONEY_MARKETDATA__URL" for e in container["env"])


def test_the_market_data_url_comes_from_the_secret() -> None:
    for isvc in m.step_inference_services(STEPS_WITH_DB):
        env = {e["name"]: e for e in isvc["spec"]["predictor"]["containers"][0]["env"]}
        if isvc["metadata"]["name"] in ("deepmoney-data", "deepmoney-analysis"):  # analysis reads its history
            url = env["DEEPMONEY_MARKETDATA__URL"]
            assert url == {
                "name": "DEEPMONEY_MARKETDATA__URL",
                "valueFrom": {"secretKeyRef": {"name": "market-db", "key": "url"}},
            }
            assert "value" not in url
        else:
            assert "DEEPMONEY_MARKETDATA__URL" not in env


def test_the_graph_chains_the_steps_in_order() -> None:
    graph = m.inference_graph(STEPS)
    assert graph["apiVersion"] == "serving.kserve.io/v1alpha1" and graph["kind"] == "InferenceGraph"
    root = graph["spec"]["nodes"]["root"]
    assert root["routerType"] == "Sequence"
    assert [s["name"] for s in root["steps"]] == ["sectors", "method", "data", "analysis"]
    assert [s["data"] for s in root["steps"]] == ["$request", "$response", "$response", "$response"]
    assert {s["dependency"] for s in root["steps"]} == {"Hard"}
    assert [s["serviceUrl"] for s in root["steps"]] == [
        f"http://deepmoney-{s}-predictor.ml.svc.cluster.local/v1/models/{s}:predict" for s in m.STEPS
    ]
    assert all("serviceName" not in s for s in root["steps"])
    assert graph["spec"]["routerTimeouts"] == {
        "serverRead": 600,
        "serverWrite": 600,
        "serverIdle": 600,
        "serviceClient": 600,
    }
    quick = m.inference_graph(m.StepSpec(image="i:1", llm_url=LLM_URL, router_timeout_s=120, prefix="dm"))
    assert set(quick["spec"]["routerTimeouts"].values()) == {120}
    assert quick["spec"]["nodes"]["root"]["steps"][0]["serviceUrl"] == (
        "http://dm-sectors-predictor.default.svc.cluster.local/v1/models/sectors:predict"
    )


def test_the_graph_with_intake_starts_with_the_classifier() -> None:
    graph = m.inference_graph(WITH_INTAKE)
    steps = graph["spec"]["nodes"]["root"]["steps"]
    assert [s["name"] for s in steps] == ["intake", "sectors", "method", "data", "analysis"]
    assert [s["data"] for s in steps] == ["$request"] + ["$response"] * 4
    assert steps[0]["serviceUrl"] == "http://deepmoney-intake-predictor.ml.svc.cluster.local/v1/models/intake:predict"
    (intake,) = [s for s in m.step_inference_services(WITH_INTAKE) if s["metadata"]["name"] == "deepmoney-intake"]
    predictor = intake["spec"]["predictor"]
    assert predictor["maxReplicas"] == 1  # one replica holds the near-duplicate window
    container = predictor["containers"][0]
    assert container["command"][:6] == ["deepmoney", "serve", "--steps", "intake", "--intake-model", "/mnt/models"]
    assert "--llm" not in container["command"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["STORAGE_URI"] == "s3://models/deepmoney-intake/1"  # KServe's storage initializer fetches it
    with pytest.raises(UserError, match="scheme"):
        m.inference_graph(m.StepSpec(image="i:1", llm_url=LLM_URL, intake_model_uri="/local/dir"))


def test_labels_and_namespaces() -> None:
    for obj in m.render(ONE_GPU, STEPS):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "deepmoney"
        assert labels["app.kubernetes.io/part-of"] == "deepmoney"
        assert obj["metadata"]["namespace"] == "ml"
    components = [o["metadata"]["labels"]["app.kubernetes.io/component"] for o in m.render(TWO_NODES, STEPS_WITH_DB)]
    assert components == ["llm", "step", "step", "step", "step", "graph"]
    assert all("namespace" not in o["metadata"] for o in m.render(TWO_NODES, STEPS_WITH_DB))


def test_to_yaml_round_trips() -> None:
    objects = m.render(TWO_NODES, STEPS_WITH_DB)
    text = to_yaml(objects)
    assert text.count("\n---\n") == len(objects) - 1
    assert list(yaml.safe_load_all(text)) == objects
    assert text.startswith("apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n")  # not sorted


def test_router_headers_note_is_the_configmap_change() -> None:
    note = m.router_headers_note()
    assert m.REQUEST_ID_HEADER == "x-request-id"
    assert "inferenceservice-config" in note
    router = json.loads(yaml.safe_load(note)["data"]["router"])
    assert router["headers"] == {"propagate": ["x-request-id"]}


def test_the_llm_url_is_the_predictor_service() -> None:
    assert m.llm_url(ONE_GPU) == "http://deepmoney-llm-predictor.ml.svc.cluster.local/openai/v1"
    assert m.llm_url(DEEPSEEK_67B) == "http://deepmoney-llm-predictor.default.svc.cluster.local/openai/v1"


# --- refusals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpus", "nodes", "heads", "kv", "expected"),
    [(1, 1, None, None, (1, 1)), (8, 1, 64, 8, (8, 1)), (16, 2, 64, 8, (8, 2)), (16, 1, 64, 8, (16, 1))],
)
def test_tensor_parallel_sizes(gpus: int, nodes: int, heads: int | None, kv: int | None, expected: tuple) -> None:
    # TP 16 over 8 key-value heads is fine: vLLM replicates each KV head on two ranks.
    assert m.tensor_parallel(gpus, nodes, heads, kv) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            m.LLMSpec("s3://b/m", gpus=12, nodes=8),
            r"--gpus 12 over --nodes 8: GPUs must divide evenly .* multiple of 8",
        ),
        (m.LLMSpec("s3://b/m", gpus=3, attention_heads=64), r"tensor-parallel size 3 .* 64 attention heads"),
        (m.LLMSpec("s3://b/m", gpus=8, attention_heads=48, kv_heads=12), r"tensor-parallel size 8 .* 12 key-value"),
        (m.LLMSpec("s3://b/m", gpus=16, nodes=2), r"--nodes 2 with s3://b/m: .*ReadWriteMany PVC .*pvc://"),
        (m.LLMSpec("s3://b/m", gpus=0), r"--gpus 0: serving needs at least one GPU"),
        (m.LLMSpec("s3://b/m", gpus=1, nodes=0), r"--nodes 0: serving needs at least one node"),
        (m.LLMSpec("ftp://host/m", gpus=1), r"model URI 'ftp://host/m': unknown scheme.*s3://, gs://, pvc://, hf://"),
        (m.LLMSpec("/models/champion", gpus=1), r"unknown scheme"),
        (m.LLMSpec("", gpus=1), r"the model URI is empty"),
        (m.LLMSpec("s3://", gpus=1), r"names no bucket"),
        (m.LLMSpec("pvc://Bad_Claim/m", gpus=1), r"not a valid PVC name"),
        (m.LLMSpec("s3://b/m", gpus=1, name="DeepMoney"), r"LLM name 'DeepMoney'"),
        (m.LLMSpec("s3://b/m", gpus=1, shm_size="lots"), r"--shm-size 'lots': not a Kubernetes quantity"),
    ],
)
def test_bad_llm_settings_are_refused_in_one_line(spec: m.LLMSpec, message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        m.llm_inference_service(spec)
    assert "\n" not in str(caught.value)


def test_valid_sizes_are_suggested() -> None:
    with pytest.raises(UserError, match=r"among 1, 2, 4, 8, 16, 32, 64$"):
        m.tensor_parallel(3, 1, 64, 8)


def test_other_refusals() -> None:
    with pytest.raises(UserError, match="one node only"):
        m.serving_runtime(TWO_NODES)
    with pytest.raises(UserError, match="--kind 'deployment'"):
        m.render(ONE_GPU, STEPS, "deployment")
    with pytest.raises(UserError, match="use the same served model name"):
        m.render(ONE_GPU, m.StepSpec(image="i:1", llm_url=LLM_URL, served_model_name="other"))
    with pytest.raises(UserError, match="http"):
        m.step_inference_services(m.StepSpec(image="i:1", llm_url="deepmoney-llm:80"))
    with pytest.raises(UserError, match="step name"):
        m.inference_graph(m.StepSpec(image="i:1", llm_url=LLM_URL, prefix="Deep_Money"))


@needs_crds
@pytest.mark.parametrize(
    "flags",
    [
        ("--gpus", "8"),
        ("--gpus", "16", "--nodes", "2"),
        ("--gpus", "8", "--kind", "llminferenceservice", "--market-data-secret", "market-db"),
        ("--gpus", "8", "--intake-model-uri", "s3://models/deepmoney-intake/1"),
    ],
    ids=["tp8", "two-nodes", "llmisvc", "intake"],
)
def test_serve_render_prints_valid_objects(tmp_path: Path, flags: tuple[str, ...]) -> None:
    from tests.conftest import run_cli

    config = tmp_path / "config.json"
    shape = {"hidden_size": 8192, "intermediate_size": 22016, "num_attention_heads": 64, "num_hidden_layers": 95,
             "num_key_value_heads": 8, "vocab_size": 102400}  # deepseek-llm-67b  # fmt: skip
    config.write_text(json.dumps(shape))
    uri = "pvc://models/deepmoney" if "--nodes" in flags else "s3://models/deepmoney/3"
    result = run_cli("serve", "render", "--model-uri", uri, "--model-config", str(config), "-n", "ml", *flags)
    assert result.returncode == 0, result.stderr
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    kinds = [o["kind"] for o in objects]
    assert kinds.count("InferenceGraph") == 1 and kinds.count("InferenceService") >= 4
    for obj in objects:
        crd_schema.validate(obj)
        assert ":latest" not in json.dumps(obj)
