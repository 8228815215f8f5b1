"""The Kubernetes objects that serve the news-analysis chain on KServe 0.21, as plain dicts.

Pure functions: no Kubernetes client, no I/O. `render` returns, in apply order:

- the LLM, either a `serving.kserve.io/v1beta1` InferenceService on the Hugging Face runtime
  (`kserve-huggingfaceserver`, vLLM backend; `kserve-huggingfaceserver-multinode` when the GPUs span
  nodes) or a `serving.kserve.io/v1alpha2` LLMInferenceService (llm-d's vLLM, set up by KServe's
  well-known LLMInferenceServiceConfigs) — optionally preceded by a namespaced ServingRuntime for
  clusters that lack the ClusterServingRuntime;
- one CPU InferenceService per step of the chain (STEPS), each running `deepmoney serve --steps <step>`
  in the project image and calling the LLM over its OpenAI API; with an intake classifier, first an
  `intake` InferenceService (its `STORAGE_URI` downloaded to /mnt/models by KServe's storage
  initializer; one replica, which holds the near-duplicate window);
- a `serving.kserve.io/v1alpha1` InferenceGraph that chains the steps in order: a Sequence whose
  first step is the intake when there is one. The intake answers subjective or repeated news with
  the payload marked `stopped`, which every later step passes on untouched (a 200 with the reason),
  so one Sequence needs no Switch node and a graph without the intake is the same graph.

KServe facts these objects rely on (checked against the CRDs in ../shared/crds and upstream sources):

- Every object asks for the `Standard` deployment mode (`serving.kserve.io/deploymentMode`; the
  deprecated name is `RawDeployment`): a Deployment and a Service, no Knative. A 130 GB model must not
  scale to zero, and multi-node serving works only in this mode. A predictor's in-cluster address is
  then `http://<name>-predictor.<namespace>.svc.cluster.local` (port 80 to the container's 8080); the
  bare `<name>.<namespace>.svc.cluster.local` exists only in Knative mode.
- The Hugging Face runtime appends the InferenceService's `args` to its own (`--model_name={{.Name}}`),
  and argparse keeps the last value, so `--model_name=<served name>` renames the model; vLLM engine
  flags (`--tensor-parallel-size`) pass through. The server listens on 8080, answers
  `/v2/health/live` and `/v2/models/<name>/ready`, and serves OpenAI under `/openai/v1`.
- Multi-node: `spec.predictor.workerSpec` with `tensorParallelSize` (GPUs per node) and
  `pipelineParallelSize` (nodes); the multinode runtime passes them to vLLM itself and refuses them
  as environment variables. It needs `pvc://` storage on a ReadWriteMany volume (every node reads
  the same weights), the Standard mode and `serving.kserve.io/autoscalerClass: none`.
- LLMInferenceService: `spec.model.uri` / `spec.model.name`, `spec.parallelism.tensor` and
  `spec.parallelism.pipeline` (a `worker` plus `pipeline` selects the pipeline-parallel
  LeaderWorkerSet preset, one pod per node), `spec.replicas` (exclusive with `spec.scaling`), and a
  `template` whose container named `main` is merged into the preset's; extra vLLM flags go in its
  `VLLM_ADDITIONAL_ARGS` variable.
- InferenceGraph: `routerType: Sequence` runs the steps in order; `data: $request` sends the graph's
  input, `data: $response` the previous step's answer; `dependency: Hard` stops the chain at a failed
  step (the default, Soft, passes the failed step's body on); `routerTimeouts` (`serverRead`,
  `serverWrite`, `serverIdle`, `serviceClient`, seconds) replace the router's 60 s defaults. Headers
  reach the steps only if KServe's `inferenceservice-config` ConfigMap lists them (router_headers_note).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from deepmoney import env as deepmoney_env
from deepmoney.errors import UserError
from deepmoney.kube import DNS_SUBDOMAIN, check_label, check_namespace
from deepmoney.models.shape import splits_heads
from deepmoney.serving.payload import INTAKE, REQUEST_ID_HEADER, STEPS

KSERVE_VERSION = "v0.21.0"
GROUP = "serving.kserve.io"

RUNTIME_SINGLE_NODE = "kserve-huggingfaceserver"
RUNTIME_MULTI_NODE = "kserve-huggingfaceserver-multinode"
RUNTIME_PORT = 8080  # the Hugging Face server's HTTP port
STEP_PORT = 8080
MODEL_MOUNT = "/mnt/models"  # where KServe's storage initializer puts a storageUri's files
URI_SCHEMES = ("s3", "gs", "pvc", "hf")
DEPLOYMENT_MODE = "Standard"
MODE_ANNOTATION = f"{GROUP}/deploymentMode"
# GPU resource names KServe's multi-node validation knows; any other must be declared in an annotation.
KSERVE_GPU_RESOURCES = ("nvidia.com/gpu", "intel.com/gpu", "amd.com/gpu", "habana.ai/gaudi")

# Start-up allowance: the server reads every weight once before it answers. 100 MB/s is a
# conservative rate for a network volume or a cold object-store cache; 5 minutes more cover the
# engine (CUDA graphs, NCCL and, across nodes, the Ray cluster). 130 GB -> 300 + 1300 s ≈ 27 min.
LOAD_GB_PER_S = 0.1
STARTUP_BASE_S = 300
PROBE_PERIOD_S = 10

_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_GIB_PER_UNIT = {
    None: 1 / 2**30,
    "Ki": 1 / 2**20,
    "Mi": 1 / 2**10,
    "Gi": 1.0,
    "Ti": 2.0**10,
    "k": 1e3 / 2**30,
    "M": 1e6 / 2**30,
    "G": 1e9 / 2**30,
    "T": 1e12 / 2**30,
}


@dataclass(frozen=True)
class LLMSpec:
    """How to serve the champion model: where its weights are and on how many GPUs."""

    model_uri: str  # s3://..., pvc://..., gs://, hf:// (the champion's folder)
    gpus: int  # total GPUs
    nodes: int = 1
    name: str = "deepmoney-llm"
    namespace: str | None = None
    served_model_name: str = "deepmoney"
    attention_heads: int | None = None  # from the model's config; None = cannot check
    kv_heads: int | None = None
    max_model_len: int = 4096
    max_num_seqs: int | None = None  # sequences vLLM runs at once (the planner's concurrency); None = vLLM's default
    gpu_resource: str = "nvidia.com/gpu"
    shm_size: str = "16Gi"
    model_size_gb: float = 130.0  # sizes the probes' start-up allowance and the host memory
    runtime: str | None = None  # default: kserve-huggingfaceserver, or ...-multinode when nodes > 1
    cpu: str = "8"  # per node
    memory: str | None = None  # per node; None = the node's share of the weights + /dev/shm + 16Gi
    runtime_image: str = f"kserve/huggingfaceserver:{KSERVE_VERSION}-gpu"  # for serving_runtime() only


@dataclass(frozen=True)
class StepSpec:
    """How to run the chain's steps: the project image and the LLM they call."""

    image: str  # the project image, e.g. ghcr.io/deepmoney/deepmoney:<version>
    llm_url: str  # OpenAI base URL of the LLM (see llm_url())
    served_model_name: str = "deepmoney"
    namespace: str | None = None
    market_data_secret: str | None = None  # Secret name holding key "url" (a SQLAlchemy URL); None = embedded data
    prefix: str = "deepmoney"
    router_timeout_s: int = 600  # the whole chain's budget, and each step's
    cpu_request: str = "500m"
    cpu_limit: str = "2"
    memory: str = "2Gi"  # requests = limits
    run_as_user: int = 10001  # numeric, so that the kubelet can enforce runAsNonRoot
    intake_model_uri: str | None = None  # storageUri of the intake classifier: the graph starts with the intake

    def steps(self) -> tuple[str, ...]:
        """The steps served, in the graph's order: the intake first when its classifier is given."""
        return (INTAKE, *STEPS) if self.intake_model_uri else STEPS


