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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepmoney.config import ClassifierConfig
from deepmoney.data.text import split_sentences
from deepmoney.errors import UserError
from deepmoney.intake.labelled import LABELS, Example

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONTINUING = "##"  # WordPiece's prefix of a piece that continues a word
MAX_SENTENCES = 8  # of an article, judged sentence by sentence (the labelled set is sentences)
MIN_SENTENCE_CHARS = 8  # shorter pieces (a dateline, "Reuters.") say nothing either way


@dataclass(frozen=True, slots=True)
class Verdict:
    """A text's label and the classifier's probability of that label."""

    label: str
    score: float


def _tokenizer(texts: list[str], config: ClassifierConfig) -> Any:
    """A BERT WordPiece tokenizer fitted to `texts` (lower-cased; CJK characters are tokens of their own).

    The same texts always give the same vocabulary. The `tokenizers` trainer numbers the word-continuing
    pieces ("##e") in hash-map order as it meets them and breaks ties between equally frequent merges
    by those numbers, so left alone two trainings differ (huggingface/tokenizers#1794; held-out
    accuracy 0.93-0.98 and 54-100% of Wikinews stories objective were seen). Handing it every
    continuing piece up front, sorted, fixes their numbers; they are then plain vocabulary again.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    continuing = sorted({CONTINUING + char for text in texts
                         for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
                         for char in word[1:]})  # fmt: skip
    trainer = trainers.WordPieceTrainer(vocab_size=config.vocab_size, min_frequency=1,
                                        special_tokens=[*SPECIAL_TOKENS, *continuing],
                                        continuing_subword_prefix=CONTINUING)  # fmt: skip
    fitted = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix=CONTINUING))
    fitted.normalizer, fitted.pre_tokenizer = normalizer, pre_tokenizer
    fitted.train_from_iterator(texts, trainer)
    # rebuilt from the fitted vocabulary so that only the five real special tokens are special
    tok = Tokenizer(models.WordPiece(fitted.get_vocab(with_added_tokens=False), unk_token="[UNK]",
                                     continuing_subword_prefix=CONTINUING))  # fmt: skip
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece(CONTINUING)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
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
        hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout,
        max_position_embeddings=config.max_length, num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)},
    )  # fmt: skip
    return BertForSequenceClassification(bert)


def _batches(n: int, size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    return [order[i : i + size] for i in range(0, n, size)]


def _drop_tokens(ids: list[int], share: float, unknown: int, keep: set[int], rng: random.Random) -> list[int]:
    """`ids` with about `share` of its non-special tokens replaced by `unknown`.

    Every word of a training sentence is in a vocabulary fitted to those sentences, so without this
    the model never meets [UNK] or a rare piece and judges unseen news wording arbitrarily: six
    trainings labelled 52-93% of 60 Wikinews stories objective without it, eighteen 83-100% with 0.15.
    """
    if not share:
        return list(ids)
    return [unknown if token not in keep and rng.random() < share else token for token in ids]


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
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))
    )
    unknown, keep = tokenizer.unk_token_id, set(tokenizer.all_special_ids)
    history = []
    model.train()
    for epoch in range(1, config.epochs + 1):
        losses = []
        for batch in _batches(len(train), config.batch_size, rng):
            ids = [_drop_tokens(encoded["input_ids"][i], config.token_dropout, unknown, keep, rng) for i in batch]
            inputs = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
            logits = model(**inputs).logits
            # smoothed targets keep a model this small from the certainty that sinks it on unseen wording
            loss = torch.nn.functional.cross_entropy(logits, labels[batch], label_smoothing=config.label_smoothing)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
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

    def predict(self, texts: list[str], batch_size: int = 64, threshold: float = 0.5) -> list[Verdict]:
        """Each text's label (objective or subjective) and its probability, in order.

        A text of several sentences is judged by its first `MAX_SENTENCES` sentences: the classifier
        learnt single sentences, and an article's probability of being subjective is the mean of its
        sentences'. It is subjective when that is above `threshold`.
        """
        import torch

        pieces: list[str] = []
        spans: list[tuple[int, int]] = []
        for text in texts:
            sentences = [s for s in split_sentences(text) if len(s) >= MIN_SENTENCE_CHARS][:MAX_SENTENCES]
            sentences = sentences or [text]
            spans.append((len(pieces), len(pieces) + len(sentences)))
            pieces += sentences
        columns = [self.label_ids["objective"], self.label_ids["subjective"]]
        probabilities = []
        for start in range(0, len(pieces), batch_size):
            inputs = self.tokenizer(pieces[start : start + batch_size], truncation=True, max_length=self.max_length,
                                    padding=True, return_tensors="pt")  # fmt: skip
            inputs = {k: v for k, v in inputs.items() if k in self._inputs}
            with torch.inference_mode():
                logits = self.model(**inputs).logits
            probabilities.append(torch.softmax(logits[:, columns].float(), dim=-1))
        pair = torch.cat(probabilities) if probabilities else torch.empty(0, 2)
        verdicts = []
        for first, last in spans:
            p_objective, p_subjective = pair[first:last].mean(dim=0).tolist()
            subjective = p_subjective > threshold
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
