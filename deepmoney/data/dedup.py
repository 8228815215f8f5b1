"""Exact and near-duplicate removal.

Near duplicates are found with MinHash signatures in an LSH index (datasketch). Shingles are word
n-grams for space-separated text and character n-grams for Chinese, whose words are not separated
by spaces. Shingle hashing and the MinHash permutations are vectorised with numpy (datasketch's own
`update` hashes each shingle in Python, which cost more than the rest of the pt build together);
datasketch keeps the LSH index.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass

import numpy as np
from datasketch import LeanMinHash, MinHashLSH

from deepmoney.config import DedupConfig
from deepmoney.data.text import cjk_ratio

_MAX_HASH = np.uint64((1 << 32) - 1)
_WORD_BYTES = re.compile(rb"[A-Za-z0-9_\x80-\xff]+")  # words of UTF-8 bytes; non-ASCII letters stay inside
_NOT_CJK_TEXT = re.compile(r"[\s\W_]+")
_CHUNK = 65_536  # shingles per numpy pass: bounds memory to CHUNK * num_perm * 8 bytes


@dataclass(frozen=True)
class DuplicateOf:
    """Why a document was dropped: which earlier document it duplicates, and how closely."""

    kept_id: str
    kind: str  # "exact" | "near"
    similarity: float

    def reason(self) -> str:
        """A human-readable reason for the dropped-documents report."""
        if self.kind == "exact":
            return f"exact duplicate of {self.kept_id}"
        return f"near duplicate of {self.kept_id} (estimated Jaccard {self.similarity:.2f})"


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


def shingle_hashes(text: str, word_ngram: int, cjk_ngram: int) -> np.ndarray:
    """Unique 64-bit hashes of the document's shingles (word n-grams, or character n-grams for CJK)."""
    if cjk_ratio(text) > 0.3:
        chars = _NOT_CJK_TEXT.sub("", text.lower())
        units = np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        n = cjk_ngram
    else:
        words = _WORD_BYTES.findall(text.lower().encode("utf-8"))
        ids = {w: zlib.crc32(w) for w in set(words)}  # hash each distinct word once
        units = np.fromiter(map(ids.__getitem__, words), dtype=np.uint64, count=len(words))
        n = word_ngram
    if units.size == 0:
        return units
    if units.size < n:
        n = int(units.size)
    # Polynomial rolling hash over each window of n units (uint64 arithmetic wraps, as intended).
    with np.errstate(over="ignore"):
        acc = np.zeros(units.size - n + 1, dtype=np.uint64)
        for k in range(n):
            acc = acc * np.uint64(1_000_003) + units[k : units.size - n + 1 + k]
        acc ^= acc >> np.uint64(29)
        acc *= np.uint64(0xBF58476D1CE4E5B9)
        acc ^= acc >> np.uint64(32)
    return np.unique(acc)


def exact_key(text: str) -> str:
    """Digest of the text with case and whitespace normalised: equal keys are exact duplicates."""
    return hashlib.sha256(_normalized(text).encode("utf-8")).hexdigest()


class MinHasher:
    """Computes MinHash signatures; cheap to build, picklable, so worker processes each have one."""

    def __init__(self, config: DedupConfig, seed: int = 1) -> None:
        self.config = config
        rng = np.random.default_rng(seed)
        # Multiply-shift hashing (Dietzfelbinger): one multiply and one add per value, no modulo.
        self._a = rng.integers(0, np.iinfo(np.uint64).max, size=config.num_perm, dtype=np.uint64) | np.uint64(1)
        self._b = rng.integers(0, np.iinfo(np.uint64).max, size=config.num_perm, dtype=np.uint64)

    def signature(self, text: str) -> np.ndarray:
        """The MinHash values (num_perm uint64) of `text`'s shingles."""
        hashes = shingle_hashes(text, self.config.word_ngram, self.config.cjk_ngram)
        values = np.full(self.config.num_perm, _MAX_HASH, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for start in range(0, hashes.size, _CHUNK):
                permuted = (hashes[start : start + _CHUNK, None] * self._a + self._b) >> np.uint64(32)
                values = np.minimum(values, permuted.min(axis=0))
        return values


class Deduplicator:
    """Remembers the documents kept so far and says whether a new one duplicates any of them."""

    def __init__(self, config: DedupConfig, seed: int = 1) -> None:
        self.config = config
        self.hasher = MinHasher(config, seed)
        self._seed = seed
        self._exact: dict[str, str] = {}
        self._lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        self._signatures: dict[str, LeanMinHash] = {}

    def check(self, doc_id: str, text: str) -> DuplicateOf | None:
        """None if `text` is new (and remember it); otherwise which kept document it duplicates."""
        if not self.config.enabled:
            return None
        return self.check_prepared(doc_id, exact_key(text), self.hasher.signature(text))

    def check_prepared(self, doc_id: str, key: str, hashvalues: np.ndarray) -> DuplicateOf | None:
        """`check` with the exact key and signature already computed (by a worker process)."""
        if not self.config.enabled:
            return None
        if key in self._exact:
            return DuplicateOf(self._exact[key], "exact", 1.0)
        # The values come from our own hash family, which datasketch only compares for equality.
        signature = LeanMinHash(seed=self._seed, hashvalues=hashvalues, scheme="legacy")
        best: DuplicateOf | None = None
        for candidate in self._lsh.query(signature):
            similarity = signature.jaccard(self._signatures[candidate])
            if similarity >= self.config.threshold and (best is None or similarity > best.similarity):
                best = DuplicateOf(candidate, "near", similarity)
        if best is not None:
            return best
        self._exact[key] = doc_id
        if doc_id not in self._signatures:
            self._lsh.insert(doc_id, signature)
            self._signatures[doc_id] = signature
        return None