# --- checks -------------------------------------------------------------------------------------


def tensor_parallel(gpus: int, nodes: int, attention_heads: int | None, kv_heads: int | None) -> tuple[int, int]:
    """(tensor-parallel size, pipeline-parallel size) = (GPUs per node, nodes); UserError when inconsistent.

    vLLM shards attention heads over the tensor-parallel ranks, so TP must divide the attention
    heads; key-value heads (GQA) are either sharded (TP divides them) or replicated (they divide TP).
    """
    if gpus < 1:
        raise UserError(f"--gpus {gpus}: serving needs at least one GPU; use --gpus 1 or more")
    if nodes < 1:
        raise UserError(f"--nodes {nodes}: serving needs at least one node; use --nodes 1 or more")
    if gpus % nodes:
        raise UserError(
            f"--gpus {gpus} over --nodes {nodes}: GPUs must divide evenly over nodes; use a multiple of {nodes}"
        )
    tp = gpus // nodes
    for what, count in (("attention heads", attention_heads), ("key-value heads", kv_heads)):
        if count is not None and count < 1:
            raise UserError(f"the model's config gives {count} {what}; check its config.json")
    if attention_heads is not None and attention_heads % tp:
        raise UserError(
            f"tensor-parallel size {tp} (--gpus {gpus} / --nodes {nodes}) does not divide the model's "
            f"{attention_heads} attention heads; use a GPU count per node among {_valid_tp(attention_heads, kv_heads)}"
        )
    if kv_heads is not None and kv_heads % tp and tp % kv_heads:
        raise UserError(
            f"tensor-parallel size {tp} (--gpus {gpus} / --nodes {nodes}) and the model's {kv_heads} key-value "
            f"heads: vLLM needs one to divide the other; use a GPU count per node among "
            f"{_valid_tp(attention_heads, kv_heads)}"
        )
    return tp, nodes


