"""The pt corpus: documents -> context header + text -> tokens -> packed Parquet blocks + manifest.

Everything streams. Worker processes read, clean, split, summarize and tokenize one file (or one
chunk of JSONL lines) at a time; the main process takes their results in input order, makes the
order-dependent decision (is this a duplicate of something kept earlier?), packs the tokens into
blocks and writes Parquet shards as they fill. Memory stays flat however large the corpus is (the
dedup index keeps num_perm * 8 bytes per document).

The output is built in a private staging directory and published with the manifest last, so an
interrupted run leaves nothing half-written; a re-run whose inputs, tokenizer and config are
unchanged finds the manifest and reuses it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from deepmoney import __version__
from deepmoney.config import DeepmoneyConfig
from deepmoney.data.dedup import Deduplicator
from deepmoney.data.ingest import load_collections, resolve_inputs
from deepmoney.data.pack import BlockPacker
from deepmoney.data.process import DocumentProcessor, Prepared, Task, TaskResult
from deepmoney.data.readers import FORMATS, jsonl_chunks
from deepmoney.data.shards import ShardWriter
from deepmoney.data.summarize import make_summarizer
from deepmoney.data.tokenize import TokenizerSpec, resolve_tokenizer
from deepmoney.errors import InputRejected, UserError
from deepmoney.parallel import ordered_map, worker_count
from deepmoney.storage import FileRef, Storage, is_s3, join, sha256_file

log = logging.getLogger(__name__)

PT_FORMAT = "deepmoney.pt.v1"  # bump when the output layout or the record text changes


@dataclass
class PtBuildResult:
    """What `build_pt` did."""

    output: str
    manifest: dict[str, Any]
    reused: bool = False


@dataclass
class _Progress:
    """Counts and reports accumulated while the corpus streams through."""

    documents_read: int = 0
    documents: int = 0
    chapters: int = 0
    too_short: int = 0
    exact: int = 0
    near: int = 0
    rejected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    per_file: dict[str, dict[str, int]] = field(default_factory=dict)

    def reject(self, item: InputRejected) -> None:
        log.warning("rejected %s: %s", item.path, item.reason)
        self.rejected.append(json.dumps({"path": item.path, "reason": item.reason}, ensure_ascii=False))

    def drop(self, prepared: Prepared, reason: str) -> None:
        doc = prepared.doc
        self.dropped.append(
            json.dumps({"doc_id": doc.doc_id, "source": doc.source, "reason": reason}, ensure_ascii=False)
        )

    def write_reports(self, staging: Path) -> None:
        (staging / "rejected.jsonl").write_text("".join(f"{line}\n" for line in self.rejected), encoding="utf-8")
        (staging / "dropped.jsonl").write_text("".join(f"{line}\n" for line in self.dropped), encoding="utf-8")


def _fingerprint(
    files: list[FileRef], collections: list[FileRef], tokenizer: str, config: DeepmoneyConfig, summarizer: str
) -> str:
    payload = {
        "format": PT_FORMAT,
        "inputs": [[f.uri, f.size, f.version] for f in files],
        "collections": [[f.uri, f.size, f.version] for f in collections],
        "tokenizer": tokenizer,
        # How many processes did the work does not change the result.
        "data": config.data.model_dump(mode="json", exclude={"workers", "records_per_task"}),
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


def _tasks(files: list[FileRef], storage: Storage, records_per_task: int, group_bytes: int = 1 << 18) -> Iterator[Task]:
    group: list[FileRef] = []
    size = 0
    for ref in files:
        if FORMATS.get(Path(ref.uri).suffix.lower()) != "jsonl" or ref.size == 0:
            group.append(ref)
            size += ref.size
            if size >= group_bytes or len(group) >= 64:
                yield Task(group, files_done=len(group))
                group, size = [], 0
            continue
        if group:
            yield Task(group, files_done=len(group))
            group, size = [], 0
        previous: Task | None = None
        for chunk in jsonl_chunks(ref.uri, storage, records_per_task):
            if previous is not None:
                yield previous
            previous = Task([ref], chunk, files_done=0)
        if previous is not None:
            previous.files_done = 1
            yield previous
    if group:
        yield Task(group, files_done=len(group))


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
    summarizer_name = make_summarizer(config).name  # fails now, not in a worker, if misconfigured
    resolved = resolve_inputs(inputs, storage)
    if strict and resolved.rejected:
        bad = resolved.rejected[0]
        raise UserError(f"{bad.path}: {bad.reason} (--strict stops at the first bad input)")
    with tempfile.TemporaryDirectory(prefix="deepmoney-tok-") as scratch:
        spec = resolve_tokenizer(tokenizer_uri, storage, Path(scratch))
        fingerprint = _fingerprint(resolved.files, resolved.collections, spec.digest, config, summarizer_name)
        previous = _existing_manifest(storage, output)
        if previous and previous.get("fingerprint") == fingerprint:
            log.info("%s is up to date (same inputs, tokenizer and config); reusing it", output)
            return PtBuildResult(output, previous, reused=True)

        progress = _Progress()
        for item in resolved.rejected:
            progress.reject(item)
        collections = load_collections(resolved.collections, storage)
        processor = functools.partial(DocumentProcessor, config, spec, storage, collections)
        packer = BlockPacker(config.data.block_size)
        with storage.staging_dir(output) as staging:
            writer = ShardWriter(staging / "data", config.data.shard_rows)
            results = ordered_map(
                processor,
                _tasks(resolved.files, storage, config.data.records_per_task),
                worker_count(config.data.workers),
            )
            with (
                open(staging / "documents.jsonl", "w", encoding="utf-8") as index,
                tqdm(total=len(resolved.files), unit="file", desc="build-pt", disable=quiet, dynamic_ncols=True) as bar,
                logging_redirect_tqdm(),
            ):
                dedup = Deduplicator(config.data.dedup)
                for result in results:
                    _take(result, dedup, packer, writer, index, progress, config, strict)
                    if result.task.files_done:
                        bar.update(result.task.files_done)
                        bar.set_postfix(docs=progress.documents, tokens=packer.tokens_in, refresh=False)
            tokens_dropped = packer.finish()
            shards = writer.close()
            # From here on the old output, if any, is being replaced: unmark it as complete first.
            storage.delete(join(output, "manifest.json"))
            progress.write_reports(staging)
            if progress.documents == 0:
                shutil.rmtree(staging / "data")
                (staging / "documents.jsonl").unlink()
                storage.publish_tree(staging, output, last="rejected.jsonl")
                raise UserError(
                    f"no usable documents in {', '.join(inputs)}: {len(progress.rejected)} rejected, "
                    f"{len(progress.dropped)} dropped (see {join(output, 'rejected.jsonl')})"
                )
            manifest = _manifest(
                fingerprint,
                progress,
                packer,
                writer.rows,
                tokens_dropped,
                config,
                spec,
                summarizer_name,
                resolved,
                staging,
                shards,
                started,
            )
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
            _remove_stale_shards(storage, output, {p.name for p in shards})
            storage.publish_tree(staging, output)
    log.info(
        "pt corpus written to %s: %d documents, %d tokens, %d blocks",
        output,
        progress.documents,
        packer.tokens_in,
        writer.rows,
    )
    return PtBuildResult(output, manifest)


def _take(
    result: TaskResult,
    dedup: Deduplicator,
    packer: BlockPacker,
    writer: ShardWriter,
    index: Any,
    progress: _Progress,
    config: DeepmoneyConfig,
    strict: bool,
) -> None:
    """Keep or drop each document of one task's result, in order; pack and index the kept ones."""
    for ref, item in result.items:
        counts = progress.per_file.setdefault(ref.uri, {"documents": 0, "rejected": 0, "dropped": 0})
        if isinstance(item, InputRejected):
            if strict:
                raise UserError(f"{item.path}: {item.reason} (--strict stops at the first bad input)")
            progress.reject(item)
            counts["rejected"] += 1
            continue
        progress.documents_read += 1
        reason = _drop_reason(item, dedup, progress, config.data.min_chars)
        if reason:
            counts["dropped"] += 1
            progress.drop(item, reason)
            continue
        assert item.ids is not None
        record = {
            "index": progress.documents,
            **item.doc.to_index(),
            "chars": item.chars,
            "tokens": int(item.ids.size),
            "chapters": item.chapters,
        }
        index.write(json.dumps(record, ensure_ascii=False) + "\n")
        for block in packer.add(progress.documents, item.ids):
            writer.write(block)
        progress.documents += 1
        progress.chapters += len(item.chapters)
        counts["documents"] += 1


