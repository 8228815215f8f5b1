"""Labelled sentences for the subjective/objective classifier: the set we ship, and the user's JSONL files.

A line is `{"text": "...", "label": "objective" | "subjective", "language": "en" | "zh"}`; the
language may be left out (it is detected). Unknown labels, empty texts and texts that two lines
label differently are refused with the file and line; a text repeated with the same label counts once.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from deepmoney.data.text import detect_language
from deepmoney.errors import UserError
from deepmoney.jsonl import json_lines

LABELS = ("objective", "subjective")  # index = class id of the classifier
SHIPPED = Path(__file__).with_name("data") / "subjectivity.jsonl"


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled sentence."""

    text: str
    label: str
    language: str


def _example(record: object, where: str) -> Example:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object with text and label")
    text, label = record.get("text"), record.get("label")
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: 'text' must be a non-empty string")
    if label not in LABELS:
        raise UserError(f"{where}: unknown label {label!r}; a label is one of {', '.join(LABELS)}")
    language = record.get("language") or detect_language(text)
    if language not in ("en", "zh"):
        raise UserError(f"{where}: language must be 'en' or 'zh' (or left out), not {language!r}")
    return Example(" ".join(text.split()), label, language)


def read_labelled(paths: list[Path] | None = None) -> list[Example]:
    """The examples of the JSONL files at `paths` (None: the shipped set), in file order, duplicates once."""
    examples: dict[str, Example] = {}
    where_of: dict[str, str] = {}
    for path in paths or [SHIPPED]:
        for _, where, record in json_lines(path, "labelled file", "give --data a JSONL file of labelled sentences"):
            example = _example(record, where)
            seen = examples.get(example.text)
            if seen is not None and seen.label != example.label:
                raise UserError(f"{where}: the same text is labelled {seen.label} at {where_of[example.text]}")
            examples.setdefault(example.text, example)
            where_of.setdefault(example.text, where)
    if not examples:
        raise UserError(f"no labelled sentences in {', '.join(str(p) for p in paths or [SHIPPED])}")
    counts = {label: sum(e.label == label for e in examples.values()) for label in LABELS}
    if min(counts.values()) < 2:
        raise UserError(f"the labelled data need at least 2 sentences of each label, found {counts}")
    return list(examples.values())


def split(examples: list[Example], heldout_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held-out): the same share of every (language, label) group held out, chosen by the seed."""
    groups: dict[tuple[str, str], list[Example]] = defaultdict(list)
    for example in examples:
        groups[(example.language, example.label)].append(example)
    train: list[Example] = []
    heldout: list[Example] = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda e: hashlib.sha256(e.text.encode()).hexdigest())
        random.Random(f"{seed}:{key}").shuffle(members)
        cut = round(len(members) * heldout_fraction) if len(members) > 1 else 0
        heldout += members[:cut]
        train += members[cut:]
    return train, heldout


def data_digest(examples: list[Example]) -> str:
    """A digest of the examples (their texts, labels and languages, in order)."""
    blob = json.dumps([[e.text, e.label, e.language] for e in examples], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
