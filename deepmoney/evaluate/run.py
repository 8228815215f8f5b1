"""`deepmoney evaluate`: every measurement of one model on one evaluation set, written and tracked.

The evaluation set is named by a digest of what went into it (the held-out shards and the
tokenizer they were made with, the held-out questions, the news items, the benchmark files and
the settings that change the numbers). Two evaluations are comparable exactly when their digests
are equal; promotion relies on that. A model whose tokenizer is not the one the held-out corpus
was made with is refused: its perplexity would be a number about nothing.

Outputs, published together (the output contract of `deepmoney.stage`): `qa.jsonl` (every
held-out question, the answer and its scores), `chain.jsonl` (every news item's three steps and
checks), `evaluation.png`, and `manifest.json` last (kind `evaluation`: metrics, digest,
lineage). With MLflow configured, the same go to an evaluation run linked to the training run
(tag `deepmoney.evaluated_run_id`), in the training run's experiment; when the server is down
the evaluation is marked `mlflow_pending` for `deepmoney track sync`.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepmoney.config import DeepmoneyConfig, result_settings
from deepmoney.errors import UserError
from deepmoney.models.load import load_causal_lm, tokenizer_size
from deepmoney.models.resolve import ResolvedModel, resolve_model
from deepmoney.stage import EvaluationManifest, claim_output, digest, fingerprint, manifest_kind, write_manifest
from deepmoney.storage import Storage, atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

KIND = "evaluation"
DATASET_KINDS = ("pt-corpus", "sft-dataset")


@dataclass
class EvaluationResult:
    """What `evaluate` did."""

    output: str
    manifest: EvaluationManifest
    reused: bool = False


def find_datasets(data: list[str]) -> tuple[Path | None, Path | None]:
    """The pt corpus and the sft dataset among `data`: each a build-pt or synth output, or a directory holding them.

    Refuses two datasets of the same kind (which one would be the evaluation set?) and a path that
    holds neither.
    """
    storage = Storage()
    found: dict[str, Path] = {}
    for item in data:
        path = Path(item)
        if not path.is_dir():
            raise UserError(f"--data {item}: no such directory; pass a build-pt or synth output, or a directory "
                            "holding both")  # fmt: skip
        here = {}
        for candidate in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
            kind = manifest_kind(storage, candidate)
            if kind in DATASET_KINDS and kind not in here:
                here[kind] = candidate
        if not here:
            raise UserError(f"--data {item}: no build-pt or synth output there (no manifest.json of either kind); "
                            "the evaluation set is missing")  # fmt: skip
        for kind, candidate in here.items():
            if kind in found:
                raise UserError(f"--data names two {kind}s ({found[kind]} and {candidate}); an evaluation set has "
                                "one of each kind: pass one")  # fmt: skip
            found[kind] = candidate
    return found.get("pt-corpus"), found.get("sft-dataset")


def _metric_name(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_").lower() or "benchmark"


def model_fingerprint(path: Path) -> str:
    """Identifies the weights under evaluation (config and weight files' names, sizes and times)."""
    files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix in (".safetensors", ".bin")
                                                                 or p.name == "config.json"))  # fmt: skip
    return digest([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])


def _check_tokenizer(resolved: ResolvedModel, heldout: Any) -> str:
    """The model's tokenizer digest; refuses a model that cannot read the held-out corpus's token ids."""
    from deepmoney.data.tokenize import resolve_tokenizer
    from deepmoney.models.shape import model_shape

    with tempfile.TemporaryDirectory() as scratch:
        spec = resolve_tokenizer(str(resolved.path), Storage(), Path(scratch))
    corpus = heldout.tokenizer
    if corpus.digest != spec.digest:
        raise UserError(
            f"the held-out corpus {heldout.directory} was tokenized with {corpus.uri} (digest {corpus.digest[:12]}), "
            f"not with the tokenizer of {resolved.uri} (digest {spec.digest[:12]}): its perplexity would measure "
            "nothing; evaluate on a corpus built with this model's tokenizer (deepmoney data build-pt --tokenizer)"
        )
    embedding = model_shape(resolved.path)["vocab"]
    if corpus.vocab_size > embedding:
        raise UserError(f"the held-out corpus uses {corpus.vocab_size} token ids but {resolved.uri} embeds only "
                        f"{embedding}; resize its embeddings to the tokenizer")  # fmt: skip
    return spec.digest


