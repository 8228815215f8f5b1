"""Packed pt blocks as model inputs, with documents kept apart inside each block.

A block holds several segments (pieces of documents). Each segment gets its own positions
(starting at 0) and attends only to itself, and the first token of a segment is not a training
target for the last token of the segment before it. The result equals running every segment on its
own, without spending any compute on padding (tested). How segments are kept apart depends on the
attention implementation: `segment_sdpa` gets a `SegmentPlan` and attends per segment (cost: the
sum of the segments' squared lengths); `sdpa` and `eager` get a block-diagonal causal mask as a 4D
boolean mask (cost: the block's length squared).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from deepmoney.train.segment_attention import KWARG, SEGMENT_SDPA, segment_plan

IGNORE_INDEX = -100  # what Hugging Face losses skip


def segment_ids(starts: list[int], length: int) -> torch.Tensor:
    """Which segment each position of a block belongs to."""
    ids = torch.zeros(length, dtype=torch.long)
    for start in starts[1:]:
        ids[start:] += 1
    return ids


def position_ids(starts: list[int], length: int) -> torch.Tensor:
    """Positions that restart at 0 at every segment start."""
    positions = torch.arange(length)
    for left, right in zip(starts, [*starts[1:], length], strict=True):
        positions[left:right] -= left
    return positions


def block_causal_mask(starts: list[int], length: int) -> torch.Tensor:
    """(length, length) boolean mask: True where query i may attend to key j."""
    seg = segment_ids(starts, length)
    return (seg[:, None] == seg[None, :]) & torch.ones(length, length, dtype=torch.bool).tril()


def labels(input_ids: torch.Tensor, starts: list[int]) -> torch.Tensor:
    """Targets: the tokens themselves, except each segment's first token (it has no context in the block)."""
    out = input_ids.clone()
    out[[s for s in starts if s > 0]] = IGNORE_INDEX
    return out


class PackedPtDataset(Dataset):
    """The Parquet shards of a `deepmoney data build-pt` output, memory-mapped."""

    def __init__(self, directory: str | Path) -> None:
        shards = sorted(Path(directory, "data").glob("*.parquet"))
        if not shards:
            raise FileNotFoundError(f"no Parquet shards under {Path(directory, 'data')}; is this a build-pt output?")
        tables = [pq.read_table(p, columns=["input_ids", "segment_starts"], memory_map=True) for p in shards]
        table = pa.concat_tables(tables)
        self._ids = table.column("input_ids")
        self._starts = table.column("segment_starts")

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ids = torch.tensor(self._ids[index].as_py(), dtype=torch.long)
        starts = self._starts[index].as_py()
        return {"input_ids": ids, "segment_starts": starts}


def collate(batch: list[dict[str, Any]], attention: str = "sdpa") -> dict[str, Any]:
    """Stack blocks into model inputs: ids, labels, per-segment positions and what keeps segments apart.

    That is, for `attention="segment_sdpa"`, the segment plan as the `packed_segments` keyword; for
    any other attention implementation, the 4D block-diagonal attention mask. Items may carry their
    own labels (sft); pt labels follow from the segment starts. A batch in which every block is one
    whole segment needs neither: plain causal attention is the same thing and lets the attention
    kernel take its causal fast path. `n_tokens` counts non-padding tokens.
    """
    length = batch[0]["input_ids"].numel()
    single = all(len(b["segment_starts"]) == 1 for b in batch)
    out: dict[str, Any] = {
        "input_ids": torch.stack([b["input_ids"] for b in batch]),
        "labels": torch.stack([b["labels"] if "labels" in b else labels(b["input_ids"], b["segment_starts"])
                               for b in batch]),
        "position_ids": torch.stack([position_ids(b["segment_starts"], length) for b in batch]),
        "n_tokens": sum(b.get("tokens", length) for b in batch),
    }  # fmt: skip
    if single:
        return out
    if attention == SEGMENT_SDPA:
        out[KWARG] = segment_plan([b["segment_starts"] for b in batch], length)
    else:
        out["attention_mask"] = torch.stack([block_causal_mask(b["segment_starts"], length) for b in batch])[:, None]
    return out


def only_trained_logits(inputs: dict[str, Any]) -> dict[str, Any]:
    """Ask the model for logits only where a target is trained, and give it those targets.

    The output layer (hidden size x vocabulary) is the largest matmul of a small model and a large
    share of a big one; positions without a target (sft prompts, segment ends) need no logits.
    `logits_to_keep` as a boolean (batch, length) mask makes a Hugging Face causal LM project only
    those positions, flattened; `shift_labels` are their targets in the same order, so the model's
    own loss is the mean over exactly the tokens it would have counted (tested equal).
    """
    targets = inputs["labels"][:, 1:]
    trained = targets != IGNORE_INDEX
    keep = torch.nn.functional.pad(trained, (0, 1), value=False)
    return {**inputs, "logits_to_keep": keep, "shift_labels": targets[trained]}


def training_collate(batch: list[dict[str, Any]], attention: str = "sdpa") -> dict[str, Any]:
    """`collate` for this attention implementation, then `only_trained_logits`: what the training loop feeds."""
    return only_trained_logits(collate(batch, attention))
