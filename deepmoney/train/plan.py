"""What a training run is before any rank starts: its inputs, its output contract, and every check that can fail.

`preflight` runs in the launcher (the local one today, the cluster ones next) before a single rank
is started: the flags and config, the output contract (`deepmoney.stage`: reuse a finished run,
resume an unfinished one, refuse an output made with other settings unless `--overwrite`), batch
arithmetic against the dataset size, the model against the data (tokenizer, vocabulary,
positions), a reachable model and data URI, and the memory lower bound. A mistake is printed once
and nothing is written; the ranks repeat the same checks (`check_run`) on what they load.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepmoney.config import DeepmoneyConfig, TrainConfig, result_settings
from deepmoney.errors import UserError
from deepmoney.models.resolve import check_model, local_model
from deepmoney.models.shape import model_shape
from deepmoney.stage import RUN_MARKER, claim_output, fingerprint, utc_now
from deepmoney.storage import Storage, atomic_write_bytes, is_s3, join
from deepmoney.train.distributed import DistEnv
from deepmoney.train.ds_config import batching, deepspeed_config, resolve_precision

if TYPE_CHECKING:
    from deepmoney.train.datasets import TrainData

# deepmoney.train.datasets and .model import torch (3 s): imported where used, so that a reused or refused
# output is answered before any of it is loaded.

log = logging.getLogger(__name__)

KIND = "model"


def default_learning_rate(train: TrainConfig) -> float:
    """The peak learning rate: the configured one, else 2e-5 for full training and 2e-4 for LoRA."""
    return train.learning_rate or (2e-4 if train.lora.enabled else 2e-5)


@dataclass
class RunPlan:
    """The run a config describes, and what its output directory already holds."""

    model_uri: str
    data_uri: str
    output: Path
    fingerprint: str
    settings: dict[str, Any]
    finished: dict[str, Any] | None = None  # this very run, finished: its manifest
    replacing: bool = False  # --overwrite of an output made with other settings


def required(train: TrainConfig, config: DeepmoneyConfig) -> tuple[str, str, Path]:
    """Model, data and output of the run, each from its flag or config key; one line if any is missing."""
    model = train.model or config.model.base_model
    missing = [name for name, value in (("--model", model), ("--data", train.data), ("--output", train.output))
               if not value]  # fmt: skip
    if missing:
        raise UserError(f"missing {', '.join(missing)} (or train.model / train.data / train.output in the config)")
    if is_s3(str(train.output)):
        raise UserError("--output must be a directory all ranks share (a local path or a mounted volume), not S3")
    return str(model), str(train.data), Path(str(train.output))


def run_settings(config: DeepmoneyConfig, model_uri: str, data_uri: str) -> dict[str, Any]:
    """What decides a training's result: its inputs and the train settings that are not operational."""
    train = {f"train.{k}": v for k, v in result_settings(config.train).items() if k not in ("model", "data")}
    return {"model": model_uri, "data": data_uri, **train}


def plan_run(config: DeepmoneyConfig, overwrite: bool = False, check_output: bool = True) -> RunPlan:
    """The run of `config`, checked against what its output directory holds (the stage contract).

    `check_output=False` is for ranks other than 0 under `--overwrite`: rank 0 alone decides, and
    may be emptying the directory while they look.
    """
    model_uri, data_uri, output = required(config.train, config)
    settings = run_settings(config, model_uri, data_uri)
    fp = fingerprint(KIND, settings)
    if not check_output:
        return RunPlan(model_uri, data_uri, output, fp, settings)
    claim = claim_output(Storage(), str(output), KIND, fp, settings, overwrite=overwrite)
    # The same run, finished: done if its model is there, else resumed (and its model written again).
    finished = claim.reuse if claim.reuse is not None and (output / "final").is_dir() else None
    return RunPlan(model_uri, data_uri, output, fp, settings, finished, claim.replacing)


def check_run(config: DeepmoneyConfig, data: TrainData, model_dir: Path, world_size: int, local_world: int) -> None:
    """The checks that need the loaded data: steps, global batch against the dataset, memory."""
    import torch

    from deepmoney.train.datasets import StepBatches, steps_for
    from deepmoney.train.model import check_memory

    train = config.train
    cuda = torch.cuda.is_available()
    precision = resolve_precision(train, cuda, cuda and torch.cuda.is_bf16_supported())
    check_memory(model_shape(model_dir), train, data.block_size, DistEnv(0, world_size, 0, local_world), precision)
    batch = batching(train, world_size)
    total = steps_for(train.max_steps, train.epochs, len(data), batch.global_batch)
    StepBatches(len(data), batch.micro_batch, batch.grad_accum, 0, world_size, train.seed, 0, total)


