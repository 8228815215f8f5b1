"""Loading a Hugging Face causal LM and its tokenizer to run it (evaluation, local roles, serving)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepmoney.errors import UserError


def load_causal_lm(directory: Path, *, need_chat_template: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) from a local directory, on the GPU in bf16 when there is one, ready for inference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not (directory / "config.json").is_file():
        raise UserError(f"no Hugging Face model in {directory} (expected config.json)")
    hf_logging.disable_progress_bar()  # "Loading weights" bars are noise on stderr, and never belong on stdout
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the model in {directory}: {str(exc).splitlines()[0]}") from None
    if need_chat_template and not tokenizer.chat_template:
        raise UserError(f"the tokenizer in {directory} has no chat template; chat needs one")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to("cuda" if cuda else "cpu").eval(), tokenizer


def tokenizer_size(tokenizer: Any) -> int:
    """How many distinct tokens the model can be asked to emit (the tokenizer's, not the embedding's rows)."""
    return len(tokenizer)
