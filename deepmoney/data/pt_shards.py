"""The pt corpus built in shards: `build-pt --shard K/N` workers, then `merge-pt` — the bytes of one build.

A firm's archive of reports can be hundreds of GB, more than one machine's process pool gets through.
The build's tasks (`pt.corpus_tasks`: small files in groups, JSONL files in chunks, in input order) are
dealt round-robin: shard K of N prepares tasks K, K+N, K+2N, … — reads, cleans, splits into chapters,
summarises, tokenizes and computes the MinHash signatures — and stores each task's result as
`tasks/task-00000012.npz` (the documents' metadata as JSON, their token ids and signatures as arrays;
no pickle, so a shard on shared storage cannot run code in the merge). The merge reads the N shards'
results in task order and runs the one order-dependent part of the build (`pt.assemble`: the global
near-duplicate decisions, packing, the Parquet shards and reports), so what it writes is byte for byte
what one unsharded build writes, for any N; only the manifest's `seconds` differs, as between any two
builds.

A shard is a stage output like any other (kind `pt-shard`): reused when nothing changed, resumable (a
task's file is written once, atomically, and a re-run prepares only the missing ones), published with
its manifest last. The merge checks that the shards belong together (one corpus fingerprint, each K of
N once) and that its own data settings are the ones they were built with; it resumes like `build-pt`.
"""

from __future__ import annotations

import collections
import functools
import io
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from deepmoney.config import DeepmoneyConfig, result_settings
from deepmoney.data.document import Document
from deepmoney.data.ingest import load_collections, read_documents
from deepmoney.data.llm_summary import make_summarizer, prefetch_summaries, summarizer_name
from deepmoney.data.process import DocumentProcessor, Prepared, Task, TaskResult
from deepmoney.data.pt import (
    KIND,
    PtBuildResult,
    PtRun,
    assemble,
    checked_inputs,
    corpus_settings,
    corpus_tasks,
    finish,
    input_digest,
    tokenizer_record,
)
from deepmoney.data.tokenize import resolve_tokenizer
from deepmoney.errors import InputRejected, UserError
from deepmoney.parallel import ordered_map, worker_count
from deepmoney.stage import PtShardManifest, claim_output, fingerprint, read_manifest, settings_diff, write_manifest
from deepmoney.storage import FileRef, Storage, atomic_write_bytes, join

log = logging.getLogger(__name__)

SHARD_KIND = "pt-shard"
TASKS_DIR = "tasks"
DOC_FIELDS = ("source", "title", "publisher", "date", "subject", "language", "kind", "meta")


def task_file(index: int) -> str:
    """Where a shard keeps task `index`'s result, relative to the shard."""
    return f"{TASKS_DIR}/task-{index:08d}.npz"


# --- one task's result, stored and read back -------------------------------------------------------


