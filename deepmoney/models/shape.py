"""A model's sizes read from its config.json, without loading weights."""

from __future__ import annotations

from pathlib import Path

from deepmoney.errors import UserError


def model_shape(model_dir: Path) -> dict[str, int]:
    """Sizes the memory and FLOP estimates and the data checks need (vocab = embedding rows)."""
    from transformers import AutoConfig

    try:
        c = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the model config in {model_dir}: {str(exc).splitlines()[0]}") from None
    hidden, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    inter = getattr(c, "intermediate_size", 4 * hidden)
    kv = getattr(c, "num_key_value_heads", c.num_attention_heads) * (hidden // c.num_attention_heads)
    per_layer = hidden * (2 * hidden + 2 * kv) + 3 * hidden * inter
    embed = vocab * hidden * (1 if getattr(c, "tie_word_embeddings", False) else 2)
    return {"hidden": hidden, "layers": layers, "vocab": vocab, "heads": c.num_attention_heads,
            "parameters": layers * per_layer + embed,
            "positions": int(getattr(c, "max_position_embeddings", 2**31))}  # fmt: skip
