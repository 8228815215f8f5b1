"""The deepmoney pipeline: reports and textbooks -> pt corpus and sft dataset -> pt, sft -> evaluate -> registry
-> (with `deploy`) the champion on KServe behind the InferenceGraph.

build-pt and synthesis fan out over shards (`ParallelFor`) and merge; training runs through the launcher
interface (a PyTorchJob, a TrainJob, or torchrun in the component's own pod with `backend=local`); the
evaluation decides promotion; the intake classifier trains beside. On a cluster every task gets the S3
and MLflow credentials from Kubernetes Secrets (never parameters), the shared claim at /workspace and a
memory-backed /dev/shm (`kfp.kubernetes`); `kfp.local` ignores those settings, and a local run takes its
credentials from the environment.
"""

# No `from __future__ import annotations`: KFP reads the parameter types from the live annotations.
from typing import List  # noqa: UP035  (KFP reads the annotations)

from kfp import dsl, kubernetes

from deepmoney.launch.cluster import MLFLOW_KEYS, S3_KEYS
from deepmoney.pipeline import components as c

NAME = "deepmoney"
WORKSPACE = "/workspace"  # the claim's mount in every task (launch.volume_mount's default)
SHM_SIZE = "8Gi"  # tokenizer and data-loader workers share memory through /dev/shm


def _platform(task: dsl.PipelineTask, volume_claim: str, s3_secret: str, mlflow_secret: str) -> dsl.PipelineTask:
    """Credentials from the Secrets (each key as its variable; optional ones optional), the claim, /dev/shm,
    no KFP cache."""
    for secret, keys in ((s3_secret, S3_KEYS), (mlflow_secret, MLFLOW_KEYS)):
        for key, optional in keys:
            kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env={key: key}, optional=optional)
    kubernetes.mount_pvc(task, pvc_name=volume_claim, mount_path=WORKSPACE)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=SHM_SIZE)
    # Each stage reuses its finished output by fingerprint; KFP's cache would skip a stage whose output
    # was since removed, and hand on a stale artifact.
    task.set_caching_options(False)
    return task


@dsl.pipeline(name=NAME, description="Financial reports and textbooks -> domain LLM -> registered champion.")
def deepmoney_pipeline(
    corpus: List[str],  # noqa: UP006
    base_model: str,
    workdir: str,
    train_dir: str = "",
    questioner: str = "",
    answerer: str = "",
    extractor: str = "",
    pt_shards: int = 1,
    sft_shards: int = 1,
    backend: str = "pytorchjob",
    nodes: int = 1,
    gpus_per_node: int = 8,
    pt_max_steps: int = 0,
    sft_max_steps: int = 0,
    pt_learning_rate: float = 0.0,
    sft_learning_rate: float = 0.0,
    lora: bool = False,
    registered_model: str = "deepmoney",
    deploy: bool = False,
    serving_namespace: str = "",
    serving_gpus: int = 0,
    serving_gpu: str = "",
    model_config: str = "",
    config: dict = {},  # noqa: B006  (a KFP parameter default, never mutated)
    volume_claim: str = "deepmoney-workspace",
    s3_secret: str = "deepmoney-s3",
    mlflow_secret: str = "deepmoney-mlflow",
) -> None:
    """Build the corpora, train pt then sft, evaluate, register and promote; train the intake classifier.

    corpus: report files, directories or s3:// prefixes. base_model: the model to continue (s3://, models:/
    or a path on the claim). workdir: where stage outputs go (s3:// or under /workspace); a second run
    reuses every finished stage. train_dir: training outputs on the claim (default: workdir).
    questioner/answerer/extractor: URL#MODEL or local:DIR (empty: synth.<role>.endpoint of the config).
    pt_/sft_max_steps, pt_/sft_learning_rate: per stage (0: train.max_steps / train.learning_rate of the config).
    backend: pytorchjob, trainjob or local. deploy: serve the champion on KServe at the end (serving_gpus, or
    serving_gpu + model_config for the planner; serving_namespace default launch.namespace). config: deepmoney
    settings as a nested object ({"data": {"block_size": 4096}, "registry": {"margin": 0.02}}).
    """

    def on_cluster(task: dsl.PipelineTask) -> dsl.PipelineTask:
        return _platform(task, volume_claim, s3_secret, mlflow_secret)

    pt_plan = c.plan_shards(count=pt_shards).set_display_name("plan pt shards").set_caching_options(False)
    with dsl.ParallelFor(pt_plan.output, name="pt-shards") as shard:
        pt_part = on_cluster(c.build_pt_shard(corpus=corpus, base_model=base_model, workdir=workdir, shard=shard,
                                              config=config))  # fmt: skip
    pt = on_cluster(c.merge_pt(shards=dsl.Collected(pt_part.outputs["pt_shard"]), workdir=workdir, config=config))

    sft_plan = c.plan_shards(count=sft_shards).set_display_name("plan sft shards").set_caching_options(False)
    with dsl.ParallelFor(sft_plan.output, name="sft-shards") as shard:
        sft_part = on_cluster(c.synthesize_sft_shard(corpus=corpus, workdir=workdir, shard=shard,
                                                     questioner=questioner, answerer=answerer, extractor=extractor,
                                                     config=config))  # fmt: skip
    sft = on_cluster(c.merge_sft(shards=dsl.Collected(sft_part.outputs["sft_shard"]), workdir=workdir,
                                 config=config))  # fmt: skip

    trained_pt = on_cluster(c.train_pt(base_model=base_model, corpus=pt.outputs["corpus"], workdir=workdir,
                                       train_dir=train_dir, backend=backend, nodes=nodes, gpus_per_node=gpus_per_node,
                                       max_steps=pt_max_steps, learning_rate=pt_learning_rate, lora=lora,
                                       config=config, volume_claim=volume_claim, s3_secret=s3_secret,
                                       mlflow_secret=mlflow_secret))  # fmt: skip
    trained_sft = on_cluster(c.train_sft(base=trained_pt.outputs["model"], dataset=sft.outputs["dataset"],
                                         workdir=workdir, train_dir=train_dir, backend=backend, nodes=nodes,
                                         gpus_per_node=gpus_per_node, max_steps=sft_max_steps,
                                         learning_rate=sft_learning_rate, lora=lora, config=config,
                                         volume_claim=volume_claim, s3_secret=s3_secret,
                                         mlflow_secret=mlflow_secret))  # fmt: skip
    evaluation = on_cluster(c.evaluate(model=trained_sft.outputs["model"], corpus=pt.outputs["corpus"],
                                       dataset=sft.outputs["dataset"], workdir=workdir, config=config))  # fmt: skip
    promoted = on_cluster(c.register_and_promote(model=trained_sft.outputs["model"],
                                                 evaluation=evaluation.outputs["metrics"], name=registered_model,
                                                 config=config))  # fmt: skip
    on_cluster(c.train_intake(workdir=workdir, config=config))
    with dsl.If(deploy == True, name="deploy-the-champion"):  # noqa: E712  (a KFP condition, not a Python test)
        on_cluster(c.deploy(name=registered_model, namespace=serving_namespace, gpus=serving_gpus, gpu=serving_gpu,
                            model_config=model_config, config=config, promotion=promoted.output))  # fmt: skip
