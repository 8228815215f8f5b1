"""The pt corpus: documents -> context header + text -> tokens -> packed Parquet blocks + manifest.

Everything streams. Worker processes read, clean, split, summarize and tokenize one file (or one
chunk of JSONL lines) at a time; the main process takes their results in input order, makes the
order-dependent decision (is this a duplicate of something kept earlier?), packs the tokens into
blocks and writes Parquet shards as they fill. Memory stays flat however large the corpus is (the
dedup index keeps num_perm * 8 bytes per document).

The output is built in a private staging directory and published with the manifest last, so an
interrupted run leaves nothing half-written. Each time a shard is closed (at a task boundary) the
build checkpoints: the open report files' lengths, the unfinished block, the closed shards, the
counters and a journal of the documents kept by dedup. Running the same command again after a
crash, SIGKILL or Ctrl-C resumes from the last checkpoint, and the result is the same as an
uninterrupted run. A re-run whose inputs, tokenizer and config are unchanged finds the manifest
and reuses the finished output.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from deepmoney.config import DeepmoneyConfig, result_settings
from deepmoney.data.dedup import Deduplicator
from deepmoney.data.document import Document
from deepmoney.data.ingest import load_collections, read_documents, resolve_inputs
from deepmoney.data.llm_summary import make_summarizer, prefetch_summaries, summarizer_name
from deepmoney.data.pack import Block, BlockPacker
from deepmoney.data.process import DocumentProcessor, Prepared, Task, TaskResult
from deepmoney.data.readers import FORMATS, jsonl_chunks
from deepmoney.data.shards import ShardWriter
from deepmoney.data.split import is_heldout_key
from deepmoney.data.tokenize import TokenizerSpec, resolve_tokenizer
from deepmoney.errors import InputRejected, UserError
from deepmoney.parallel import ordered_map, worker_count
from deepmoney.stage import PtCorpusManifest, claim_output, digest, fingerprint, write_manifest
from deepmoney.storage import FileRef, Storage, atomic_write_bytes, is_s3, sha256_file

log = logging.getLogger(__name__)

PT_FORMAT = "deepmoney.pt.v2"  # bump when the output layout or the record text changes
KIND = "pt-corpus"
HELDOUT_DIR = "heldout"  # whole held-out documents, one row each: validation-0000i-of-0000n.parquet


@dataclass
class PtBuildResult:
    """What `build_pt` did."""

    output: str
    manifest: dict[str, Any]
    reused: bool = False
    resumed_tasks: int = 0


@dataclass
class _Counters:
    documents_read: int = 0
    documents: int = 0
    chapters: int = 0
    too_short: int = 0
    exact: int = 0
    near: int = 0
    rejected: int = 0
    dropped: int = 0
    files_done: int = 0
    heldout: int = 0
    heldout_tokens: int = 0


_REPORTS = ("documents.jsonl", "rejected.jsonl", "dropped.jsonl", "inputs.jsonl")


class PtRun:
    """One build's state in its staging directory: report files, packer, shards, dedup; checkpoints.

    `staging/out/` is what gets published; `staging/state/` holds the checkpoint and dedup journal.
    """

    def __init__(self, staging: Path, config: DeepmoneyConfig, fingerprint: str, settings: dict[str, Any],
                 rejected: list[InputRejected]) -> None:  # fmt: skip
        self.out, self.state = staging / "out", staging / "state"
        self.out.mkdir(exist_ok=True)
        self.state.mkdir(exist_ok=True)
        self.fingerprint, self.settings = fingerprint, settings
        self.counters = _Counters()
        self.packer = BlockPacker(config.data.block_size)
        self.writer = ShardWriter(self.out / "data", config.data.shard_rows)
        # Held-out documents are kept whole (one row each) for evaluation, never packed or trained on.
        self.heldout = ShardWriter(self.out / HELDOUT_DIR, config.data.shard_rows, split="validation")
        self.dedup = Deduplicator(config.data.dedup)
        self.tasks_done = 0
        self.pending_files: dict[str, dict[str, int]] = {}
        checkpoint = self._load_checkpoint()
        offsets = checkpoint["offsets"] if checkpoint else {}
        for name in _REPORTS:
            path = self.out / name
            path.touch()
            os.truncate(path, offsets.get(name, 0))
        journal = self.state / "dedup.journal"
        journal.touch()
        os.truncate(journal, offsets.get("dedup.journal", 0))
        if checkpoint:
            self.tasks_done = checkpoint["tasks_done"]
            self.counters = _Counters(**checkpoint["counters"])
            self.packer.restore(checkpoint["packer"])
            self.writer.restore(checkpoint["writer"])
            self.heldout.restore(checkpoint["heldout"])
            self.dedup.replay(journal, offsets["dedup.journal"])
        else:
            self.writer.restore({"closed": [], "rows": 0})
            self.heldout.restore({"closed": [], "rows": 0})
        self.files = {name: open(self.out / name, "a", encoding="utf-8") for name in _REPORTS}  # noqa: SIM115
        self.dedup.journal = open(journal, "ab")  # noqa: SIM115
        if not checkpoint:
            for item in rejected:
                self.reject(item)

    def _load_checkpoint(self) -> dict[str, Any] | None:
        path = self.state / "checkpoint.json"
        if not path.exists():
            return None
        try:
            checkpoint = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            log.warning("ignoring an unreadable checkpoint in %s; starting over", self.state)
            return None
        return checkpoint if checkpoint.get("fingerprint") == self.fingerprint else None

    def reject(self, item: InputRejected) -> None:
        log.warning("rejected %s: %s", item.path, item.reason)
        self.counters.rejected += 1
        self._write("rejected.jsonl", {"path": item.path, "reason": item.reason})

    def drop(self, prepared: Prepared, reason: str) -> None:
        self.counters.dropped += 1
        self._write("dropped.jsonl", {"doc_id": prepared.doc.doc_id, "source": prepared.doc.source, "reason": reason})

    def file_counts(self, ref: FileRef) -> dict[str, int]:
        return self.pending_files.setdefault(ref.uri, {"documents": 0, "rejected": 0, "dropped": 0})

    def file_done(self, ref: FileRef, sha256: str | None = None) -> None:
        self.counters.files_done += 1
        self._write("inputs.jsonl", _input_entry(ref, self.pending_files.pop(ref.uri, {}), sha256))

    def _write(self, name: str, record: dict[str, Any]) -> None:
        self.files[name].write(json.dumps(record, ensure_ascii=False) + "\n")

    def checkpoint(self) -> None:
        """Make everything up to the last finished task durable, then record where it ends."""
        handles = [*self.files.values(), self.dedup.journal]
        for handle in handles:
            handle.flush()
            os.fsync(handle.fileno())
        self.heldout.close_shard()  # it rarely fills a shard; what it holds must survive this checkpoint
        for writer in (self.writer, self.heldout):
            for shard in writer.state()["closed"][-1:]:  # the one just closed; earlier ones already are
                with open(writer.directory / shard, "rb") as handle:
                    os.fsync(handle.fileno())
        offsets = {name: handle.tell() for name, handle in self.files.items()}
        offsets["dedup.journal"] = self.dedup.journal.tell()
        state = {
            "fingerprint": self.fingerprint,
            "tasks_done": self.tasks_done,
            "offsets": offsets,
            "counters": asdict(self.counters),
            "packer": self.packer.state(),
            "writer": self.writer.state(),
            "heldout": self.heldout.state(),
        }
        atomic_write_bytes(self.state / "checkpoint.json", json.dumps(state).encode())

    def close(self) -> None:
        for handle in [*self.files.values(), self.dedup.journal]:
            handle.close()


def corpus_settings(files: list[FileRef], collections: list[FileRef], tokenizer: str, config: DeepmoneyConfig,
                    summarizer: str) -> dict[str, Any]:  # fmt: skip
    """What decides the corpus: the inputs, the tokenizer, the data settings that are not operational."""
    return {
        "format": PT_FORMAT,
        "inputs": digest([[f.uri, f.size, f.version] for f in files]),
        "collections": digest([[f.uri, f.size, f.version] for f in collections]),
        "tokenizer": tokenizer,
        **{f"data.{k}": v for k, v in result_settings(config.data).items()},
        "summarizer": summarizer,
    }


def corpus_tasks(files: list[FileRef], storage: Storage, records_per_task: int,
                 group_bytes: int = 1 << 18) -> Iterator[Task]:  # fmt: skip
    """The build's tasks, in input order: small files in groups, JSONL files in chunks of lines (deterministic)."""
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


