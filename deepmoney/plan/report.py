"""The planner's answer as a table a person reads (and as JSON lines for tools)."""

from __future__ import annotations

import json

from deepmoney.plan.hardware import GB
from deepmoney.plan.plan import Option, Request, ServingPlan, recommended


def _gb(value: float) -> str:
    return f"{value / GB:,.1f}"


def table(request: Request, found: list[Option], serving: ServingPlan | None) -> str:
    """A fixed-width table of every option, the recommendation and the serving plan."""
    shape = request.shape
    lines = [
        f"{shape.name}: {shape.parameters / 1e9:,.1f}B parameters, {shape.layers} layers, hidden {shape.hidden}; "
        f"{request.nodes} x {request.gpus_per_node} {request.gpu.name} ({request.ranks} ranks), sequence "
        f"{request.seq_len}, micro-batch {request.micro_batch}, {request.precision} precision, MFU {request.mfu:g}",
        "",
        f"{'ZeRO':>4}  {'offload':<9} {'ckpt':<4} {'GB/GPU':>8} {'states':>8} {'activ.':>8} {'fits':<4} "
        f"{'CPU GB/node':>11} {'tokens/s':>12} {'days':>8}",
    ]
    for o in found:
        days = f"{o.days:,.1f}" if o.days is not None else "-"
        lines.append(f"{o.zero_stage:>4}  {o.offload:<9} {'yes' if o.gradient_checkpointing else 'no':<4} "
                     f"{_gb(o.bytes_per_gpu):>8} {_gb(o.model_states_bytes):>8} {_gb(o.activations_bytes):>8} "
                     f"{'yes' if o.fits else 'no':<4} {_gb(o.cpu_bytes_per_node):>11} {o.tokens_per_second:>12,.0f} "
                     f"{days:>8}")  # fmt: skip
    best = recommended(found)
    lines.append("")
    usable = _gb(found[0].usable_bytes) if found else "?"
    if best is None:
        lines.append(f"recommended: nothing fits in {usable} GB per GPU (10% kept back); add nodes, shorten the "
                     "sequence or lower the micro-batch")  # fmt: skip
    else:
        ckpt = "with" if best.gradient_checkpointing else "without"
        lines.append(
            f"recommended: ZeRO-{best.zero_stage}, offload {best.offload}, {ckpt} activation checkpointing "
            f"({_gb(best.bytes_per_gpu)} of {usable} GB per GPU, {best.tokens_per_second:,.0f} tokens/s)"
        )
    if serving is not None:
        where = f"tensor parallel {serving.tensor_parallel}" + (
            f" x pipeline parallel {serving.pipeline_parallel} nodes" if serving.pipeline_parallel > 1 else ""
        )
        lines.append(
            f"serving: {where} ({_gb(serving.weights_bytes)} GB of bf16 weights + {_gb(serving.kv_cache_bytes)}"
            f" GB of KV cache, {_gb(serving.bytes_per_gpu)} GB per GPU of {_gb(serving.usable_bytes)} usable)"
        )
    return "\n".join(lines)


def json_lines(found: list[Option], serving: ServingPlan | None) -> str:
    """One JSON object per option (zero_stage, offload, bytes_per_gpu, fits, ...), then the serving plan's."""
    rows = [json.dumps(o.to_dict()) for o in found]
    if serving is not None:
        rows.append(json.dumps({"serving": serving.to_dict()}))
    return "\n".join(rows)
