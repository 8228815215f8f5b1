"""sft examples: prompt masking through the chat template, and packing without cross-talk."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deepmoney.train.packed import IGNORE_INDEX, collate
from deepmoney.train.sft_data import block_item, conversations, pack, tokenize

CHAT = [
    {"role": "system", "content": "You are an analyst."},
    {"role": "user", "content": "Which sectors does the rate cut affect?"},
    {"role": "assistant", "content": "Banks and homebuilders."},
    {"role": "user", "content": "Why banks?"},
    {"role": "assistant", "content": "Net interest margins narrow."},
]


def test_only_the_replies_are_learned(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    example = tokenize(CHAT, tokenizer)
    assert example.input_ids == tokenizer(tokenizer.apply_chat_template(CHAT, tokenize=False),
                                          add_special_tokens=False)["input_ids"]  # fmt: skip
    learned = tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])
    eos = tokenizer.eos_token
    assert learned == f" Banks and homebuilders.{eos} Net interest margins narrow.{eos}"
    # Token by token: a learned position predicts exactly its own token, the learned positions form one
    # run per reply, each run ends on EOS, and what precedes each run ends with the "Assistant:" header.
    positions = [i for i, label in enumerate(example.labels) if label != IGNORE_INDEX]
    assert all(example.labels[i] == example.input_ids[i] for i in positions)
    runs = [[positions[0]]]
    for i in positions[1:]:
        runs[-1].append(i) if i == runs[-1][-1] + 1 else runs.append([i])
    assert len(runs) == 2
    for run in runs:
        assert example.input_ids[run[-1]] == tokenizer.eos_token_id
        assert tokenizer.decode(example.input_ids[: run[0]]).endswith("Assistant:")
    assert tokenizer.decode(example.input_ids[runs[0][-1] + 1 : runs[1][0]]) == "User: Why banks?\n\nAssistant:"
    everything = tokenize(CHAT, tokenizer, train_on_prompt=True)
    assert IGNORE_INDEX not in everything.labels


def test_reads_both_synth_layouts(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(json.dumps({"instruction": "Q?", "input": "", "output": "A.", "system": "S"}))
    (tmp_path / "s.jsonl").write_text(json.dumps({"system": "S", "conversations": [
        {"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}))  # fmt: skip
    expected = [[{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"},
                 {"role": "assistant", "content": "A."}]]  # fmt: skip
    assert conversations(tmp_path / "a.jsonl") == conversations(tmp_path / "s.jsonl") == expected


def test_packing_keeps_examples_apart(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True).eval()
    chats = [
        [{"role": "user", "content": f"Question {i} about copper?" * (1 + i % 3)},
         {"role": "assistant", "content": f"Answer {i}: supply fell." * (1 + i % 2)}]
        for i in range(9)
    ]  # fmt: skip
    examples = [tokenize(c, tokenizer) for c in chats]
    block = 96
    packed = pack(examples, block)
    assert sorted(id(e) for b in packed.blocks for e in b) == sorted(id(e) for e in examples)
    assert all(sum(len(e.input_ids) for e in b) <= block for b in packed.blocks)
    assert packed.padding_tokens == len(packed.blocks) * block - sum(len(e.input_ids) for e in examples)
    assert len(packed.blocks) < len(examples)  # short examples share blocks
    first = next(b for b in packed.blocks if len(b) >= 2)
    item = block_item(first, block, tokenizer.pad_token_id)
    assert item["tokens"] == sum(len(e.input_ids) for e in first)
    inputs = collate([item])
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                       attention_mask=inputs["attention_mask"]).logits[0]  # fmt: skip
        start = 0
        for example in first:
            alone = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            torch.testing.assert_close(logits[start : start + len(example.input_ids)], alone, atol=1e-4, rtol=1e-4)
            start += len(example.input_ids)
    assert (inputs["labels"][0, start:] == IGNORE_INDEX).all()  # padding is never a target
    long = pack([tokenize(chats[0], tokenizer)], 8)
    assert long.truncated == 1 and len(long.blocks[0][0].input_ids) == 8