def _valid_tp(attention_heads: int | None, kv_heads: int | None) -> str:
    limit = min(attention_heads or 64, 64)
    return ", ".join(str(t) for t in range(1, limit + 1) if splits_heads(t, attention_heads, kv_heads))


def _check_name(value: str, what: str, max_len: int = 53) -> None:
    # 53: "<name>-predictor" must still fit a 63-character Service name.
    check_label(value, what, max_len)


def _uri_scheme(uri: str) -> str:
    if not uri or not uri.strip():
        raise UserError("the model URI is empty: give the champion's folder, e.g. s3://bucket/models/deepmoney")
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in URI_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in URI_SCHEMES)
        raise UserError(f"model URI {uri!r}: unknown scheme; KServe's storage initializer takes {schemes}")
    if not rest.strip("/"):
        raise UserError(f"model URI {uri!r}: names no bucket, claim or repository; add the model's folder")
    if scheme == "pvc":
        claim = rest.split("/", 1)[0]
        if len(claim) > 253 or not DNS_SUBDOMAIN.match(claim):
            raise UserError(f"model URI {uri!r}: {claim!r} is not a valid PVC name; use pvc://<claim>/<path>")
    return scheme


def _check_llm(spec: LLMSpec, *, multi_node_needs_pvc: bool) -> tuple[int, int]:
    tp, pp = tensor_parallel(spec.gpus, spec.nodes, spec.attention_heads, spec.kv_heads)
    scheme = _uri_scheme(spec.model_uri)
    if multi_node_needs_pvc and pp > 1 and scheme != "pvc":
        raise UserError(
            f"--nodes {pp} with {spec.model_uri}: multi-node serving on KServe reads the weights from a "
            f"ReadWriteMany PVC on every node; copy the model to one and use pvc://<claim>/<path>"
        )
    _check_name(spec.name, "LLM name")
    check_namespace(spec.namespace)
    if spec.max_model_len < 1:
        raise UserError(f"--context {spec.max_model_len}: must be at least 1")
    if spec.max_num_seqs is not None and spec.max_num_seqs < 1:
        raise UserError(f"--concurrency {spec.max_num_seqs}: must be at least 1")
    if spec.model_size_gb <= 0:
        raise UserError(f"model size {spec.model_size_gb} GB: must be positive")
    return tp, pp


def _gib(quantity: str, what: str) -> float:
    match = _QUANTITY.match(str(quantity))
    if not match:
        raise UserError(f"{what} {quantity!r}: not a Kubernetes quantity such as 16Gi")
    return float(match.group(1)) * _GIB_PER_UNIT[match.group(2)]


# --- shared pieces ------------------------------------------------------------------------------


def _labels(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "deepmoney",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "deepmoney",
    }


def _metadata(name: str, namespace: str | None, component: str, annotations: dict[str, str] | None = None) -> dict:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = _labels(component)
    if annotations:
        meta["annotations"] = annotations
    return meta


def _http_probe(path: str, port: int, *, period: int, failures: int, timeout: int = 5) -> dict:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _shm_volume(name: str, size: str) -> dict:
    return {"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": size}}


def _cluster_url(name: str, namespace: str | None) -> str:
    return f"http://{name}-predictor.{namespace or 'default'}.svc.cluster.local"


