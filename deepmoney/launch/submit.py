"""`deepmoney launch` on a cluster: submit (or attach), wait, read logs, cancel — one call each for the CLI.

The backend is the operator's SDK client (`pytorchjob_client`, `trainjob_client`), connected by
`launch.kubeconfig` / `launch.context` (else `$KUBECONFIG`, `~/.kube/config`, or the pod's service
account). Everything is checked by `render.plan_cluster_run` before the API is called once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from deepmoney.config import DeepmoneyConfig, LaunchConfig
from deepmoney.errors import UserError
from deepmoney.launch.cluster import ClusterRun
from deepmoney.launch.jobs import ClusterBackend, wait_for_job
from deepmoney.launch.render import plan_cluster_run

log = logging.getLogger(__name__)


def backend_for(backend: str, launch: LaunchConfig, client_configuration: Any = None) -> ClusterBackend:
    """The SDK-backed client of a cluster backend; a UserError when its SDK or the cluster is not there."""
    try:
        if backend == "pytorchjob":
            from deepmoney.launch.pytorchjob_client import PyTorchJobBackend

            return PyTorchJobBackend(launch, client_configuration)
        from deepmoney.launch.trainjob_client import TrainJobBackend

        return TrainJobBackend(launch, client_configuration)
    except ImportError as exc:
        raise UserError(f"--backend {backend} needs the Kubeflow SDKs ({exc.name} is missing): "
                        "scripts/install.sh cluster (or pip install 'deepmoney[cluster]')") from None  # fmt: skip
    except Exception as exc:  # the kubernetes client's config loaders raise their own ConfigException
        if type(exc).__name__ != "ConfigException":
            raise
        raise UserError(f"no cluster to talk to ({str(exc).splitlines()[0]}): set launch.kubeconfig, "
                        "$KUBECONFIG or ~/.kube/config") from None  # fmt: skip


def _connect(config: DeepmoneyConfig, backend: str, nodes: int, gpus_per_node: int, name: str | None,
             client_configuration: Any) -> tuple[ClusterRun, ClusterBackend]:  # fmt: skip
    """The checked run and the client of its backend (checked first: a mistake never waits on the API)."""
    run = plan_cluster_run(config, backend, nodes=nodes, gpus_per_node=gpus_per_node, name=name)
    return run, backend_for(backend, config.launch, client_configuration)


def submit_run(config: DeepmoneyConfig, backend: str, *, nodes: int, gpus_per_node: int, name: str | None,
               wait: bool, timeout: float | None, client_configuration: Any = None) -> dict[str, Any]:  # fmt: skip
    """Submit the run (or attach to its job), then wait for it unless `wait` is False; what happened."""
    run, client = _connect(config, backend, nodes, gpus_per_node, name, client_configuration)
    submitted = client.submit(run)
    log.info("%s %s %s/%s", "attached to the existing" if submitted.attached else "submitted", submitted.kind,
             submitted.namespace, submitted.name)  # fmt: skip
    if wait:
        launch = config.launch
        state = wait_for_job(client, submitted.namespace, submitted.name, timeout=timeout, poll=launch.poll_seconds,
                             restarting_limit=launch.restarting_limit_seconds)  # fmt: skip
    else:
        state = client.state(submitted.name)
    return {"kind": submitted.kind, "namespace": submitted.namespace, "name": submitted.name,
            "attached": submitted.attached, "phase": state.phase}  # fmt: skip


def cancel_run(config: DeepmoneyConfig, backend: str, *, nodes: int, gpus_per_node: int, name: str | None,
               client_configuration: Any = None) -> dict[str, Any]:  # fmt: skip
    """Delete the run's job and ConfigMap; a UserError when there is no such job."""
    run, client = _connect(config, backend, nodes, gpus_per_node, name, client_configuration)
    if not client.cancel(run.name):
        raise UserError(f"no {client.kind} {run.namespace}/{run.name} to cancel (deepmoney launch ... --render "
                        "shows the name this run has)")  # fmt: skip
    return {"kind": client.kind, "namespace": run.namespace, "name": run.name, "cancelled": True}


def run_logs(config: DeepmoneyConfig, backend: str, *, nodes: int, gpus_per_node: int, name: str | None,
             client_configuration: Any = None) -> dict[str, str]:  # fmt: skip
    """Each started pod's training log."""
    run, client = _connect(config, backend, nodes, gpus_per_node, name, client_configuration)
    return client.logs(run.name)


def follow_logs(config: DeepmoneyConfig, backend: str, *, nodes: int, gpus_per_node: int, name: str | None,
                client_configuration: Any = None) -> Iterator[str]:  # fmt: skip
    """The first pod's training log, line by line as it is written, until the container ends."""
    run, client = _connect(config, backend, nodes, gpus_per_node, name, client_configuration)
    yield from client.follow(run.name)
