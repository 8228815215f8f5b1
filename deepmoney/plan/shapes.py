"""Model shapes for the planner: presets of the models deepmoney trains, or any Hugging Face config.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from deepmoney.errors import UserError
from deepmoney.models.shape import decoder_parameters


@dataclass(frozen=True, slots=True)
class Shape:
    """A LLaMA-style decoder's sizes."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    vocab: int
    intermediate: int
    tied: bool = False
    head_width: int | None = None  # a config's explicit head_dim; None = hidden / heads

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.head_width or self.hidden // self.heads

    @property
    def parameters(self) -> int:
        """Parameters (norms left out: a few per million)."""
        return decoder_parameters(hidden=self.hidden, layers=self.layers, heads=self.heads, kv_heads=self.kv_heads,
                                  intermediate=self.intermediate, vocab=self.vocab, tied=self.tied,
                                  head_dim=self.head_width)  # fmt: skip


PRESETS = {
    # the recipe's base model (deepseek-ai/deepseek-llm-67b-base config.json)
    "deepseek-llm-67b": Shape("deepseek-llm-67b", 95, 8192, 64, 8, 102400, 22016),
    "deepseek-llm-7b": Shape("deepseek-llm-7b", 30, 4096, 32, 32, 102400, 11008),
    # the 70B of LLaMA-Factory's hardware table
    "llama-2-70b": Shape("llama-2-70b", 80, 8192, 64, 8, 32000, 28672),
    "llama-2-7b": Shape("llama-2-7b", 32, 4096, 32, 32, 32000, 11008),
}


def shape(model: str, flag: str = "--model") -> Shape:
    """A preset by name, or the shape in a config.json (or the model directory holding one); `flag` names the
    option in errors."""
    if model.strip().lower() in PRESETS:
        return PRESETS[model.strip().lower()]
    path = Path(model)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{flag} {model!r}: neither a preset ({', '.join(PRESETS)}) nor a config.json or model "
                        "directory")  # fmt: skip
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{flag} {model}: not a readable config.json ({type(exc).__name__}: {exc})") from None
    return from_config(config, path.name or str(file), f"{flag} {model}")


def from_config(config: object, name: str, where: str = "the config") -> Shape:
    """The shape in a Hugging Face config.json's contents; `where` names it in errors."""
    if not isinstance(config, dict):
        raise UserError(f"{where}: not a decoder's config.json (a JSON object of the model's sizes)")
    try:
        heads = int(config["num_attention_heads"])
        head_width = config.get("head_dim")
        found = Shape(
            name=name, layers=int(config["num_hidden_layers"]), hidden=int(config["hidden_size"]),
            heads=heads, kv_heads=int(config.get("num_key_value_heads") or heads), vocab=int(config["vocab_size"]),
            intermediate=int(config.get("intermediate_size") or 4 * int(config["hidden_size"])),
            tied=bool(config.get("tie_word_embeddings", False)), head_width=int(head_width) if head_width else None,
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        missing = f"no {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise UserError(f"{where}: not a decoder's config.json ({missing}); is it a causal LM's?") from None
    if min(found.layers, found.hidden, found.heads, found.kv_heads) < 1:
        raise UserError(f"{where}: layers, hidden size and head counts must be positive; check its config.json")
    return found
