"""The deepmoney pipeline's KFP v2 components: one per stage, each a typed signature, a docstring and one call.

Every body runs `stages.run_stage(<stage>, ...)` — the plain function in `pipeline/stages.py` that does the
work — and `stages.report`s its result on the output artifact (metadata `uri` and the stage's figures), so
later steps and the KFP UI see where each output is and what it holds. The components run in the project
image of this version (`kube.default_image()`), which carries kfp, so nothing is pip-installed when a pod
starts (`install_kfp_package=False`: clusters without internet access work).

KFP serialises each body's source into the pipeline YAML, so a body imports what it uses itself.
"""

# No `from __future__ import annotations`: KFP reads the parameter types from the live annotations.
from typing import List  # noqa: UP035  (KFP reads the annotations; it knows typing.List)

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from deepmoney.kube import default_image

IMAGE = default_image()
COMPONENT = {"base_image": IMAGE, "install_kfp_package": False}


@dsl.component(**COMPONENT)
def plan_shards(count: int) -> List[str]:  # noqa: UP006
    """The shards of a fanned-out stage, as K/N strings."""
    from deepmoney.pipeline.stages import run_stage, shard_plan

    return run_stage(shard_plan, count)  # type: ignore[return-value]


@dsl.component(**COMPONENT)
def build_pt_shard(corpus: List[str], base_model: str, workdir: str, shard: str, config: dict,  # noqa: UP006
                   pt_shard: Output[Dataset]) -> None:  # fmt: skip
    """build-pt --shard K/N: read, clean, chapters, context summary, tokens and MinHash of every Nth task."""
    from deepmoney.pipeline.stages import build_pt_shard, report, run_stage

    report(pt_shard, run_stage(build_pt_shard, corpus, base_model, workdir, shard, config))


@dsl.component(**COMPONENT)
def merge_pt(shards: Input[List[Dataset]], workdir: str, config: dict, corpus: Output[Dataset]) -> None:  # noqa: UP006
    """merge-pt: global near-duplicate decisions in input order and packing — the unsharded build's corpus."""
    from deepmoney.pipeline.stages import merge_pt, report, run_stage, uri_of

    report(corpus, run_stage(merge_pt, [uri_of(s.metadata, "pt shard") for s in shards], workdir, config))


@dsl.component(**COMPONENT)
def synthesize_sft_shard(corpus: List[str], workdir: str, shard: str, questioner: str, answerer: str,  # noqa: UP006
                         extractor: str, config: dict, sft_shard: Output[Dataset]) -> None:  # fmt: skip
    """synth --shard K/N: a questioner asks about each chapter, a different answerer answers from it alone."""
    from deepmoney.pipeline.stages import report, run_stage, synthesize_sft_shard

    roles = {"questioner": questioner, "answerer": answerer, "extractor": extractor}
    report(sft_shard, run_stage(synthesize_sft_shard, corpus, workdir, shard, roles, config))


@dsl.component(**COMPONENT)
def merge_sft(shards: Input[List[Dataset]], workdir: str, config: dict, dataset: Output[Dataset]) -> None:  # noqa: UP006
    """synth-merge: the shards' records in the order of an unsharded run (LLaMA-Factory alpaca/sharegpt)."""
    from deepmoney.pipeline.stages import merge_sft, report, run_stage, uri_of

    report(dataset, run_stage(merge_sft, [uri_of(s.metadata, "sft shard") for s in shards], workdir, config))