def load_data(config: DeepmoneyConfig, data_dir: Path, model_dir: Path, scratch: Path) -> TrainData:
    """The run's training data, checked against the model (tokenizer, vocabulary, positions)."""
    from deepmoney.train.datasets import load_pt, load_sft

    train = config.train
    if not data_dir.exists():
        raise UserError(f"training data not found: {data_dir}")
    if train.stage == "pt":
        return load_pt(data_dir, model_dir, Storage(config.storage), scratch)
    return load_sft(data_dir, model_dir, train.block_size, train.train_on_prompt, train.seed)


def preflight(config: DeepmoneyConfig, world_size: int, overwrite: bool = False) -> RunPlan:
    """Every check that does not need the ranks; raises a UserError (and writes nothing) on the first problem."""
    plan = plan_run(config, overwrite)
    if plan.finished is not None:
        return plan
    import torch  # after the output's checks, which answer a reused or refused output without it

    train = config.train
    batch = batching(train, world_size)
    cuda = torch.cuda.is_available()
    precision = resolve_precision(train, cuda, cuda and torch.cuda.is_bf16_supported())
    deepspeed_config(train, batch, precision, default_learning_rate(train), not train.zero.offload_optimizer)
    if is_s3(plan.model_uri) or plan.model_uri.startswith(("runs:/", "models:/")):
        check_model(plan.model_uri, config)
        if not is_s3(plan.data_uri):
            _check_data_exists(config, plan.data_uri)
        return plan  # the ranks download the model, then check the data against it
    model_dir = local_model(Path(plan.model_uri)).path
    if is_s3(plan.data_uri):
        _check_data_exists(config, plan.data_uri)
        return plan
    with tempfile.TemporaryDirectory() as scratch:
        data = load_data(config, Path(plan.data_uri), model_dir, Path(scratch))
        check_run(config, data, model_dir, world_size, world_size)
    return plan


def _check_data_exists(config: DeepmoneyConfig, uri: str) -> None:
    from deepmoney.train.datasets import SFT_FILES

    storage = Storage(config.storage)
    if is_s3(uri):
        names = ["manifest.json"] if config.train.stage == "pt" else list(SFT_FILES)
        if not (uri.endswith(".jsonl") and storage.exists(uri)) and not any(
            storage.exists(join(uri, n)) for n in names
        ):
            raise UserError(f"--data {uri}: no {' or '.join(names)} there; pass a build-pt or synth output")
    elif not Path(uri).exists():
        raise UserError(f"training data not found: {uri}")


def prepare_output(plan: RunPlan, keep: tuple[str, ...] = ()) -> None:
    """Make the output directory this run's: emptied (but for the names in `keep`) when replacing (`--overwrite`),
    marked with run.json."""
    output = plan.output
    if plan.replacing and output.is_dir():
        log.warning("--overwrite: removing the earlier run in %s", output)
        for child in (c for c in output.iterdir() if c.name not in keep):
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    output.mkdir(parents=True, exist_ok=True)
    marker = output / RUN_MARKER
    if not marker.is_file():
        record = {"kind": KIND, "fingerprint": plan.fingerprint, "settings": plan.settings, "created_at": utc_now()}
        atomic_write_bytes(marker, json.dumps(record, indent=2, ensure_ascii=False).encode("utf-8"))


def finished_run(plan: RunPlan, config: DeepmoneyConfig) -> dict[str, Any]:
    """The manifest of this finished run; what it kept offline is uploaded now if MLflow answers."""
    assert plan.finished is not None
    manifest = plan.finished
    if manifest.get("mlflow_pending"):
        from deepmoney.tracking.sync import sync_training

        try:
            sync_training(plan.output, config.train.mlflow, Storage(config.storage))
        except UserError as exc:
            log.warning("%s still has tracking to upload (%s); run: deepmoney track sync %s", plan.output, exc,
                        plan.output)  # fmt: skip
            return manifest
        manifest = json.loads((plan.output / "manifest.json").read_text(encoding="utf-8"))
    log.info("%s already holds this finished run (manifest.json); nothing to do", plan.output)
    return manifest
