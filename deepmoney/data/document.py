"""The records that flow through the data stages."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Document:
    """One report, textbook module or article, as read from its source."""

    source: str
    text: str
    title: str | None = None
    publisher: str | None = None
    date: str | None = None  # ISO 8601 (YYYY-MM-DD)
    subject: str | None = None
    language: str | None = None  # "en", "zh", ...
    kind: str = "report"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def doc_id(self) -> str:
        """A stable id: the digest of where it came from (file, or file + line for JSONL)."""
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()[:16]

    def to_index(self) -> dict[str, Any]:
        """The document's metadata without its text, for documents.jsonl."""
        return {
            "doc_id": self.doc_id,
            "source": self.source,
            "title": self.title,
            "publisher": self.publisher,
            "date": self.date,
            "subject": self.subject,
            "language": self.language,
            "kind": self.kind,
            "meta": self.meta,
        }


@dataclass
class Chapter:
    """A titled part of a document, the unit that sft synthesis asks questions about."""

    doc_id: str
    index: int
    title: str
    text: str
