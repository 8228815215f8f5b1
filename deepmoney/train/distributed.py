"""The distributed environment that torchrun, the Training Operator and Kubeflow Trainer set.

torchrun (and a PyTorchJob whose command is torchrun) gives each process `RANK`, `WORLD_SIZE`,
`LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT`. Kubeflow Trainer v2 and the
Training Operator (PyTorchJob with `nprocPerNode`) instead give the pod `PET_NNODES`,
`PET_NPROC_PER_NODE`, `PET_NODE_RANK`, `PET_MASTER_ADDR` and `PET_MASTER_PORT` (or, elastic,
`PET_RDZV_*`), the arguments of a torchrun the container is expected to run; `torchrun_argv`
turns them into that command, so the entrypoint works as the container command in either case.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from deepmoney import env as names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def dist_env(env: Mapping[str, str] | None = None) -> DistEnv:
    """The process's place in the job, from torchrun's variables (a single process when unset)."""
    env = os.environ if env is None else env
    world = _int(env, names.WORLD_SIZE, 1)
    rank = _int(env, names.RANK, 0)
    local_rank = _int(env, names.LOCAL_RANK, 0)
    local_world = _int(env, names.LOCAL_WORLD_SIZE, world)
    if not 0 <= rank < world or not 0 <= local_rank < local_world:
        raise ValueError(
            f"inconsistent distributed environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local_rank}"
        )
    return DistEnv(rank, world, local_rank, local_world)


def needs_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """True in a pod given `PET_*` torchrun arguments, not yet under torchrun.

    A PyTorchJob with a Master also sets `RANK` and `WORLD_SIZE` — of the node, not of a process —
    so `RANK` cannot tell; `LOCAL_RANK`, which torchrun gives every process it starts, does.
    """
    env = os.environ if env is None else env
    return names.LOCAL_RANK not in env and names.PET_NNODES in env


def torchrun_argv(env: Mapping[str, str], max_restarts: int) -> list[str]:
    """torchrun arguments from the `PET_*` variables of Kubeflow Trainer / Training Operator pods."""
    argv = [
        f"--nnodes={env[names.PET_NNODES]}",
        f"--nproc-per-node={env.get(names.PET_NPROC_PER_NODE, 'auto')}",
        f"--max-restarts={max_restarts}",
    ]
    if names.PET_NODE_RANK in env:
        argv.append(f"--node-rank={env[names.PET_NODE_RANK]}")
    if names.PET_MASTER_ADDR in env:
        port = env.get(names.PET_MASTER_PORT, "29500")
        argv += [f"--master-addr={env[names.PET_MASTER_ADDR]}", f"--master-port={port}"]
    return argv


def is_transient(exc: BaseException) -> bool:
    """Whether a rank's failure may go away when the ranks are started again (a lost peer, a timeout).

    torch.distributed raises DistError subclasses (DistNetworkError, DistStoreError,
    DistBackendError) when a peer or the rendezvous store goes away; those, and plain connection
    errors and timeouts, are worth a restart. Anything else is a bug or a user error.
    """
    import torch.distributed as dist

    return isinstance(exc, (dist.DistError, ConnectionError, TimeoutError))


def tame_deepspeed_logger() -> None:
    """DeepSpeed logs to stdout at INFO; send it to stderr at our level (stdout carries results only)."""
    import sys

    from deepspeed.utils import logger as ds_logger

    verbose = logging.getLogger("deepmoney").getEffectiveLevel() <= logging.DEBUG
    ds_logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    for handler in ds_logger.handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


def backend() -> str:
    """NCCL on GPUs, gloo on CPU."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def process_group(env: DistEnv, timeout_minutes: int = 30) -> Iterator[None]:
    """Join the process group for the duration of the block, and always leave it cleanly.

    A process that exits with the group still up can abort at interpreter exit (SIGABRT after a
    finished run), so the group is torn down on every path, errors included.
    """
    import deepspeed
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
    tame_deepspeed_logger()
    deepspeed.init_distributed(
        dist_backend=backend(), timeout=datetime.timedelta(minutes=timeout_minutes), verbose=False
    )
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if dist.is_initialized():
            if not failed:
                with contextlib.suppress(Exception):
                    dist.barrier()
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
