"""Submit, watch, read and cancel a PyTorchJob with the Training Operator's SDK (`kubeflow-training` 1.9).

`TrainingClient` creates, reads and deletes the job, and finds its pods by the operator's labels;
the ConfigMap, pod logs and events go through the same client's `core_api`. Submitting is
idempotent: the run's name is derived from its output, and a job of that name already there is
attached to, never duplicated (a ConfigMap of that name holding another config is refused).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from deepmoney.config import LaunchConfig
from deepmoney.launch import pytorchjob
from deepmoney.launch.cluster import ClusterRun, config_map_name
from deepmoney.launch.jobs import JobState, Submission, api_status, call_api, phase_of
from deepmoney.launch.kubeapi import (
    delete_config_map,
    follow_log,
    job_events,
    read_log,
    submit_config_map,
    to_json,
)

MODEL = "KubeflowOrgV1PyTorchJob"


class PyTorchJobBackend:
    """The Training Operator v1 backend of `deepmoney launch`."""

    kind = pytorchjob.KIND

    def __init__(self, launch: LaunchConfig, client_configuration: Any = None) -> None:
        from kubeflow.training import TrainingClient

        self.namespace, self.attempts = launch.namespace, launch.api_attempts
        self.client = TrainingClient(config_file=launch.kubeconfig, context=launch.context,
                                     client_configuration=client_configuration, namespace=launch.namespace,
                                     job_kind=pytorchjob.KIND)  # fmt: skip

    def _call(self, what: str, call: Any) -> Any:
        return call_api(what, call, self.attempts)

    def submit(self, run: ClusterRun) -> Submission:
        """Create the ConfigMap and the PyTorchJob, or attach to the job of this name."""
        submit_config_map(self.client.core_api, run, self.attempts)
        from kubeflow.training.utils import utils

        job = self.client.api_client.deserialize(utils.FakeResponse(pytorchjob.render_pytorchjob(run)), MODEL)
        try:
            self._call(
                f"create {self.kind} {run.name}", lambda: self.client.create_job(job=job, namespace=run.namespace)
            )
        except RuntimeError as exc:
            if api_status(exc) != 409:
                raise
            return Submission(self.kind, run.namespace, run.name, attached=True)
        return Submission(self.kind, run.namespace, run.name, attached=False)

    def state(self, name: str) -> JobState:
        """The job's phase from its conditions."""
        job = to_json(self._call(f"read {self.kind} {name}", lambda: self.client.get_job(name, self.namespace)))
        status = job.get("status") or {}
        phase, since = phase_of(status)
        return JobState(phase, since, status)

    def pods(self, name: str) -> list[dict[str, Any]]:
        """The job's pods, master first."""
        pods = self._call(f"list the pods of {name}", lambda: self.client.get_job_pods(name, self.namespace))
        return sorted((to_json(p) for p in pods), key=lambda p: p.get("metadata", {}).get("name", ""))

    def events(self, name: str, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Events about the job or its pods."""
        return job_events(self.client.core_api, self.namespace, name, pods, self.attempts)

    def logs(self, name: str) -> dict[str, str]:
        """Each started pod's `pytorch` container log."""
        return {
            pod["metadata"]["name"]: read_log(
                self.client.core_api, self.namespace, pod, pytorchjob.CONTAINER, self.attempts
            )
            for pod in self.pods(name)
            if (pod.get("status") or {}).get("phase") not in (None, "Pending")
        }

    def follow(self, name: str) -> Iterator[str]:
        """The master's log as it is written."""
        pods = self.pods(name)
        if pods:
            yield from follow_log(
                self.client.core_api, self.namespace, pods[0]["metadata"]["name"], pytorchjob.CONTAINER
            )

    def cancel(self, name: str) -> bool:
        """Delete the job (its pods go with it) and its ConfigMap."""
        try:
            self._call(f"delete {self.kind} {name}", lambda: self.client.delete_job(name, self.namespace))
            deleted = True
        except RuntimeError as exc:
            if api_status(exc) != 404:
                raise
            deleted = False
        delete_config_map(self.client.core_api, self.namespace, config_map_name(name), self.attempts)
        return deleted
