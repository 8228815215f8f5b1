"""Shapes of the locally made (random-init) LLaMA-architecture models."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """Shape of a locally made (random-init) model."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int


PRESETS = {
    "tiny": Preset(8192, 192, 512, 4, 6, 2, 2048),  # ≈ 5M parameters
    "small": Preset(16384, 768, 2048, 12, 12, 4, 4096),  # ≈ 100M parameters
    "1b": Preset(32000, 2048, 5632, 22, 32, 4, 2048),  # ≈ 1.1B (TinyLlama's shape): GPU benchmarks
}
