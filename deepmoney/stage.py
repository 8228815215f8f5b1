"""The contract every stage output keeps: a typed manifest written last, a fingerprint, one reuse rule.

Every stage (`model init`, `data build-pt`, `synth`, `train`, `evaluate`) writes its output with
`manifest.json` last. The manifest names its `kind`, and carries the `fingerprint` of what decided
the result together with the `settings` it was made from (flat: `{"data.block_size": 1024,
"inputs": "<digest>"}`). Before a stage writes anything, `claim_output` applies one rule:

- nothing there (or an empty directory): build;
- a finished output of the same kind and fingerprint: reuse it;
- a finished output of the same kind made from other inputs or settings: refuse with one line
  naming the settings that differ, unless `--overwrite` asks to replace it;
- a started, unfinished run of the same kind (`run.json`, for stages that work in place, i.e.
  training): resume it when its fingerprint matches, refuse (or, with `--overwrite`, start over)
  when it does not;
- anything else (a non-empty directory that is not a deepmoney output of this kind): refuse,
  whatever the flags say.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deepmoney import __version__
from deepmoney.errors import UserError
from deepmoney.storage import Storage, StorageError, atomic_write_bytes, is_s3, join

MANIFEST = "manifest.json"
RUN_MARKER = "run.json"  # written when an in-place stage (training) starts; the manifest replaces it as marker
OVERWRITE_FLAG = "--overwrite"


def utc_now() -> str:
    """The current time as ISO 8601 UTC, as manifests record it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FileDigest(BaseModel):
    """One output file and its SHA-256."""

    path: str
    sha256: str


class Manifest(BaseModel):
    """What every stage output's manifest.json holds; each kind adds its own fields (extra ones are kept)."""

    model_config = ConfigDict(extra="allow")

    kind: str
    deepmoney_version: str = __version__
    created_at: str = Field(default_factory=utc_now)
    fingerprint: str
    settings: dict[str, Any] = Field(default_factory=dict)


class BaseModelManifest(Manifest):
    """`deepmoney model init`: a tokenizer and a random-init model."""

    kind: Literal["base-model"] = "base-model"
    preset: str
    architecture: str
    parameters: int
    vocab_size: int
    model_vocab_size: int
    seed: int
    shape: dict[str, int]
    tokenizer_corpus: list[str] = Field(default_factory=list)
    files: list[FileDigest] = Field(default_factory=list)


class TokenizerInfo(BaseModel):
    """The tokenizer a corpus was made with."""

    uri: str
    digest: str
    vocab_size: int
    bos_token_id: int | None = None
    eos_token_id: int | None = None


class HeldoutInfo(BaseModel):
    """The documents a corpus keeps out of training, for evaluation."""

    fraction: float
    documents: int
    tokens: int
    directory: str = "heldout"


class PtCorpusManifest(Manifest):
    """`deepmoney data build-pt`: packed blocks, held-out documents and the reports."""

    kind: Literal["pt-corpus"] = "pt-corpus"
    format: str
    documents: int
    documents_read: int
    chapters: int
    tokens: int
    blocks: int
    block_size: int
    tokens_dropped: int
    rejected: int
    dropped: dict[str, int]
    dedup_removed: int
    heldout: HeldoutInfo
    tokenizer: TokenizerInfo
    files: list[FileDigest] = Field(default_factory=list)


class PtShardManifest(Manifest):
    """`deepmoney data build-pt --shard K/N`: the prepared results of every Nth task, for `data merge-pt`."""

    kind: Literal["pt-shard"] = "pt-shard"
    shard: int
    shard_count: int
    corpus_fingerprint: str  # the pt corpus the N shards make together
    corpus_settings: dict[str, Any]
    tasks_total: int  # tasks of the whole build; this shard holds those with index % shard_count == shard
    tasks: int
    files_total: int
    documents: int
    inputs: list[str]
    rejected: list[dict[str, str]]  # inputs rejected before any task (unreadable paths), as the build records them
    skipped_collections: list[str]
    tokenizer: TokenizerInfo
    summarizer: str
    seconds: float


class SftDatasetManifest(Manifest):
    """`deepmoney synth` (or `synth-merge`): alpaca/sharegpt records, held-out questions, rejections."""

    kind: Literal["sft-dataset"] = "sft-dataset"
    documents: int
    chapters: int
    chapters_covered: int
    records: int
    heldout_records: int
    rejected: int
    roles: dict[str, str]
    prompt_digest: str
    files: list[str] = Field(default_factory=list)


class TrainManifest(Manifest):
    """`deepmoney train`: the trained model in final/, and how the run went."""

    kind: Literal["model"] = "model"
    stage: str
    base_model: str
    final: str
    steps: int
    tokens: int
    tokens_per_second: float
    first_loss: float | None = None
    final_loss: float | None = None
    world_size: int = 1
    zero_stage: int = 0
    mlflow_run_id: str | None = None
    mlflow_tracking_uri: str | None = None
    mlflow_model_uri: str | None = None


class EvaluationManifest(Manifest):
    """`deepmoney evaluate`: metrics on one evaluation set (named by its digest), and lineage."""

    kind: Literal["evaluation"] = "evaluation"
    model: str
    eval_digest: str
    metrics: dict[str, float]
    training_run_id: str | None = None
    registered: list[str] | None = None
    tokenizer_size: int = 0
    mlflow_run_id: str | None = None


