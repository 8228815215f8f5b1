"""Packing: no token is lost except the final partial block; boundaries are recorded."""

from __future__ import annotations

import numpy as np

from deepmoney.data.pack import BlockPacker


def _documents(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 1000, size=int(rng.integers(1, 700)), dtype=np.int32) for _ in range(count)]


def test_every_token_lands_in_a_block_except_the_last_partial_one() -> None:
    docs = _documents(0, 200)
    packer = BlockPacker(128)
    blocks = [b for i, d in enumerate(docs) for b in packer.add(i, d)]
    dropped = packer.finish()
    stream = np.concatenate(docs)
    assert dropped == stream.size % 128
    assert len(blocks) * 128 + dropped == stream.size
    np.testing.assert_array_equal(np.concatenate([b.input_ids for b in blocks]), stream[: len(blocks) * 128])


def test_segments_locate_each_document_piece() -> None:
    docs = _documents(1, 50)
    packer = BlockPacker(64)
    blocks = [b for i, d in enumerate(docs) for b in packer.add(i, d)]
    for block in blocks:
        ends = [*block.segment_starts[1:], 64]
        assert block.segment_starts[0] == 0
        for start, end, doc, offset in zip(
            block.segment_starts, ends, block.segment_docs, block.segment_offsets, strict=True
        ):
            np.testing.assert_array_equal(block.input_ids[start:end], docs[doc][offset : offset + end - start])


def test_llama_factory_style_batching_drops_more() -> None:
    """The baseline this packer replaces: per-batch concatenation drops each batch's remainder."""
    docs = _documents(2, 1000)
    block = 512
    baseline_dropped = sum(sum(d.size for d in docs[i : i + 100]) % block for i in range(0, len(docs), 100))
    packer = BlockPacker(block)
    for i, d in enumerate(docs):
        list(packer.add(i, d))
    assert packer.finish() < block <= baseline_dropped
