"""The runner of `deepmoney train`: where the ranks of a run come from.

`--launcher auto` (the default): a process that already is a rank (RANK set by torchrun or a
PyTorchJob) trains as that rank; a pod given only `PET_*` variables becomes the torchrun they
describe; anywhere else the local launcher starts `--nproc` ranks here. `local` and `none` force
the choice. `python -m deepmoney.train` has the same flags but never launches (`train.command`).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from deepmoney import env
from deepmoney.config import DeepmoneyConfig
from deepmoney.errors import UserError

TRAIN_EXTRA = ("deepspeed", "peft")


def require_train_extra() -> None:
    """Training needs the `train` extra; without it, say how to install it (instead of an ImportError)."""
    missing = [name for name in TRAIN_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"training needs {', '.join(missing)}, which this installation lacks; install the train "
                        "extra: scripts/install.sh train (or pip install 'deepmoney[train]')")  # fmt: skip


def run_training(config: DeepmoneyConfig, launcher: str, quiet: bool, overwrite: bool) -> dict[str, Any] | None:
    """Train as `launcher` says; the manifest to report, or None on ranks that do not report."""
    require_train_extra()
    from deepmoney.train.command import run_rank
    from deepmoney.train.distributed import needs_torchrun

    if launcher == "local" or (launcher == "auto" and env.get(env.RANK) is None and not needs_torchrun()):
        from deepmoney.launch.local import launch_local

        return launch_local(config, quiet=quiet, overwrite=overwrite)
    return run_rank(config, launcher, quiet, overwrite)
