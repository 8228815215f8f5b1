"""`deepmoney launch --render`: the objects a cluster backend would create, checked, as plain dicts.

The ConfigMap with the run's config comes first (the pods mount it), then the job: a PyTorchJob
(`pytorchjob`) or a TrainJob (`trainjob`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from deepmoney.config import DeepmoneyConfig
from deepmoney.errors import UserError
from deepmoney.launch.cluster import ClusterRun, cluster_run, config_map
from deepmoney.launch.pytorchjob import render_pytorchjob
from deepmoney.launch.trainjob import render_trainjob

JOB_RENDERERS: dict[str, Callable[[ClusterRun], dict[str, Any]]] = {
    "pytorchjob": render_pytorchjob,
    "trainjob": render_trainjob,
}
BACKENDS = ("local", *JOB_RENDERERS)


def check_backend(backend: str) -> str:
    """`backend` when it is one we have; else a UserError listing them."""
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r}: one of {', '.join(BACKENDS)}")
    return backend


def plan_cluster_run(config: DeepmoneyConfig, backend: str, *, nodes: int, gpus_per_node: int,
                     name: str | None = None) -> ClusterRun:  # fmt: skip
    """The checked run of a cluster `backend`."""
    if check_backend(backend) == "local":
        raise UserError("--backend local trains on this machine (deepmoney train --launcher local); "
                        "--render and --nodes are for pytorchjob and trainjob")  # fmt: skip
    pytorchjob = backend == "pytorchjob"
    return cluster_run(config, nodes=nodes, gpus_per_node=gpus_per_node, name=name,
                       elastic_allowed=pytorchjob, gang_allowed=pytorchjob)  # fmt: skip


def render_objects(config: DeepmoneyConfig, backend: str, *, nodes: int, gpus_per_node: int,
                   name: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The ConfigMap and the job of `backend` for this run, in apply order."""
    run = plan_cluster_run(config, backend, nodes=nodes, gpus_per_node=gpus_per_node, name=name)
    return [config_map(run), JOB_RENDERERS[backend](run)]
