"""What a training run reads: the pt corpus or the sft dataset, checked against the model first.

Both stages yield the same items (token ids, labels, segment starts, non-padding token count), so
one collate function and one loop serve both. Mismatches that would waste a GPU day — a corpus
tokenized with another tokenizer, ids beyond the model's vocabulary, blocks longer than its
positions — are refused before the first step, with what to do about them.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from deepmoney.data.tokenize import resolve_tokenizer
from deepmoney.errors import UserError
from deepmoney.models.shape import model_shape
from deepmoney.storage import Storage, sha256_file
from deepmoney.train import sft_data
from deepmoney.train.packed import PackedPtDataset

log = logging.getLogger(__name__)

SFT_FILES = ("sharegpt.jsonl", "alpaca.jsonl")  # sharegpt first: it keeps multi-turn conversations
DEFAULT_SFT_BLOCK = 1024


@dataclass
class TrainData:
    """Items to train on, plus the lineage MLflow records."""

    items: Dataset
    block_size: int
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)  # type: ignore[arg-type]


class _Blocks(Dataset):
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._items[index]


def _manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise UserError(f"{path} is not valid JSON; rebuild the dataset") from None


def _model_limits(model_dir: Path) -> tuple[int, int]:
    shape = model_shape(model_dir)
    return shape["vocab"], shape["positions"]


def load_pt(data_dir: Path, model_dir: Path, storage: Storage, scratch: Path) -> TrainData:
    """The packed blocks of a `deepmoney data build-pt` output, refused if the model cannot read them."""
    manifest = _manifest(data_dir)
    if manifest is None or manifest.get("kind") != "pt-corpus":
        raise UserError(
            f"{data_dir} is not a pt corpus (no manifest.json of kind pt-corpus); "
            "build one with `deepmoney data build-pt`, or use --stage sft for an sft dataset"
        )
    vocab, positions = _model_limits(model_dir)
    data_tok = manifest["tokenizer"]
    model_tok = resolve_tokenizer(str(model_dir), storage, scratch)
    if data_tok["digest"] != model_tok.digest:
        raise UserError(
            f"the pt corpus {data_dir} was tokenized with {data_tok['uri']} (digest {data_tok['digest'][:12]}), "
            f"not with the tokenizer of {model_dir} (digest {model_tok.digest[:12]}); "
            "rebuild the corpus with this model's tokenizer"
        )
    if data_tok["vocab_size"] > vocab:
        raise UserError(
            f"the pt corpus uses {data_tok['vocab_size']} token ids but the model's embedding has {vocab}; "
            "resize the model's embeddings or rebuild the corpus with its tokenizer"
        )
    if manifest["block_size"] > positions:
        raise UserError(
            f"pt blocks are {manifest['block_size']} tokens but the model has {positions} positions; "
            f"rebuild the corpus with data.block_size <= {positions}"
        )
    try:
        items = PackedPtDataset(data_dir)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if len(items) == 0:
        raise UserError(f"the pt corpus {data_dir} holds no blocks; add documents and rebuild it")
    info = {
        "stage": "pt",
        "uri": str(data_dir),
        "digest": manifest["fingerprint"],
        "rows": len(items),
        "tokens": len(items) * manifest["block_size"],
        "block_size": manifest["block_size"],
        "documents": manifest.get("documents"),
    }
    return TrainData(items, manifest["block_size"], info)


def sft_file(data: Path) -> Path:
    """The JSONL file of an sft dataset: a synth output directory, a directory with one, or the file."""
    if data.is_file():
        return data
    manifest = _manifest(data)
    if manifest is not None and manifest.get("kind") not in (None, "sft-dataset"):
        raise UserError(f"{data} holds a {manifest['kind']}, not an sft dataset; use --stage pt for a pt corpus")
    for name in SFT_FILES:
        if (data / name).is_file():
            return data / name
    raise UserError(
        f"no sft dataset in {data} (expected {' or '.join(SFT_FILES)}); "
        "make one with `deepmoney synth`, or pass the JSONL file itself"
    )


def load_sft(data: Path, model_dir: Path, block_size: int | None, train_on_prompt: bool, seed: int) -> TrainData:
    """Conversations rendered with the model's chat template, prompts masked, packed into full blocks."""
    from transformers import AutoTokenizer

    path = sft_file(data)
    vocab, positions = _model_limits(model_dir)
    block = block_size or min(DEFAULT_SFT_BLOCK, positions)
    if block > positions:
        raise UserError(f"train.block_size={block} exceeds the model's {positions} positions; lower it")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if not tokenizer.chat_template:
        raise UserError(f"the tokenizer of {model_dir} has no chat template; sft needs one to render conversations")
    if len(tokenizer) > vocab:
        raise UserError(
            f"the tokenizer of {model_dir} has {len(tokenizer)} tokens but the embedding only {vocab}; "
            "resize the model's embeddings to the tokenizer"
        )
    try:
        chats = sft_data.conversations(path)
    except (ValueError, KeyError) as exc:
        raise UserError(f"{path} is not alpaca or sharegpt JSONL: {type(exc).__name__}: {exc}") from None
    if not chats:
        raise UserError(f"{path} holds no examples; synthesize some with `deepmoney synth`")
    random.Random(seed).shuffle(chats)  # blocks mix documents; the order is fixed by the seed
    examples = [sft_data.tokenize(c, tokenizer, train_on_prompt) for c in chats]
    packed = sft_data.pack(examples, block)
    if packed.truncated:
        log.warning("%d of %d sft examples are longer than %d tokens and were cut", packed.truncated, len(chats), block)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    items = [sft_data.block_item(b, block, pad) for b in packed.blocks]
    tokens = sum(i["tokens"] for i in items)
    info = {
        "stage": "sft",
        "uri": str(path),
        "digest": sha256_file(path),
        "rows": len(chats),
        "blocks": len(items),
        "tokens": tokens,
        "block_size": block,
        "padding_share": round(packed.padding_tokens / (len(items) * block), 4),
        "truncated": packed.truncated,
        "train_on_prompt": train_on_prompt,
    }
    log.info(
        "sft: %d examples packed into %d blocks of %d tokens (%.1f%% padding)",
        len(chats), len(items), block, 100 * info["padding_share"],
    )  # fmt: skip
    return TrainData(_Blocks(items), block, info)


