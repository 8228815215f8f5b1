"""`deepmoney intake run`: label every news item of a stream and say which go on to the analysis chain.

Each item gets a verdict — `label` (objective | subjective) with the classifier's probability,
`duplicate_of` (the kept item it repeats, within the last `intake.window` kept items) — appended
to `verdicts.jsonl` batch by batch, each batch flushed to disk before the next is read. A run
killed at any point resumes where the file ends: the partial last line is cut, the dedup window
is rebuilt from the kept items already written, and the remaining items are labelled exactly as
an uninterrupted run would have labelled them. When every item has its verdict, `forward.jsonl`
(the items that go on: by default objective and not a duplicate, as in the recipe) and
`manifest.json` are written, in that order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepmoney.config import DeepmoneyConfig, result_settings
from deepmoney.errors import UserError
from deepmoney.intake.classifier import Classifier, Verdict
from deepmoney.intake.dedup import WindowDeduplicator
from deepmoney.intake.policy import goes_on
from deepmoney.jsonl import json_lines
from deepmoney.stage import MANIFEST, RUN_MARKER, Manifest, claim_output, fingerprint, utc_now, write_manifest
from deepmoney.storage import Storage, atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

KIND = "intake-run"
_FIELDS = ("id", "date", "label", "score", "duplicate_of", "duplicate_kind", "similarity", "rejected", "forward")
VERDICTS = "verdicts.jsonl"
FORWARD = "forward.jsonl"


class IntakeManifest(Manifest):
    """A finished intake run: how many items, how they were labelled, how many go on."""

    kind: str = KIND
    input: str
    model: str
    items: int
    objective: int
    subjective: int
    duplicates: int
    forwarded: int
    rejected: int = 0
    resumed: bool


@dataclass(frozen=True)
class NewsIn:
    """One input item: its id, text, date (if any) and the whole record (passed on to forward.jsonl)."""

    id: str
    text: str
    date: str | None
    record: dict[str, Any]
    rejected: str | None = None  # why the item cannot be labelled (an empty or non-text `text`)


def read_stream(path: Path) -> list[NewsIn]:
    """The items of a JSONL news file (`id`, `text` or `news`, optional `date`); one-line errors, nothing written.

    A line that is not an object, or has no usable id, stops the run (its verdict could not be named); an
    item whose text is empty or not a string is kept as rejected, with the reason, so that no row is lost.
    """
    items: list[NewsIn] = []
    seen: set[str] = set()
    first_rejected = None
    for _, where, record in json_lines(path):
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object with id and text")
        if "id" not in record or isinstance(record["id"], (dict, list)) or str(record["id"]).strip() == "":
            raise UserError(f"{where}: every item needs an 'id' (a string or number)")
        text = record.get("text", record.get("news"))
        rejected = None
        if not isinstance(text, str) or not text.strip():
            rejected = f"'text' must be a non-empty string (the news text), not {text!r:.40}"
            first_rejected = first_rejected or where
            text = ""
        item_id = str(record["id"])
        if item_id in seen:
            raise UserError(f"{where}: duplicate id {item_id!r}; ids must be unique in a stream")
        seen.add(item_id)
        date = record.get("date")
        items.append(NewsIn(item_id, text, None if date is None else str(date), record, rejected))
    if not items:
        raise UserError(f"{path}: the news file has no items")
    if all(item.rejected for item in items):
        raise UserError(f"{path}: no item has a text to label (every 'text' is empty or not a string)")
    rejected = sum(item.rejected is not None for item in items)
    if rejected:
        log.warning("%d of %d items have no text to label (the first at %s); they are written as rejected",
                    rejected, len(items), first_rejected)  # fmt: skip
    return items


def model_digest(directory: Path) -> str:
    """A digest of a classifier directory: its config and tokenizer files' contents, the weights' names and sizes."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        h.update(path.name.encode())
        if path.suffix in (".json", ".txt", ".model"):
            h.update(path.read_bytes())
        else:
            h.update(str(path.stat().st_size).encode())
    return h.hexdigest()[:16]


