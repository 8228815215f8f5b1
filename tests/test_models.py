"""Tiny models: Hugging Face format, LLaMA architecture, byte-level tokenizer that covers Chinese."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from deepmoney.models.init import build_model
from deepmoney.models.presets import PRESETS
from tests.conftest import assert_clean_error, run_cli


def test_tiny_model_loads_and_runs(tiny_model: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    assert model.config.model_type == "llama"
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query attention
    assert model.config.vocab_size >= len(tokenizer)
    parameters = sum(p.numel() for p in model.parameters())
    manifest = json.loads((tiny_model / "manifest.json").read_text())
    assert manifest["parameters"] == parameters
    assert 2e6 <= parameters <= 8e6
    ids = tokenizer("Copper rose 3.2%.", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)


@pytest.mark.parametrize(
    "text", ["央行下调存款准备金率0.5个百分点。", "鑫淼龘𠀀 — 罕见字", "Émission d'obligations: 4,5 %"]
)
def test_tokenizer_round_trips_any_text_without_unknown_tokens(tiny_model: Path, text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_chat_template_is_deepseek_style(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    messages = [{"role": "user", "content": "Which sectors?"}, {"role": "assistant", "content": "Banks."}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == f"{tokenizer.bos_token}User: Which sectors?\n\nAssistant: Banks.{tokenizer.eos_token}"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("User: Which sectors?\n\nAssistant:")


@pytest.mark.parametrize(("name", "low", "high"), [("small", 80e6, 120e6), ("1b", 1.0e9, 1.2e9)])
def test_preset_sizes(name: str, low: float, high: float) -> None:
    preset = PRESETS[name]

    class _Tok:  # only the special-token ids are read from the tokenizer
        bos_token_id, eos_token_id, pad_token_id = 0, 1, 2

    with torch.device("meta"):  # shapes only: nothing is allocated
        model = build_model(preset, preset.vocab_size, _Tok(), seed=0)
    parameters = sum(p.numel() for p in model.parameters())
    assert low <= parameters <= high


def test_model_init_cli_writes_and_then_reuses(tmp_path: Path, tokenizer_corpus: Path) -> None:
    output = tmp_path / "m"
    command = ("model", "init", "--preset", "tiny", "--tokenizer-corpus", str(tokenizer_corpus), "--output",
               str(output), "--vocab-size", "600")  # fmt: skip
    first = run_cli(*command)
    assert first.returncode == 0, first.stderr
    assert "model written" in first.stdout
    assert AutoConfig.from_pretrained(output, local_files_only=True).model_type == "llama"
    second = run_cli(*command)
    assert second.returncode == 0 and "model reused" in second.stdout


def test_model_init_bad_preset_and_missing_corpus(tmp_path: Path) -> None:
    result = run_cli(
        "model", "init", "--preset", "huge", "--tokenizer-corpus", str(tmp_path), "--output", str(tmp_path / "m")
    )
    assert_clean_error(result, "model.preset", "'tiny', 'small' or '1b'")
    result = run_cli("model", "init", "--tokenizer-corpus", str(tmp_path / "missing"), "--output", str(tmp_path / "m"))
    assert_clean_error(result, "no input files found")
    assert not (tmp_path / "m").exists()
