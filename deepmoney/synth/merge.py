"""Merging the outputs of `deepmoney synth --shard K/N` runs into one dataset.

Every record and rejection carries its chapter's position in the whole run (`order`), so sorting
the shards' lines by it reproduces exactly the files an unsharded run writes.
"""

from __future__ import annotations

import json
from typing import Any

from deepmoney.errors import UserError
from deepmoney.stage import SftDatasetManifest, claim_output, fingerprint, read_manifest, write_manifest
from deepmoney.storage import Storage, join
from deepmoney.synth import export

KIND = "sft-dataset"
_SUMMED = ("documents", "chapters", "chapters_covered", "chapters_truncated", "records", "heldout_records", "rejected")


def _lines(storage: Storage, uri: str) -> list[dict[str, Any]]:
    text = storage.read_bytes(uri).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def merge_shards(shards: list[str], output: str, storage: Storage | None = None,
                 overwrite: bool = False) -> dict[str, Any]:  # fmt: skip
    """Merge finished shard outputs into `output`; returns the merged manifest."""
    storage = storage or Storage()
    manifests = []
    for shard in shards:
        if not storage.exists(join(shard, "manifest.json")):
            raise UserError(f"{shard} is not a finished synth output (no manifest.json); run or resume that shard")
        manifest = read_manifest(storage, shard, SftDatasetManifest, what=shard).model_dump(mode="json")
        if not manifest.get("options", {}).get("shard"):
            raise UserError(f"{shard} is not the output of a sharded run (synth --shard K/N); only the shards of "
                            "one run can be merged")  # fmt: skip
        manifests.append(manifest)
    specs = [tuple(m["options"]["shard"]) for m in manifests]
    counts = {n for _, n in specs}
    found = ", ".join(f"{k}/{n}" for k, n in sorted(specs))
    if len(counts) != 1 or sorted(k for k, _ in specs) != list(range(next(iter(counts)))):
        raise UserError(f"expected the outputs of shards 0..N-1 of one run, got shards {found}")
    if len({(json.dumps(m["roles"], sort_keys=True), m["prompt_digest"]) for m in manifests}) != 1:
        raise UserError("the shards were made with different roles or prompts; they cannot be merged")
    order = lambda r: (r["meta"]["order"], r["meta"]["question_index"])  # noqa: E731
    records = sorted((r for s in shards for r in _lines(storage, join(s, export.ALPACA_FILE))), key=order)
    heldout = sorted((r for s in shards for r in _lines(storage, join(s, export.HELDOUT_FILE))), key=order)
    rejected = [r for s in shards for r in _lines(storage, join(s, "rejected.jsonl"))]
    rejected.sort(key=lambda r: r.get("order", -1))
    if not records and not heldout:
        raise UserError(f"synthesis produced no dataset: no question-answer pair passed the filters in any of the "
                        f"{len(shards)} shards ({len(rejected)} rejected; see each shard's rejected.jsonl); "
                        "nothing was written")  # fmt: skip
    settings = {"shards": [m["fingerprint"] for m in manifests]}
    fp = fingerprint(KIND, settings)
    claim = claim_output(storage, output, KIND, fp, settings, overwrite=overwrite)
    if claim.reuse is not None:
        return claim.reuse
    with storage.staging_dir(output) as staging:
        out = staging / "out"
        out.mkdir()
        export.write_jsonl(out / export.ALPACA_FILE, records)
        export.write_jsonl(out / export.SHAREGPT_FILE, map(_to_sharegpt, records))
        export.write_jsonl(out / export.HELDOUT_FILE, heldout)
        export.write_jsonl(out / "rejected.jsonl", rejected)
        (out / "dataset_info.json").write_text(json.dumps(export.DATASET_INFO, indent=2), encoding="utf-8")
        merged = SftDatasetManifest.model_validate({
            "fingerprint": fp,
            "settings": settings,
            "merged_from": [
                {"uri": s, "fingerprint": m["fingerprint"]} for s, m in zip(shards, manifests, strict=True)
            ],
            **{key: sum(m.get(key, 0) for m in manifests) for key in _SUMMED},
            "roles": manifests[0]["roles"],
            "prompt_version": manifests[0]["prompt_version"],
            "prompt_digest": manifests[0]["prompt_digest"],
            "files": export.FILES,
        })  # fmt: skip
        write_manifest(out / "manifest.json", merged)
        storage.publish_tree(out, output)
    return merged.model_dump(mode="json")


def _to_sharegpt(alpaca: dict[str, Any]) -> dict[str, Any]:
    return export.sharegpt({"instruction": alpaca["instruction"], "answer": alpaca["output"],
                            "system": alpaca["system"], "meta": alpaca["meta"]})  # fmt: skip