def evaluate(model_uri: str, data: list[str], output: str, config: DeepmoneyConfig, quiet: bool = False,
             overwrite: bool = False) -> EvaluationResult:  # fmt: skip
    """Evaluate `model_uri` on the held-out data in `data` (and the news set and benchmarks) into `output`."""
    from deepmoney.analysis.chain import load_news
    from deepmoney.evaluate.benchmarks import load_benchmark
    from deepmoney.evaluate.perplexity import load_heldout
    from deepmoney.evaluate.qa import load_heldout_qa

    settings = config.evaluate
    storage = Storage(config.storage)
    storage.check_writable(output)
    pt_dir, sft_dir = find_datasets(data) if data else (None, None)
    news = load_news(settings.news) if settings.chain else []
    benchmarks = [load_benchmark(path) for path in settings.benchmarks]
    if not (pt_dir or sft_dir or news or benchmarks):
        raise UserError("nothing to evaluate: pass --data (a build-pt/synth output), keep the chain checks on, "
                        "or give --benchmark files")  # fmt: skip
    heldout = load_heldout(pt_dir) if pt_dir else None
    questions = load_heldout_qa(sft_dir, settings.max_qa) if sft_dir else []
    with tempfile.TemporaryDirectory(prefix="deepmoney-eval-") as scratch:
        resolved = resolve_model(model_uri, config, Path(scratch) / "models")
        return _evaluate(resolved, pt_dir, sft_dir, heldout, questions, news, benchmarks, output, config, quiet,
                         overwrite, storage)  # fmt: skip


def _evaluate(resolved: ResolvedModel, pt_dir: Path | None, sft_dir: Path | None, heldout: Any, questions: list,
              news: list, benchmarks: list, output: str, config: DeepmoneyConfig, quiet: bool, overwrite: bool,
              storage: Storage) -> EvaluationResult:  # fmt: skip
    settings = config.evaluate
    tokenizer_digest = _check_tokenizer(resolved, heldout) if heldout else None
    digest_parts = {
        "heldout": [f["sha256"] for f in heldout.files] if heldout else None,
        "tokenizer": tokenizer_digest,
        "qa": sha256_file(sft_dir / "heldout_alpaca.jsonl") if sft_dir else None,
        "news": digest([n.__dict__ for n in news]) if news else None,
        "benchmarks": [sha256_file(p) for p in settings.benchmarks],
        "settings": settings.model_dump(mode="json", include={"window", "max_qa", "max_new_tokens", "seed"}),
    }
    eval_digest = digest(digest_parts)
    result_inputs = {"model": model_fingerprint(resolved.path), "eval_digest": eval_digest,
                     **{f"evaluate.{k}": v for k, v in result_settings(settings).items()}}  # fmt: skip
    fp = fingerprint(KIND, result_inputs)
    claim = claim_output(storage, output, KIND, fp, result_inputs, overwrite=overwrite)
    if claim.reuse is not None:
        log.info("%s already holds this evaluation (same model and evaluation set); reusing it", output)
        return EvaluationResult(output, EvaluationManifest.model_validate(claim.reuse), reused=True)
    log.info("evaluating %s (%s) on evaluation set %s", resolved.uri, resolved.path, eval_digest)
    model, tokenizer = load_causal_lm(resolved.path)
    torch.manual_seed(settings.seed)
    from deepmoney.evaluate.generation import ModelUnderTest
    from deepmoney.llm.cache import RequestCache

    with storage.staging_dir(output, key=fp, keep_on_error=True) as staging:
        out, state = staging / "out", staging / "state"
        out.mkdir(exist_ok=True)
        state.mkdir(exist_ok=True)
        cache = RequestCache(state / "generations.sqlite")
        mut = ModelUnderTest(model, tokenizer, settings.batch_size, settings.max_new_tokens, quiet, cache,
                             result_inputs["model"])  # fmt: skip
        started = time.perf_counter()
        try:
            metrics, qa_rows, chain_rows = _measure(mut, heldout, questions, news, benchmarks, settings, quiet)
        finally:
            cache.close()
        manifest = EvaluationManifest(
            fingerprint=fp, settings=result_inputs, model=resolved.uri, eval_digest=eval_digest, metrics=metrics,
            training_run_id=resolved.training_run_id,
            registered=list(resolved.registered) if resolved.registered else None,
            tokenizer_size=tokenizer_size(tokenizer), model_path=str(resolved.path),
            training_output=str(resolved.train_output) if resolved.train_output else None,
            evaluation_set={"pt": str(pt_dir) if pt_dir else None, "sft": str(sft_dir) if sft_dir else None,
                            "news": len(news), "benchmarks": [b.name for b in benchmarks], **digest_parts},
            embedding_rows=int(model.get_input_embeddings().num_embeddings),
            prompts_too_long=mut.too_long, generations_from_cache=mut.from_cache,
            seconds=round(time.perf_counter() - started, 3), params=settings.model_dump(mode="json"),
        )  # fmt: skip
        _write_jsonl(out / "qa.jsonl", qa_rows)
        _write_jsonl(out / "chain.jsonl", chain_rows)
        _track(manifest, out, resolved, config)
        write_manifest(out / "manifest.json", manifest)
        storage.publish_tree(out, output)
    return EvaluationResult(output, manifest)


