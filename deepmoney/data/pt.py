"""The pt corpus: documents -> context header + text -> tokens -> packed Parquet blocks + manifest.

Everything streams: one file is read at a time, documents are tokenized in small batches and
blocks are written as they fill, so memory stays flat however large the corpus is (the dedup
index keeps num_perm * 8 bytes per document). The output is built in a private staging directory
and published with the manifest last, so an interrupted run leaves nothing half-written; a
re-run whose inputs, tokenizer and config are unchanged finds the manifest and reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from deepmoney import __version__
from deepmoney.config import DeepmoneyConfig
from deepmoney.data.chapters import split_chapters
from deepmoney.data.dedup import Deduplicator
from deepmoney.data.document import Document
from deepmoney.data.ingest import iter_documents, load_collections, resolve_inputs
from deepmoney.data.pack import BlockPacker
from deepmoney.data.shards import ShardWriter
from deepmoney.data.summarize import make_summarizer, pt_text
from deepmoney.errors import InputRejected, UserError
from deepmoney.models import load_tokenizer, tokenizer_digest
from deepmoney.storage import Storage, is_s3, join, sha256_file

log = logging.getLogger(__name__)

PT_FORMAT = "deepmoney.pt.v1"  # bump when the output layout or the record text changes
_MAX_ENCODE_CHARS = 200_000  # longer texts are tokenized in pieces to bound the tokenizer's memory


@dataclass
class PtBuildResult:
    """What `build_pt` did."""

    output: str
    manifest: dict[str, Any]
    reused: bool = False


@dataclass
class _Counts:
    documents_read: int = 0
    documents: int = 0
    chapters: int = 0
    too_short: int = 0
    exact: int = 0
    near: int = 0
    rejected: int = 0
    per_file: dict[str, dict[str, int]] = field(default_factory=dict)


def _pieces(text: str) -> list[str]:
    """Cut a huge text at whitespace into pieces the tokenizer can take one at a time."""
    if len(text) <= _MAX_ENCODE_CHARS:
        return [text]
    pieces, start = [], 0
    while start < len(text):
        end = min(start + _MAX_ENCODE_CHARS, len(text))
        if end < len(text):
            cut = text.rfind(" ", start + _MAX_ENCODE_CHARS // 2, end)
            end = cut if cut > start else end
        pieces.append(text[start:end])
        start = end
    return pieces


class _Tokenizing:
    """Batches pt texts through the Rust tokenizer (parallel over cores) into the packer."""

    def __init__(
        self, tokenizer: Any, config: DeepmoneyConfig, packer: BlockPacker, writer: ShardWriter, index: IO[str]
    ) -> None:
        self.backend = tokenizer.backend_tokenizer
        self.bos = [tokenizer.bos_token_id] if config.data.add_bos and tokenizer.bos_token_id is not None else []
        self.eos = [tokenizer.eos_token_id]
        self.batch = config.data.tokenize_batch
        self.packer, self.writer, self.index = packer, writer, index
        self.pending: list[tuple[int, str, dict[str, Any]]] = []
        encode = getattr(self.backend, "encode_batch_fast", None) or self.backend.encode_batch
        self._encode = lambda texts: [e.ids for e in encode(texts, add_special_tokens=False)]

    def add(self, doc_index: int, text: str, record: dict[str, Any]) -> None:
        self.pending.append((doc_index, text, record))
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        pieces, owners = [], []
        for slot, (_, text, _) in enumerate(self.pending):
            for piece in _pieces(text):
                pieces.append(piece)
                owners.append(slot)
        encoded = self._encode(pieces)
        per_doc: list[list[list[int]]] = [[] for _ in self.pending]
        for slot, ids in zip(owners, encoded, strict=True):
            per_doc[slot].append(ids)
        for (doc_index, _, record), parts in zip(self.pending, per_doc, strict=True):
            ids = np.concatenate(
                [np.asarray(self.bos, dtype=np.int32)]
                + [np.asarray(p, dtype=np.int32) for p in parts]
                + [np.asarray(self.eos, dtype=np.int32)]
            )
            record["tokens"] = int(ids.size)
            self.index.write(json.dumps(record, ensure_ascii=False) + "\n")
            for block in self.packer.add(doc_index, ids):
                self.writer.write(block)
        self.pending = []


def _fingerprint(
    files: list[Any], collections: list[Any], tokenizer: str, config: DeepmoneyConfig, summarizer: str
) -> str:
    payload = {
        "format": PT_FORMAT,
        "inputs": [[f.uri, f.size, f.version] for f in files],
        "collections": [[f.uri, f.size, f.version] for f in collections],
        "tokenizer": tokenizer,
        "data": config.data.model_dump(mode="json"),
        "summarizer": summarizer,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _existing_manifest(storage: Storage, output: str) -> dict[str, Any] | None:
    path = join(output, "manifest.json")
    if not storage.exists(path):
        return None
    try:
        return json.loads(storage.read_bytes(path))
    except (ValueError, UnicodeDecodeError):
        log.warning("ignoring unreadable %s; rebuilding", path)
        return None


def build_pt(
    inputs: list[str],
    tokenizer_uri: str,
    output: str,
    config: DeepmoneyConfig,
    *,
    strict: bool = False,
    quiet: bool = False,
    storage: Storage | None = None,
) -> PtBuildResult:
    """Build the packed pt corpus from `inputs` into `output` (a directory or S3 prefix)."""
    storage = storage or Storage(config.storage)
    output = str(output)
    started = time.perf_counter()
    storage.check_writable(output)
    summarizer = make_summarizer(config)
    resolved = resolve_inputs(inputs, storage)
    if strict and resolved.rejected:
        bad = resolved.rejected[0]
        raise UserError(f"{bad.path}: {bad.reason} (--strict stops at the first bad input)")
    with tempfile.TemporaryDirectory(prefix="deepmoney-tok-") as scratch:
        tokenizer, tokenizer_dir = load_tokenizer(tokenizer_uri, storage, Path(scratch))
        tok_digest = tokenizer_digest(tokenizer_dir)
    fingerprint = _fingerprint(resolved.files, resolved.collections, tok_digest, config, summarizer.name)
    previous = _existing_manifest(storage, output)
    if previous and previous.get("fingerprint") == fingerprint:
        log.info("%s is up to date (same inputs, tokenizer and config); reusing it", output)
        return PtBuildResult(output, previous, reused=True)

    data = config.data
    counts = _Counts(rejected=len(resolved.rejected))
    reports = _Reports()
    for r in resolved.rejected:
        log.warning("rejected %s: %s", r.path, r.reason)
        reports.reject(r)
    collections = load_collections(resolved.collections, storage)
    packer = BlockPacker(data.block_size)

    with storage.staging_dir(output) as staging:
        writer = ShardWriter(staging / "data", data.shard_rows)
        with open(staging / "documents.jsonl", "w", encoding="utf-8") as index:
            tokenizing = _Tokenizing(tokenizer, config, packer, writer, index)
            documents = iter_documents(resolved.files, storage, data, collections)
            with (
                tqdm(total=len(resolved.files), unit="file", desc="build-pt", disable=quiet, dynamic_ncols=True) as bar,
                logging_redirect_tqdm(),
            ):
                _consume(
                    documents, bar, tokenizing, summarizer, Deduplicator(data.dedup), config, counts, reports, strict
                )
            tokenizing.flush()
        tokens_dropped = packer.finish()
        shards = writer.close()
        # From here on the old output, if any, is being replaced: unmark it as complete first.
        storage.delete(join(output, "manifest.json"))
        if counts.documents == 0:
            reports.write(staging)
            shutil.rmtree(staging / "data")
            (staging / "documents.jsonl").unlink()
            storage.publish_tree(staging, output, last="rejected.jsonl")
            raise UserError(
                f"no usable documents in {', '.join(inputs)}: {counts.rejected} rejected, "
                f"{len(reports.dropped)} dropped (see {join(output, 'rejected.jsonl')})"
            )
        reports.write(staging)
        manifest = {
            "kind": "pt-corpus",
            "format": PT_FORMAT,
            "deepmoney_version": __version__,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "fingerprint": fingerprint,
            "documents": counts.documents,
            "documents_read": counts.documents_read,
            "chapters": counts.chapters,
            "tokens": packer.tokens_in,
            "blocks": writer.rows,
            "block_size": data.block_size,
            "tokens_dropped": tokens_dropped,
            "rejected": counts.rejected,
            "dropped": {"too_short": counts.too_short, "exact_duplicate": counts.exact, "near_duplicate": counts.near},
            "dedup_removed": counts.exact + counts.near,
            "skipped_collections": [c.uri for c in resolved.collections],
            "summarizer": summarizer.name if data.summary.enabled else None,
            "tokenizer": {
                "uri": tokenizer_uri,
                "digest": tok_digest,
                "vocab_size": len(tokenizer),
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
            },
            "config": data.model_dump(mode="json"),
            "inputs": [_input_entry(ref, counts.per_file.get(ref.uri, {})) for ref in resolved.files],
            "files": [
                {"path": p.relative_to(staging).as_posix(), "sha256": sha256_file(p)}
                for p in [*shards, staging / "documents.jsonl", staging / "dropped.jsonl", staging / "rejected.jsonl"]
            ],
            "seconds": round(time.perf_counter() - started, 3),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        _remove_stale_shards(storage, output, {p.name for p in shards})
        storage.publish_tree(staging, output)
    log.info(
        "pt corpus written to %s: %d documents, %d tokens, %d blocks",
        output,
        counts.documents,
        packer.tokens_in,
        writer.rows,
    )
    return PtBuildResult(output, manifest)


@dataclass
class _Reports:
    """rejected.jsonl (inputs that could not be read) and dropped.jsonl (documents left out)."""

    rejected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def reject(self, item: InputRejected) -> None:
        self.rejected.append(json.dumps({"path": item.path, "reason": item.reason}, ensure_ascii=False))

    def drop(self, doc: Document, reason: str) -> None:
        self.dropped.append(
            json.dumps({"doc_id": doc.doc_id, "source": doc.source, "reason": reason}, ensure_ascii=False)
        )

    def write(self, staging: Path) -> None:
        (staging / "rejected.jsonl").write_text("".join(f"{line}\n" for line in self.rejected), encoding="utf-8")
        (staging / "dropped.jsonl").write_text("".join(f"{line}\n" for line in self.dropped), encoding="utf-8")


def _consume(
    documents: Any,
    bar: Any,
    tokenizing: _Tokenizing,
    summarizer: Any,
    dedup: Deduplicator,
    config: DeepmoneyConfig,
    counts: _Counts,
    reports: _Reports,
    strict: bool,
) -> None:
    """The per-document loop: reject, drop (too short, duplicate), or split + summarize + tokenize."""
    data = config.data
    current = None
    for ref, item in documents:
        if ref.uri != current:
            if current is not None:
                bar.update(1)
                bar.set_postfix(docs=counts.documents, tokens=tokenizing.packer.tokens_in, refresh=False)
            current = ref.uri
        file_counts = counts.per_file.setdefault(ref.uri, {"documents": 0, "rejected": 0, "dropped": 0})
        if isinstance(item, InputRejected):
            if strict:
                raise UserError(f"{item.path}: {item.reason} (--strict stops at the first bad input)")
            log.warning("rejected %s: %s", item.path, item.reason)
            reports.reject(item)
            counts.rejected += 1
            file_counts["rejected"] += 1
            continue
        counts.documents_read += 1
        reason = _drop_reason(item, data.min_chars, dedup, counts)
        if reason:
            file_counts["dropped"] += 1
            reports.drop(item, reason)
            continue
        chapters = split_chapters(item, data.chapters)
        summary = summarizer.summarize(item, chapters) if data.summary.enabled else None
        record = {
            "index": counts.documents,
            **item.to_index(),
            "chars": len(item.text),
            "chapters": [c.title for c in chapters],
        }
        tokenizing.add(counts.documents, pt_text(item, summary), record)
        counts.documents += 1
        counts.chapters += len(chapters)
        file_counts["documents"] += 1
    bar.update(bar.total - bar.n)


def _drop_reason(doc: Document, min_chars: int, dedup: Deduplicator, counts: _Counts) -> str | None:
    if len(doc.text) < min_chars:
        counts.too_short += 1
        return f"too short after cleaning ({len(doc.text)} < data.min_chars={min_chars} characters)"
    duplicate = dedup.check(doc.doc_id, doc.text)
    if duplicate is None:
        return None
    if duplicate.kind == "exact":
        counts.exact += 1
    else:
        counts.near += 1
    return duplicate.reason()


def _input_entry(ref: Any, counts: dict[str, int]) -> dict[str, Any]:
    entry: dict[str, Any] = {"uri": ref.uri, "size": ref.size, **counts}
    if is_s3(ref.uri):
        entry["etag"] = ref.version
    else:
        entry["sha256"] = sha256_file(ref.uri)
    return entry


def _remove_stale_shards(storage: Storage, output: str, keep: set[str]) -> None:
    """Shards of an earlier build that this build does not overwrite would otherwise be loaded too."""
    try:
        existing = storage.list_files(join(output, "data"))
    except UserError:
        return
    for ref in existing:
        name = ref.uri.rsplit("/", 1)[-1]
        if name.endswith(".parquet") and name not in keep:
            storage.delete(ref.uri)