def checked_inputs(inputs: list[str], storage: Storage, strict: bool) -> Any:
    """The input files under `inputs`; with `strict`, the first unreadable one is an error instead of a record."""
    resolved = resolve_inputs(inputs, storage)
    if strict and resolved.rejected:
        bad = resolved.rejected[0]
        raise UserError(f"{bad.path}: {bad.reason} (--strict stops at the first bad input)")
    return resolved


def build_pt(
    inputs: list[str],
    tokenizer_uri: str,
    output: str,
    config: DeepmoneyConfig,
    *,
    strict: bool = False,
    quiet: bool = False,
    storage: Storage | None = None,
    overwrite: bool = False,
) -> PtBuildResult:
    """Build the packed pt corpus from `inputs` into `output` (a directory or S3 prefix)."""
    storage = storage or Storage(config.storage)
    output = str(output)
    started = time.perf_counter()
    storage.check_writable(output)
    summarizer_label = summarizer_name(config)  # fails now, not in a worker, if misconfigured
    resolved = checked_inputs(inputs, storage, strict)
    with tempfile.TemporaryDirectory(prefix="deepmoney-tok-") as scratch:
        spec = resolve_tokenizer(tokenizer_uri, storage, Path(scratch))
        settings = corpus_settings(resolved.files, resolved.collections, spec.digest, config, summarizer_label)
        fp = fingerprint(KIND, settings)
        claim = claim_output(storage, output, KIND, fp, settings, overwrite=overwrite)
        if claim.reuse is not None:
            log.info("%s is up to date (same inputs, tokenizer and config); reusing it", output)
            return PtBuildResult(output, claim.reuse, reused=True)

        collections = load_collections(resolved.collections, storage)
        with storage.staging_dir(output, key=fp, keep_on_error=True) as staging:
            run = PtRun(staging, config, fp, settings, resolved.rejected)
            summarizer = make_summarizer(config, run.state / "requests.sqlite")
            if config.summarizer is not None and config.data.summary.enabled:
                documents = (
                    doc
                    for ref in resolved.files
                    for doc in read_documents(ref, storage, config.data, collections)
                    if isinstance(doc, Document) and len(doc.text) >= config.data.min_chars
                )
                prefetch_summaries(documents, summarizer, quiet=quiet)
            processor = functools.partial(DocumentProcessor, config, spec, storage, collections, summarizer)
            resumed = run.tasks_done
            if resumed:
                log.info(
                    "resuming from a checkpoint: %d files, %d documents, %d blocks already done",
                    run.counters.files_done,
                    run.counters.documents,
                    run.writer.rows,
                )
            tasks = islice(corpus_tasks(resolved.files, storage, config.data.records_per_task), resumed, None)
            results = ordered_map(processor, tasks, worker_count(config.data.workers))
            assemble(run, results, config, strict, len(resolved.files), quiet, "build-pt")
            manifest = finish(storage, output, inputs, run, config, tokenizer_record(spec), summarizer_label,
                              [c.uri for c in resolved.collections], started)  # fmt: skip
    log.info(
        "pt corpus written to %s: %d documents, %d tokens, %d blocks",
        output,
        manifest["documents"],
        manifest["tokens"],
        manifest["blocks"],
    )
    return PtBuildResult(output, manifest, resumed_tasks=resumed)


