"""The model side of a run: build the base (full or LoRA), estimate memory, export the result.

The output is a plain Hugging Face model directory — config, safetensors weights, tokenizer with its
chat template, generation config — which KServe's Hugging Face runtime serves as it is. LoRA
adapters are saved next to it (`adapter/`) and, by default, merged into the output weights.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from deepmoney.config import LoraConfig, TrainConfig
from deepmoney.errors import UserError
from deepmoney.storage import share_tree
from deepmoney.train import segment_attention
from deepmoney.train.distributed import DistEnv

log = logging.getLogger(__name__)

# Dense bf16 tensor-core peak, TFLOP/s per GPU, for the MFU estimate; unknown devices get no MFU.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 756.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0}  # fmt: skip


def estimate_bytes(shape: dict[str, int], train: TrainConfig, seq: int, world: int, precision: str) -> int:
    """A lower bound on one rank's memory for this run (weights, gradients, optimizer, activations)."""
    n = shape["parameters"]
    trainable = n if not train.lora.enabled else n // 100
    weight = 2 if precision in ("bf16", "fp16") else 4
    stage = train.zero.stage
    weights = weight * n / (world if stage == 3 else 1)
    grads = weight * trainable / (world if stage >= 2 else 1)
    optimizer = (8 + (4 if weight == 2 else 0)) * trainable / (world if stage >= 1 else 1)
    if train.zero.offload_optimizer:
        optimizer = 0
    tokens = train.micro_batch * seq
    per_layer = 2 if train.gradient_checkpointing else 10  # hidden-sized tensors kept per layer, at least
    activations = tokens * shape["hidden"] * weight * (per_layer * shape["layers"] + 2)
    logits = tokens * shape["vocab"] * 4 * 2  # fp32 logits and their gradient
    # the additive attention mask sdpa builds from a boolean one; segment_sdpa builds none
    mask = 0 if train.attention == segment_attention.SEGMENT_SDPA else train.micro_batch * seq * seq * 4
    return int(weights + grads + optimizer + activations + logits + mask)


def available_bytes(env: DistEnv) -> int:
    """Free memory for one rank: the GPU's, or this machine's RAM shared by its ranks."""
    if torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    import psutil

    return int(psutil.virtual_memory().available / max(1, env.local_world_size))


def check_memory(shape: dict[str, int], train: TrainConfig, seq: int, env: DistEnv, precision: str) -> None:
    """Refuse before loading anything when even the lower bound does not fit; name the knobs to turn."""
    need, have = estimate_bytes(shape, train, seq, env.world_size, precision), available_bytes(env)
    if need > have:
        raise UserError(out_of_memory_advice(train, seq, f"needs at least {need / 2**30:.1f} GiB per rank, "
                                             f"{have / 2**30:.1f} GiB are free"))  # fmt: skip


def out_of_memory_advice(train: TrainConfig, seq: int, what: str) -> str:
    """One line: what ran out, and the knobs that reduce memory, in the order to try them."""
    knobs = [f"lower --micro-batch (now {train.micro_batch}; raise train.grad_accum to keep the global batch)"]
    if not train.gradient_checkpointing:
        knobs.append("set train.gradient_checkpointing=true")
    if train.zero.stage < 3:
        knobs.append("use --zero 3")
    elif not train.zero.offload_optimizer:
        knobs.append("set train.zero.offload_optimizer=true")
    if not train.lora.enabled:
        knobs.append("or train LoRA adapters (--lora)")
    return f"not enough memory for micro-batch {train.micro_batch} x {seq} tokens: {what}; " + ", ".join(knobs)


def build_model(model_dir: Path, train: TrainConfig, precision: str, ds_config: dict[str, Any]) -> tuple[Any, Any]:
    """The model to train (LoRA-wrapped when asked) and a handle that must outlive ZeRO-3 init."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    if train.attention == segment_attention.SEGMENT_SDPA:
        segment_attention.register()  # before from_pretrained, which checks the name
    # With ZeRO-3 this makes from_pretrained create each weight already partitioned across ranks.
    hf_ds = HfDeepSpeedConfig(ds_config) if train.zero.stage == 3 else None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, attn_implementation=train.attention, local_files_only=True
    )
    model.config.use_cache = False
    if train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if train.lora.enabled:
        model = _wrap_lora(model, train.lora, train.gradient_checkpointing)
    return model, hf_ds


def _wrap_lora(model: Any, lora: LoraConfig, checkpointing: bool) -> Any:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    config = PeftLoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules, task_type="CAUSAL_LM",
    )  # fmt: skip
    if checkpointing:
        model.enable_input_require_grads()  # frozen embeddings would otherwise cut the graph
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(f"train.lora.target_modules: {exc}".splitlines()[0]) from None


def flops_per_token(shape: dict[str, int], seq: int) -> float:
    """Training FLOPs per token: 6N for the weights plus the attention score and value products."""
    return 6.0 * shape["parameters"] + 12.0 * shape["layers"] * shape["hidden"] * seq


def peak_flops(precision: str) -> float | None:
    """This GPU's dense bf16/fp16 peak in FLOP/s, when known (None on CPU and in fp32)."""
    if not torch.cuda.is_available() or precision == "fp32":
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def _full_state_dict(engine: Any, stage: int, env: DistEnv) -> dict[str, torch.Tensor] | None:
    """Whole weights on rank 0 (gathered from the ZeRO-3 shards: a collective every rank must join)."""
    if stage == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict() if env.is_main else None


def export_final(
    engine: Any, train: TrainConfig, model_dir: Path, output: Path, env: DistEnv, precision: str
) -> Path | None:
    """Write `output/final/` (and `output/adapter/` for LoRA) on rank 0; returns the final path there."""
    state = _full_state_dict(engine, train.zero.stage, env)
    if not env.is_main:
        return None
    from transformers import AutoTokenizer

    final, staging = output / "final", output / "final.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    module = engine.module
    if train.lora.enabled:
        adapter, adapter_tmp = output / "adapter", output / "adapter.tmp"
        shutil.rmtree(adapter_tmp, ignore_errors=True)
        module.save_pretrained(adapter_tmp, state_dict=state, safe_serialization=True)
        _replace(adapter_tmp, adapter)
        if train.lora.merge:
            _merge(model_dir, adapter, staging, precision)
        else:
            shutil.copytree(adapter, staging)
    else:
        module.save_pretrained(staging, state_dict=state, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tokenizer.save_pretrained(staging)
    _replace(staging, final)
    log.info("model written to %s", final)
    return final


def _merge(model_dir: Path, adapter: Path, target: Path, precision: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(target, safe_serialization=True)


def _replace(staging: Path, target: Path) -> None:
    """Swap a finished directory into place (the old one, if any, is removed first), readable as the umask says."""
    share_tree(staging)  # savers write some files private (0600); a shared volume's other readers need them
    if target.exists():
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def warmup_steps(total: int, ratio: float) -> int:
    return math.ceil(total * ratio)
