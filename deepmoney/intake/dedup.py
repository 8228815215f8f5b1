"""Near-duplicate news over a sliding window of recent items.

A wire story is rewritten and re-sent for days: the same MinHash signatures and LSH index as the
corpus build (`data.dedup`: word shingles for spaced text, character shingles for Chinese) decide
whether an item repeats one of the last `window` items kept, and name the kept item's id. Items
older than the window are forgotten, so memory stays bounded on an endless stream and old news
told again is news again.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from datasketch import LeanMinHash, MinHashLSH

from deepmoney.config import DedupConfig
from deepmoney.data.dedup import DuplicateOf, MinHasher, exact_key


class WindowDeduplicator:
    """Says whether a news item duplicates one of the last `window` items kept, and remembers it if not."""

    def __init__(self, config: DedupConfig, window: int, seed: int = 1) -> None:
        if window < 1:
            raise ValueError(f"the dedup window must hold at least one item, got {window}")
        self.config, self.window, self._seed = config, window, seed
        self.hasher = MinHasher(config, seed)
        self._lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        self._kept: OrderedDict[str, tuple[str, LeanMinHash]] = OrderedDict()  # id -> (exact key, signature)
        self._exact: dict[str, str] = {}  # exact key -> id

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._kept

    def check(self, item_id: str, text: str) -> DuplicateOf | None:
        """None if `text` is new (it is kept, and the oldest kept item leaves a full window); else what it repeats."""
        if not self.config.enabled:
            return None
        if item_id in self._kept:
            raise ValueError(f"item id {item_id!r} was already kept; ids must be unique within the window")
        key = exact_key(text)
        if key in self._exact:
            return DuplicateOf(self._exact[key], "exact", 1.0)
        values = self.hasher.signature(text).astype(np.uint64)
        signature = LeanMinHash(seed=self._seed, hashvalues=values, scheme="legacy")
        best: DuplicateOf | None = None
        for candidate in self._lsh.query(signature):
            similarity = signature.jaccard(self._kept[candidate][1])
            if similarity >= self.config.threshold and (best is None or similarity > best.similarity):
                best = DuplicateOf(candidate, "near", similarity)
        if best is not None:
            return best
        self._keep(item_id, key, signature)
        return None

    def _keep(self, item_id: str, key: str, signature: LeanMinHash) -> None:
        self._kept[item_id] = (key, signature)
        self._exact[key] = item_id
        self._lsh.insert(item_id, signature)
        while len(self._kept) > self.window:
            old_id, (old_key, _) = self._kept.popitem(last=False)
            self._lsh.remove(old_id)
            if self._exact.get(old_key) == old_id:
                del self._exact[old_key]
