"""What each Kubeflow Pipelines component does, as plain functions: plain arguments in, a JSON-able result out.

A component (`pipeline/components.py`) parses its inputs, calls one of these and reports the result on
its output artifact (`report`), so everything here runs — and is tested — without KFP. Stage outputs go
to fixed places under the run's `workdir` (`output_uri`): a second run of the same pipeline finds each
finished stage by its fingerprint and reuses it, and a stage whose inputs or settings changed refuses to
overwrite the earlier output (choose another workdir), as the CLI verbs do. `overrides` is the run's
deepmoney configuration as a nested dict (`{"data": {"block_size": 4096}}`) over `DEEPMONEY_CONFIG` and
the defaults.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from deepmoney import env
from deepmoney.config import DeepmoneyConfig, load_config
from deepmoney.errors import EXIT_USER, UserError
from deepmoney.storage import Storage, join

log = logging.getLogger(__name__)

# Where each stage writes under the workdir.
PT_SHARDS, PT_CORPUS, SFT_SHARDS, SFT_DATASET = "pt-shards", "pt", "sft-shards", "sft"
EVALUATION, INTAKE = "evaluation", "intake-classifier"
TRAIN_OUTPUT = "train-{stage}"


class ArtifactLike(Protocol):
    """What a KFP output artifact offers a component (`path`, `metadata`)."""

    path: str
    metadata: dict[str, Any]


def run_stage(stage: Callable[..., dict[str, Any]], *args: Any, label: str | None = None, **kwargs: Any
              ) -> dict[str, Any]:  # fmt: skip
    """Run one stage as a component's body: logs to stderr, and a user mistake as one `error:` line and exit 2.

    The line is what the run's log shows for the failed step (no traceback for a bad corpus URI or an
    unreachable endpoint), named `label` (default: the stage's name); other errors keep their traceback.
    """
    from deepmoney.logs import setup_logging

    setup_logging()
    try:
        return stage(*args, **kwargs)
    except UserError as exc:
        line = f"{label or stage.__name__.replace('_', '-')}: {exc}"
        print(f"error: {line}", file=sys.stderr, flush=True)
        errors = env.get(env.PIPELINE_ERRORS)
        if errors:  # `pipeline run --local` reports the first one as the run's own error
            with open(errors, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        raise SystemExit(getattr(exc, "exit_code", EXIT_USER)) from None


def config_of(overrides: dict[str, Any] | None) -> DeepmoneyConfig:
    """The run's configuration: `overrides` over DEEPMONEY_CONFIG (when set) and the defaults."""
    return load_config(overrides=overrides or None)


def output_uri(workdir: str, *parts: str) -> str:
    """A stage's output under the run's workdir (a local path, a mounted claim, or s3://)."""
    if not workdir or not workdir.strip():
        raise UserError("workdir is empty: give the run's working directory (s3://bucket/prefix or a claim path)")
    return join(workdir.strip(), *parts)


def report(artifact: ArtifactLike, result: dict[str, Any]) -> None:
    """Put a stage's result on its output artifact: as metadata (what the UI and later steps read) and as JSON."""
    artifact.metadata.update(result)
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")


def uri_of(metadata: dict[str, Any], what: str) -> str:
    """The `uri` an earlier stage reported; a UserError when the artifact carries none."""
    uri = metadata.get("uri")
    if not uri:
        raise UserError(f"the {what} artifact carries no uri; was it made by the deepmoney pipeline?")
    return str(uri)


def shard_plan(count: int) -> list[str]:
    """The shards of a fanned-out stage: ["0/N", "1/N", ...] (strings: KFP hands integer lists over as floats)."""
    if count < 1:
        raise UserError(f"shards {count}: give at least 1")
    return [f"{k}/{count}" for k in range(count)]


def _shard(value: str) -> tuple[int, int]:
    k, sep, n = value.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise UserError(f"shard {value!r}: expected K/N with 0 <= K < N")
    return int(k), int(n)


# --- data ----------------------------------------------------------------------------------------


def build_pt_shard(corpus: list[str], tokenizer: str, workdir: str, shard: str,
                   overrides: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """`data build-pt --shard K/N` into WORKDIR/pt-shards/K-of-N."""
    from deepmoney.data.pt_shards import build_pt_shard as build

    k, n = _shard(shard)
    if not corpus:
        raise UserError("corpus is empty: give the report files, directories or s3:// prefixes to build from")
    output = output_uri(workdir, PT_SHARDS, f"{k}-of-{n}")
    result = build(list(corpus), tokenizer, output, config_of(overrides), (k, n), quiet=True)
    m = result.manifest
    return {"uri": output, "shard": shard, "tasks": m["tasks"], "documents": m["documents"], "reused": result.reused}


def merge_pt(shards: list[str], workdir: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`data merge-pt` of the shards into WORKDIR/pt: the corpus one unsharded build makes."""
    from deepmoney.data.pt_shards import merge_pt_shards

    output = output_uri(workdir, PT_CORPUS)
    result = merge_pt_shards(list(shards), output, config_of(overrides), quiet=True)
    m = result.manifest
    return {"uri": output, "documents": m["documents"], "tokens": m["tokens"], "blocks": m["blocks"],
            "block_size": m["block_size"], "reused": result.reused}  # fmt: skip


def synthesize_sft_shard(corpus: list[str], workdir: str, shard: str, roles: dict[str, str],
                         overrides: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """`synth --shard K/N` into WORKDIR/sft-shards/K-of-N; `roles` maps questioner/answerer/extractor to
    `URL#MODEL` or `local:DIR` (empty: the config's endpoint)."""
    from deepmoney.synth.run import SynthOptions, role_endpoints, synthesize

    k, n = _shard(shard)
    config = config_of(overrides)
    endpoints = role_endpoints(config, {role: spec or None for role, spec in roles.items()})
    options = SynthOptions.from_config(config.synth, shard=(k, n))
    output = output_uri(workdir, SFT_SHARDS, f"{k}-of-{n}")
    result = synthesize(list(corpus), output, endpoints, config, options, quiet=True)
    return {"uri": output, "shard": shard, "records": result.manifest["records"], "reused": result.reused}


def merge_sft(shards: list[str], workdir: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`synth-merge` of the shards into WORKDIR/sft, in the order of an unsharded run."""
    from deepmoney.synth.merge import merge_shards

    output = output_uri(workdir, SFT_DATASET)
    manifest = merge_shards(list(shards), output, Storage(config_of(overrides).storage))
    return {"uri": output, "records": manifest["records"], "rejected": manifest["rejected"]}


# --- training, evaluation, registry ---------------------------------------------------------------


def train_config(stage: str, model: str, data: str, train_dir: str, backend: str, gpus_per_node: int,
                 max_steps: int = 0, lora: bool = False, overrides: dict[str, Any] | None = None,
                 cluster: dict[str, str] | None = None, learning_rate: float = 0.0) -> DeepmoneyConfig:  # fmt: skip
    """The training run's configuration: the run's settings, this stage's paths and sizes, and for a cluster
    backend the pods' claim and Secrets (`cluster`: volume_claim, s3_secret, mlflow_secret) — the ones the
    pipeline's own tasks get, so that they are named once. `max_steps` and `learning_rate` 0: the config's."""
    from deepmoney.config import deep_merge, overrides_from_flags

    if stage not in ("pt", "sft"):
        raise UserError(f"stage {stage!r}: pt or sft")
    output = output_uri(train_dir, TRAIN_OUTPUT.format(stage=stage))
    flags = {"train.stage": stage, "train.model": model, "train.data": data, "train.output": output,
             "train.max_steps": max_steps or None, "train.learning_rate": learning_rate or None,
             "train.lora.enabled": lora,
             "train.nproc": gpus_per_node if backend == "local" else None}  # fmt: skip
    merged = deep_merge(overrides or {}, overrides_from_flags(**flags))
    if backend != "local" and cluster:
        merged = deep_merge(merged, {"launch": {k: v for k, v in cluster.items() if v}})
    return load_config(overrides=merged)


def train(stage: str, model: str, data: str, train_dir: str, backend: str, nodes: int, gpus_per_node: int,
          max_steps: int = 0, lora: bool = False, overrides: dict[str, Any] | None = None,
          cluster: dict[str, str] | None = None, learning_rate: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """Train `stage` (pt or sft) through the launcher interface — a PyTorchJob, a TrainJob or torchrun here —
    and wait for it; the job's status goes to this process's log. The output is TRAIN_DIR/train-<stage>."""
    from deepmoney.launch.launcher import launcher_for

    config = train_config(stage, model, data, train_dir, backend, gpus_per_node, max_steps, lora, overrides, cluster,
                          learning_rate)  # fmt: skip
    output = str(config.train.output)
    launcher = launcher_for(config, backend, nodes=nodes, gpus_per_node=gpus_per_node, quiet=True)
    result = launcher.submit(wait=True, timeout=None)
    manifest = _manifest(output)
    return {"uri": join(output, "final"), "output": output, "stage": stage, "backend": backend,
            "phase": result.get("phase"), "steps": manifest.get("steps"), "final_loss": manifest.get("final_loss"),
            "mlflow_run_id": manifest.get("mlflow_run_id")}  # fmt: skip


def evaluate(model: str, data: list[str], workdir: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`evaluate` the model on the held-out data of the pt corpus and sft dataset into WORKDIR/evaluation."""
    from deepmoney.evaluate.run import evaluate as run_evaluation

    output = output_uri(workdir, EVALUATION)
    result = run_evaluation(model, list(data), output, config_of(overrides), quiet=True)
    manifest = result.manifest
    return {"uri": output, "model": model, "metrics": dict(manifest.metrics), "eval_digest": manifest.eval_digest,
            "mlflow_run_id": manifest.mlflow_run_id, "reused": result.reused}  # fmt: skip


def register_and_promote(mlflow_run_id: str | None, name: str, source: str | None = None,
                         overrides: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Register the training run's model as a version of `name`, then promote it if it beats the champion."""
    from deepmoney.registry import promote, register

    if not mlflow_run_id:
        raise UserError("the training run was not tracked in MLflow (no run id), so it cannot be registered; "
                        "set MLFLOW_TRACKING_URI (the mlflow Secret) for the training pods")  # fmt: skip
    config = config_of(overrides)
    registered = register(mlflow_run_id, name, config, source)
    decision = promote(name, int(registered["version"]), config)
    return {"name": name, "version": registered["version"], "source": registered.get("source"), **decision}


def deploy(
    name: str,
    namespace: str,
    gpus: int = 0,
    gpu: str = "",
    model_config: str = "",
    intake_model: str = "",
    timeout: float = 3600.0,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Serve the registered champion of `name`: `serve render`'s objects applied, waited on until Ready, asked once.

    `gpus` given: that layout; else `gpu` (a planner GPU type) and `model_config` plan it (`serve render`).
    `intake_model`: the intake classifier's storageUri, to start the graph with it.
    """
    from deepmoney.pipeline.deploy import cluster_api_client, deploy_objects
    from deepmoney.registry import serving_uri
    from deepmoney.serving.render import Sizing, render_objects

    config = config_of(overrides)
    model_uri = serving_uri(name, config, alias="champion")
    objects = render_objects(model_uri=model_uri, gpus=gpus or None, nodes=None, image=None,
                             namespace=namespace or None, model_config=model_config or None, kind="inferenceservice",
                             market_data_secret=None, served_model_name=config.serving.served_model_name,
                             intake_model_uri=intake_model or None, sizing=Sizing(gpu=gpu or None))  # fmt: skip
    api_client = cluster_api_client(config.launch.kubeconfig, config.launch.context)
    result = deploy_objects(api_client, objects, namespace or config.launch.namespace, timeout=timeout,
                            poll=config.launch.poll_seconds, attempts=config.launch.api_attempts)  # fmt: skip
    return {"model_uri": model_uri, **result}


def train_intake(workdir: str, data: list[str] | None = None, overrides: dict[str, Any] | None = None,
                 register: bool = False) -> dict[str, Any]:  # fmt: skip
    """`intake train` (the subjective/objective classifier) into WORKDIR/intake-classifier."""
    from deepmoney.intake.train import train_intake_classifier

    output = output_uri(workdir, INTAKE)
    paths = [Path(p) for p in data] if data else None
    result = train_intake_classifier(output, paths, config_of(overrides), strict_tracking=register, quiet=True)
    manifest = result.manifest
    return {"uri": output, "reused": result.reused, "metrics": dict(manifest.metrics),
            "mlflow_run_id": manifest.mlflow_run_id}  # fmt: skip


def _manifest(output: str) -> dict[str, Any]:
    uri = join(output, "manifest.json")
    storage = Storage()
    if not storage.exists(uri):
        raise UserError(f"the training finished without {uri}; see the job's log")
    return json.loads(storage.read_bytes(uri))
