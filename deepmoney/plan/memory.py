"""Memory per GPU of training (model states by ZeRO stage and offload, activations) and of serving (weights, KV cache).

Model states follow the ZeRO paper (Rajbhandari et al., 2020): with mixed precision and Adam, 2 bytes of 16-bit
weights, 2 of gradients and K = 12 of fp32 master weights, momentum and variance per parameter; stage 1 shards
the optimizer states over the data-parallel ranks, stage 2 the gradients too, stage 3 the weights too.
Activations are counted per token and layer from the tensors a LLaMA-style layer keeps for its backward pass
(docs/capacity.md gives each term). Sizes are bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepmoney.plan.shapes import Shape

# bytes per parameter of (weights, gradients, optimizer states incl. any master copy), by training precision
PRECISIONS = {
    "mixed": (2, 2, 12),  # DeepSpeed bf16/fp16: 16-bit weights and gradients, fp32 master + Adam m, v (ZeRO's K=12)
    "amp": (6, 4, 8),  # torch autocast: fp32 weights + a bf16 copy, fp32 gradients, fp32 Adam m, v: 18 in all
    "pure_bf16": (2, 2, 4),  # everything in bf16, Adam m, v too: 8 (LLaMA-Factory's pure_bf16)
}
OFFLOADS = ("none", "optimizer", "params")  # params: weights and optimizer states (ZeRO-3 only)
RESERVE = 0.10  # of a GPU's memory kept for the CUDA context, NCCL buffers and allocator fragmentation


@dataclass(frozen=True, slots=True)
class ModelStates:
    """Model-state bytes on one GPU, and in the CPU memory of one rank when offloaded."""

    weights: float
    gradients: float
    optimizer: float
    cpu: float

    @property
    def gpu(self) -> float:
        """Everything on the GPU."""
        return self.weights + self.gradients + self.optimizer


def model_states(parameters: float, ranks: int, zero_stage: int, precision: str = "mixed",
                 offload: str = "none") -> ModelStates:  # fmt: skip
    """The ZeRO paper's model states per rank: stage >= 1 shards optimizer states, >= 2 gradients, 3 weights."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0-3, got {zero_stage}")
    if offload not in OFFLOADS or (offload == "params" and zero_stage != 3):
        raise ValueError(f"offload {offload!r}: one of {', '.join(OFFLOADS)} (params needs ZeRO-3)")
    w, g, o = PRECISIONS[precision]
    weights = w * parameters / (ranks if zero_stage >= 3 else 1)
    gradients = g * parameters / (ranks if zero_stage >= 2 else 1)
    optimizer = o * parameters / (ranks if zero_stage >= 1 else 1)
    cpu = 0.0
    if offload in ("optimizer", "params"):
        cpu, optimizer = cpu + optimizer, 0.0
    if offload == "params":
        cpu, weights = cpu + weights, 0.0
    return ModelStates(weights, gradients, optimizer, cpu)


def layer_parameters(shape: Shape) -> int:
    """Parameters of one decoder layer (attention with grouped KV heads, SwiGLU MLP)."""
    attention = 2 * shape.hidden * shape.heads * shape.head_dim + 2 * shape.hidden * shape.kv_heads * shape.head_dim
    return attention + 3 * shape.hidden * shape.intermediate


def zero3_working_set(shape: Shape) -> float:
    """ZeRO-3 gathers a layer's 16-bit weights to compute it and prefetches the next: two layers on the GPU."""
    return 2 * 2 * layer_parameters(shape)


def activation_bytes_per_token_layer(shape: Shape) -> int:
    """bf16 bytes one layer keeps per token for backward (flash/SDPA attention: no s x s scores).

    Inputs of: the attention norm (h) and the projections (h), Q (h), K and V (2 h_kv), the attention output
    (h), the MLP norm (h) and the projections (h), gate and up (2 f), SiLU(gate) (f), the down projection
    (f) — 2 bytes each: 12 h + 4 h_kv + 8 f. For deepseek-llm-67b this is exactly Korthikanti et al.'s 34 h.
    """
    kv = shape.kv_heads * shape.head_dim
    return 12 * shape.hidden + 4 * kv + 8 * shape.intermediate


def activations(shape: Shape, seq_len: int, micro_batch: int, checkpointing: bool) -> float:
    """Activation bytes of one micro-batch on one GPU, with the fp32 logits the loss reads."""
    tokens = seq_len * micro_batch
    per_layer = activation_bytes_per_token_layer(shape) * tokens
    logits = 4 * tokens * shape.vocab
    if checkpointing:  # each layer's input is kept; one layer at a time is recomputed in full
        return shape.layers * 2 * shape.hidden * tokens + per_layer + logits
    return shape.layers * per_layer + logits


def kv_cache_bytes_per_token(shape: Shape, dtype_bytes: int = 2) -> int:
    """Serving: K and V of every layer for one token (grouped KV heads)."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype_bytes