def _drop_reason(item: Prepared, dedup: Deduplicator, progress: _Progress, min_chars: int) -> str | None:
    if item.ids is None:
        progress.too_short += 1
        return f"too short after cleaning ({item.chars} < data.min_chars={min_chars} characters)"
    if item.signature is None:
        return None
    duplicate = dedup.check_prepared(item.doc.doc_id, item.key, item.signature)
    if duplicate is None:
        return None
    if duplicate.kind == "exact":
        progress.exact += 1
    else:
        progress.near += 1
    return duplicate.reason()


def _manifest(
    fingerprint: str,
    progress: _Progress,
    packer: BlockPacker,
    blocks: int,
    tokens_dropped: int,
    config: DeepmoneyConfig,
    spec: TokenizerSpec,
    summarizer: str,
    resolved: Any,
    staging: Path,
    shards: list[Path],
    started: float,
) -> dict[str, Any]:
    data = config.data
    reports = [staging / "documents.jsonl", staging / "dropped.jsonl", staging / "rejected.jsonl"]
    return {
        "kind": "pt-corpus",
        "format": PT_FORMAT,
        "deepmoney_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "fingerprint": fingerprint,
        "documents": progress.documents,
        "documents_read": progress.documents_read,
        "chapters": progress.chapters,
        "tokens": packer.tokens_in,
        "blocks": blocks,
        "block_size": data.block_size,
        "tokens_dropped": tokens_dropped,
        "rejected": len(progress.rejected),
        "dropped": {
            "too_short": progress.too_short,
            "exact_duplicate": progress.exact,
            "near_duplicate": progress.near,
        },
        "dedup_removed": progress.exact + progress.near,
        "skipped_collections": [c.uri for c in resolved.collections],
        "summarizer": summarizer if data.summary.enabled else None,
        "tokenizer": {
            "uri": spec.uri,
            "digest": spec.digest,
            "vocab_size": spec.vocab_size,
            "bos_token_id": spec.bos_id,
            "eos_token_id": spec.eos_id,
        },
        "config": data.model_dump(mode="json"),
        "inputs": [_input_entry(ref, progress.per_file.get(ref.uri, {})) for ref in resolved.files],
        "files": [{"path": p.relative_to(staging).as_posix(), "sha256": sha256_file(p)} for p in [*shards, *reports]],
        "seconds": round(time.perf_counter() - started, 3),
    }


def _input_entry(ref: FileRef, counts: dict[str, int]) -> dict[str, Any]:
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