@dsl.component(**COMPONENT)
def train_pt(base_model: str, corpus: Input[Dataset], workdir: str, train_dir: str, backend: str, nodes: int,
             gpus_per_node: int, max_steps: int, learning_rate: float, lora: bool, config: dict, volume_claim: str,
             s3_secret: str, mlflow_secret: str, model: Output[Model]) -> None:  # fmt: skip
    """Continued pre-training on the pt corpus, as a PyTorchJob, a TrainJob or torchrun here; waits for it."""
    from deepmoney.pipeline.stages import report, run_stage, train, uri_of

    pods = {"volume_claim": volume_claim, "s3_secret": s3_secret, "mlflow_secret": mlflow_secret}
    report(model, run_stage(train, "pt", base_model, uri_of(corpus.metadata, "pt corpus"), train_dir or workdir,
                            backend, nodes, gpus_per_node, max_steps, lora, config, pods,
                            learning_rate=learning_rate, label="train-pt"))  # fmt: skip


@dsl.component(**COMPONENT)
def train_sft(base: Input[Model], dataset: Input[Dataset], workdir: str, train_dir: str, backend: str, nodes: int,
              gpus_per_node: int, max_steps: int, learning_rate: float, lora: bool, config: dict, volume_claim: str,
              s3_secret: str, mlflow_secret: str, model: Output[Model]) -> None:  # fmt: skip
    """Supervised fine-tuning of the pt model on the synthesized dataset, through the same launcher; waits."""
    from deepmoney.pipeline.stages import report, run_stage, train, uri_of

    pods = {"volume_claim": volume_claim, "s3_secret": s3_secret, "mlflow_secret": mlflow_secret}
    report(model, run_stage(train, "sft", uri_of(base.metadata, "pt model"), uri_of(dataset.metadata, "sft dataset"),
                            train_dir or workdir, backend, nodes, gpus_per_node, max_steps, lora, config,
                            pods, learning_rate=learning_rate, label="train-sft"))  # fmt: skip


@dsl.component(**COMPONENT)
def evaluate(model: Input[Model], corpus: Input[Dataset], dataset: Input[Dataset], workdir: str, config: dict,
             metrics: Output[Metrics]) -> None:  # fmt: skip
    """Held-out perplexity and QA, the news-chain checks and benchmarks; logged to MLflow and to these metrics."""
    from deepmoney.pipeline.stages import evaluate, run_stage, uri_of

    data = [uri_of(corpus.metadata, "pt corpus"), uri_of(dataset.metadata, "sft dataset")]
    result = run_stage(evaluate, uri_of(model.metadata, "model"), data, workdir, config)
    for name, value in result["metrics"].items():
        metrics.log_metric(name, value)
    metrics.metadata.update({"uri": result["uri"], "model": result["model"], "eval_digest": result["eval_digest"]})


@dsl.component(**COMPONENT)
def register_and_promote(model: Input[Model], evaluation: Input[Metrics], name: str, config: dict) -> str:
    """Register the trained model in MLflow and make it `champion` only if it beats the champion (JSON)."""
    import json

    from deepmoney.pipeline.stages import register_and_promote, run_stage

    del evaluation  # an input so that promotion waits for the evaluation the registry compares
    return json.dumps(run_stage(register_and_promote, model.metadata.get("mlflow_run_id"), name, None, config))


@dsl.component(**COMPONENT)
def train_intake(workdir: str, config: dict, classifier: Output[Model]) -> None:
    """The intake's subjective/objective classifier, with its held-out accuracy and F1."""
    from deepmoney.pipeline.stages import report, run_stage, train_intake

    report(classifier, run_stage(train_intake, workdir, None, config))


@dsl.component(**COMPONENT)
def deploy(name: str, namespace: str, gpus: int, gpu: str, model_config: str, config: dict, promotion: str) -> str:
    """Serve the champion on KServe: the LLM, the step models and the graph; waits until Ready, asks once."""
    import json

    from deepmoney.pipeline.stages import deploy, run_stage

    del promotion  # an input so that the champion is deployed after this run's promotion decision
    return json.dumps(run_stage(deploy, name, namespace, gpus, gpu, model_config, "", 3600.0, config))


COMPONENTS = (plan_shards, build_pt_shard, merge_pt, synthesize_sft_shard, merge_sft, train_pt, train_sft, evaluate,
              register_and_promote, train_intake, deploy)  # fmt: skip
