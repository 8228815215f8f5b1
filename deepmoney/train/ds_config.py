"""The DeepSpeed JSON, generated from the typed training config (never a hand-edited file).

The batch arithmetic DeepSpeed insists on (global = micro x accumulation x world) is checked here
first, so a config that does not fit the world size fails with one line saying what to change
instead of DeepSpeed's assertion deep inside `initialize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deepmoney.config import TrainConfig
from deepmoney.errors import UserError


@dataclass(frozen=True)
class Batching:
    """Blocks per forward pass on one rank, per optimizer step on one rank, and over all ranks."""

    micro_batch: int
    grad_accum: int
    world_size: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size


def batching(train: TrainConfig, world_size: int) -> Batching:
    """Resolve grad_accum from `global_batch` when it is set; reject numbers that do not divide."""
    if train.global_batch is None:
        return Batching(train.micro_batch, train.grad_accum, world_size)
    per_pass = train.micro_batch * world_size
    if train.global_batch % per_pass:
        raise UserError(
            f"train.global_batch={train.global_batch} is not a multiple of micro_batch x world size "
            f"= {train.micro_batch} x {world_size} = {per_pass}; choose a global batch that is, "
            "or change --micro-batch / the number of processes"
        )
    return Batching(train.micro_batch, train.global_batch // per_pass, world_size)


def resolve_precision(train: TrainConfig, cuda: bool, bf16_supported: bool) -> str:
    """bf16 on GPUs that have it, fp32 elsewhere, unless the config names one."""
    if train.precision == "auto":
        return "bf16" if cuda and bf16_supported else "fp32"
    if train.precision in ("bf16", "fp16") and not cuda:
        raise UserError(f"train.precision={train.precision} needs a GPU; on CPU use fp32 or auto")
    if train.precision == "bf16" and not bf16_supported:
        raise UserError("train.precision=bf16 but this GPU has no bf16; use fp16 or auto")
    return train.precision


def deepspeed_config(
    train: TrainConfig, batch: Batching, precision: str, learning_rate: float, client_optimizer: bool
) -> dict[str, Any]:
    """The DeepSpeed config dict for `deepspeed.initialize`.

    `client_optimizer`: the trainer passes its own torch AdamW (CPU runs, no offload); otherwise
    DeepSpeed builds AdamW itself (fused on GPU, DeepSpeed CPU Adam when the optimizer is offloaded).
    The learning-rate schedule is always the trainer's, so it is saved in checkpoints with the rest.
    """
    zero = train.zero
    if zero.offload_params and zero.stage != 3:
        raise UserError(f"train.zero.offload_params needs ZeRO stage 3 (got stage {zero.stage}); use --zero 3")
    if zero.offload_optimizer and zero.stage == 0:
        raise UserError("train.zero.offload_optimizer needs ZeRO stage 1, 2 or 3")
    if zero.offload_optimizer and client_optimizer:
        raise UserError("train.zero.offload_optimizer needs a GPU run (DeepSpeed CPU Adam updates offloaded state)")
    optimization: dict[str, Any] = {"stage": zero.stage}
    if zero.stage > 0:
        optimization |= {
            "overlap_comm": zero.overlap_comm,
            "contiguous_gradients": True,
            "reduce_bucket_size": zero.bucket_size,
        }
    if zero.stage in (1, 2):
        optimization |= {"allgather_bucket_size": zero.bucket_size, "reduce_scatter": True}
    if zero.stage == 3:
        optimization |= {
            "stage3_prefetch_bucket_size": zero.bucket_size,
            "stage3_param_persistence_threshold": 100_000,
            # Whole 16-bit weights are gathered for the output model instead of leaving only shards.
            "stage3_gather_16bit_weights_on_model_save": True,
        }
    if zero.offload_optimizer:
        optimization["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if zero.offload_params:
        optimization["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": batch.micro_batch,
        "gradient_accumulation_steps": batch.grad_accum,
        "train_batch_size": batch.global_batch,
        "gradient_clipping": train.max_grad_norm,
        "zero_optimization": optimization,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 2**31 - 1,  # the trainer logs; DeepSpeed's own step lines would duplicate them
        "wall_clock_breakdown": False,
    }
    if client_optimizer:
        config["zero_allow_untested_optimizer"] = True  # torch AdamW is untested only in DeepSpeed's list
    else:
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": learning_rate, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": train.weight_decay},
        }
    return config