def assemble(run: PtRun, results: Iterable[TaskResult], config: DeepmoneyConfig, strict: bool, files: int,
             quiet: bool, desc: str) -> None:  # fmt: skip
    """Take each task's result in input order — dedup, pack, write, checkpoint at shard boundaries — with a bar.

    The one order-dependent part of the build: `build_pt` feeds it the workers' results, the shard merge
    (`pt_shards`) the results the shards stored, so both write the same bytes.
    """
    with (
        tqdm(total=files, initial=run.counters.files_done, unit="file", desc=desc, disable=quiet,
             dynamic_ncols=True) as bar,
        logging_redirect_tqdm(),
    ):  # fmt: skip
        for result in results:
            _take(result, run, config, strict)
            run.tasks_done += 1
            if run.writer.end_task():
                run.checkpoint()
            bar.update(result.task.files_done)
            bar.set_postfix(docs=run.counters.documents, tokens=run.packer.tokens_in, refresh=False)


def tokenizer_record(spec: TokenizerSpec) -> dict[str, Any]:
    """The tokenizer as the manifest records it."""
    return {"uri": spec.uri, "digest": spec.digest, "vocab_size": spec.vocab_size, "bos_token_id": spec.bos_id,
            "eos_token_id": spec.eos_id}  # fmt: skip


def finish(storage: Storage, output: str, inputs: list[str], run: PtRun, config: DeepmoneyConfig,
           tokenizer: dict[str, Any], summarizer: str, skipped_collections: list[str],
           started: float) -> dict:  # fmt: skip
    """Close the blocks and shards, write the manifest and publish; with no document kept, publish nothing and fail."""
    tokens_dropped = run.packer.finish()
    shards = run.writer.close()
    shards += run.heldout.close()
    run.close()
    if run.counters.documents == 0:
        raise UserError(
            f"no usable documents in {', '.join(inputs)}: {run.counters.rejected} inputs rejected and "
            f"{run.counters.dropped} documents dropped (the reasons are in the warnings above); nothing was written"
        )
    manifest = _manifest(run, tokens_dropped, config, tokenizer, summarizer, skipped_collections, shards, started)
    write_manifest(run.out / "manifest.json", manifest)
    storage.publish_tree(run.out, output)
    return manifest.model_dump(mode="json")


