"""A model's sizes read from its config.json, without loading weights."""

from __future__ import annotations

from pathlib import Path

from deepmoney.errors import UserError


def decoder_parameters(*, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, vocab: int,
                       tied: bool, head_dim: int | None = None) -> int:  # fmt: skip
    """Parameters of a LLaMA-style decoder: attention with grouped KV heads, a SwiGLU MLP, embeddings (and head)."""
    head_dim = head_dim or hidden // heads
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    return layers * (attention + 3 * hidden * intermediate) + vocab * hidden * (1 if tied else 2)


def splits_heads(tp: int, heads: int | None, kv_heads: int | None) -> bool:
    """Whether vLLM can shard attention over `tp` ranks: TP divides the heads, and the key-value heads are
    sharded (TP divides them) or replicated (they divide TP). None: that count is unknown, so no constraint."""
    return (heads is None or heads % tp == 0) and (kv_heads is None or kv_heads % tp == 0 or tp % kv_heads == 0)


def model_shape(model_dir: Path) -> dict[str, int]:
    """Sizes the memory and FLOP estimates and the data checks need (vocab = embedding rows)."""
    from transformers import AutoConfig

    try:
        c = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the model config in {model_dir}: {str(exc).splitlines()[0]}") from None
    hidden, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    parameters = decoder_parameters(
        hidden=hidden, layers=layers, heads=c.num_attention_heads, vocab=vocab,
        kv_heads=getattr(c, "num_key_value_heads", c.num_attention_heads),
        intermediate=getattr(c, "intermediate_size", 4 * hidden), tied=getattr(c, "tie_word_embeddings", False),
    )  # fmt: skip
    return {"hidden": hidden, "layers": layers, "vocab": vocab, "heads": c.num_attention_heads,
            "parameters": parameters,
            "positions": int(getattr(c, "max_position_embeddings", 2**31))}  # fmt: skip
