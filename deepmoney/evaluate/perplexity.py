"""Held-out perplexity: the documents `build-pt` kept out of training, read in windows.

Every held-out document (a whole report, tokenized exactly as for training) is cut into
consecutive windows of `window` tokens; each window is scored on its own (the first token of a
window is context only), and the perplexity is exp(total negative log-likelihood / scored tokens)
over all windows. Windows are batched by length so padding is rare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from deepmoney.errors import UserError
from deepmoney.stage import PtCorpusManifest, TokenizerInfo, read_manifest
from deepmoney.storage import Storage


@dataclass
class HeldoutCorpus:
    """The held-out documents of a pt corpus."""

    directory: Path
    documents: list[list[int]]
    files: list[dict[str, str]]  # path + sha256 of each held-out shard, from the corpus manifest
    tokenizer: TokenizerInfo  # what made the token ids


def load_heldout(pt_dir: Path) -> HeldoutCorpus:
    """Read `heldout/validation-*.parquet` of a `build-pt` output (one whole document per row)."""
    manifest = read_manifest(Storage(), pt_dir, PtCorpusManifest)
    shards = sorted((pt_dir / "heldout").glob("validation-*.parquet"))
    if not shards:
        raise UserError(f"no held-out documents in {pt_dir}: it holds out {manifest.heldout.documents} documents; "
                        "raise data.heldout_fraction and rebuild it")  # fmt: skip
    documents = [row for shard in shards for row in pq.read_table(shard, columns=["input_ids"]).column(0).to_pylist()]
    files = [f.model_dump() for f in manifest.files if f.path.startswith("heldout/")]
    return HeldoutCorpus(pt_dir, documents, files, manifest.tokenizer)


def windows(documents: list[list[int]], window: int) -> list[list[int]]:
    """Consecutive windows of at most `window` tokens; a last piece of one token scores nothing and is dropped."""
    out = []
    for ids in documents:
        for start in range(0, len(ids), window):
            piece = ids[start : start + window]
            if len(piece) >= 2:
                out.append(piece)
    return out


@torch.no_grad()
def perplexity(model: torch.nn.Module, documents: list[list[int]], window: int, batch_size: int, pad_id: int,
               quiet: bool = False) -> dict[str, float]:  # fmt: skip
    """Perplexity, mean loss and counts over the held-out documents."""
    pieces = sorted(windows(documents, window), key=len, reverse=True)
    device = next(model.parameters()).device
    total_nll, scored = 0.0, 0
    for start in tqdm(range(0, len(pieces), batch_size), desc="perplexity", unit="batch", disable=quiet):
        batch = pieces[start : start + batch_size]
        length = len(batch[0])
        ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, piece in enumerate(batch):
            ids[row, : len(piece)] = torch.tensor(piece)
            mask[row, : len(piece)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum")
        total_nll += nll.item()
        scored += int((targets != -100).sum())
    if scored == 0:
        raise UserError("the held-out documents are too short to score (fewer than 2 tokens each)")
    loss = total_nll / scored
    return {"perplexity": math.exp(min(loss, 700.0)), "heldout_loss": loss, "heldout_tokens": float(scored),
            "heldout_documents": float(len(documents)), "heldout_windows": float(len(pieces))}  # fmt: skip