def _take(result: TaskResult, run: PtRun, config: DeepmoneyConfig, strict: bool) -> None:
    """Keep or drop each document of one task's result, in order; pack and index the kept ones."""
    counters = run.counters
    for ref, item in result.items:
        counts = run.file_counts(ref)
        if isinstance(item, InputRejected):
            if strict:
                raise UserError(f"{item.path}: {item.reason} (--strict stops at the first bad input)")
            run.reject(item)
            counts["rejected"] += 1
            continue
        counters.documents_read += 1
        reason = _drop_reason(item, run.dedup, counters, config.data.min_chars)
        if reason:
            counts["dropped"] += 1
            run.drop(item, reason)
            continue
        assert item.ids is not None
        heldout = is_heldout_key(item.key, config.data.heldout_fraction)
        record = {
            "index": counters.documents,
            **item.doc.to_index(),
            "chars": item.chars,
            "tokens": int(item.ids.size),
            "chapters": item.chapters,
            "summary": item.summary,
            "split": "heldout" if heldout else "train",
        }
        run.files["documents.jsonl"].write(json.dumps(record, ensure_ascii=False) + "\n")
        if heldout:
            run.heldout.write(Block(item.ids.astype(np.int32, copy=False), [0], [counters.documents], [0]))
            counters.heldout += 1
            counters.heldout_tokens += int(item.ids.size)
        else:
            for block in run.packer.add(counters.documents, item.ids):
                run.writer.write(block)
        counters.documents += 1
        counters.chapters += len(item.chapters)
        counts["documents"] += 1
    if result.task.files_done:
        for ref in result.task.refs:
            run.file_done(ref, result.digests.get(ref.uri))


def _drop_reason(item: Prepared, dedup: Deduplicator, counters: _Counters, min_chars: int) -> str | None:
    if item.ids is None:
        counters.too_short += 1
        return f"too short after cleaning ({item.chars} < data.min_chars={min_chars} characters)"
    if item.signature is None:
        return None
    duplicate = dedup.check_prepared(item.doc.doc_id, item.key, item.signature)
    if duplicate is None:
        return None
    if duplicate.kind == "exact":
        counters.exact += 1
    else:
        counters.near += 1
    return duplicate.reason()


def _manifest(
    run: PtRun,
    tokens_dropped: int,
    config: DeepmoneyConfig,
    tokenizer: dict[str, Any],
    summarizer: str,
    skipped_collections: list[str],
    shards: list[Path],
    started: float,
) -> PtCorpusManifest:
    data, counters, out = config.data, run.counters, run.out
    inputs = [json.loads(line) for line in (out / "inputs.jsonl").read_text(encoding="utf-8").splitlines()]
    return PtCorpusManifest.model_validate({
        "format": PT_FORMAT,
        "fingerprint": run.fingerprint,
        "settings": run.settings,
        "documents": counters.documents,
        "documents_read": counters.documents_read,
        "chapters": counters.chapters,
        "tokens": run.packer.tokens_in,
        "blocks": run.writer.rows,
        "heldout": {
            "fraction": data.heldout_fraction,
            "documents": counters.heldout,
            "tokens": counters.heldout_tokens,
            "directory": HELDOUT_DIR,
        },
        "block_size": data.block_size,
        "tokens_dropped": tokens_dropped,
        "rejected": counters.rejected,
        "dropped": {
            "too_short": counters.too_short,
            "exact_duplicate": counters.exact,
            "near_duplicate": counters.near,
        },
        "dedup_removed": counters.exact + counters.near,
        "skipped_collections": skipped_collections,
        "summarizer": summarizer if data.summary.enabled else None,
        "tokenizer": tokenizer,
        "config": data.model_dump(mode="json"),
        "inputs": inputs,
        "files": [
            {"path": p.relative_to(out).as_posix(), "sha256": sha256_file(p)}
            for p in [*shards, *(out / name for name in _REPORTS)]
        ],
        "seconds": round(time.perf_counter() - started, 3),
    })  # fmt: skip


def input_digest(ref: FileRef) -> str | None:
    """The sha256 inputs.jsonl records for a local input (None for S3, whose ETag is recorded)."""
    return None if is_s3(ref.uri) else sha256_file(ref.uri)


def _input_entry(ref: FileRef, counts: dict[str, int], sha256: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"uri": ref.uri, "size": ref.size, **counts}
    if is_s3(ref.uri):
        entry["etag"] = ref.version
    else:
        entry["sha256"] = sha256 or sha256_file(ref.uri)
    return entry
