"""The per-document work of the pt build, done in worker processes.

A task is one input file, or a chunk of one JSONL file's lines. The worker reads, cleans, splits
into chapters, writes the context header, tokenizes and computes the dedup signature; it returns
`Prepared` records (without the text, which the main process no longer needs) in input order. The
main process only makes the order-dependent decisions (dedup), packs and writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from deepmoney.config import DeepmoneyConfig
from deepmoney.data.chapters import split_chapters
from deepmoney.data.dedup import MinHasher, exact_key
from deepmoney.data.document import Document
from deepmoney.data.ingest import read_documents
from deepmoney.data.readers import CollectionIndex
from deepmoney.data.summarize import Summarizer, pt_text
from deepmoney.data.tokenize import Encoder, TokenizerSpec
from deepmoney.errors import InputRejected
from deepmoney.storage import FileRef, Storage


@dataclass
class Task:
    """Some files to read, or (`lines` set) a chunk of one JSONL file.

    Small files travel in groups: one round trip to a worker costs about as much as cleaning a
    short statement. `files_done` is how many input files this task finishes (for progress).
    """

    refs: list[FileRef]
    lines: list[tuple[int, bytes]] | None = None
    files_done: int = 1


@dataclass
class Prepared:
    """One document, ready for the main process to keep (pack its ids) or drop."""

    doc: Document  # metadata only: `text` is emptied before the record leaves the worker
    chars: int
    chapters: list[str] = field(default_factory=list)
    key: str = ""
    signature: np.ndarray | None = None
    ids: np.ndarray | None = None  # None when too short to keep
    summary: str | None = None  # where the context summary came from


@dataclass
class TaskResult:
    """What one task produced; `digests`: the inputs' sha256 when computed already (a stored shard's task)."""

    task: Task
    items: list[tuple[FileRef, Prepared | InputRejected]]
    digests: dict[str, str] = field(default_factory=dict)


class DocumentProcessor:
    """Callable on a Task; built once per worker process."""

    def __init__(
        self,
        config: DeepmoneyConfig,
        tokenizer: TokenizerSpec,
        storage: Storage,
        collections: CollectionIndex,
        summarizer: Summarizer,
    ) -> None:
        self.config = config
        self.storage = storage
        self.collections = collections
        self.summarizer = summarizer
        self.hasher = MinHasher(config.data.dedup)
        self.encoder = Encoder(tokenizer, config.data.add_bos)

    def __call__(self, task: Task) -> TaskResult:
        data = self.config.data
        raw = [
            (ref, item)
            for ref in task.refs
            for item in read_documents(ref, self.storage, data, self.collections, task.lines)
        ]
        items: list[tuple[FileRef, Prepared | InputRejected]] = []
        texts: list[str] = []
        owners: list[Prepared] = []
        for ref, item in raw:
            if isinstance(item, InputRejected):
                items.append((ref, item))
                continue
            prepared = Prepared(doc=item, chars=len(item.text))
            items.append((ref, prepared))
            if prepared.chars < data.min_chars:
                continue
            prepared.key = exact_key(item.text)  # also decides the held-out split (data/split.py)
            if data.dedup.enabled:
                prepared.signature = self.hasher.signature(item.text)
            chapters = split_chapters(item, data.chapters)
            prepared.chapters = [c.title for c in chapters]
            summary = self.summarizer.summarize(item, chapters) if data.summary.enabled else None
            prepared.summary = summary.source if summary else None
            texts.append(pt_text(item, summary))
            owners.append(prepared)
        for prepared, ids in zip(owners, self.encoder.encode_many(texts), strict=True):
            prepared.ids = ids
        for _, item in items:
            if isinstance(item, Prepared):
                item.doc.text = ""
        return TaskResult(task, items)
