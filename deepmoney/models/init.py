"""Tiny random-init LLaMA models for tests and the quickstart, with a tokenizer trained on a corpus.

The tiny models have the architecture of deepseek-llm-67b-base (LLaMA: RMSNorm, SwiGLU, rotary
positions, grouped-query attention) at a size that trains in seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deepmoney.models.presets import PRESETS, Preset
from deepmoney.models.tokenizer import train_tokenizer, wrap_tokenizer
from deepmoney.storage import sha256_file


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def build_model(preset: Preset, vocab_size: int, tokenizer: Any, seed: int) -> Any:
    """A random-init LlamaForCausalLM shaped by `preset` for a tokenizer of `vocab_size` tokens."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=_round_up(vocab_size, 64),  # GPUs like embedding rows in multiples of 64
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads,
        max_position_embeddings=preset.max_position_embeddings,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def init_tiny_model(texts: Iterable[str], output: Path, preset_name: str, vocab_size: int | None, seed: int
                    ) -> dict[str, Any]:  # fmt: skip
    """Train the tokenizer on `texts`, build the model, save both to `output` (HF format).

    Returns what the output's manifest records about the model (`stage.BaseModelManifest` fields).
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a one-shard save needs no bar
    preset = PRESETS[preset_name]
    vocab_size = vocab_size or preset.vocab_size
    tokenizer = wrap_tokenizer(train_tokenizer(texts, vocab_size))
    # A small corpus yields fewer merges than asked for; the embedding keeps the requested size
    # (unused rows, as real models pad theirs) so a preset always has the same shape.
    model = build_model(preset, max(len(tokenizer), vocab_size), tokenizer, seed)
    output.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(output)
    model.save_pretrained(output, safe_serialization=True)
    model.generation_config.save_pretrained(output)
    parameters = sum(p.numel() for p in model.parameters())
    files = sorted(p for p in output.rglob("*") if p.is_file() and p.name != "manifest.json")
    return {
        "preset": preset_name,
        "architecture": "LlamaForCausalLM",
        "parameters": parameters,
        "vocab_size": len(tokenizer),
        "model_vocab_size": model.config.vocab_size,
        "seed": seed,
        "shape": asdict(preset),
        "files": [{"path": p.relative_to(output).as_posix(), "sha256": sha256_file(p)} for p in files],
    }
