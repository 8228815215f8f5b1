"""Tokenizing pt texts with the base model's tokenizer, straight through the Rust `tokenizers` library.

Going through `tokenizers` instead of transformers keeps worker processes light (no torch import)
and is what every Hugging Face fast tokenizer is underneath. A model directory that only has a
slow (e.g. SentencePiece) tokenizer is converted once with transformers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepmoney.errors import UserError
from deepmoney.storage import Storage, is_s3

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_MAX_ENCODE_CHARS = 200_000  # longer texts are tokenized in pieces to bound the tokenizer's memory


@dataclass(frozen=True)
class TokenizerSpec:
    """Everything a worker needs to tokenize like the base model (picklable)."""

    uri: str
    file: Path  # a tokenizer.json
    bos_id: int | None
    eos_id: int
    vocab_size: int
    digest: str


def _token_content(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def resolve_tokenizer(uri: str, storage: Storage, scratch: Path) -> TokenizerSpec:
    """Find (download, or convert) the tokenizer of a model directory or S3 prefix."""
    from tokenizers import Tokenizer

    local = Path(uri)
    if is_s3(uri):
        local = scratch / "tokenizer"
        local.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            source = f"{uri.rstrip('/')}/{name}"
            if storage.exists(source):
                (local / name).write_bytes(storage.read_bytes(source))
    config_path = local / "tokenizer_config.json"
    if not (local / "tokenizer.json").is_file():
        if not config_path.is_file():
            raise UserError(
                f"no Hugging Face tokenizer in {uri} (expected tokenizer.json); "
                "pass a model directory, e.g. one made by `deepmoney model init`"
            )
        _convert_slow_tokenizer(local, uri, scratch / "converted")
        local = scratch / "converted"
    special: dict[str, object] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = local / name if (local / name).exists() else Path(uri) / name
        if path.is_file():
            try:
                special.update({k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if v})
            except ValueError:
                raise UserError(f"{path} is not valid JSON; the tokenizer files are damaged") from None
    try:
        tokenizer = Tokenizer.from_file(str(local / "tokenizer.json"))
    except Exception as exc:
        raise UserError(f"cannot load {local / 'tokenizer.json'}: {exc}") from None
    bos, eos = _token_content(special.get("bos_token")), _token_content(special.get("eos_token"))
    eos_id = tokenizer.token_to_id(eos) if eos else None
    if eos_id is None:
        raise UserError(f"the tokenizer in {uri} has no EOS token; documents could not be separated")
    return TokenizerSpec(
        uri=uri,
        file=local / "tokenizer.json",
        bos_id=tokenizer.token_to_id(bos) if bos else None,
        eos_id=eos_id,
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        digest=tokenization_digest(local / "tokenizer.json", special),
    )


# What decides the ids a text becomes: the tokenizer.json pipeline and the special tokens around a document.
_PIPELINE = ("model", "normalizer", "pre_tokenizer", "post_processor", "added_tokens")
_SPECIAL = ("bos_token", "eos_token", "add_bos_token", "add_eos_token")


def tokenization_digest(tokenizer_json: Path, special: dict[str, object]) -> str:
    """A digest of how the tokenizer turns text into ids, and of nothing else.

    Saving a tokenizer again (as training does for its output) rewrites its files with other
    bookkeeping fields (`is_local`, transformers' version, key order); the ids stay the same, and
    so must the digest that decides whether a corpus and a model agree.
    """
    try:
        pipeline = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    except ValueError:
        raise UserError(f"{tokenizer_json} is not valid JSON; the tokenizer files are damaged") from None
    content = {
        "pipeline": {key: pipeline.get(key) for key in _PIPELINE},
        "special": {key: _token_content(special.get(key)) or special.get(key) for key in _SPECIAL},
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def _convert_slow_tokenizer(local: Path, uri: str, target: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(local), local_files_only=True, use_fast=True)
    except Exception as exc:
        raise UserError(f"cannot load the tokenizer in {uri}: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"the tokenizer in {uri} cannot be converted to a fast tokenizer")
    tokenizer.save_pretrained(str(target))


def pieces(text: str, size: int = _MAX_ENCODE_CHARS) -> list[str]:
    """Cut a huge text at whitespace into pieces the tokenizer can take one at a time."""
    if len(text) <= size:
        return [text]
    out, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind(" ", start + size // 2, end)
            end = cut if cut > start else end
        out.append(text[start:end])
        start = end
    return out


class Encoder:
    """Turns pt texts into token ids: [BOS] + text + [EOS]."""

    def __init__(self, spec: TokenizerSpec, add_bos: bool) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(spec.file))
        self._encode = getattr(self._tokenizer, "encode_batch_fast", None) or self._tokenizer.encode_batch
        self._head = np.asarray([spec.bos_id] if add_bos and spec.bos_id is not None else [], dtype=np.int32)
        self._tail = np.asarray([spec.eos_id], dtype=np.int32)

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text, in one batched call (parallel inside the Rust library)."""
        flat, owners = [], []
        for slot, text in enumerate(texts):
            for piece in pieces(text):
                flat.append(piece)
                owners.append(slot)
        encoded = self._encode(flat, add_special_tokens=False) if flat else []
        parts: list[list[np.ndarray]] = [[self._head] for _ in texts]
        for slot, encoding in zip(owners, encoded, strict=True):
            parts[slot].append(np.asarray(encoding.ids, dtype=np.int32))
        return [np.concatenate([*p, self._tail]) for p in parts]
