"""`deepmoney model init`: a tiny base model and tokenizer, built in staging and published whole."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from deepmoney.config import DeepmoneyConfig
from deepmoney.data.ingest import iter_texts, resolve_inputs
from deepmoney.models import init_tiny_model
from deepmoney.storage import Storage, join

log = logging.getLogger(__name__)


@dataclass
class ModelInitResult:
    """What `init_model` did."""

    manifest: dict[str, Any]
    reused: bool


def init_model(
    corpus: list[str], output: str, config: DeepmoneyConfig, storage: Storage | None = None, quiet: bool = False
) -> ModelInitResult:
    """Train the tokenizer on `corpus`, make the model, write both to `output`; reuse an identical one."""
    storage = storage or Storage(config.storage)
    storage.check_writable(output)
    resolved = resolve_inputs(corpus, storage)
    payload = {
        "corpus": [[f.uri, f.size, f.version] for f in resolved.files],
        "model": config.model.model_dump(mode="json"),
        "data": config.data.model_dump(mode="json", include={"max_document_mb"}),
    }
    fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    manifest_uri = join(output, "manifest.json")
    if storage.exists(manifest_uri):
        try:
            previous = json.loads(storage.read_bytes(manifest_uri))
        except ValueError:
            previous = {}
        if previous.get("fingerprint") == fingerprint:
            log.info("%s already holds this model (same corpus and model config); reusing it", output)
            return ModelInitResult(previous, reused=True)
    with storage.staging_dir(output) as staging:
        texts = iter_texts(corpus, storage, config.data, quiet=quiet)
        manifest = init_tiny_model(texts, staging, config.model.preset, config.model.vocab_size, config.model.seed)
        manifest["fingerprint"] = fingerprint
        manifest["tokenizer_corpus"] = corpus
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        storage.publish_tree(staging, output)
    return ModelInitResult(manifest, reused=False)
