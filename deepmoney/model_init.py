"""`deepmoney model init`: a tiny base model and tokenizer, built in staging and published whole.

The output keeps the stage contract (`deepmoney.stage`): the same corpus and model settings reuse
a finished model, other ones are refused unless `--overwrite`, and a directory that is not a base
model is never written into.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from deepmoney.config import DeepmoneyConfig, result_settings
from deepmoney.data.ingest import iter_texts, resolve_inputs
from deepmoney.errors import UserError
from deepmoney.models.init import init_tiny_model
from deepmoney.stage import BaseModelManifest, claim_output, digest, fingerprint, write_manifest
from deepmoney.storage import Storage

log = logging.getLogger(__name__)

KIND = "base-model"


@dataclass
class ModelInitResult:
    """What `init_model` did."""

    manifest: BaseModelManifest
    reused: bool


def init_model(corpus: list[str], output: str, config: DeepmoneyConfig, storage: Storage | None = None,
               quiet: bool = False, overwrite: bool = False) -> ModelInitResult:  # fmt: skip
    """Train the tokenizer on `corpus`, make the model, write both to `output`; reuse an identical one."""
    storage = storage or Storage(config.storage)
    storage.check_writable(output)
    resolved = resolve_inputs(corpus, storage)
    settings = {
        "inputs": digest([[f.uri, f.size, f.version] for f in resolved.files]),
        **{f"model.{k}": v for k, v in result_settings(config.model).items() if k != "base_model"},
        "data.max_document_mb": config.data.max_document_mb,
    }
    fp = fingerprint(KIND, settings)
    claim = claim_output(storage, output, KIND, fp, settings, overwrite=overwrite)
    if claim.reuse is not None:
        log.info("%s already holds this model (same corpus and model config); reusing it", output)
        return ModelInitResult(BaseModelManifest.model_validate(claim.reuse), reused=True)
    with storage.staging_dir(output) as staging:
        out = staging / "out"
        counted = _Counted(iter_texts(corpus, storage, config.data, quiet=quiet))
        facts = init_tiny_model(counted, out, config.model.preset, config.model.vocab_size, config.model.seed)
        if counted.documents == 0:
            raise UserError(f"--tokenizer-corpus {' '.join(corpus)}: no usable text in any file (all were rejected: "
                            "binary, empty, undecodable or unsupported); nothing was written")  # fmt: skip
        manifest = BaseModelManifest(fingerprint=fp, settings=settings, tokenizer_corpus=corpus,
                                     documents=counted.documents, **facts)  # fmt: skip
        write_manifest(out / "manifest.json", manifest)
        storage.publish_tree(out, output)
    return ModelInitResult(manifest, reused=False)


class _Counted:
    """An iterator of texts that counts the non-empty ones it hands out (the tokenizer trainer consumes it)."""

    def __init__(self, texts: object) -> None:
        self._texts = iter(texts)  # type: ignore[call-overload]
        self.documents = 0

    def __iter__(self) -> _Counted:
        return self

    def __next__(self) -> str:
        text = next(self._texts)
        if text.strip():
            self.documents += 1
        return text
