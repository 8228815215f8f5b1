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
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from datasketch import LeanMinHash, MinHashLSH

from deepmoney.config import DedupConfig
from deepmoney.data.text import cjk_ratio

_MAX_HASH = np.uint64((1 << 32) - 1)
_EMPTY = np.uint64(np.iinfo(np.uint64).max)
_WORD_BYTE = np.zeros(256, dtype=bool)  # bytes that belong to words: ASCII letters/digits, any non-ASCII
_WORD_BYTE[[*range(48, 58), *range(65, 91), *range(97, 123), 95, *range(128, 256)]] = True
_NOT_CJK_TEXT = re.compile(r"[\s\W_]+")


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


_P = np.uint64(0x100000001B3)  # FNV prime: odd, so invertible modulo 2**64
_P_INV = np.uint64(pow(int(_P), -1, 1 << 64))


_POWER_TABLES: list[np.ndarray] = []


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P**i and P**-i (mod 2**64) for i < n, from a table that grows as longer texts arrive."""
    if not _POWER_TABLES or _POWER_TABLES[0].size < n:
        size = max(n, 1 << 16, 2 * (_POWER_TABLES[0].size if _POWER_TABLES else 0))
        tables = []
        with np.errstate(over="ignore"):
            for base in (_P, _P_INV):
                table = np.empty(size, dtype=np.uint64)
                table[0] = 1
                np.multiply.accumulate(np.full(size - 1, base, dtype=np.uint64), out=table[1:])
                tables.append(table)
        _POWER_TABLES[:] = tables
    return _POWER_TABLES[0][:n], _POWER_TABLES[1][:n]


def _word_hashes(text: str) -> np.ndarray:
    """A 64-bit hash per word (run of ASCII letters/digits or non-ASCII bytes), fully vectorised.

    With S[k] = sum(b[i] * P**i for i < k), a word spanning [s, e) hashes to (S[e] - S[s]) * P**-s,
    which depends only on the word's bytes: one prefix sum replaces a Python loop over words.
    """
    data = np.frombuffer(text.lower().encode("utf-8"), dtype=np.uint8)
    if data.size == 0:
        return np.zeros(0, dtype=np.uint64)
    is_word = _WORD_BYTE[data]
    edges = np.diff(is_word.astype(np.int8), prepend=0, append=0)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if starts.size == 0:
        return np.zeros(0, dtype=np.uint64)
    powers, inverse = _powers(data.size + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(data.size + 1, dtype=np.uint64)
        np.cumsum(data.astype(np.uint64) * powers[:-1], out=prefix[1:])
        return (prefix[ends] - prefix[starts]) * inverse[starts]


def shingle_hashes(text: str, word_ngram: int, cjk_ngram: int) -> np.ndarray:
    """Unique 64-bit hashes of the document's shingles (word n-grams, or character n-grams for CJK)."""
    if cjk_ratio(text) > 0.3:
        chars = _NOT_CJK_TEXT.sub("", text.lower())
        units = np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        n = cjk_ngram
    else:
        units = _word_hashes(text)
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
    """Computes MinHash signatures; cheap to build, picklable, so worker processes each have one.

    One-permutation hashing with rotation densification (Li et al. 2012; Shrivastava & Li 2014):
    each shingle is hashed once, the hash picks one of `num_perm` bins and the bin keeps its minimum.
    That is O(shingles) instead of the O(shingles * num_perm) of classic MinHash, with the same
    property LSH relies on: two signatures agree in a position with probability ≈ their Jaccard
    similarity. Empty bins (short documents) borrow from the next non-empty bin, offset by the
    distance, so that they agree only when the same bin pattern occurs in both documents.
    """

    def __init__(self, config: DedupConfig, seed: int = 1) -> None:
        self.config = config
        rng = np.random.default_rng(seed)
        self._a = np.uint64(int(rng.integers(0, 2**63)) * 2 + 1)  # odd multiplier: a bijection on uint64
        self._b = np.uint64(int(rng.integers(0, 2**63)))

    def signature(self, text: str) -> np.ndarray:
        """The MinHash values (num_perm uint64) of `text`'s shingles."""
        k = self.config.num_perm
        hashes = shingle_hashes(text, self.config.word_ngram, self.config.cjk_ngram)
        values = np.full(k, _EMPTY, dtype=np.uint64)
        if hashes.size == 0:
            return values
        with np.errstate(over="ignore"):
            mixed = hashes * self._a + self._b
        np.minimum.at(values, (mixed >> np.uint64(32)) % np.uint64(k), mixed & _MAX_HASH)
        empty = values == _EMPTY
        if empty.any():
            filled = np.flatnonzero(~empty)
            position = np.arange(k)
            after = np.searchsorted(filled, position)
            source = filled[np.where(after == filled.size, 0, after)]
            distance = (source - position) % k
            values = values[source] + distance.astype(np.uint64) * np.uint64(1 << 32)
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
        self.journal: IO[bytes] | None = None  # kept documents are appended here, for a resume

    def _record_size(self) -> int:
        return 16 + 32 + 8 * self.config.num_perm

    def replay(self, journal: Path, length: int) -> int:
        """Rebuild the index from the first `length` bytes of a journal; return documents replayed."""
        size = self._record_size()
        data = journal.read_bytes()[:length]
        for start in range(0, len(data) - size + 1, size):
            record = data[start : start + size]
            doc_id, key = record[:16].decode(), record[16:48].hex()
            values = np.frombuffer(record[48:], dtype=np.uint64).copy()
            self._remember(doc_id, key, LeanMinHash(seed=self._seed, hashvalues=values, scheme="legacy"))
        return len(data) // size

    def _remember(self, doc_id: str, key: str, signature: LeanMinHash) -> None:
        self._exact[key] = doc_id
        if doc_id not in self._signatures:
            self._lsh.insert(doc_id, signature)
            self._signatures[doc_id] = signature

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
        self._remember(doc_id, key, signature)
        if self.journal is not None:
            record = doc_id.encode().ljust(16)[:16] + bytes.fromhex(key) + hashvalues.astype(np.uint64).tobytes()
            self.journal.write(record)
        return None