def encode_task(index: int, result: TaskResult) -> bytes:
    """A task's result as .npz bytes: JSON metadata plus the token ids and signatures as plain arrays."""
    refs = {ref.uri: i for i, ref in enumerate(result.task.refs)}
    items: list[dict[str, Any]] = []
    ids: list[np.ndarray] = []
    signatures: list[np.ndarray] = []
    for ref, item in result.items:
        slot = refs.get(ref.uri)
        if slot is None:  # every item comes from one of its task's files
            raise ValueError(f"task {index}: {ref.uri} is not one of its files")
        if isinstance(item, InputRejected):
            items.append({"ref": slot, "rejected": [item.path, item.reason]})
            continue
        doc = {name: getattr(item.doc, name) for name in DOC_FIELDS}
        items.append({"ref": slot, "doc": doc, "chars": item.chars, "chapters": item.chapters, "key": item.key,
                      "summary": item.summary, "signature": item.signature is not None,
                      "ids": item.ids is not None})  # fmt: skip
        if item.ids is not None:
            ids.append(item.ids)
        if item.signature is not None:
            signatures.append(item.signature)
    meta = {"index": index, "refs": [[r.uri, r.size, r.version] for r in result.task.refs],
            "files_done": result.task.files_done, "digests": result.digests, "items": items}  # fmt: skip
    arrays = {
        "meta": np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), dtype=np.uint8),
        "ids": np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32),
        "id_lengths": np.array([a.size for a in ids], dtype=np.int64),
        "signatures": np.stack(signatures) if signatures else np.zeros((0, 0), dtype=np.uint64),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def decode_task(data: bytes, where: str) -> tuple[int, TaskResult]:
    """(index, result) from `encode_task`'s bytes; a UserError naming `where` when they are not that."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
            ids, lengths, signatures = arrays["ids"], arrays["id_lengths"], arrays["signatures"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{where}: not a readable pt shard task ({exc}); rebuild that shard") from None
    refs = [FileRef(uri, size, version) for uri, size, version in meta["refs"]]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    next_ids = next_signature = 0
    items: list[tuple[FileRef, Prepared | InputRejected]] = []
    for entry in meta["items"]:
        ref = refs[entry["ref"]]
        if "rejected" in entry:
            items.append((ref, InputRejected(*entry["rejected"])))
            continue
        prepared = Prepared(doc=Document(text="", **entry["doc"]), chars=entry["chars"], chapters=entry["chapters"],
                            key=entry["key"], summary=entry["summary"])  # fmt: skip
        if entry["ids"]:
            prepared.ids = ids[offsets[next_ids] : offsets[next_ids + 1]]
            next_ids += 1
        if entry["signature"]:
            prepared.signature = signatures[next_signature]
            next_signature += 1
        items.append((ref, prepared))
    task = Task(refs, files_done=int(meta["files_done"]))
    return int(meta["index"]), TaskResult(task, items, dict(meta["digests"]))


# --- a shard -------------------------------------------------------------------------------------


def build_pt_shard(
    inputs: list[str],
    tokenizer_uri: str,
    output: str,
    config: DeepmoneyConfig,
    shard: tuple[int, int],
    *,
    strict: bool = False,
    quiet: bool = False,
    storage: Storage | None = None,
    overwrite: bool = False,
) -> PtBuildResult:
    """Prepare shard K of N of the pt corpus of `inputs` into `output` (merge the N with `merge_pt_shards`)."""
    k, n = shard
    if not 0 <= k < n:
        raise UserError(f"--shard {k}/{n}: expected K/N with 0 <= K < N, e.g. 0/4")
    storage = storage or Storage(config.storage)
    output = str(output)
    started = time.perf_counter()
    storage.check_writable(output)
    summarizer_label = summarizer_name(config)
    resolved = checked_inputs(inputs, storage, strict)
    if not resolved.files:  # every shard would be empty: fail here, not after N empty shards at the merge
        why = f" (first: {resolved.rejected[0].path}: {resolved.rejected[0].reason})" if resolved.rejected else ""
        raise UserError(f"no usable input files in {', '.join(inputs)}: {len(resolved.rejected)} rejected{why}; "
                        "nothing was written")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="deepmoney-tok-") as scratch:
        spec = resolve_tokenizer(tokenizer_uri, storage, Path(scratch))
        corpus = corpus_settings(resolved.files, resolved.collections, spec.digest, config, summarizer_label)
        settings = {**corpus, "shard": f"{k}/{n}"}
        fp = fingerprint(SHARD_KIND, settings)
        claim = claim_output(storage, output, SHARD_KIND, fp, settings, overwrite=overwrite)
        if claim.reuse is not None:
            log.info("%s is up to date (same inputs, tokenizer, config and shard); reusing it", output)
            return PtBuildResult(output, claim.reuse, reused=True)
        collections_index = load_collections(resolved.collections, storage)
        records = config.data.records_per_task
        with storage.staging_dir(output, key=fp, keep_on_error=True) as staging:
            out = staging / "out"
            (out / TASKS_DIR).mkdir(parents=True, exist_ok=True)
            total = sum(1 for _ in corpus_tasks(resolved.files, storage, records))  # exact, for the bar's ETA

            def mine() -> Iterator[tuple[int, Task]]:
                for index, task in enumerate(corpus_tasks(resolved.files, storage, records)):
                    if index % n == k and not (out / task_file(index)).is_file():
                        yield index, task

            summarizer = make_summarizer(config, staging / "requests.sqlite")
            if config.summarizer is not None and config.data.summary.enabled:
                documents = (doc for _, task in mine() for ref in task.refs
                             for doc in read_documents(ref, storage, config.data, collections_index, task.lines)
                             if isinstance(doc, Document) and len(doc.text) >= config.data.min_chars)  # fmt: skip
                prefetch_summaries(documents, summarizer, quiet=quiet)
            processor = functools.partial(DocumentProcessor, config, spec, storage, collections_index, summarizer)
            ours = len(range(k, total, n))
            done = sum(1 for _ in (out / TASKS_DIR).glob("task-*.npz"))
            if done:
                log.info("resuming shard %d/%d: %d of its %d tasks already prepared", k, n, done, ours)
            indices: collections.deque[int] = collections.deque()

            def tasks() -> Iterator[Task]:
                for index, task in mine():
                    indices.append(index)
                    yield task

            with tqdm(total=ours, initial=done, unit="task", desc=f"build-pt shard {k}/{n}", disable=quiet,
                      dynamic_ncols=True) as bar:  # fmt: skip
                for result in ordered_map(processor, tasks(), worker_count(config.data.workers)):
                    index = indices.popleft()
                    if strict:
                        _refuse_rejected(result)
                    if result.task.files_done:
                        result.digests = {r.uri: d for r in result.task.refs if (d := input_digest(r)) is not None}
                    atomic_write_bytes(out / task_file(index), encode_task(index, result))
                    bar.update(1)
            manifest = PtShardManifest(
                fingerprint=fp, settings=settings, shard=k, shard_count=n, corpus_fingerprint=fingerprint(KIND, corpus),
                corpus_settings=corpus, tasks_total=total, tasks=ours, files_total=len(resolved.files),
                documents=_documents(out, k, n, total), inputs=list(inputs),
                rejected=[{"path": r.path, "reason": r.reason} for r in resolved.rejected],
                skipped_collections=[c.uri for c in resolved.collections], tokenizer=tokenizer_record(spec),
                summarizer=summarizer_label, seconds=round(time.perf_counter() - started, 3),
            )  # fmt: skip
            write_manifest(out / "manifest.json", manifest)
            storage.publish_tree(out, output)
    log.info("pt shard %d/%d written to %s: %d of %d tasks", k, n, output, ours, total)
    return PtBuildResult(output, manifest.model_dump(mode="json"))


def _refuse_rejected(result: TaskResult) -> None:
    for _, item in result.items:
        if isinstance(item, InputRejected):
            raise UserError(f"{item.path}: {item.reason} (--strict stops at the first bad input)")


def _documents(out: Path, k: int, n: int, total: int) -> int:
    """Documents this shard prepared (read back from its task files, so that a resumed shard counts them all)."""
    count = 0
    for index in range(k, total, n):
        _, result = decode_task((out / task_file(index)).read_bytes(), str(out / task_file(index)))
        count += sum(isinstance(item, Prepared) for _, item in result.items)
    return count


# --- the merge -----------------------------------------------------------------------------------


def _shards_in_order(storage: Storage, shards: list[str]) -> tuple[list[str], list[PtShardManifest]]:
    """The shard outputs ordered by K, checked to be the N shards of one corpus."""
    if not shards:
        raise UserError("give the outputs of build-pt --shard K/N for every K, e.g. --input shard-0 shard-1")
    found = [(uri, read_manifest(storage, uri, PtShardManifest)) for uri in shards]
    first = found[0][1]
    for uri, manifest in found:
        if manifest.corpus_fingerprint != first.corpus_fingerprint or manifest.shard_count != first.shard_count:
            raise UserError(f"{uri} is a shard of another build than {found[0][0]} (other inputs, tokenizer, "
                            "settings or shard count); give the shards of one build")  # fmt: skip
    by_k: dict[int, str] = {}
    for uri, manifest in found:
        if manifest.shard in by_k:
            raise UserError(f"{uri} and {by_k[manifest.shard]} are both shard {manifest.shard}/{first.shard_count}")
        by_k[manifest.shard] = uri
    missing = [str(k) for k in range(first.shard_count) if k not in by_k]
    if missing:
        raise UserError(f"shards {', '.join(missing)} of {first.shard_count} are missing; build them with "
                        f"build-pt --shard K/{first.shard_count} and pass every one")  # fmt: skip
    manifests = {m.shard: m for _, m in found}
    return [by_k[k] for k in range(first.shard_count)], [manifests[k] for k in range(first.shard_count)]


def _check_data_settings(config: DeepmoneyConfig, corpus: dict[str, Any]) -> None:
    ours = {f"data.{key}": value for key, value in result_settings(config.data).items()}
    theirs = {key: value for key, value in corpus.items() if key.startswith("data.")}
    differs = settings_diff(theirs, ours)
    if differs:
        raise UserError(f"the shards were built with other data settings than this merge: {', '.join(differs)}; "
                        "merge with the shards' settings (the same --config and --block-size)")  # fmt: skip


def merge_pt_shards(
    shards: list[str],
    output: str,
    config: DeepmoneyConfig,
    *,
    quiet: bool = False,
    storage: Storage | None = None,
    overwrite: bool = False,
) -> PtBuildResult:
    """Merge the N `build_pt_shard` outputs into the pt corpus one unsharded `build_pt` would have written."""
    storage = storage or Storage(config.storage)
    output = str(output)
    started = time.perf_counter()
    storage.check_writable(output)
    uris, manifests = _shards_in_order(storage, shards)
    first = manifests[0]
    corpus, fp, n = first.corpus_settings, first.corpus_fingerprint, first.shard_count
    _check_data_settings(config, corpus)
    claim = claim_output(storage, output, KIND, fp, corpus, overwrite=overwrite)
    if claim.reuse is not None:
        log.info("%s is up to date (the same shards' corpus); reusing it", output)
        return PtBuildResult(output, claim.reuse, reused=True)
    rejected = [InputRejected(r["path"], r["reason"]) for r in first.rejected]
    with storage.staging_dir(output, key=fp, keep_on_error=True) as staging:
        run = PtRun(staging, config, fp, corpus, rejected)
        resumed = run.tasks_done
        if resumed:
            log.info("resuming the merge from a checkpoint: %d of %d tasks done", resumed, first.tasks_total)

        def results() -> Iterator[TaskResult]:
            for index in range(resumed, first.tasks_total):
                uri = join(uris[index % n], task_file(index))
                stored, result = decode_task(storage.read_bytes(uri), uri)
                if stored != index:
                    raise UserError(f"{uri} holds task {stored}, not {index}; rebuild that shard")
                yield result

        assemble(run, results(), config, False, first.files_total, quiet, f"merge-pt ({n} shards)")
        manifest = finish(storage, output, first.inputs, run, config, first.tokenizer.model_dump(), first.summarizer,
                          first.skipped_collections, started)  # fmt: skip
    log.info("pt corpus merged from %d shards into %s: %d documents, %d tokens, %d blocks", n, output,
             manifest["documents"], manifest["tokens"], manifest["blocks"])  # fmt: skip
    return PtBuildResult(output, manifest, resumed_tasks=resumed)
