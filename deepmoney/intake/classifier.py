"""The subjective/objective classifier: a small BERT trained from scratch, or any sequence classifier directory.

`train_classifier` fits a WordPiece vocabulary (Chinese split into characters, as BERT's own
normaliser does) and a `BertForSequenceClassification` of a few layers on the training split — a
minute on a laptop CPU, nothing downloaded — and saves both as a Hugging Face directory. `Classifier`
loads that directory or any other `...ForSequenceClassification` whose labels include objective and
subjective (a fine-tuned multilingual BERT, say), and labels batches of texts.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepmoney.config import ClassifierConfig
from deepmoney.errors import UserError
from deepmoney.intake.labelled import LABELS, Example

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_MIN_PIECE, _MAX_PIECE = 2, 6  # lengths of the word beginnings and endings the vocabulary may hold


@dataclass(frozen=True, slots=True)
class Verdict:
    """A text's label and the classifier's probability of that label."""

    label: str
    score: float


def _vocabulary(words: Counter[str], size: int) -> dict[str, int]:
    """A WordPiece vocabulary that is the same on every run (the `tokenizers` trainer breaks ties in Rust's
    per-process hash order): the special tokens, every character alone and as a `##` continuation, then
    the most frequent whole words, word beginnings and `##` endings (ties by spelling) up to `size`."""
    chars = sorted({c for word in words for c in word})
    vocab = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    known = set(vocab)
    pieces: Counter[str] = Counter()
    for word, count in words.items():
        pieces[word] += count
        for cut in range(_MIN_PIECE, min(len(word), _MAX_PIECE + 1)):
            pieces[word[:cut]] += count
            pieces[f"##{word[-cut:]}"] += count
    frequent = sorted((p for p in pieces if p not in known), key=lambda p: (-pieces[p], p))
    vocab += frequent[: max(0, size - len(vocab))]
    return {token: i for i, token in enumerate(vocab)}


def _tokenizer(texts: list[str], config: ClassifierConfig) -> Any:
    """A BERT WordPiece tokenizer fitted to `texts` (lower-cased; CJK characters are tokens of their own)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab = _vocabulary(words, config.vocab_size)
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return BertTokenizerFast(tokenizer_object=tok, model_max_length=config.max_length, do_lower_case=True,
                             unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                             mask_token="[MASK]")  # fmt: skip


def _model(vocab_size: int, config: ClassifierConfig) -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    bert = BertConfig(
        vocab_size=vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.layers,
        num_attention_heads=config.heads, intermediate_size=2 * config.hidden_size,
        max_position_embeddings=config.max_length, num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)},
    )  # fmt: skip
    return BertForSequenceClassification(bert)


def _batches(n: int, size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    return [order[i : i + size] for i in range(0, n, size)]


def train_classifier(train: list[Example], config: ClassifierConfig, output: Path,
                     progress: Any = None) -> list[dict[str, float]]:  # fmt: skip
    """Fit the tokenizer and the model on `train`, save them to `output`; the loss per epoch.

    `progress(epoch, loss)` is called after each epoch when given.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small gains nothing from more, and spinning threads suffer on busy cores
    try:
        return _fit(train, config, output, progress)
    finally:
        torch.set_num_threads(threads)


def _fit(train: list[Example], config: ClassifierConfig, output: Path, progress: Any) -> list[dict[str, float]]:
    import torch

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    tokenizer = _tokenizer([e.text for e in train], config)
    model = _model(len(tokenizer), config)
    encoded = tokenizer([e.text for e in train], truncation=True, max_length=config.max_length)
    labels = torch.tensor([LABELS.index(e.label) for e in train])
    batches_per_epoch = math.ceil(len(train) / config.batch_size)
    total = batches_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    warmup = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))
    )
    history = []
    model.train()
    for epoch in range(1, config.epochs + 1):
        losses = []
        for batch in _batches(len(train), config.batch_size, rng):
            inputs = tokenizer.pad({"input_ids": [encoded["input_ids"][i] for i in batch]}, return_tensors="pt")
            out = model(**inputs, labels=labels[batch])
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(float(out.loss.detach()))
        history.append({"epoch": epoch, "loss": sum(losses) / len(losses)})
        if progress is not None:
            progress(epoch, history[-1]["loss"])
    model.eval()
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return history


class Classifier:
    """A sequence classifier directory that labels texts objective or subjective."""

    def __init__(self, model: Any, tokenizer: Any, label_ids: dict[str, int], source: str) -> None:
        self.model, self.tokenizer, self.label_ids, self.source = model, tokenizer, label_ids, source
        self.max_length = min(512, int(getattr(model.config, "max_position_embeddings", 512) or 512))
        self._inputs = set(inspect.signature(model.forward).parameters)  # DistilBERT-likes take no token_type_ids

    @classmethod
    def load(cls, directory: str | Path) -> Classifier:
        """The classifier in `directory`; a UserError naming what is wrong when it is not one we can use."""
        path = Path(directory)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise UserError(f"--model {directory}: no config.json there; give the output of deepmoney intake train "
                            "or a Hugging Face sequence-classification model directory")  # fmt: skip
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"--model {directory}: config.json is not readable JSON ({exc})") from None
        architectures = config.get("architectures") or []
        if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
            raise UserError(
                f"--model {directory} is not a sequence classifier (architectures: "
                f"{', '.join(map(str, architectures)) or 'none'}); give the output of deepmoney intake train"
            )
        id2label = {int(k): str(v).strip().lower() for k, v in (config.get("id2label") or {}).items()}
        label_ids = {label: i for i, label in id2label.items() if label in LABELS}
        if set(label_ids) != set(LABELS):
            raise UserError(f"--model {directory} labels {sorted(id2label.values())}; an intake classifier's "
                            f"labels must include {' and '.join(LABELS)} (config.json id2label)")  # fmt: skip
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"--model {directory}: cannot load the classifier ({first[:300]})") from None
        model.eval()
        return cls(model, tokenizer, label_ids, str(directory))

    def predict(self, texts: list[str], batch_size: int = 64) -> list[Verdict]:
        """Each text's label (objective or subjective) and its probability, in order."""
        import torch

        verdicts: list[Verdict] = []
        columns = [self.label_ids["objective"], self.label_ids["subjective"]]
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            inputs = self.tokenizer(chunk, truncation=True, max_length=self.max_length, padding=True,
                                    return_tensors="pt")  # fmt: skip
            inputs = {k: v for k, v in inputs.items() if k in self._inputs}
            with torch.inference_mode():
                logits = self.model(**inputs).logits
            pair = torch.softmax(logits[:, columns].float(), dim=-1)
            for p_objective, p_subjective in pair.tolist():
                subjective = p_subjective > p_objective
                verdicts.append(Verdict(LABELS[subjective], p_subjective if subjective else p_objective))
        return verdicts


def scores(truth: list[str], predicted: list[str]) -> dict[str, float]:
    """accuracy, and F1 of each label and their macro mean, over paired label lists."""
    if len(truth) != len(predicted) or not truth:
        raise ValueError("scores need two non-empty label lists of equal length")
    out = {"accuracy": sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(truth)}
    for label in LABELS:
        tp = sum(t == p == label for t, p in zip(truth, predicted, strict=True))
        fp = sum(p == label != t for t, p in zip(truth, predicted, strict=True))
        fn = sum(t == label != p for t, p in zip(truth, predicted, strict=True))
        out[f"f1_{label}"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    out["f1_macro"] = sum(out[f"f1_{label}"] for label in LABELS) / len(LABELS)
    return out