def startup_allowance_s(model_size_gb: float) -> int:
    """Seconds the LLM gets to load before its startup probe gives up (see LOAD_GB_PER_S)."""
    return STARTUP_BASE_S + math.ceil(model_size_gb / LOAD_GB_PER_S)


def llm_url(spec: LLMSpec) -> str:
    """The OpenAI base URL of the LLM InferenceService inside the cluster (what StepSpec.llm_url wants)."""
    return f"{_cluster_url(spec.name, spec.namespace)}/openai/v1"


def step_url(spec: StepSpec, step: str) -> str:
    """Where the graph's router posts one step's request (the v1 predict route of the step's model)."""
    return f"{_cluster_url(f'{spec.prefix}-{step}', spec.namespace)}/v1/models/{step}:predict"


# --- the LLM ------------------------------------------------------------------------------------


def _llm_resources(spec: LLMSpec, gpus_per_node: int) -> dict:
    if spec.memory is not None:
        _gib(spec.memory, "LLM memory")
        memory = spec.memory
    else:
        memory = f"{math.ceil(spec.model_size_gb / spec.nodes + _gib(spec.shm_size, '--shm-size') + 16)}Gi"
    amounts = {"cpu": spec.cpu, "memory": memory, spec.gpu_resource: str(gpus_per_node)}
    return {"requests": dict(amounts), "limits": dict(amounts)}  # GPUs: requests must equal limits


def _llm_annotations(spec: LLMSpec, multi_node: bool) -> dict[str, str]:
    annotations = {MODE_ANNOTATION: DEPLOYMENT_MODE}
    if multi_node:
        annotations[f"{GROUP}/autoscalerClass"] = "none"  # multi-node serving cannot autoscale
        if spec.gpu_resource not in KSERVE_GPU_RESOURCES:
            annotations[f"{GROUP}/gpu-resource-types"] = f'["{spec.gpu_resource}"]'
    return annotations


def _engine_args(spec: LLMSpec, style: str = "kserve") -> list[str]:
    """vLLM's context and concurrency limits: `--max_model_len=N` for KServe's server, `--max-model-len N` for vLLM."""
    limits = {"max_model_len": spec.max_model_len, "max_num_seqs": spec.max_num_seqs}
    if style == "vllm":
        return [f"--{k.replace('_', '-')} {v}" for k, v in limits.items() if v is not None]
    return [f"--{k}={v}" for k, v in limits.items() if v is not None]


def _single_node_model(spec: LLMSpec, tp: int) -> dict:
    failures = math.ceil(startup_allowance_s(spec.model_size_gb) / PROBE_PERIOD_S)
    ready = f"/v2/models/{spec.served_model_name}/ready"
    return {
        "args": [
            f"--model_name={spec.served_model_name}",
            "--backend=vllm",
            f"--tensor-parallel-size={tp}",
            *_engine_args(spec),
        ],
        "resources": _llm_resources(spec, tp),
        "volumeMounts": [{"name": "devshm", "mountPath": "/dev/shm"}],
        # The startup probe holds the others off until the weights are loaded.
        "startupProbe": _http_probe(ready, RUNTIME_PORT, period=PROBE_PERIOD_S, failures=failures),
        "readinessProbe": _http_probe(ready, RUNTIME_PORT, period=10, failures=3),
        "livenessProbe": _http_probe("/v2/health/live", RUNTIME_PORT, period=30, failures=5, timeout=10),
    }


def _startup_timing(model_size_gb: float) -> dict:
    # Multi-node: the runtime's probes are exec health checks (Ray nodes registered, model loaded);
    # a second handler would make the merged probe invalid, so only their timing is set here.
    return {
        "startupProbe": {
            "initialDelaySeconds": 60,
            "periodSeconds": PROBE_PERIOD_S,
            "timeoutSeconds": 30,
            "failureThreshold": math.ceil(startup_allowance_s(model_size_gb) / PROBE_PERIOD_S),
        }
    }


def _multi_node_model(spec: LLMSpec, tp: int) -> dict:
    return {
        # No --tensor-parallel-size: the runtime passes workerSpec's sizes to vLLM itself.
        "args": [f"--model_name={spec.served_model_name}", "--backend=vllm", *_engine_args(spec)],
        "resources": _llm_resources(spec, tp),
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
        **_startup_timing(spec.model_size_gb),
    }


