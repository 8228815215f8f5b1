"""Packing token streams into fixed-length blocks without losing tokens.

Documents are concatenated (each ending with EOS) and cut into `block_size` blocks; a document
longer than the room left in a block continues in the next one. Only the final partial block is
dropped (LLaMA-Factory drops the remainder of every preprocessing batch). Each block records where
its segments start, which document each segment belongs to and the segment's offset inside that
document, so training can reset positions and mask attention at document boundaries.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Block:
    """One packed training example."""

    input_ids: np.ndarray  # int32, shape (block_size,)
    segment_starts: list[int]  # offsets in the block where a segment begins; first is 0
    segment_docs: list[int]  # document index (documents.jsonl order) of each segment
    segment_offsets: list[int]  # token offset inside its document where each segment begins


@dataclass
class BlockPacker:
    """Accumulates documents' token ids and emits full blocks."""

    block_size: int
    tokens_in: int = 0
    _buffer: np.ndarray = field(init=False)
    _fill: int = 0
    _starts: list[int] = field(default_factory=list)
    _docs: list[int] = field(default_factory=list)
    _offsets: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError("block_size must be positive")
        self._buffer = np.empty(self.block_size, dtype=np.int32)

    def add(self, doc_index: int, ids: np.ndarray | list[int]) -> Iterator[Block]:
        """Append one document's tokens; yield every block that becomes full."""
        ids = np.asarray(ids, dtype=np.int32)
        self.tokens_in += int(ids.size)
        position = 0
        while position < ids.size:
            room = self.block_size - self._fill
            take = min(room, ids.size - position)
            self._starts.append(self._fill)
            self._docs.append(doc_index)
            self._offsets.append(position)
            self._buffer[self._fill : self._fill + take] = ids[position : position + take]
            self._fill += take
            position += take
            if self._fill == self.block_size:
                yield Block(self._buffer.copy(), self._starts, self._docs, self._offsets)
                self._fill = 0
                self._starts, self._docs, self._offsets = [], [], []

    def state(self) -> dict:
        """The unfinished block, for a checkpoint (at most `block_size` tokens)."""
        return {
            "tokens_in": self.tokens_in,
            "buffer": self._buffer[: self._fill].tolist(),
            "starts": self._starts,
            "docs": self._docs,
            "offsets": self._offsets,
        }

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint's unfinished block."""
        self.tokens_in = state["tokens_in"]
        self._fill = len(state["buffer"])
        self._buffer[: self._fill] = state["buffer"]
        self._starts, self._docs, self._offsets = list(state["starts"]), list(state["docs"]), list(state["offsets"])

    def finish(self) -> int:
        """Drop the final partial block; return how many tokens that was."""
        dropped = self._fill
        self._fill = 0
        self._starts, self._docs, self._offsets = [], [], []
        return dropped