def _read_verdicts(path: Path) -> list[dict[str, Any]]:
    """The verdicts written so far; a partial last line (the run was killed mid-write) is cut off the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.info("cutting a partial last line off %s (the previous run was stopped while writing it)", path)
        with path.open("r+b") as handle:
            handle.truncate(end)
    return [json.loads(line) for line in data[:end].decode("utf-8").splitlines() if line.strip()]


def _batches(items: list[NewsIn], size: int) -> Iterator[list[NewsIn]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_intake(model_dir: str, input_path: Path, output: str, config: DeepmoneyConfig, *, quiet: bool = False,
               overwrite: bool = False) -> IntakeManifest:  # fmt: skip
    """Label every item of `input_path` into `output` (resuming an interrupted run of the same inputs)."""
    if output.startswith("s3://"):
        raise UserError(f"--output {output}: intake writes a local directory (it appends as it goes)")
    items = read_stream(input_path)
    classifier = Classifier.load(model_dir)
    settings = {
        "input": sha256_file(input_path)[:16],
        "model": model_digest(Path(model_dir)),
        **{f"intake.{k}": v for k, v in result_settings(config.intake).items() if not k.startswith("classifier.")},
    }
    fp = fingerprint(KIND, settings)
    storage = Storage(config.storage)
    claim = claim_output(storage, output, KIND, fp, settings, overwrite=overwrite)
    if claim.reuse is not None:
        log.info("%s already holds this intake run (same input, model and settings); reusing it", output)
        return IntakeManifest.model_validate(claim.reuse)
    out = Path(output)
    if claim.replacing:
        for name in (VERDICTS, FORWARD, MANIFEST, RUN_MARKER):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if not claim.resuming:
        marker = {"kind": KIND, "fingerprint": fp, "settings": settings, "created_at": utc_now()}
        atomic_write_bytes(out / RUN_MARKER, json.dumps(marker, indent=2).encode())
    done = _read_verdicts(out / VERDICTS)
    if [v["id"] for v in done] != [item.id for item in items[: len(done)]]:
        raise UserError(f"--output {output}: {VERDICTS} does not follow the input's items in order; "
                        "pass --overwrite to start again")  # fmt: skip
    dedup = WindowDeduplicator(config.intake.dedup, config.intake.window)
    texts = {item.id: item.text for item in items}  # rejected items are never kept, so never replayed
    kept_so_far = [v["id"] for v in done if v["duplicate_of"] is None]
    for item_id in kept_so_far[-config.intake.window :]:  # the window as the stopped run left it
        dedup.check(item_id, texts[item_id])
    if done:
        log.info("resuming: %d of %d items already have their verdicts", len(done), len(items))
    verdicts = done + _label(items[len(done) :], classifier, dedup, out / VERDICTS, config, quiet, len(items))
    forward = [item.record | {"intake": v} for item, v in zip(items, verdicts, strict=True) if v["forward"]]
    atomic_write_bytes(out / FORWARD, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in forward).encode())
    manifest = IntakeManifest(
        fingerprint=fp, settings=settings, input=str(input_path), model=str(model_dir), items=len(items),
        objective=sum(v["label"] == "objective" for v in verdicts),
        subjective=sum(v["label"] == "subjective" for v in verdicts),
        duplicates=sum(v["duplicate_of"] is not None for v in verdicts), forwarded=len(forward),
        rejected=sum(v.get("rejected") is not None for v in verdicts), resumed=bool(done),
    )  # fmt: skip
    write_manifest(out / MANIFEST, manifest)
    (out / RUN_MARKER).unlink(missing_ok=True)
    return manifest


def _label(items: list[NewsIn], classifier: Classifier, dedup: WindowDeduplicator, path: Path,
           config: DeepmoneyConfig, quiet: bool, total: int) -> list[dict[str, Any]]:  # fmt: skip
    """Append the verdicts of `items` (the rest of a stream of `total`) to `path`, a batch at a time; the rows."""
    from tqdm import tqdm

    rows: list[dict[str, Any]] = []
    done = total - len(items)
    with path.open("a", encoding="utf-8") as handle, tqdm(total=total, initial=done, desc="intake", unit="item",
                                                          disable=quiet) as bar:  # fmt: skip
        for batch in _batches(items, config.intake.batch_size):
            labelled = [item for item in batch if item.rejected is None]
            texts = [i.text for i in labelled]
            found = classifier.predict(texts, threshold=config.intake.subjective_threshold)
            verdicts = dict(zip((i.id for i in labelled), found, strict=True))
            new = [_row(item, verdicts.get(item.id), dedup, config) for item in batch]
            rows += new
            lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in new]
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())  # a batch is on disk before the next is read: a kill loses at most one
            bar.update(len(batch))
    return rows


def _row(item: NewsIn, verdict: Verdict | None, dedup: WindowDeduplicator, config: DeepmoneyConfig) -> dict[str, Any]:
    """One line of verdicts.jsonl (the dedup window takes the item in when it is new)."""
    if item.rejected is not None or verdict is None:
        return dict.fromkeys(_FIELDS) | {"id": item.id, "date": item.date, "forward": False, "rejected": item.rejected}
    duplicate = dedup.check(item.id, item.text)
    return {
        "id": item.id,
        "date": item.date,
        "label": verdict.label,
        "score": round(verdict.score, 6),
        "duplicate_of": duplicate.kept_id if duplicate else None,
        "duplicate_kind": duplicate.kind if duplicate else None,
        "similarity": round(duplicate.similarity, 4) if duplicate else None,
        "rejected": None,
        "forward": goes_on(verdict.label, duplicate is not None, config.intake),
    }
