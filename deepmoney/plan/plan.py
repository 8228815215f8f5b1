"""Training options for a model on a GPU pool — memory per GPU, fit, throughput, time — and serving parallelism.

Throughput is the usual model-FLOPs estimate: 6 P + 12 L h s FLOPs per trained token (forward and backward,
attention scores included), at a stated model-FLOPs utilisation (MFU) of the GPUs' dense bf16 peak.
Recomputing activations costs a third more hardware work (MFU x 3/4), offloading trades speed for memory
(x 0.8 optimizer, x 0.5 weights too: rough, CPU- and PCIe-bound). These are planning figures, not promises.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from deepmoney.errors import UserError
from deepmoney.models.shape import splits_heads
from deepmoney.plan import memory
from deepmoney.plan.hardware import Gpu
from deepmoney.plan.shapes import Shape

OFFLOAD_SPEED = {"none": 1.0, "optimizer": 0.8, "params": 0.5}
CHECKPOINTING_SPEED = 0.75


@dataclass(frozen=True, slots=True)
class Option:
    """One way to train: ZeRO stage, offload, activation checkpointing, and what it costs."""

    zero_stage: int
    offload: str
    gradient_checkpointing: bool
    bytes_per_gpu: float
    model_states_bytes: float
    activations_bytes: float
    usable_bytes: float
    fits: bool
    cpu_bytes_per_node: float
    tokens_per_second: float
    days: float | None  # for the planned tokens

    def to_dict(self) -> dict:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Request:
    """What to plan for."""

    shape: Shape
    gpu: Gpu
    nodes: int
    gpus_per_node: int = 8
    seq_len: int = 4096
    micro_batch: int = 1
    mfu: float = 0.4
    tokens: float | None = None
    precision: str = "mixed"

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1 or self.seq_len < 1 or self.micro_batch < 1:
            raise UserError("--nodes, --gpus-per-node, --seq-len and --micro-batch must be at least 1")
        if not 0 < self.mfu <= 1:
            raise UserError(f"--mfu {self.mfu}: a utilisation between 0 and 1 (0.3-0.5 is typical)")

    @property
    def ranks(self) -> int:
        """Data-parallel ranks (one per GPU)."""
        return self.nodes * self.gpus_per_node


def flops_per_token(shape: Shape, seq_len: int) -> float:
    """Model FLOPs to train on one token: 6 P, plus 12 L h s for the attention scores."""
    return 6 * shape.parameters + 12 * shape.layers * shape.hidden * seq_len


def option(request: Request, zero_stage: int, offload: str, checkpointing: bool) -> Option:
    """The memory, fit and speed of one setup."""
    shape = request.shape
    states = memory.model_states(shape.parameters, request.ranks, zero_stage, request.precision, offload)
    model = states.gpu + (memory.zero3_working_set(shape) if zero_stage == 3 else 0.0)
    acts = memory.activations(shape, request.seq_len, request.micro_batch, checkpointing)
    usable = request.gpu.memory * (1 - memory.RESERVE)
    speed = OFFLOAD_SPEED[offload] * (CHECKPOINTING_SPEED if checkpointing else 1.0)
    per_second = request.mfu * speed * request.gpu.bf16_flops * request.ranks / flops_per_token(shape, request.seq_len)
    days = request.tokens / per_second / 86400 if request.tokens else None
    return Option(zero_stage=zero_stage, offload=offload, gradient_checkpointing=checkpointing,
                  bytes_per_gpu=model + acts, model_states_bytes=model, activations_bytes=acts, usable_bytes=usable,
                  fits=model + acts <= usable, cpu_bytes_per_node=states.cpu * request.gpus_per_node,
                  tokens_per_second=per_second, days=days)  # fmt: skip


def options(request: Request) -> list[Option]:
    """Every ZeRO-2/3 setup, with and without offload and activation checkpointing."""
    setups = [(2, "none"), (2, "optimizer"), (3, "none"), (3, "optimizer"), (3, "params")]
    return [option(request, stage, offload, ckpt) for stage, offload in setups for ckpt in (False, True)]


def recommended(found: list[Option]) -> Option | None:
    """The fastest setup that fits (ties: the lower stage, no offload); None when nothing fits."""
    fitting = [o for o in found if o.fits]
    return max(fitting, key=lambda o: (o.tokens_per_second, -o.zero_stage), default=None)


@dataclass(frozen=True, slots=True)
class ServingPlan:
    """The tensor (and, across nodes, pipeline) parallel degree serving needs for weights plus KV cache."""

    tensor_parallel: int
    pipeline_parallel: int
    weights_bytes: float
    kv_cache_bytes: float
    bytes_per_gpu: float
    usable_bytes: float
    fits: bool

    def to_dict(self) -> dict:
        """JSON-ready."""
        return asdict(self)


def valid_tp(shape: Shape, tp: int) -> bool:
    """Whether vLLM can split the model's heads `tp` ways (`models.shape.splits_heads`)."""
    return splits_heads(tp, shape.heads, shape.kv_heads)


def serving_layout(shape: Shape, gpu: Gpu, context: int, concurrency: int, tensor_parallel: int,
                   pipeline_parallel: int = 1, utilization: float = 0.9) -> ServingPlan:  # fmt: skip
    """What one layout holds: bf16 weights plus `concurrency` sequences of `context` tokens of KV cache, spread
    over tensor x pipeline parallel GPUs, against vLLM's `gpu_memory_utilization` share of each GPU."""
    if context < 1 or concurrency < 1:
        raise UserError("--context and --concurrency must be at least 1")
    weights = 2 * shape.parameters
    kv = memory.kv_cache_bytes_per_token(shape) * context * concurrency
    usable = gpu.memory * utilization
    per_gpu = (weights + kv) / (tensor_parallel * pipeline_parallel)
    return ServingPlan(tensor_parallel, pipeline_parallel, weights, kv, per_gpu, usable, per_gpu <= usable)


def serving(shape: Shape, gpu: Gpu, context: int, concurrency: int, gpus_per_node: int = 8,
            utilization: float = 0.9) -> ServingPlan:  # fmt: skip
    """The least parallelism whose GPUs hold the bf16 weights and `concurrency` sequences of `context` tokens.

    `utilization` is vLLM's `gpu_memory_utilization`. Within a node, the least valid tensor-parallel size;
    beyond one node, tensor parallel = the largest valid size up to GPUs per node, pipeline parallel = nodes
    (at most 64; `fits` is False when even that is not enough).
    """
    sizes = [t for t in range(1, gpus_per_node + 1) if valid_tp(shape, t)]
    for tp in sizes:
        plan = serving_layout(shape, gpu, context, concurrency, tp, 1, utilization)
        if plan.fits:
            return plan
    for pp in range(2, 65):
        plan = serving_layout(shape, gpu, context, concurrency, sizes[-1], pp, utilization)
        if plan.fits:
            return plan
    return plan
