"""`deepmoney intake train`: fit the subjective/objective classifier, score it on held-out sentences, track it.

The output is a Hugging Face sequence-classification directory (what `deepmoney intake run` and
the served intake load) with `metrics.json`, `heldout.jsonl` (every held-out sentence with its
prediction) and `manifest.json` written last. The same data and settings reuse a finished output;
other ones are refused unless `--overwrite`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from deepmoney.config import DeepmoneyConfig, result_settings
from deepmoney.errors import UserError
from deepmoney.intake.classifier import Classifier, scores, train_classifier
from deepmoney.intake.labelled import LABELS, SHIPPED, Example, data_digest, read_labelled, split
from deepmoney.stage import Manifest, claim_output, fingerprint, write_manifest
from deepmoney.storage import Storage, atomic_write_bytes
from deepmoney.tracking.classifier import log_classifier

log = logging.getLogger(__name__)

KIND = "intake-classifier"


class ClassifierManifest(Manifest):
    """A trained intake classifier: its data, held-out scores and where it was tracked."""

    kind: str = KIND
    data: list[str]
    examples: int
    train_examples: int
    heldout_examples: int
    metrics: dict[str, float]
    labels: list[str]
    train_seconds: float
    mlflow_run_id: str | None = None


@dataclass(frozen=True)
class ClassifierResult:
    """What `train_intake_classifier` made (or found made), and whether it was reused."""

    manifest: ClassifierManifest
    output: str
    reused: bool


def _metrics(truth: list[Example], predicted: list[str]) -> dict[str, float]:
    out = scores([e.label for e in truth], predicted)
    for language in sorted({e.language for e in truth}):
        pairs = [(e.label, p) for e, p in zip(truth, predicted, strict=True) if e.language == language]
        out[f"accuracy_{language}"] = sum(t == p for t, p in pairs) / len(pairs)
    return out


def train_intake_classifier(output: str, data: list[Path] | None, config: DeepmoneyConfig, *,
                            strict_tracking: bool = False, overwrite: bool = False,
                            quiet: bool = False) -> ClassifierResult:  # fmt: skip
    """Train on `data` (None: the shipped set), report held-out accuracy/F1, write `output`, log to MLflow."""
    storage = Storage(config.storage)
    storage.check_writable(output)
    examples = read_labelled(data)
    train, heldout = split(examples, config.intake.classifier.heldout_fraction, config.intake.classifier.seed)
    if not heldout:
        raise UserError(f"{len(examples)} labelled sentences leave none held out; give more data")
    sources = [str(p) for p in data] if data else [f"shipped:{SHIPPED.name}"]
    settings = {
        "data": data_digest(examples),
        **{f"intake.classifier.{k}": v for k, v in result_settings(config.intake.classifier).items()},
    }
    fp = fingerprint(KIND, settings)
    claim = claim_output(storage, output, KIND, fp, settings, overwrite=overwrite)
    if claim.reuse is not None:
        log.info("%s already holds this classifier (same data and settings); reusing it", output)
        return ClassifierResult(ClassifierManifest.model_validate(claim.reuse), str(output), reused=True)
    with storage.staging_dir(output) as staging:
        out = staging / "out"
        started = time.perf_counter()
        history = train_classifier(train, config.intake.classifier, out, progress=_progress(config, quiet))
        seconds = time.perf_counter() - started
        classifier = Classifier.load(out)
        predicted = classifier.predict([e.text for e in heldout])
        metrics = _metrics(heldout, [v.label for v in predicted])
        metrics["final_train_loss"] = history[-1]["loss"]
        rows = [{"text": e.text, "label": e.label, "language": e.language, "predicted": v.label,
                 "score": round(v.score, 6)} for e, v in zip(heldout, predicted, strict=True)]  # fmt: skip
        atomic_write_bytes(out / "heldout.jsonl",
                           "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())  # fmt: skip
        report = {"metrics": metrics, "history": history}
        atomic_write_bytes(out / "metrics.json", json.dumps(report, indent=2).encode())
        log.info("held-out accuracy %.3f, macro F1 %.3f on %d sentences (%.1f s of training)",
                 metrics["accuracy"], metrics["f1_macro"], len(heldout), seconds)  # fmt: skip
        params = {"data": ",".join(sources), "examples": len(examples), **settings}
        run_id = log_classifier(config.train.mlflow, f"intake-classifier-{fp[:8]}", params, metrics, out,
                                [out / "heldout.jsonl", out / "metrics.json"], strict=strict_tracking)  # fmt: skip
        manifest = ClassifierManifest(
            fingerprint=fp, settings=settings, data=sources, examples=len(examples), train_examples=len(train),
            heldout_examples=len(heldout), metrics=metrics, labels=list(LABELS), train_seconds=round(seconds, 3),
            mlflow_run_id=run_id,
        )  # fmt: skip
        write_manifest(out / "manifest.json", manifest)
        storage.publish_tree(out, output)
    return ClassifierResult(manifest, str(output), reused=False)


def _progress(config: DeepmoneyConfig, quiet: bool) -> object:
    from tqdm import tqdm

    bar = tqdm(total=config.intake.classifier.epochs, desc="intake classifier", unit="epoch", disable=quiet)

    def step(epoch: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if epoch == config.intake.classifier.epochs:
            bar.close()

    return step
