"""The GPUs the planner knows: memory and dense bf16 peak (vendor datasheets, SXM parts, no sparsity)."""

from __future__ import annotations

from dataclasses import dataclass

from deepmoney.errors import UserError

GB = 10**9


@dataclass(frozen=True, slots=True)
class Gpu:
    """One accelerator: its name, memory in bytes and dense bf16 peak in FLOP/s."""

    name: str
    memory: int
    bf16_flops: float


GPUS = {
    "a100-40": Gpu("A100 40GB", 40 * GB, 312e12),
    "a100-80": Gpu("A100 80GB", 80 * GB, 312e12),
    "h100-80": Gpu("H100 80GB", 80 * GB, 989e12),
    "h200-141": Gpu("H200 141GB", 141 * GB, 989e12),
}


def gpu(name: str) -> Gpu:
    """The GPU called `name` (a100-40, a100-80, h100-80, h200-141); a UserError listing them otherwise."""
    try:
        return GPUS[name.strip().lower()]
    except KeyError:
        raise UserError(f"--gpu {name!r}: unknown GPU; the planner knows {', '.join(GPUS)}") from None
