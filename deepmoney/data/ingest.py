"""Ingest: expand input paths/URIs into files and read them into cleaned Documents, streaming."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from deepmoney.config import DataConfig
from deepmoney.data.clean import clean_text
from deepmoney.data.document import Document
from deepmoney.data.readers import CollectionIndex, is_collection, jsonl_records, read_file
from deepmoney.errors import InputRejected, UserError
from deepmoney.storage import FileRef, Storage, StorageError

log = logging.getLogger(__name__)


@dataclass
class ResolvedInputs:
    """The files behind the user's input arguments, and the arguments that named nothing usable."""

    files: list[FileRef] = field(default_factory=list)
    collections: list[FileRef] = field(default_factory=list)
    rejected: list[InputRejected] = field(default_factory=list)


def resolve_inputs(inputs: list[str], storage: Storage) -> ResolvedInputs:
    """List every file under each input (a file, a directory, an S3 object or prefix)."""
    resolved = ResolvedInputs()
    seen: set[str] = set()
    for uri in inputs:
        try:
            refs = storage.list_files(uri)
        except StorageError as exc:
            resolved.rejected.append(InputRejected(uri, str(exc)))
            continue
        for ref in refs:
            if ref.uri in seen:
                continue
            seen.add(ref.uri)
            if is_collection(ref.uri, b""):
                resolved.collections.append(ref)
            else:
                resolved.files.append(ref)
    return resolved


def load_collections(refs: list[FileRef], storage: Storage) -> CollectionIndex:
    """Index the CNXML collection files so modules know their book and chapter."""
    index = CollectionIndex()
    for ref in refs:
        try:
            index.add(storage.read_bytes(ref.uri))
        except Exception as exc:  # a broken table of contents only costs metadata
            log.warning("ignoring CNXML collection %s: %s", ref.uri, exc)
    return index


def read_documents(
    ref: FileRef,
    storage: Storage,
    config: DataConfig,
    collections: CollectionIndex | None = None,
    lines: list[tuple[int, bytes]] | None = None,
) -> list[Document | InputRejected]:
    """The cleaned documents of one file (or of some numbered lines of a JSONL file).

    Problems come back as InputRejected records, never as exceptions: a reader bug on one odd file
    must not end a day-long run.
    """
    try:
        if lines is None:
            items = list(read_file(ref, storage, config, collections))
        else:
            items = list(jsonl_records(ref.uri, lines, int(config.max_document_mb * 1e6)))
    except StorageError as exc:
        return [InputRejected(ref.uri, str(exc))]
    except Exception as exc:
        log.exception("failed to read %s", ref.uri)
        return [InputRejected(ref.uri, f"could not be processed ({type(exc).__name__}: {exc})")]
    for item in items:
        if isinstance(item, Document):
            item.text = clean_text(item.text)
    return items


def iter_texts(inputs: list[str], storage: Storage, config: DataConfig, quiet: bool = False) -> Iterator[str]:
    """Just the cleaned texts of the usable documents under `inputs` (e.g. to train a tokenizer)."""
    resolved = resolve_inputs(inputs, storage)
    for rejected in resolved.rejected:
        log.warning("skipping %s", rejected)
    if not resolved.files:
        raise UserError(f"no input files found under {', '.join(inputs)}")
    collections = load_collections(resolved.collections, storage)
    files = tqdm(resolved.files, unit="file", desc="tokenizer corpus", disable=quiet, dynamic_ncols=True)
    for item in (doc for ref in files for doc in read_documents(ref, storage, config, collections)):
        if isinstance(item, Document):
            yield item.text
        else:
            log.warning("skipping %s", item)
