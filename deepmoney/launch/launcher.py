"""One launcher interface over the three backends: build the objects, submit (or attach) and wait, logs, cancel.

`local` trains on this machine under torchrun (`local_backend.LocalLauncher`); `pytorchjob` and `trainjob`
submit to the cluster through their operators' SDKs (`submit.ClusterLauncher`). The CLI and the pipeline's
components call only this interface, so a run moves between a laptop and a GPU pool by its backend alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from deepmoney.config import DeepmoneyConfig
from deepmoney.launch.render import check_backend


class Launcher(Protocol):
    """A run of one training stage on one backend."""

    backend: str

    def render(self) -> list[dict[str, Any]]:
        """What would be started, as plain objects (Kubernetes objects on a cluster), starting nothing."""

    def submit(self, *, wait: bool, timeout: float | None) -> dict[str, Any]:
        """Start the run, or attach to the one already running under its name; with `wait`, until it ends."""

    def logs(self) -> dict[str, str]:
        """The run's training log so far, by source (pod, or the local launcher's log)."""

    def follow(self) -> Iterator[str]:
        """The training log's lines as they are written, until the run (its first pod) ends."""

    def cancel(self) -> dict[str, Any]:
        """Stop the run (its checkpoints stay, so the same launch resumes it); a UserError when none runs."""


def launcher_for(config: DeepmoneyConfig, backend: str, *, nodes: int = 1, gpus_per_node: int | None = None,
                 name: str | None = None, quiet: bool = False, overwrite: bool = False,
                 client_configuration: Any = None) -> Launcher:  # fmt: skip
    """The launcher of `backend` for this run; everything it can check without starting anything is checked."""
    if check_backend(backend) == "local":
        from deepmoney.launch.local_backend import LocalLauncher

        return LocalLauncher(config, nodes=nodes, name=name, quiet=quiet, overwrite=overwrite)
    from deepmoney.launch.submit import ClusterLauncher

    gpus = 8 if gpus_per_node is None else gpus_per_node
    return ClusterLauncher(config, backend, nodes=nodes, gpus_per_node=gpus, name=name,
                           client_configuration=client_configuration)  # fmt: skip