def _worker_spec(spec: LLMSpec, tp: int, pp: int) -> dict:
    return {
        "tensorParallelSize": tp,  # GPUs per node
        "pipelineParallelSize": pp,  # nodes: the head pod plus pp - 1 workers
        "containers": [
            {
                "name": "worker-container",  # the multinode runtime's worker container, merged by name
                "resources": _llm_resources(spec, tp),
                "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
                **_startup_timing(spec.model_size_gb),
            }
        ],
        "volumes": [_shm_volume("shm", spec.shm_size)],
    }


def llm_inference_service(spec: LLMSpec) -> dict:
    """The LLM as a serving.kserve.io/v1beta1 InferenceService on the Hugging Face runtime (vLLM backend)."""
    tp, pp = _check_llm(spec, multi_node_needs_pvc=True)
    multi_node = pp > 1
    runtime = spec.runtime or (RUNTIME_MULTI_NODE if multi_node else RUNTIME_SINGLE_NODE)
    model = {"modelFormat": {"name": "huggingface"}, "runtime": runtime, "storageUri": spec.model_uri}
    model.update(_multi_node_model(spec, tp) if multi_node else _single_node_model(spec, tp))
    predictor: dict[str, Any] = {
        "minReplicas": 1,
        "maxReplicas": 1,
        # Recreate: a rolling update would need a second full set of GPUs while the old pods still run.
        "deploymentStrategy": {"type": "Recreate"},
        "model": model,
        # Same volume names as the upstream runtimes, so that this size limit merges into theirs.
        "volumes": [_shm_volume("shm" if multi_node else "devshm", spec.shm_size)],
    }
    if multi_node:
        predictor["workerSpec"] = _worker_spec(spec, tp, pp)
    return {
        "apiVersion": f"{GROUP}/v1beta1",
        "kind": "InferenceService",
        "metadata": _metadata(spec.name, spec.namespace, "llm", _llm_annotations(spec, multi_node)),
        "spec": {"predictor": predictor},
    }


def _llm_container(spec: LLMSpec, tp: int) -> dict:
    return {
        "name": "main",  # merged by name into the container of KServe's well-known config
        "env": [{"name": "VLLM_ADDITIONAL_ARGS", "value": " ".join(_engine_args(spec, style="vllm"))}],
        "resources": _llm_resources(spec, tp),
    }


def llm_inference_service_v1alpha2(spec: LLMSpec) -> dict:
    """The LLM as a serving.kserve.io/v1alpha2 LLMInferenceService (llm-d's vLLM; a LeaderWorkerSet across nodes)."""
    tp, pp = _check_llm(spec, multi_node_needs_pvc=False)
    parallelism: dict[str, int] = {"tensor": tp}
    llm: dict[str, Any] = {
        "model": {"uri": spec.model_uri, "name": spec.served_model_name},
        "replicas": 1,
        "parallelism": parallelism,
        "template": {
            "containers": [_llm_container(spec, tp)],
            "volumes": [_shm_volume("dshm", spec.shm_size)],  # the presets' /dev/shm volume, resized
        },
        "router": {"route": {}, "gateway": {}},  # a managed HTTPRoute on the default Gateway
    }
    if pp > 1:
        parallelism["pipeline"] = pp  # with `worker`: the pipeline-parallel preset, one pod per node
        llm["worker"] = {"containers": [_llm_container(spec, tp)], "volumes": [_shm_volume("dshm", spec.shm_size)]}
    return {
        "apiVersion": f"{GROUP}/v1alpha2",
        "kind": "LLMInferenceService",
        "metadata": _metadata(spec.name, spec.namespace, "llm"),
        "spec": llm,
    }


