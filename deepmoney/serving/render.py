"""`deepmoney serve render`: the serving objects for one model and GPU layout, as YAML to `kubectl apply`.

The layout comes from `--gpus` (and `--nodes`), or from the capacity planner (`deepmoney.plan`): given the
GPU type and the model's config.json, the least tensor-parallel size (and, past one node, pipeline-parallel
nodes) whose GPUs hold the bf16 weights plus the KV cache of `--concurrency` sequences of `--context` tokens.
A layout given by hand is checked against the same figures when the GPU type is known. The model's shape
also checks the layout against its heads and sizes the probes' start-up allowance; the step models' image
is tied to this package's version unless another is given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from deepmoney.errors import UserError
from deepmoney.kube import default_image, to_yaml
from deepmoney.plan.hardware import GB, gpu
from deepmoney.plan.plan import ServingPlan, serving, serving_layout
from deepmoney.plan.shapes import Shape, shape
from deepmoney.serving.manifests import LLMSpec, StepSpec, llm_url, render, router_headers_note

log = logging.getLogger(__name__)

BYTES_PER_PARAMETER = 2  # bf16 weights


@dataclass(frozen=True)
class Sizing:
    """What the LLM must hold: its GPU type (None: unknown, nothing checked), sequences and their length."""

    gpu: str | None = None  # a planner GPU: a100-40, a100-80, h100-80, h200-141
    gpus_per_node: int = 8
    context: int = 4096  # tokens per sequence: vLLM's max_model_len
    concurrency: int = 32  # sequences at once: vLLM's max_num_seqs


def _need(plan: ServingPlan) -> str:
    return (f"{plan.weights_bytes / GB:,.0f} GB of bf16 weights + {plan.kv_cache_bytes / GB:,.0f} GB of KV cache, "
            f"{plan.bytes_per_gpu / GB:,.1f} GB per GPU of {plan.usable_bytes / GB:,.1f} usable")  # fmt: skip


def layout(model: Shape | None, gpus: int | None, nodes: int | None, sizing: Sizing) -> tuple[int, int]:
    """(GPUs in all, nodes): as given, checked to fit when the GPU type and model are known, or as planned."""
    if sizing.gpu is not None and model is None:
        raise UserError("--gpu needs --model-config (the model's config.json or a planner preset) to size the model")
    if sizing.gpus_per_node < 1:
        raise UserError(f"--gpus-per-node {sizing.gpus_per_node}: must be at least 1")
    if gpus is None:
        if sizing.gpu is None:
            raise UserError("give --gpus N, or --gpu TYPE with --model-config so that the planner sizes the layout")
        if nodes is not None:
            raise UserError("--nodes goes with --gpus; without --gpus the planner chooses the nodes as well")
        plan = serving(model, gpu(sizing.gpu), sizing.context, sizing.concurrency, sizing.gpus_per_node)
        if not plan.fits:
            raise UserError(f"{model.name} does not fit {plan.tensor_parallel} x {plan.pipeline_parallel} "
                            f"{sizing.gpu} GPUs ({_need(plan)}); lower --concurrency or --context")  # fmt: skip
        log.info("planned tensor parallel %d x %d node(s): %s", plan.tensor_parallel, plan.pipeline_parallel,
                 _need(plan))  # fmt: skip
        return plan.tensor_parallel * plan.pipeline_parallel, plan.pipeline_parallel
    nodes = 1 if nodes is None else nodes
    if sizing.gpu is not None and model is not None and nodes >= 1 and gpus >= nodes and gpus % nodes == 0:
        given = serving_layout(model, gpu(sizing.gpu), sizing.context, sizing.concurrency, gpus // nodes, nodes)
        if not given.fits:
            need = serving(model, gpu(sizing.gpu), sizing.context, sizing.concurrency, sizing.gpus_per_node)
            raise UserError(
                f"--gpus {gpus} {sizing.gpu} over {nodes} node(s) cannot hold {model.name} with {sizing.concurrency}"
                f" x {sizing.context}-token sequences ({_need(given)}); the planner needs "
                f"{need.tensor_parallel * need.pipeline_parallel} GPUs on {need.pipeline_parallel} node(s): "
                "omit --gpus to use its layout, or lower --concurrency or --context"
            )
    elif model is not None:
        log.warning("no --gpu: whether the weights and KV cache fit the GPUs is not checked")
    return gpus, nodes


def render_objects(*, model_uri: str, gpus: int | None, nodes: int | None, image: str | None,
                   namespace: str | None, model_config: str | None, kind: str, market_data_secret: str | None,
                   served_model_name: str, intake_model_uri: str | None = None,
                   sizing: Sizing | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The serving objects, in apply order: the LLM (planned or given layout), the steps, the graph."""
    sizing = sizing or Sizing()
    model = shape(model_config, "--model-config") if model_config is not None else None
    gpus, nodes = layout(model, gpus, nodes, sizing)
    checks: dict = {}
    if model is not None:
        checks = {"attention_heads": model.heads, "kv_heads": model.kv_heads,
                  "model_size_gb": max(1.0, model.parameters * BYTES_PER_PARAMETER / 1e9)}  # fmt: skip
    else:
        log.warning("no --model-config: the tensor-parallel size is not checked against the model's heads")
    llm = LLMSpec(model_uri=model_uri, gpus=gpus, nodes=nodes, namespace=namespace,
                  served_model_name=served_model_name, max_model_len=sizing.context,
                  max_num_seqs=sizing.concurrency, **checks)  # fmt: skip
    steps = StepSpec(image=image or default_image(), llm_url=llm_url(llm), served_model_name=served_model_name,
                     namespace=namespace, market_data_secret=market_data_secret,
                     intake_model_uri=intake_model_uri)  # fmt: skip
    return render(llm, steps, kind)


def render_yaml(**arguments: Any) -> str:
    """`render_objects` as multi-document YAML, after the ConfigMap change request ids need (comments)."""
    note = "\n".join(line if line.startswith("#") else f"#   {line}" for line in router_headers_note().splitlines())
    return f"{note}\n{to_yaml(render_objects(**arguments))}"