def _track(manifest: EvaluationManifest, out: Path, resolved: ResolvedModel, config: DeepmoneyConfig) -> None:
    """The chart, then the evaluation run in MLflow (or `mlflow_pending` when a server is set but down)."""
    from deepmoney.tracking.evaluation import log_evaluation, training_loss_curve
    from deepmoney.tracking.server import tracking_uri

    mlflow = config.train.mlflow
    if config.evaluate.chart:
        from deepmoney.charts import metrics_chart

        curve = training_loss_curve(mlflow, resolved.training_run_id, resolved.train_output)
        metrics_chart(out / "evaluation.png", manifest.metrics, loss_curve=curve,
                      title=f"{resolved.uri} on evaluation set {manifest.eval_digest}")  # fmt: skip
    record = manifest.model_dump(mode="json")
    manifest.mlflow_run_id = log_evaluation(mlflow, record, config.evaluate.model_dump(mode="json"), out)
    manifest.mlflow_pending = manifest.mlflow_run_id is None and bool(tracking_uri(mlflow))


Rows = list[dict[str, Any]]


def _measure(mut: Any, heldout: Any, questions: Rows, news: list[Any], benchmarks: list[Any], settings: Any,
             quiet: bool) -> tuple[dict[str, float], Rows, Rows]:  # fmt: skip
    """Every measurement the evaluation set allows, on the model under test."""
    metrics: dict[str, float] = {}
    if heldout is not None:
        from deepmoney.evaluate.perplexity import perplexity

        window = min(settings.window, mut.positions)
        metrics.update(perplexity(mut.model, heldout.documents, window, settings.batch_size,
                                  mut.tokenizer.pad_token_id, quiet))  # fmt: skip
    qa_rows: list[dict[str, Any]] = []
    if questions:
        from deepmoney.evaluate.qa import score_qa

        qa_metrics, qa_rows = score_qa(questions, lambda batch: mut.chat(batch, desc="held-out QA"))
        metrics.update(qa_metrics)
    chain_rows: list[dict[str, Any]] = []
    if news:
        chain_metrics, chain_rows = _chain(news, mut)
        metrics.update(chain_metrics)
    for bench in benchmarks:
        metrics.update(_benchmark(bench, mut, quiet))
    return metrics, qa_rows, chain_rows


def _chain(news: list[Any], mut: Any) -> tuple[dict[str, float], list[dict[str, Any]]]:
    from deepmoney.analysis.chain import chain_checks, run_chain, summarize_checks

    results = run_chain(news, lambda batch: mut.chat(batch, desc="news chain"))
    rows = [{**r.to_dict(), "checks": chain_checks(r)} for r in results]
    summary = summarize_checks([row["checks"] for row in rows])
    return {(k if k.startswith("chain_") else f"chain_{k}"): float(v) for k, v in summary.items()}, rows


def _benchmark(bench: Any, mut: Any, quiet: bool) -> dict[str, float]:
    from tqdm.auto import tqdm

    from deepmoney.evaluate.benchmarks import score_loglikelihoods

    scores = [mut.choice_logprobs(item.prompt, item.choices)
              for item in tqdm(bench.items, desc=f"benchmark {bench.name}", unit="item", disable=quiet)]  # fmt: skip
    result = score_loglikelihoods(bench, scores)
    name = _metric_name(bench.name)
    return {f"bench_{name}_{k}": float(v) for k, v in result.items() if k in ("accuracy", "macro_f1", "count")}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
    atomic_write_bytes(path, data.encode("utf-8"))
