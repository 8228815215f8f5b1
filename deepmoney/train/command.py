"""The `train` command's flags, shared by `deepmoney train` and `python -m deepmoney.train` (the pods' command).

Both shells parse the same flags into the same config and hand it to their *runner*: `deepmoney
train` can also start the ranks itself (the local launcher), the module entrypoint is a rank (or,
given only Kubeflow Trainer's `PET_*` variables, becomes the torchrun they describe). A rank's
failure becomes an exit code the launchers act on (`deepmoney.errors`): 2 for a user error, 128
for a transient distributed failure, 1 for anything else.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Annotated, Any

import typer
import yaml

from deepmoney import env
from deepmoney.config import DeepmoneyConfig, load_config, overrides_from_flags
from deepmoney.errors import EXIT_TRANSIENT, UserError
from deepmoney.shell import global_options

log = logging.getLogger(__name__)

Runner = Callable[[DeepmoneyConfig, str, bool, bool], dict[str, Any] | None]
RUNNER = "train"  # the key of the runner in GlobalOptions.services
LAUNCHERS = ("auto", "local", "none")


def train(
    ctx: typer.Context,
    stage: Annotated[str | None, typer.Option("--stage", help="pt (packed corpus) or sft (chat examples).")] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Base model: directory, train output, s3://, runs:/ or models:/.")
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="pt corpus or sft dataset (directory, file, s3://).")
    ] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Output directory (shared by all ranks).")
    ] = None,
    launcher: Annotated[
        str,
        typer.Option(
            "--launcher",
            help="auto: this process is a rank under torchrun, else local; "
            "local: torchrun with --nproc ranks here; none: run as one rank now.",
        ),
    ] = "auto",
    nproc: Annotated[int | None, typer.Option("--nproc", min=1, help="Local launcher: processes or GPUs.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Optimizer steps.")] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="Passes over the data without --max-steps.")] = None,
    micro_batch: Annotated[int | None, typer.Option("--micro-batch", min=1, help="Blocks per rank per pass.")] = None,
    grad_accum: Annotated[int | None, typer.Option("--grad-accum", min=1, help="Micro-batches per step.")] = None,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate", help="Peak learning rate.")] = None,
    zero: Annotated[int | None, typer.Option("--zero", help="DeepSpeed ZeRO stage: 0, 1, 2 or 3.")] = None,
    lora: Annotated[bool | None, typer.Option("--lora/--full", help="LoRA adapters or all parameters.")] = None,
    save_every: Annotated[int | None, typer.Option("--save-every", min=1, help="Steps between checkpoints.")] = None,
    block_size: Annotated[int | None, typer.Option("--block-size", min=16, help="sft tokens per block.")] = None,
    max_restarts: Annotated[
        int | None, typer.Option("--max-restarts", min=0, help="Local launcher: restarts after a failure.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an output trained with other settings (it is deleted).")
    ] = False,
) -> None:
    """Train pt or sft (full or LoRA, DeepSpeed ZeRO), resuming from the newest checkpoint; logs to MLflow."""
    options = global_options(ctx)
    flags = {"stage": stage, "model": model, "data": data, "output": output, "nproc": nproc,
             "max_steps": max_steps, "epochs": epochs, "micro_batch": micro_batch, "grad_accum": grad_accum,
             "learning_rate": learning_rate, "zero.stage": zero, "lora.enabled": lora, "save_every": save_every,
             "block_size": block_size, "max_restarts": max_restarts}  # fmt: skip
    config = load_config(options.config, overrides_from_flags(**{f"train.{k}": v for k, v in flags.items()}))
    if launcher not in LAUNCHERS:
        raise UserError(f"--launcher {launcher}: expected auto, local or none")
    runner: Runner = options.services[RUNNER]
    manifest = runner(config, launcher, options.quiet, overwrite)
    if manifest is not None:
        typer.echo(summary(manifest))


def summary(manifest: dict[str, Any]) -> str:
    """What `train` prints when it is done."""
    tracked = manifest["mlflow_run_id"] or ("(kept offline: deepmoney track sync)" if manifest.get("mlflow_pending")
                                            else "(not tracked)")  # fmt: skip
    return (
        f"trained {manifest['stage']}: {manifest['steps']} steps, {manifest['tokens']} tokens at "
        f"{manifest['tokens_per_second']:.0f} tokens/s, final loss {manifest['final_loss']:.4f}\n"
        f"  model         {manifest['final']}\n"
        f"  mlflow run    {tracked}"
    )


def run_rank(config: DeepmoneyConfig, launcher: str, quiet: bool, overwrite: bool) -> dict[str, Any] | None:
    """Train as one rank of a job (under torchrun, or alone); the summary comes from rank 0 only.

    With only `PET_*` variables (Kubeflow Trainer v2, elastic PyTorchJob) this process first becomes
    the torchrun those variables describe.
    """
    from deepmoney.train.distributed import needs_torchrun

    if launcher == "local":
        raise UserError("python -m deepmoney.train runs the ranks of a job; to start them on this machine use "
                        "`deepmoney train --launcher local`")  # fmt: skip
    if launcher == "auto" and needs_torchrun():
        exec_torchrun(config, quiet, overwrite)
    manifest = train_rank(config, quiet, overwrite)
    return manifest if env.get(env.RANK) in (None, "0") and not env.get(env.LAUNCHED) else None


def train_rank(config: DeepmoneyConfig, quiet: bool, overwrite: bool) -> dict[str, Any]:
    """`trainer.train` on this rank, with a transient distributed failure turned into a retryable exit code."""
    from deepmoney.train.distributed import is_transient
    from deepmoney.train.trainer import train as run_training

    try:
        return run_training(config, quiet=quiet, overwrite=overwrite)
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.exception("a transient distributed failure (retryable): %s", exc)
        sys.exit(EXIT_TRANSIENT)


def exec_torchrun(config: DeepmoneyConfig, quiet: bool, overwrite: bool) -> None:
    """Replace this process by the torchrun the `PET_*` variables describe, running the ranks with this config."""
    from deepmoney.train.distributed import torchrun_argv

    fd, path = tempfile.mkstemp(prefix="deepmoney-train-", suffix=".yaml")  # the resolved config, flags included
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config.model_dump(mode="json"), handle, sort_keys=False, allow_unicode=True)
    argv = [sys.executable, "-m", "deepmoney.train.torchrun", *torchrun_argv(os.environ, config.train.max_restarts),
            "-m", "deepmoney.train", "--config", path, *(["--quiet"] if quiet else []), "--launcher", "none",
            *(["--overwrite"] if overwrite else [])]  # fmt: skip
    os.execv(sys.executable, argv)
