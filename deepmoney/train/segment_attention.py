"""Causal attention computed per packed segment: a block costs the sum of its segments' squared lengths.

A packed block holds several segments (documents, sft examples) that must not see each other. A
block-diagonal mask over the whole block gives the right result but costs attention over the whole
block squared, and a masked kernel cannot skip the masked-out tiles. Here every segment is
attended on its own with the causal fast path of `torch.nn.functional.scaled_dot_product_attention`.

Segments are grouped by length bucket: each is right-padded to its bucket's length and the bucket
runs as one batched causal call. Padding sits after a segment's real tokens, so causality alone
keeps it out of every real query, and the outputs at padded queries are dropped — no mask at all,
and the result equals the block-diagonal mask (tested: loss and every gradient). Buckets trade at
most ~1/8 extra length per segment for a few dozen kernel calls per layer instead of one per length.

The grouping (`SegmentPlan`) is made once per batch on the host by `packed.collate`, inside the
data-loader workers, and reaches every attention layer as the `packed_segments` keyword of the
model call: the Hugging Face causal LMs pass unknown keywords down to `ALL_ATTENTION_FUNCTIONS`
(transformers 5.24, `models/llama/modeling_llama.py`: `LlamaForCausalLM.forward` -> `LlamaModel.forward`
-> `LlamaDecoderLayer.forward` -> `LlamaAttention.forward` -> `attention_interface(..., **kwargs)`).
Because this implementation registers no mask function, `masking_utils._preprocess_mask_arguments`
returns no mask for it: the model never builds an L x L mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

SEGMENT_SDPA = "segment_sdpa"  # the `attn_implementation` name
KWARG = "packed_segments"  # the model-call keyword that carries the `SegmentPlan`


@dataclass
class SegmentPlan:
    """Where the segments of a (batch, length) block of tokens are, grouped into length buckets.

    `buckets` lists (bucket length, number of segments). `gather` lists, bucket after bucket and
    segment after segment, the tokens (indices into the flattened batch x length) each padded
    segment reads: its own tokens, then its last token repeated. `scatter` (batch x length) is
    every token's entry in `gather`, i.e. its row in the concatenated bucket outputs.
    A plain object, not a tensor: it keeps the bucket lengths on the host (no device sync per layer)
    and moves its index tensors with `.to()`, which is all the training loop calls on an input.
    """

    batch: int
    length: int
    buckets: list[tuple[int, int]]
    gather: torch.Tensor
    scatter: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SegmentPlan:
        """The same plan with its index tensors on `device`."""
        return SegmentPlan(self.batch, self.length, self.buckets, self.gather.to(device, non_blocking=non_blocking),
                           self.scatter.to(device, non_blocking=non_blocking))  # fmt: skip

    def pin_memory(self) -> SegmentPlan:
        """The same plan in pinned host memory (called by a DataLoader with `pin_memory=True`)."""
        return SegmentPlan(self.batch, self.length, self.buckets, self.gather.pin_memory(), self.scatter.pin_memory())


def bucket_length(length: int, block: int) -> int:
    """`length` rounded up to a multiple of max(16, length / 8 rounded down to a power of two), at most `block`."""
    step = max(16, (1 << max(0, length.bit_length() - 1)) // 8)
    return max(length, min(block, -(-length // step) * step))


def segment_plan(starts: list[list[int]], length: int) -> SegmentPlan | None:
    """The plan for rows of `length` tokens with these segment starts; None when every row is one segment."""
    if all(len(s) == 1 for s in starts):
        return None  # plain causal attention over the whole block is the same thing
    groups: dict[int, list[tuple[int, int]]] = {}  # bucket length -> (first token, length) of its segments
    for row, row_starts in enumerate(starts):
        bounds = [0, *row_starts[1:]]  # as in packed.block_causal_mask: tokens before the second start are one segment
        for left, right in zip(bounds, [*bounds[1:], length], strict=True):
            if right > left:
                groups.setdefault(bucket_length(right - left, length), []).append((row * length + left, right - left))
    scatter = torch.empty(len(starts) * length, dtype=torch.long)
    buckets, gathers, base = [], [], 0
    for size in sorted(groups):
        first, lengths = (torch.tensor(c) for c in zip(*groups[size], strict=True))
        offsets = torch.arange(size)
        index = first[:, None] + torch.minimum(offsets[None, :], lengths[:, None] - 1)
        real = offsets[None, :] < lengths[:, None]
        scatter[index[real]] = base + torch.arange(index.numel()).view_as(index)[real]
        buckets.append((size, len(first)))
        gathers.append(index.flatten())
        base += index.numel()
    return SegmentPlan(len(starts), length, buckets, torch.cat(gathers), scatter)


def segment_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention for `AttentionInterface`: query (B, H, L, D), key/value (B, H_kv, L, D) -> (B, L, H, D).

    With a `packed_segments` plan every segment attends causally to itself only; without one (a
    batch of whole-segment blocks, or an explicit 4D mask) this is transformers' own sdpa attention.
    """
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward, use_gqa_in_sdpa

    plan: SegmentPlan | None = kwargs.pop(KWARG, None)
    if plan is None or attention_mask is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)  # fmt: skip
    batch, heads, length, _ = query.shape
    if (batch, length) != (plan.batch, plan.length):
        raise ValueError(f"packed_segments describes {plan.batch} x {plan.length} tokens, the layer got {batch} x "
                         f"{length}; segment_sdpa needs the plan of this very batch (training, no cache)")  # fmt: skip
    window = kwargs.get("sliding_window")
    if window is not None and plan.buckets[-1][0] > window:
        raise NotImplementedError("segment_sdpa does not implement sliding-window attention; use sdpa or eager")

    def buckets(x: torch.Tensor) -> list[torch.Tensor]:
        """(B, h, L, D) -> one (segments, h, bucket length, D) tensor per bucket.

        One gather for all buckets, so that its backward is one scatter-add, not one per bucket."""
        tokens = x.transpose(1, 2).reshape(batch * length, x.shape[1], x.shape[-1])  # a view for projected states
        flat = tokens.index_select(0, plan.gather).split([size * n for size, n in plan.buckets])
        return [f.view(n, size, *f.shape[1:]).transpose(1, 2) for f, (size, n) in zip(flat, plan.buckets, strict=True)]

    # Grouped-query attention as transformers' sdpa path does it without a mask: the kernel's enable_gqa where
    # supported, else key/value heads repeated (integrations/sdpa_attention.py, use_gqa_in_sdpa).
    gqa = {}
    if key.shape[1] != heads:
        if use_gqa_in_sdpa(None, key, value):
            gqa = {"enable_gqa": True}
        else:
            key, value = repeat_kv(key, heads // key.shape[1]), repeat_kv(value, heads // value.shape[1])
    outputs = []
    for q, k, v in zip(buckets(query), buckets(key), buckets(value), strict=True):
        # Called directly rather than through sdpa_attention_forward, which copies every output to (B, L, H, D):
        # the kernels' outputs already have that layout, so the transpose below is free.
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling,
                                                               is_causal=True, **gqa)  # fmt: skip
        outputs.append(out.transpose(1, 2).reshape(-1, heads, value.shape[-1]))
    return torch.cat(outputs).index_select(0, plan.scatter).view(batch, length, heads, value.shape[-1]), None


def register() -> None:
    """Make `attn_implementation="segment_sdpa"` known to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(SEGMENT_SDPA, segment_sdpa_attention)
