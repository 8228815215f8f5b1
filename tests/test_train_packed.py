"""Packed pt blocks as model inputs: each segment behaves exactly as if it ran alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from deepmoney.config import load_config, overrides_from_flags
from deepmoney.data.pt import build_pt
from deepmoney.train.packed import IGNORE_INDEX, PackedPtDataset, block_causal_mask, collate, position_ids
from tests.test_pt import _filler


def test_positions_and_mask_for_three_segments() -> None:
    starts, length = [0, 3, 7], 10
    assert position_ids(starts, length).tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 1, 2]
    mask = block_causal_mask(starts, length)
    assert mask[4, 3] and mask[4, 4] and not mask[4, 2] and not mask[4, 5] and not mask[8, 6]


@pytest.fixture(scope="module")
def packed_corpus(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    corpus = tmp_path_factory.mktemp("packcorpus")
    for i in range(12):  # short documents, so that blocks hold several of them
        (corpus / f"note{i}.md").write_text(f"# Note {i}\n\n{_filler(500 + i, 30 + 7 * i)}\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("packed") / "pt"
    config = load_config(overrides=overrides_from_flags(**{"data.block_size": 256, "data.workers": 1}))
    build_pt([str(corpus)], str(tiny_model), str(out), config, quiet=True)
    return out


def test_each_segment_matches_running_it_alone(packed_corpus: Path, tiny_model: Path) -> None:
    dataset = PackedPtDataset(packed_corpus)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True).eval()
    item = next(dataset[i] for i in range(len(dataset)) if len(dataset[i]["segment_starts"]) >= 3)
    batch = collate([item])
    starts = item["segment_starts"]
    assert all(batch["labels"][0, s] == IGNORE_INDEX for s in starts[1:])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       attention_mask=batch["attention_mask"]).logits[0]  # fmt: skip
        for left, right in zip(starts, [*starts[1:], len(item["input_ids"])], strict=True):
            alone = model(input_ids=item["input_ids"][None, left:right]).logits[0]
            torch.testing.assert_close(packed[left:right], alone, atol=1e-4, rtol=1e-4)
        batch.pop("n_tokens")
        loss = model(**batch).loss
    assert torch.isfinite(loss)


def test_missing_shards_are_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="build-pt output"):
        PackedPtDataset(tmp_path)


def test_single_segment_batches_use_plain_causal_attention(packed_corpus: Path, tiny_model: Path) -> None:
    """A batch of whole-segment blocks goes without a mask; the logits equal the masked computation."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True).eval()
    ids = torch.arange(3, 67)
    batch = collate([{"input_ids": ids, "segment_starts": [0]}])
    assert "attention_mask" not in batch
    assert batch["n_tokens"] == 64
    mask = block_causal_mask([0], 64)[None, None]
    with torch.no_grad():
        plain = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        masked = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask).logits
    torch.testing.assert_close(plain, masked, atol=1e-4, rtol=1e-4)