KINDS: dict[str, type[Manifest]] = {
    m.model_fields["kind"].default: m
    for m in (BaseModelManifest, PtCorpusManifest, SftDatasetManifest, TrainManifest, EvaluationManifest)
}
M = TypeVar("M", bound=Manifest)


def digest(value: Any) -> str:
    """A short, stable digest of any JSON-ready value (inputs lists, settings)."""
    blob = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def fingerprint(kind: str, settings: dict[str, Any]) -> str:
    """The fingerprint of an output of `kind` made from `settings` (inputs' digests and result settings)."""
    return hashlib.sha256(json.dumps({"kind": kind, **settings}, sort_keys=True, default=str).encode()).hexdigest()


def _a(noun: str) -> str:
    """The noun with its indefinite article ("an intake-run", "a model")."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`name (old -> new)` for every setting that differs between two outputs' settings."""
    changed = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changed.append(f"{key} ({_shown(old.get(key, 'unset'))} -> {_shown(new.get(key, 'unset'))})")
    return changed


def _listing(storage: Storage, output: str) -> list[str]:
    """The names directly under `output` (an S3 prefix's keys below it); empty when nothing is there."""
    if is_s3(output):
        try:
            refs = storage.list_files(output)
        except StorageError as exc:
            if "no objects under" in str(exc):
                return []
            raise
        base = output.rstrip("/") + "/"
        return sorted({r.uri[len(base) :].split("/", 1)[0] for r in refs if r.uri.startswith(base)})
    path = Path(output)
    if not path.exists():
        return []
    if not path.is_dir():
        raise UserError(f"output {output} exists and is not a directory; choose another --output")
    return sorted(p.name for p in path.iterdir())


def _load(storage: Storage, uri: str) -> dict[str, Any] | None:
    try:
        value = json.loads(storage.read_bytes(uri))
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


@dataclass
class Claim:
    """What `claim_output` decided: `reuse` holds the finished output to reuse, else the stage builds."""

    reuse: dict[str, Any] | None = None
    replacing: bool = False  # an earlier output (finished or not) is there and will be replaced
    resuming: bool = False  # an unfinished run with the same fingerprint is there (in-place stages)


def claim_output(storage: Storage, output: str, kind: str, fingerprint_: str, settings: dict[str, Any], *,
                 overwrite: bool = False) -> Claim:  # fmt: skip
    """Apply the one reuse rule to `output` for a stage making a `kind` with this fingerprint (see module doc)."""
    output = str(output)
    names = _listing(storage, output)
    if not names:
        return Claim()
    existing = _load(storage, join(output, MANIFEST)) if MANIFEST in names else None
    started = _load(storage, join(output, RUN_MARKER)) if existing is None and RUN_MARKER in names else None
    found = existing or started
    if found is None or found.get("kind") != kind:
        if found and found.get("kind"):
            what = f"holds {_a(found['kind'])} rather than {_a(kind)}"
        else:
            more = " and more" if len(names) > 1 else ""
            what = f"is not a deepmoney output (it holds {sorted(names)[0]}{more})"
        raise UserError(
            f"--output {output} is not empty and {what}; choose an empty or new directory (nothing was written)"
        )
    if found.get("fingerprint") == fingerprint_:
        if existing is None:  # this very run, unfinished: resume it (--overwrite too: a restarted pod must not wipe it)
            return Claim(resuming=True)
        if not overwrite:
            return Claim(reuse=existing)
    if overwrite:
        return Claim(replacing=True)
    diff = settings_diff(found.get("settings") or {}, settings) if found.get("settings") else []
    differs = ", ".join(diff) if diff else "settings it did not record (made by an older deepmoney)"
    state = "a finished" if existing is not None else "an unfinished"
    raise UserError(
        f"--output {output} holds {state} {kind} made with other inputs or settings: {differs}; pass "
        f"{OVERWRITE_FLAG} to replace it, or choose another --output"
    )


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write `manifest` as JSON to the local file `path` (atomically; readable by the umask's rules)."""
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, ensure_ascii=False)
    atomic_write_bytes(path, text.encode("utf-8"))


def read_manifest(storage: Storage, directory: str | Path, model: type[M], what: str = "") -> M:
    """The manifest of the finished output in `directory`, as `model`; one-line errors otherwise."""
    kind = model.model_fields["kind"].default
    uri = join(str(directory), MANIFEST)
    if not storage.exists(uri):
        raise UserError(f"{what or directory}: no {MANIFEST} there, so it is not a finished {kind}")
    raw = _load(storage, uri)
    if raw is None:
        raise UserError(f"{uri} is not valid JSON; rebuild that output")
    if raw.get("kind") != kind:
        raise UserError(f"{what or directory} holds a {raw.get('kind') or 'manifest without a kind'}, not a {kind}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{uri}: {field}: {first['msg']}; another deepmoney version made it, rebuild it") from None


def manifest_kind(storage: Storage, directory: str | Path) -> str | None:
    """The kind of the finished output in `directory`, or None when there is none (no readable manifest)."""
    uri = join(str(directory), MANIFEST)
    raw = _load(storage, uri) if storage.exists(uri) else None
    return raw.get("kind") if raw else None