class StepBatches(Sampler[list[int]]):
    """Index lists of this rank's micro-batches, step after step, from a given optimizer step on.

    Each epoch is a seeded permutation of all blocks; optimizer step `s` takes the global batch
    `perm[s*G:(s+1)*G]` (wrapping into the next epoch), and rank r's micro-batch m is a fixed
    slice of it. The data position is therefore just the step number: a resumed run reads exactly
    what the uninterrupted run would have read, whatever happened in between.
    """

    def __init__(
        self, size: int, micro_batch: int, grad_accum: int, rank: int, world_size: int, seed: int,
        start_step: int, total_steps: int,
    ) -> None:  # fmt: skip
        self.size, self.micro, self.accum = size, micro_batch, grad_accum
        self.rank, self.world, self.seed = rank, world_size, seed
        self.start, self.total = start_step, total_steps
        self.global_batch = micro_batch * grad_accum * world_size
        if self.global_batch > size:
            raise UserError(
                f"a global batch of {self.global_batch} blocks (micro-batch {micro_batch} x accumulation "
                f"{grad_accum} x {world_size} ranks) is larger than the dataset ({size} blocks); "
                "lower --micro-batch or train.grad_accum, or add data"
            )

    def _perm(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def step_indices(self, step: int) -> list[int]:
        """All blocks of optimizer step `step`, over all ranks (steps are whole; an epoch's tail wraps)."""
        per_epoch = self.size // self.global_batch
        epoch, index = divmod(step, per_epoch)
        perm = self._perm(epoch)
        return perm[index * self.global_batch : (index + 1) * self.global_batch]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.total):
            batch = self.step_indices(step)
            for micro in range(self.accum):
                offset = (micro * self.world + self.rank) * self.micro
                yield batch[offset : offset + self.micro]

    def __len__(self) -> int:
        return (self.total - self.start) * self.accum


def steps_for(train_max_steps: int | None, epochs: float, size: int, global_batch: int) -> int:
    """Optimizer steps of the run: `max_steps`, or `epochs` passes of whole global batches."""
    if train_max_steps is not None:
        return train_max_steps
    return max(1, int(epochs * (size // global_batch)))