def serving_runtime(spec: LLMSpec, *, cluster_wide: bool = False) -> dict:
    """A ServingRuntime equal in effect to upstream's kserve-huggingfaceserver (single node only).

    KServe looks a runtime up in the InferenceService's namespace before the cluster-wide ones, so
    this object, named like the ClusterServingRuntime, serves clusters that lack it; `cluster_wide`
    makes it that ClusterServingRuntime instead. Multi-node serving needs upstream's
    kserve-huggingfaceserver-multinode (its Ray bootstrap is not copied here).
    """
    _, pp = _check_llm(spec, multi_node_needs_pvc=True)
    if pp > 1:
        raise UserError(
            f"--nodes {pp}: a namespaced runtime is rendered for one node only; install KServe's "
            f"{RUNTIME_MULTI_NODE} ClusterServingRuntime for multi-node serving"
        )
    name = spec.runtime or RUNTIME_SINGLE_NODE
    _check_name(name, "runtime name", max_len=63)
    container = {
        "name": "kserve-container",
        "image": spec.runtime_image,
        "args": ["--model_name={{.Name}}"],
        "ports": [{"containerPort": RUNTIME_PORT, "protocol": "TCP"}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
        "volumeMounts": [{"name": "devshm", "mountPath": "/dev/shm"}],
    }
    namespace = None if cluster_wide else spec.namespace
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "ClusterServingRuntime" if cluster_wide else "ServingRuntime",
        "metadata": _metadata(name, namespace, "llm", {f"{GROUP}/server-type": "huggingfaceserver"}),
        "spec": {
            "annotations": {"prometheus.kserve.io/port": str(RUNTIME_PORT), "prometheus.kserve.io/path": "/metrics"},
            "supportedModelFormats": [{"name": "huggingface", "version": "1", "autoSelect": True, "priority": 1}],
            "protocolVersions": ["v2", "v1"],
            "containers": [container],
            "volumes": [_shm_volume("devshm", spec.shm_size)],
            "hostIPC": False,
        },
    }


# --- the steps and the graph --------------------------------------------------------------------


def _check_steps(spec: StepSpec) -> None:
    if spec.intake_model_uri is not None:
        try:
            _uri_scheme(spec.intake_model_uri)
        except UserError as exc:
            raise UserError(f"intake classifier: {exc}") from None
    for step in spec.steps():
        _check_name(f"{spec.prefix}-{step}", "step name (--prefix + step)")
    check_namespace(spec.namespace)
    if not spec.image.strip():
        raise UserError("the step image is empty: give the project image, e.g. ghcr.io/deepmoney/deepmoney:<version>")
    if not spec.llm_url.startswith(("http://", "https://")):
        raise UserError(f"--llm {spec.llm_url!r}: must be the LLM's http(s):// OpenAI base URL")
    if spec.market_data_secret is not None and not DNS_SUBDOMAIN.match(spec.market_data_secret):
        raise UserError(f"market-data secret {spec.market_data_secret!r}: not a valid Secret name")
    if spec.router_timeout_s < 1:
        raise UserError(f"router timeout {spec.router_timeout_s} s: must be at least 1 second")


def _step_env(spec: StepSpec, step: str) -> list[dict]:
    env: list[dict] = [
        {"name": "HOME", "value": "/tmp"},  # the root filesystem is read-only: caches go to /tmp
        {"name": deepmoney_env.LOG_FORMAT, "value": "json"},  # one JSON object per log record, request ids in it
    ]
    if spec.market_data_secret and step in ("data", "analysis"):  # analysis reads as-of history for its figures
        # A reference, never the value: the URL may carry a password.
        ref = {"name": spec.market_data_secret, "key": "url"}
        env.append({"name": "DEEPMONEY_MARKETDATA__URL", "valueFrom": {"secretKeyRef": ref}})
    return env


