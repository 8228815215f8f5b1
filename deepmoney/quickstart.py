"""The main job on the embedded default: what the README's first command runs.

Its settings are the recipe `recipes/quickstart.yaml` (or the file given with --config): a tiny
model whose tokenizer is trained on the bundled sample corpus, the pt corpus built from that
corpus (30% of the documents held out: the sample corpus is small), then pt training of the tiny
model on it — two CPU ranks under torchrun with DeepSpeed ZeRO-2 — tracked in a local MLflow store
(`WORKDIR/mlflow.db`, unless MLFLOW_TRACKING_URI names a server). The trained model is evaluated
(held-out perplexity, the news-analysis chain checks), registered as `deepmoney-quickstart` and
promoted if it earns it. Later stages (synthesis, serving) extend this run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deepmoney import env
from deepmoney.config import load_config, overrides_from_flags
from deepmoney.data.pt import build_pt
from deepmoney.errors import UserError
from deepmoney.model_init import init_model

CHECKOUT = Path(__file__).resolve().parents[1]
SAMPLE_CORPUS = CHECKOUT / "examples" / "corpus"
RECIPE = CHECKOUT / "recipes" / "quickstart.yaml"
REGISTERED_NAME = "deepmoney-quickstart"


def run_quickstart(workdir: Path, corpus: Path | None, block_size: int | None, config_path: Path | None,
                   quiet: bool) -> str:  # fmt: skip
    """Run the embedded pipeline in `workdir` and return a printable summary."""
    corpus = corpus or SAMPLE_CORPUS
    if not corpus.is_dir():
        raise UserError(f"corpus directory not found: {corpus} (pass --corpus, or run from a source checkout)")
    if config_path is None and env.get(env.CONFIG) is None:
        if not RECIPE.is_file():
            raise UserError(f"the quickstart recipe {RECIPE} is missing; run from a source checkout or pass --config")
        config_path = RECIPE
    config = load_config(config_path, overrides_from_flags(**{"data.block_size": block_size}))
    model_dir = workdir / "base-model"
    pt_dir = workdir / "pt"
    model = init_model([str(corpus)], str(model_dir), config, quiet=quiet)
    pt = build_pt([str(corpus)], str(model_dir), str(pt_dir), config, quiet=quiet)
    m = pt.manifest
    sample = _first_block_text(pt_dir, model_dir)
    trained = _train_pt(workdir, model_dir, pt_dir, config_path, quiet)
    evaluation, version, decision = _evaluate_and_promote(workdir, pt_dir, trained, config_path, quiet)
    lines = [
        "deepmoney quickstart (embedded default)",
        f"  base model    {model_dir} ({model.manifest.parameters / 1e6:.1f}M parameters, "
        f"vocabulary {model.manifest.vocab_size}{', reused' if model.reused else ''})",
        f"  pt corpus     {pt_dir}{' (reused)' if pt.reused else ''}",
        f"  documents     {m['documents']} kept of {m['documents_read']} read; "
        f"{m['dedup_removed']} duplicates removed; {m['rejected']} inputs rejected",
        f"  chapters      {m['chapters']}",
        f"  tokens        {m['tokens']} in {m['blocks']} blocks of {m['block_size']}; "
        f"{m['tokens_dropped']} dropped (final partial block only)",
        "  first block   " + json.dumps(sample[:160], ensure_ascii=False),
        f"  pt training   {trained['steps']} steps on {trained['world_size']} CPU ranks "
        f"(ZeRO-{trained['zero_stage']}), loss {trained['first_loss']:.3f} -> {trained['final_loss']:.3f}, "
        f"{trained['tokens_per_second']:.0f} tokens/s",
        f"  trained model {trained['final']}",
        f"  MLflow run    {trained['mlflow_run_id'] or '(not tracked)'} at {trained['mlflow_tracking_uri'] or '-'}",
        f"  evaluation    held-out perplexity {evaluation.metrics['perplexity']:.1f} on "
        f"{evaluation.metrics['heldout_documents']:.0f} documents; news chain pass rate "
        f"{evaluation.metrics.get('chain_pass_rate', 0.0):.2f} (set {evaluation.eval_digest})",
        f"  registry      {REGISTERED_NAME} version {version}: {decision['decision']} "
        f"({'; '.join(decision['reasons'])})"
        if version
        else "  registry      (no MLflow run: not registered)",
    ]
    return "\n".join(lines)


def _train_pt(workdir: Path, model_dir: Path, pt_dir: Path, config_path: Path | None, quiet: bool) -> dict:
    """pt training of the tiny model on the corpus: 2 ranks, ZeRO-2, a local MLflow store by default."""
    from deepmoney.launch.local import launch_local

    train = {"stage": "pt", "model": str(model_dir), "data": str(pt_dir), "output": str(workdir / "pt-model"),
             "mlflow": _mlflow_settings(workdir)}  # fmt: skip
    return launch_local(load_config(config_path, {"train": train}), quiet=quiet)


def _mlflow_settings(workdir: Path) -> dict[str, str]:
    if env.get(env.MLFLOW_TRACKING_URI):
        return {}
    return {"tracking_uri": f"sqlite:///{(workdir / 'mlflow.db').resolve()}",
            "artifact_location": (workdir / "mlartifacts").resolve().as_uri()}  # fmt: skip


def _evaluate_and_promote(workdir: Path, pt_dir: Path, trained: dict, config_path: Path | None, quiet: bool
                          ) -> tuple[Any, int | None, dict]:  # fmt: skip
    """Evaluate the trained model on the held-out documents and the news set; register and promote it."""
    from deepmoney.evaluate.run import evaluate
    from deepmoney.registry import promote, register

    config = load_config(config_path, {"train": {"mlflow": _mlflow_settings(workdir)}})
    evaluation = evaluate(str(workdir / "pt-model"), [str(pt_dir)], str(workdir / "evaluation"), config, quiet).manifest
    if not trained["mlflow_run_id"]:
        return evaluation, None, {}
    version = register(trained["mlflow_run_id"], REGISTERED_NAME, config)["version"]
    return evaluation, version, promote(REGISTERED_NAME, version, config)


def _first_block_text(pt_dir: Path, model_dir: Path) -> str:
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    shard = sorted((pt_dir / "data").glob("*.parquet"))[0]
    ids = pq.read_table(shard, columns=["input_ids"]).column("input_ids")[0].as_py()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    return tokenizer.decode(ids, skip_special_tokens=True)
