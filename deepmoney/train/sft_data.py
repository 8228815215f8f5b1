"""sft examples: chat-template tokenization with the prompt masked, packed into full blocks.

Examples come from the synth output (alpaca or sharegpt JSONL). Each conversation is rendered
with the base model's chat template (deepseek: `User: {q}\\n\\nAssistant: {a}<eos>`); tokens the
model should not learn to produce — system text and user turns — get the ignore label unless
`train_on_prompt`. Examples are packed first-fit into `block_size` blocks as separate segments, so
the pt machinery (per-segment positions, block-diagonal mask) keeps them from seeing each other
and almost no compute goes to padding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepmoney.train.packed import IGNORE_INDEX


@dataclass
class Example:
    """One tokenized conversation."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class PackedSft:
    """Blocks of whole examples, plus what did not fit."""

    blocks: list[list[Example]] = field(default_factory=list)
    truncated: int = 0
    padding_tokens: int = 0


def conversations(path: Path) -> list[list[dict[str, str]]]:
    """Chat messages of every line of an alpaca or sharegpt JSONL file."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        if "conversations" in row:
            roles = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}
            messages += [{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]]
        else:
            prompt = row["instruction"] + (f"\n{row['input']}" if row.get("input") else "")
            messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
        out.append(messages)
    return out


def tokenize(messages: list[dict[str, str]], tokenizer: Any, train_on_prompt: bool = False) -> Example:
    """Token ids of a conversation, with labels only on the assistant turns (unless `train_on_prompt`).

    The conversation is tokenized once; which characters each turn added is found by rendering
    growing prefixes as text (chat templates are concatenative), and a token is learned when it
    starts inside an assistant turn. Tokenizing prefixes separately would be wrong: BPE merges
    across turn boundaries (e.g. the newlines before "Assistant:").
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    learned: list[tuple[int, int]] = []
    previous = 0
    for turn in range(len(messages)):
        end = len(tokenizer.apply_chat_template(messages[: turn + 1], tokenize=False))
        if train_on_prompt:
            learned.append((previous, end))
        elif messages[turn]["role"] == "assistant":
            # The "Assistant:" header is prompt (it is what generation starts from); the reply is learned.
            header = tokenizer.apply_chat_template(messages[:turn], tokenize=False, add_generation_prompt=True)
            learned.append((max(previous, len(header)), end))
        previous = end
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [
        token if any(lo <= start < hi for lo, hi in learned) else IGNORE_INDEX
        for token, (start, _) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    return Example(ids, labels)


def pack(examples: list[Example], block_size: int) -> PackedSft:
    """First-fit packing of whole examples into blocks; an example longer than a block is cut."""
    packed = PackedSft()
    room: list[int] = []
    for example in examples:
        if len(example.input_ids) > block_size:
            packed.truncated += 1
            example = Example(example.input_ids[:block_size], example.labels[:block_size])
        size = len(example.input_ids)
        slot = next((i for i, free in enumerate(room) if free >= size), None)
        if slot is None:
            packed.blocks.append([])
            room.append(block_size)
            slot = len(room) - 1
        packed.blocks[slot].append(example)
        room[slot] -= size
    packed.padding_tokens = sum(room)
    return packed


def block_item(block: list[Example], block_size: int, pad_id: int) -> dict[str, Any]:
    """One block as a dataset item: examples as segments, the rest padding (masked, not learned).

    `packed.collate` turns items into model inputs (positions restarting per example, the
    block-diagonal mask); `tokens` is the count of non-padding tokens.
    """
    ids: list[int] = []
    labels: list[int] = []
    starts: list[int] = []
    for example in block:
        starts.append(len(ids))
        ids += example.input_ids
        labels += [IGNORE_INDEX, *example.labels[1:]]  # a segment's first token has no context
    tokens = len(ids)
    if len(ids) < block_size:
        starts.append(len(ids))  # padding is a segment of its own: nothing attends to it
        labels += [IGNORE_INDEX] * (block_size - len(ids))
        ids += [pad_id] * (block_size - len(ids))
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "segment_starts": starts, "tokens": tokens}