def _step_container(spec: StepSpec, step: str) -> dict:
    llm = f"{spec.llm_url}#{spec.served_model_name}"
    served = ["--intake-model", MODEL_MOUNT] if step == INTAKE else ["--llm", llm]
    env = _step_env(spec, step)
    if step == INTAKE:
        # KServe's storage initializer downloads a custom container's STORAGE_URI into /mnt/models
        env.append({"name": "STORAGE_URI", "value": str(spec.intake_model_uri)})
    return {
        "name": "kserve-container",
        "image": spec.image,
        "command": ["deepmoney", "serve", "--steps", step, *served, "--host", "0.0.0.0", "--port", str(STEP_PORT)],
        "ports": [{"containerPort": STEP_PORT, "protocol": "TCP"}],
        "env": env,
        "resources": {
            "requests": {"cpu": spec.cpu_request, "memory": spec.memory},
            "limits": {"cpu": spec.cpu_limit, "memory": spec.memory},
        },
        "readinessProbe": _http_probe(f"/v2/models/{step}/ready", STEP_PORT, period=10, failures=3),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": spec.run_as_user,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def step_inference_services(spec: StepSpec) -> list[dict]:
    """One CPU InferenceService per step of the chain, each serving the step's model under the step's name."""
    _check_steps(spec)
    return [_step_service(spec, step) for step in spec.steps()]


def _step_service(spec: StepSpec, step: str) -> dict:
    predictor: dict[str, Any] = {
        "minReplicas": 1,
        "timeout": spec.router_timeout_s,  # a step waits on the LLM
        "containers": [_step_container(spec, step)],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if step == INTAKE:
        predictor["maxReplicas"] = 1  # the near-duplicate window lives in the replica: one replica sees every item
    return {
        "apiVersion": f"{GROUP}/v1beta1",
        "kind": "InferenceService",
        "metadata": _metadata(f"{spec.prefix}-{step}", spec.namespace, "step", {MODE_ANNOTATION: DEPLOYMENT_MODE}),
        "spec": {"predictor": predictor},
    }


def _graph_step(spec: StepSpec, index: int, step: str) -> dict:
    return {
        "name": step,
        # serviceUrl, not serviceName: KServe would resolve serviceName to /v1/models/<InferenceService
        # name>:predict, but inside its server each step's model is registered under the step's name.
        "serviceUrl": step_url(spec, step),
        # Each step answers with the whole accumulating JSON payload (not {"predictions": ...}), so the
        # next step takes the previous answer as it is.
        "data": "$request" if index == 0 else "$response",
        "dependency": "Hard",  # the default, Soft, would pass a failed step's error body to the next step
    }


def inference_graph(spec: StepSpec) -> dict:
    """The serving.kserve.io/v1alpha1 InferenceGraph that runs the steps in order: sectors, method, data, analysis."""
    _check_steps(spec)
    timeout = spec.router_timeout_s
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": _metadata(spec.prefix, spec.namespace, "graph", {MODE_ANNOTATION: DEPLOYMENT_MODE}),
        "spec": {
            "nodes": {
                "root": {
                    "routerType": "Sequence",
                    "steps": [_graph_step(spec, i, step) for i, step in enumerate(spec.steps())],
                }
            },
            # The router's 60 s defaults are far too short for a 67B model answering four steps in a row.
            "routerTimeouts": {
                "serverRead": timeout,
                "serverWrite": timeout,  # Go's write timeout runs from the request's end: the whole chain
                "serverIdle": timeout,
                "serviceClient": timeout,  # each request to a step
            },
            "timeout": timeout,  # the Knative revision timeout, should the graph run in Knative mode
            "minReplicas": 1,
        },
    }


def router_headers_note() -> str:
    """The change to KServe's `inferenceservice-config` ConfigMap that makes the graph pass the request id on."""
    return f"""\
# The InferenceGraph router forwards only the headers KServe's configuration lists. Add
# "{REQUEST_ID_HEADER}" to the "router" entry of the inferenceservice-config ConfigMap in KServe's
# namespace (kserve by default), keeping the entry's other fields as they are:
#
#   kubectl -n kserve edit configmap inferenceservice-config
#
# then re-apply the InferenceGraph so that its router pods restart with the new setting.
data:
  router: |-
    {{
      "image": "<keep the existing value>",
      "memoryRequest": "<keep>",
      "memoryLimit": "<keep>",
      "cpuRequest": "<keep>",
      "cpuLimit": "<keep>",
      "headers": {{
        "propagate": [
          "{REQUEST_ID_HEADER}"
        ]
      }}
    }}
"""


# --- everything ---------------------------------------------------------------------------------


def render(llm: LLMSpec, steps: StepSpec, kind: str = "inferenceservice", *, with_runtime: bool = False) -> list[dict]:
    """The LLM object(s), the step InferenceServices and the graph, in apply order.

    kind: "inferenceservice" (v1beta1 on the Hugging Face runtime) or "llminferenceservice" (v1alpha2).
    with_runtime: put a namespaced ServingRuntime first (InferenceService kind, one node only).
    """
    if llm.served_model_name != steps.served_model_name:
        raise UserError(
            f"the LLM serves {llm.served_model_name!r} but the steps ask for {steps.served_model_name!r}; "
            f"use the same served model name"
        )
    if kind == "inferenceservice":
        objects = [serving_runtime(llm)] if with_runtime else []
        objects.append(llm_inference_service(llm))
    elif kind == "llminferenceservice":
        if with_runtime:
            raise UserError("--with-runtime applies to the inferenceservice kind; an LLMInferenceService needs none")
        objects = [llm_inference_service_v1alpha2(llm)]
    else:
        raise UserError(f"--kind {kind!r}: use inferenceservice or llminferenceservice")
    return [*objects, *step_inference_services(steps), inference_graph(steps)]
