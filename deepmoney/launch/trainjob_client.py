"""Submit, watch, read and cancel a TrainJob with the Kubeflow Trainer SDK (`kubeflow` 0.5, `TrainerClient`).

The runtime is looked up first (`get_runtime`: namespaced, then cluster-scoped), so a cluster
without it is told so before anything is created. The TrainJob itself is created from the very
object `--render` prints, through the SDK backend's own `custom_api` (`TrainerClient.train` builds
its own object from a trainer description and could not carry our patches unchanged); reading
its state and steps, its logs and deleting it go through `TrainerClient`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from deepmoney.config import LaunchConfig
from deepmoney.errors import UserError
from deepmoney.launch import trainjob
from deepmoney.launch.cluster import ClusterRun, config_map_name
from deepmoney.launch.jobs import FAILED, SUCCEEDED, JobState, Submission, api_status, call_api, phase_of
from deepmoney.launch.kubeapi import delete_config_map, job_events, submit_config_map, to_json

VERSION = "v1alpha1"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"  # the JobSet (and its pods) carry the TrainJob's name
FIRST_NODE = f"{trainjob.NODE}-0"


class TrainJobBackend:
    """The Kubeflow Trainer v2 backend of `deepmoney launch`."""

    kind = trainjob.KIND

    def __init__(self, launch: LaunchConfig, client_configuration: Any = None) -> None:
        from kubeflow.common.types import KubernetesBackendConfig
        from kubeflow.trainer import TrainerClient

        self.namespace, self.attempts = launch.namespace, launch.api_attempts
        config = KubernetesBackendConfig(namespace=launch.namespace, config_file=launch.kubeconfig,
                                         context=launch.context, client_configuration=client_configuration)  # fmt: skip
        self.client = TrainerClient(backend_config=config)
        self.custom_api, self.core_api = self.client.backend.custom_api, self.client.backend.core_api

    def submit(self, run: ClusterRun) -> Submission:
        """Check the runtime, create the ConfigMap and the TrainJob, or attach to the TrainJob of this name."""
        try:
            call_api(f"look up runtime {run.launch.runtime}", lambda: self.client.get_runtime(run.launch.runtime),
                     self.attempts)  # fmt: skip
        except RuntimeError as exc:
            if api_status(exc) not in (404, None):
                raise
            raise UserError(f"the training runtime {run.launch.runtime!r} is not on the cluster (neither a "
                            f"TrainingRuntime in {run.namespace} nor a ClusterTrainingRuntime): install Kubeflow "
                            "Trainer's runtimes or set launch.runtime") from None  # fmt: skip
        submit_config_map(self.core_api, run, self.attempts)
        body = trainjob.render_trainjob(run)
        from kubernetes.client.exceptions import ApiException

        try:
            call_api(f"create {self.kind} {run.name}", lambda: self.custom_api.create_namespaced_custom_object(
                trainjob.GROUP, VERSION, run.namespace, trainjob.PLURAL, body), self.attempts)  # fmt: skip
        except ApiException as exc:
            if exc.status != 409:
                raise
            return Submission(self.kind, run.namespace, run.name, attached=True)
        return Submission(self.kind, run.namespace, run.name, attached=False)

    def _object(self, name: str) -> dict[str, Any]:
        return call_api(f"read {self.kind} {name}", lambda: self.custom_api.get_namespaced_custom_object(
            trainjob.GROUP, VERSION, self.namespace, trainjob.PLURAL, name), self.attempts)  # fmt: skip

    def state(self, name: str) -> JobState:
        """The phase from the TrainJob's conditions (Complete is Succeeded), else the SDK's view of its steps."""
        status = self._object(name).get("status") or {}
        phase, since = phase_of(status)
        if phase not in (SUCCEEDED, FAILED):
            phase = call_api(f"read {self.kind} {name}", lambda: self.client.get_job(name), self.attempts).status
        return JobState(phase, since, status)

    def pods(self, name: str) -> list[dict[str, Any]]:
        """The pods of the TrainJob's JobSet."""
        found = call_api(f"list the pods of {name}", lambda: self.core_api.list_namespaced_pod(
            self.namespace, label_selector=f"{JOBSET_NAME_LABEL}={name}"), self.attempts)  # fmt: skip
        return sorted(to_json(found.items), key=lambda p: p.get("metadata", {}).get("name", ""))

    def events(self, name: str, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Events about the TrainJob, its JobSet or its pods."""
        return job_events(self.core_api, self.namespace, name, pods, self.attempts)

    def logs(self, name: str) -> dict[str, str]:
        """The log of each started node (`node-0`, `node-1`, …) by its pod."""
        job = call_api(f"read {self.kind} {name}", lambda: self.client.get_job(name), self.attempts)
        return {step.pod_name: "\n".join(self.client.get_job_logs(name, step=step.name))
                for step in job.steps if step.name.startswith(trainjob.NODE) and step.status != "Pending"}  # fmt: skip

    def follow(self, name: str) -> Iterator[str]:
        """The first node's log as it is written."""
        yield from self.client.get_job_logs(name, follow=True, step=FIRST_NODE)

    def cancel(self, name: str) -> bool:
        """Delete the TrainJob (its JobSet and pods go with it) and its ConfigMap."""
        try:
            call_api(f"delete {self.kind} {name}", lambda: self.client.delete_job(name), self.attempts)
            deleted = True
        except RuntimeError as exc:
            if api_status(exc) != 404:
                raise
            deleted = False
        delete_config_map(self.core_api, self.namespace, config_map_name(name), self.attempts)
        return deleted
