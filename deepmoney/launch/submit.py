"""`deepmoney launch` on a cluster: render, submit (or attach) and wait, read logs, cancel (`ClusterLauncher`).

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
from deepmoney.launch.render import plan_cluster_run, render_objects

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


class ClusterLauncher:
    """A run as a PyTorchJob or TrainJob: the `launcher.Launcher` of the cluster backends.

    The run is checked (`render.plan_cluster_run`) when the launcher is made, so a mistake is reported
    before the API is called once; the SDK client connects on the first call that needs the cluster.
    """

    def __init__(self, config: DeepmoneyConfig, backend: str, *, nodes: int, gpus_per_node: int,
                 name: str | None = None, client_configuration: Any = None) -> None:  # fmt: skip
        self.backend = backend
        self.config = config
        self.nodes, self.gpus_per_node = nodes, gpus_per_node
        self.run: ClusterRun = plan_cluster_run(config, backend, nodes=nodes, gpus_per_node=gpus_per_node, name=name)
        self._client_configuration = client_configuration
        self._client: ClusterBackend | None = None

    def client(self) -> ClusterBackend:
        """The backend's SDK client (connected once)."""
        if self._client is None:
            self._client = backend_for(self.backend, self.config.launch, self._client_configuration)
        return self._client

    def render(self) -> list[dict[str, Any]]:
        """The ConfigMap and the job, in apply order."""
        return render_objects(self.config, self.backend, nodes=self.nodes, gpus_per_node=self.gpus_per_node,
                              name=self.run.name)  # fmt: skip

    def submit(self, *, wait: bool, timeout: float | None) -> dict[str, Any]:
        """Submit the run (or attach to its job), then wait for it unless `wait` is False; what happened."""
        client = self.client()
        submitted = client.submit(self.run)
        log.info("%s %s %s/%s", "attached to the existing" if submitted.attached else "submitted", submitted.kind,
                 submitted.namespace, submitted.name)  # fmt: skip
        if wait:
            launch = self.config.launch
            state = wait_for_job(client, submitted.namespace, submitted.name, timeout=timeout,
                                 poll=launch.poll_seconds,
                                 restarting_limit=launch.restarting_limit_seconds)  # fmt: skip
        else:
            state = client.state(submitted.name)
        return {"kind": submitted.kind, "namespace": submitted.namespace, "name": submitted.name,
                "attached": submitted.attached, "phase": state.phase}  # fmt: skip

    def cancel(self) -> dict[str, Any]:
        """Delete the run's job and ConfigMap; a UserError when there is no such job."""
        client, run = self.client(), self.run
        if not client.cancel(run.name):
            raise UserError(f"no {client.kind} {run.namespace}/{run.name} to cancel (deepmoney launch ... --render "
                            "shows the name this run has)")  # fmt: skip
        return {"kind": client.kind, "namespace": run.namespace, "name": run.name, "cancelled": True}

    def logs(self) -> dict[str, str]:
        """Each started pod's training log."""
        return self.client().logs(self.run.name)

    def follow(self) -> Iterator[str]:
        """The first pod's training log, line by line as it is written, until the container ends."""
        yield from self.client().follow(self.run.name)
