"""Exact and near-duplicate detection."""

from __future__ import annotations

import random

from deepmoney.config import DedupConfig
from deepmoney.data.dedup import Deduplicator, shingle_hashes


def _english(seed: int, words: int = 600) -> str:
    rng = random.Random(seed)
    vocab = [f"term{i}" for i in range(3000)]
    return " ".join(rng.choice(vocab) for _ in range(words))


def _chinese(seed: int, chars: int = 1500) -> str:
    rng = random.Random(seed)
    return "".join(chr(rng.randint(0x4E00, 0x4E00 + 2000)) for _ in range(chars))


def test_exact_duplicate_ignores_case_and_spacing() -> None:
    dedup = Deduplicator(DedupConfig())
    text = _english(1)
    assert dedup.check("a", text) is None
    found = dedup.check("b", "  " + text.upper().replace(" ", "   "))
    assert found is not None and found.kind == "exact" and found.kept_id == "a"


def test_near_duplicate_with_a_small_edit_is_found() -> None:
    dedup = Deduplicator(DedupConfig(threshold=0.8))
    text = _english(2)
    assert dedup.check("orig", text) is None
    words = text.split()
    words[100] = "corrected"
    found = dedup.check("reissue", " ".join(words) + " Reissued to correct a typo.")
    assert found is not None and found.kind == "near" and found.kept_id == "orig"
    assert found.similarity >= 0.8 and "near duplicate of orig" in found.reason()


def test_distinct_documents_are_all_kept() -> None:
    dedup = Deduplicator(DedupConfig())
    assert all(dedup.check(str(i), _english(100 + i)) is None for i in range(30))
    assert all(dedup.check(f"zh{i}", _chinese(200 + i)) is None for i in range(10))


def test_chinese_uses_character_shingles() -> None:
    dedup = Deduplicator(DedupConfig(threshold=0.8))
    text = _chinese(3)
    assert dedup.check("zh", text) is None
    edited = text[:700] + "修订" + text[702:]
    found = dedup.check("zh2", edited)
    assert found is not None and found.kind == "near"
    # Without spaces the whole text would be one "word": character shingles give many.
    assert shingle_hashes(text, 5, 5).size > 1000


def test_signature_is_deterministic_across_instances() -> None:
    text = _english(4)
    a = Deduplicator(DedupConfig()).hasher.signature(text)
    b = Deduplicator(DedupConfig()).hasher.signature(text)
    assert (a == b).all()


def test_disabled_dedup_keeps_everything() -> None:
    dedup = Deduplicator(DedupConfig(enabled=False))
    text = _english(5)
    assert dedup.check("a", text) is None and dedup.check("b", text) is None
