"""The run as a `kubeflow.org/v1` PyTorchJob (Training Operator v1, the maintained release-1.9 line).

A pure function of the `ClusterRun`. Master + Workers, or — elastic — Workers only with an
`elasticPolicy` (c10d rendezvous on the first worker). Every replica has `restartPolicy:
ExitCode`: the operator fails the job at once on exit codes 1-127 (2 is our user error, 1 a
crash that a restart would only repeat) and restarts the pods on 128 and above (a rank lost to a
signal such as the OOM killer's 137, or our retryable distributed failure, 128), up to
`runPolicy.backoffLimit`. With gang scheduling, `runPolicy.schedulingPolicy` asks for all pods
at once. The container must be named `pytorch`: the operator reads its port and logs from it.
"""

from __future__ import annotations

from typing import Any

from deepmoney.launch.cluster import (
    COMMAND,
    ClusterRun,
    container_args,
    container_env,
    container_security,
    placement,
    pod_metadata,
    pod_security,
    resources,
    volume_mounts,
    volumes,
)

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
PLURAL = "pytorchjobs"
CONTAINER = "pytorch"  # the operator's default container name
PORT = 23456  # the operator's default for the master port
RESTART_POLICY = "ExitCode"


def pod_template(run: ClusterRun) -> dict[str, Any]:
    """The pod of every replica."""
    container = {
        "name": CONTAINER, "image": run.image, "imagePullPolicy": run.launch.image_pull_policy,
        "command": list(COMMAND), "args": container_args(), "env": container_env(run),
        "ports": [{"name": "pytorchjob-port", "containerPort": PORT, "protocol": "TCP"}],
        "volumeMounts": volume_mounts(run), "securityContext": container_security(),
    }  # fmt: skip
    if resources(run):
        container["resources"] = resources(run)
    spec = {"containers": [container], "volumes": volumes(run), "securityContext": pod_security(run), **placement(run)}
    return {"metadata": pod_metadata(run), "spec": spec}


def _replica(count: int, run: ClusterRun) -> dict[str, Any]:
    return {"replicas": count, "restartPolicy": RESTART_POLICY, "template": pod_template(run)}


def run_policy(run: ClusterRun) -> dict[str, Any]:
    """Cleanup, retries, the wall-clock limit and gang scheduling."""
    launch = run.launch
    policy: dict[str, Any] = {"cleanPodPolicy": launch.clean_pod_policy, "backoffLimit": launch.max_restarts}
    if launch.ttl_seconds_after_finished is not None:
        policy["ttlSecondsAfterFinished"] = launch.ttl_seconds_after_finished
    if launch.active_deadline_seconds is not None:
        policy["activeDeadlineSeconds"] = launch.active_deadline_seconds
    if launch.kueue_queue:
        policy["suspend"] = True  # Kueue admits (unsuspends) the job when the queue has room
    if launch.gang.enabled:
        scheduling: dict[str, Any] = {"minAvailable": launch.min_nodes or run.nodes}
        for key, value in (("queue", launch.gang.queue), ("priorityClass", launch.gang.priority_class),
                           ("scheduleTimeoutSeconds", launch.gang.schedule_timeout_seconds)):  # fmt: skip
            if value is not None:
                scheduling[key] = value
        policy["schedulingPolicy"] = scheduling
    return policy


def render_pytorchjob(run: ClusterRun) -> dict[str, Any]:
    """The PyTorchJob of `run`."""
    spec: dict[str, Any] = {"nprocPerNode": str(run.procs_per_node), "runPolicy": run_policy(run)}
    if run.launch.elastic:
        spec["elasticPolicy"] = {
            "rdzvBackend": "c10d", "minReplicas": run.launch.min_nodes or run.nodes, "maxReplicas": run.nodes,
            "maxRestarts": run.launch.max_restarts,
        }  # fmt: skip
        replicas = {"Worker": _replica(run.nodes, run)}
    else:
        replicas = {"Master": _replica(1, run)}
        if run.nodes > 1:
            replicas["Worker"] = _replica(run.nodes - 1, run)
    spec["pytorchReplicaSpecs"] = replicas
    metadata = {"name": run.name, "namespace": run.namespace, "labels": run.labels}
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}
