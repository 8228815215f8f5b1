"""The run as a `trainer.kubeflow.org/v1alpha1` TrainJob (Kubeflow Trainer v2) on a torch runtime.

A pure function of the `ClusterRun`. The runtime (`launch.runtime`, `torch-distributed` by
default: a ClusterTrainingRuntime whose one replicated job and container are both named `node`)
supplies the JobSet; the TrainJob gives the image, command, nodes, processes and resources per
node, and patches the runtime's pod for what a runtime cannot know — the pool placement, the
volumes, the non-root security context (`runtimePatches`, owned by `PATCH_MANAGER`). Trainer
sets `PET_NNODES`, `PET_NPROC_PER_NODE`, `PET_NODE_RANK`, `PET_MASTER_ADDR` and `PET_MASTER_PORT`,
which `python -m deepmoney.train` turns into its torchrun.
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

API_VERSION = "trainer.kubeflow.org/v1alpha1"
GROUP = "trainer.kubeflow.org"
KIND = "TrainJob"
PLURAL = "trainjobs"
NODE = "node"  # the replicated job and container of the torch runtimes
PATCH_MANAGER = "deepmoney.io/launch"


def runtime_ref(run: ClusterRun) -> dict[str, Any]:
    """The (Cluster)TrainingRuntime the job runs on."""
    return {"name": run.launch.runtime, "apiGroup": GROUP, "kind": run.launch.runtime_kind}


def runtime_patch(run: ClusterRun) -> dict[str, Any]:
    """Placement, volumes and security of the runtime's `node` pods."""
    pod_spec: dict[str, Any] = {
        **placement(run), "securityContext": pod_security(run), "volumes": volumes(run),
        "containers": [{"name": NODE, "volumeMounts": volume_mounts(run), "securityContext": container_security()}],
    }  # fmt: skip
    pod = {"metadata": pod_metadata(run), "spec": pod_spec}
    job = {"name": NODE, "template": {"spec": {"template": pod}}}
    return {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [job]}}}}


def training_runtime(name: str, namespace: str | None, image: str, labels: dict[str, str] | None = None,
                     *, cluster_wide: bool = False) -> dict[str, Any]:  # fmt: skip
    """A torch (Cluster)TrainingRuntime shaped as `render_trainjob` expects: one replicated job and container `node`.

    For clusters without Trainer's `torch-distributed`, or to pin the image a runtime starts from; the
    TrainJob sets the image, command, nodes, processes and resources, so the runtime holds only the
    torch policy and the job's shape. The Helm chart renders the same object (tests/test_chart.py).
    """
    metadata: dict[str, Any] = {"name": name}
    if namespace and not cluster_wide:
        metadata["namespace"] = namespace
    metadata["labels"] = dict(labels or {"app.kubernetes.io/name": "deepmoney", "app.kubernetes.io/component": "train"})
    node = {"name": NODE, "image": image}
    job = {
        "name": NODE,
        "template": {
            "metadata": {"labels": {f"{GROUP}/trainjob-ancestor-step": "trainer"}},  # the Trainer's step marker
            "spec": {"template": {"spec": {"containers": [node]}}},
        },
    }
    spec = {"mlPolicy": {"numNodes": 1, "torch": {}},  # the TrainJob sets nodes and processes per node
            "template": {"spec": {"replicatedJobs": [job]}}}  # fmt: skip
    kind = "ClusterTrainingRuntime" if cluster_wide else "TrainingRuntime"
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


def render_trainjob(run: ClusterRun) -> dict[str, Any]:
    """The TrainJob of `run`."""
    trainer: dict[str, Any] = {
        "image": run.image, "command": list(COMMAND), "args": container_args(), "env": container_env(run),
        "numNodes": run.nodes, "numProcPerNode": run.procs_per_node,
    }  # fmt: skip
    if resources(run):
        trainer["resourcesPerNode"] = resources(run)
    spec: dict[str, Any] = {"runtimeRef": runtime_ref(run), "trainer": trainer, "runtimePatches": [runtime_patch(run)]}
    if run.launch.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = run.launch.active_deadline_seconds
    if run.launch.kueue_queue:
        spec["suspend"] = True  # Kueue admits (unsuspends) the job when the queue has room
    metadata = {"name": run.name, "namespace": run.namespace, "labels": run.labels}
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}
