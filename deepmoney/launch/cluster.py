"""A training run on a Kubernetes GPU pool: what both cluster backends (PyTorchJob, TrainJob) are built from.

`cluster_run` checks everything a pod would otherwise fail on minutes after it was scheduled —
names, secrets, the shared volume, paths the pods can see — and returns a `ClusterRun`. The pure
functions below turn it into the pieces both job kinds share: the ConfigMap with the run's config
(mounted at `CONFIG_DIR`), the training container (`python -m deepmoney.train`, which becomes the
torchrun the operator's `PET_*` variables describe), and the pod spec (GPUs, pool placement,
/dev/shm, the claim, a non-root security context). Credentials only ever come from Secrets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml

from deepmoney import env
from deepmoney.config import DeepmoneyConfig, LaunchConfig, hide_passwords
from deepmoney.errors import UserError
from deepmoney.kube import check_label, check_namespace, check_subdomain, default_image

CONFIG_DIR = "/etc/deepmoney"
CONFIG_KEY = "train-config.yaml"
COMMAND = ["python", "-m", "deepmoney.train"]
NAME_MAX = 40  # "<name>-worker-<i>" pods and the operators' label values must stay within 63
COMPONENT_LABEL = "app.kubernetes.io/component"
STAGE_LABEL = "deepmoney.io/stage"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
URI_SCHEMES = ("s3://", "runs:/", "models:/")  # read by the pods themselves, not from a disk
S3_KEYS = ((env.AWS_ACCESS_KEY_ID, False), (env.AWS_SECRET_ACCESS_KEY, False), (env.AWS_SESSION_TOKEN, True),
           (env.AWS_ENDPOINT_URL, True), (env.AWS_DEFAULT_REGION, True))  # fmt: skip
MLFLOW_KEYS = ((env.MLFLOW_TRACKING_URI, False), (env.MLFLOW_TRACKING_USERNAME, True),
               (env.MLFLOW_TRACKING_PASSWORD, True), (env.MLFLOW_TRACKING_TOKEN, True))  # fmt: skip
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_ENV = {env.RANK, env.WORLD_SIZE, env.LOCAL_RANK, env.LOCAL_WORLD_SIZE, "MASTER_ADDR", "MASTER_PORT"}
_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")
# Names of variables that hold credentials (AWS_SECRET_ACCESS_KEY, HF_TOKEN), not TOKENIZERS_PARALLELISM
_CREDENTIAL = re.compile(r"(^|_)(PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY|CREDENTIALS?)(_|$)", re.IGNORECASE)


@dataclass(frozen=True)
class ClusterRun:
    """One training run as the cluster sees it: checked, with the config its pods load."""

    name: str
    namespace: str
    stage: str
    nodes: int
    gpus_per_node: int
    image: str
    launch: LaunchConfig
    pod_config: dict[str, Any]  # the storage, model and train sections the pods train with

    @property
    def procs_per_node(self) -> int:
        """Ranks per pod: one per GPU, one on a CPU pool."""
        return max(1, self.gpus_per_node)

    @property
    def config_map_name(self) -> str:
        """The ConfigMap holding the run's config."""
        return config_map_name(self.name)

    @property
    def labels(self) -> dict[str, str]:
        """Labels of the job, its ConfigMap and its pods."""
        labels = {"app.kubernetes.io/name": "deepmoney", COMPONENT_LABEL: "train", STAGE_LABEL: self.stage,
                  "deepmoney.io/run": self.name}  # fmt: skip
        if self.launch.kueue_queue:
            labels[KUEUE_QUEUE_LABEL] = self.launch.kueue_queue
        return labels


def config_map_name(run_name: str) -> str:
    """The ConfigMap that holds the config of the run (and job) `run_name`."""
    return f"{run_name}-config"


def default_name(stage: str, output: str) -> str:
    """`<stage>-<output directory name>`, made a valid name: the same output always gives the same job."""
    base = re.sub(r"[^a-z0-9-]+", "-", PurePosixPath(output.rstrip("/")).name.lower()).strip("-")
    name = f"{stage}-{base}" if base else stage
    return name[:NAME_MAX].rstrip("-")


def cluster_run(config: DeepmoneyConfig, *, nodes: int, gpus_per_node: int, name: str | None = None,
                elastic_allowed: bool = True, gang_allowed: bool = True) -> ClusterRun:  # fmt: skip
    """Check `config` for a run on `nodes` pods of `gpus_per_node` GPUs; a UserError naming the first problem."""
    launch, train = config.launch, config.train
    if nodes < 1:
        raise UserError(f"--nodes {nodes}: give at least 1")
    if gpus_per_node < 0:
        raise UserError(f"--gpus-per-node {gpus_per_node}: give 0 (a CPU pool) or more")
    model = train.model or config.model.base_model
    missing = [flag for flag, value in (("--model", model), ("--data", train.data), ("--output", train.output))
               if not value]  # fmt: skip
    if missing:
        raise UserError(f"missing {', '.join(missing)} (or train.model / train.data / train.output in the config)")
    check_namespace(launch.namespace)
    run_name = check_label(name or default_name(train.stage, str(train.output)), "--name", NAME_MAX)
    for what, secret in (("launch.s3_secret", launch.s3_secret), ("launch.mlflow_secret", launch.mlflow_secret),
                         *(("launch.image_pull_secrets", s) for s in launch.image_pull_secrets)):  # fmt: skip
        if secret is not None:
            check_subdomain(secret, what)
    if launch.service_account is not None:
        check_subdomain(launch.service_account, "launch.service_account")
    for what, quantity in (("launch.shm_size", launch.shm_size), ("launch.cpu_per_node", launch.cpu_per_node),
                           ("launch.memory_per_node", launch.memory_per_node)):  # fmt: skip
        if quantity is not None and not _QUANTITY.match(quantity):
            raise UserError(f"{what} {quantity!r}: not a Kubernetes quantity (e.g. 64Gi, 96, 500m)")
    _check_paths(launch, str(model), str(train.data), str(train.output))
    if launch.elastic and not elastic_allowed:
        raise UserError("launch.elastic: a TrainJob has no elastic mode; use --backend pytorchjob, or turn it off")
    if launch.gang.enabled and not gang_allowed:
        raise UserError("launch.gang: a TrainJob's gang scheduling is its runtime's podGroupPolicy; set it in the "
                        "(Cluster)TrainingRuntime, or use --backend pytorchjob")  # fmt: skip
    if launch.min_nodes is not None and launch.min_nodes > nodes:
        raise UserError(f"launch.min_nodes {launch.min_nodes} is more than --nodes {nodes}")
    bad = [key for key in launch.env if not _ENV_NAME.match(key)]
    reserved = [key for key in launch.env if key.startswith("PET_") or key in _RESERVED_ENV]
    if bad or reserved:
        raise UserError(f"launch.env: {', '.join(bad + reserved)}: " + ("not environment variable names" if bad else
                        "set by the operator for torchrun; leave them out"))  # fmt: skip
    pod_config = _pod_config(config)
    _check_no_credentials(pod_config, launch)
    return ClusterRun(run_name, launch.namespace, train.stage, nodes, gpus_per_node,
                      launch.image or default_image(), launch, pod_config)  # fmt: skip


def _with_passwords(value: Any, where: str) -> list[str]:
    """The dotted names of the strings in `value` that hold a URL with a password."""
    if isinstance(value, dict):
        return [found for key, inner in value.items() for found in _with_passwords(inner, f"{where}.{key}")]
    if isinstance(value, list):
        return [found for i, inner in enumerate(value) for found in _with_passwords(inner, f"{where}[{i}]")]
    return [where] if isinstance(value, str) and hide_passwords(value) != value else []


def _check_no_credentials(pod_config: dict[str, Any], launch: LaunchConfig) -> None:
    """Credentials reach the pods from Secrets only: none in the ConfigMap, none in the job's plain environment."""
    fields = [found for section, value in pod_config.items() for found in _with_passwords(value, section)]
    fields += _with_passwords(launch.env, "launch.env")
    if fields:
        raise UserError(f"{', '.join(fields)}: a URL with a password would be readable in the job's ConfigMap or spec; "
                        "give it without the password, and the credentials through a Secret: launch.mlflow_secret "
                        "(MLFLOW_TRACKING_USERNAME / _PASSWORD) or launch.s3_secret (AWS_ACCESS_KEY_ID / "
                        "AWS_SECRET_ACCESS_KEY)")  # fmt: skip
    named = sorted(key for key in launch.env if _CREDENTIAL.search(key) and not key.upper().endswith("_FILE"))
    if named:
        raise UserError(f"launch.env: {', '.join(named)}: credentials do not go into the job's spec in plain text; "
                        "put them in a Secret: launch.s3_secret or launch.mlflow_secret (docs/launch.md)")  # fmt: skip


def _check_paths(launch: LaunchConfig, model: str, data: str, output: str) -> None:
    """Every path the pods use is an s3:// (or MLflow) URI or lies on the shared claim."""
    mount = PurePosixPath(launch.volume_mount)
    if not mount.is_absolute() or str(mount) == "/":
        raise UserError(f"launch.volume_mount {launch.volume_mount!r}: give an absolute directory such as /workspace")
    if launch.volume_claim is None:
        raise UserError("launch.volume_claim is unset: the pods need a ReadWriteMany PVC for the output and its "
                        "checkpoints (a pod's own disk is lost when it is rescheduled); give its name")  # fmt: skip
    check_subdomain(launch.volume_claim, "launch.volume_claim")
    for flag, value in (("--model", model), ("--data", data), ("--output", output)):
        if flag != "--output" and value.startswith(URI_SCHEMES):
            continue
        path = PurePosixPath(value)
        if not path.is_absolute() or mount not in (path, *path.parents) or path == mount:
            where = "a path" if flag == "--output" else "s3://… or a path"
            raise UserError(f"{flag} {value}: the pods cannot see this machine's disk; give {where} under "
                            f"launch.volume_mount ({mount}) on the claim {launch.volume_claim}")  # fmt: skip


def _pod_config(config: DeepmoneyConfig) -> dict[str, Any]:
    """The sections the pods train with. Restarts are the operator's (whole pods), except in elastic mode."""
    dumped = config.model_dump(mode="json", include={"storage", "model", "train"})
    dumped["train"]["max_restarts"] = config.launch.max_restarts if config.launch.elastic else 0
    return dumped


def config_map(run: ClusterRun) -> dict[str, Any]:
    """The ConfigMap with the run's config, which the pods mount read-only."""
    text = yaml.safe_dump(run.pod_config, sort_keys=False, allow_unicode=True)
    metadata = {"name": run.config_map_name, "namespace": run.namespace, "labels": run.labels}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {CONFIG_KEY: text}}


def _secret_env(secret: str | None, keys: tuple[tuple[str, bool], ...]) -> list[dict[str, Any]]:
    if secret is None:
        return []
    out = []
    for key, optional in keys:
        ref: dict[str, Any] = {"name": secret, "key": key}
        if optional:
            ref["optional"] = True
        out.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return out


def container_env(run: ClusterRun) -> list[dict[str, Any]]:
    """The training container's environment: settings, then credentials from the Secrets."""
    plain = {env.PYTHONUNBUFFERED: "1", env.TOKENIZERS_PARALLELISM: "false", env.LOG_FORMAT: "json",
             env.HF_HUB_DISABLE_PROGRESS_BARS: "1", env.NCCL_DEBUG: "WARN"}  # fmt: skip
    if run.gpus_per_node == 0:
        plain[env.DS_ACCELERATOR] = "cpu"
    plain.update(run.launch.env)
    return [{"name": k, "value": v} for k, v in plain.items()] + _secret_env(run.launch.s3_secret, S3_KEYS) + \
        _secret_env(run.launch.mlflow_secret, MLFLOW_KEYS)  # fmt: skip


def container_args() -> list[str]:
    """The arguments of `COMMAND`: the mounted config."""
    return ["--config", f"{CONFIG_DIR}/{CONFIG_KEY}"]


def resources(run: ClusterRun) -> dict[str, Any]:
    """Requests = limits (GPUs cannot be overcommitted, and a guaranteed pod is evicted last)."""
    amounts: dict[str, Any] = {}
    if run.gpus_per_node:
        amounts[run.launch.gpu_resource] = str(run.gpus_per_node)  # quantities are strings in the API's models
    if run.launch.cpu_per_node:
        amounts["cpu"] = run.launch.cpu_per_node
    if run.launch.memory_per_node:
        amounts["memory"] = run.launch.memory_per_node
    return {"limits": dict(amounts), "requests": dict(amounts)} if amounts else {}


def volume_mounts(run: ClusterRun) -> list[dict[str, Any]]:
    """Where the config, /dev/shm and the shared claim appear in the training container."""
    return [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}, {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "workspace", "mountPath": run.launch.volume_mount}]  # fmt: skip


def volumes(run: ClusterRun) -> list[dict[str, Any]]:
    """The ConfigMap, a memory-backed /dev/shm of `launch.shm_size`, and the ReadWriteMany claim."""
    return [
        {"name": "config", "configMap": {"name": run.config_map_name}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": run.launch.shm_size}},
        {"name": "workspace", "persistentVolumeClaim": {"claimName": run.launch.volume_claim}},
    ]


def container_security() -> dict[str, Any]:
    """No privilege escalation, no capabilities."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def pod_security(run: ClusterRun) -> dict[str, Any]:
    """Non-root, with the claim's files group-owned by the same id."""
    uid = run.launch.run_as_user
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip


def placement(run: ClusterRun) -> dict[str, Any]:
    """Pod-spec fields that put the pods on the chosen pool and give them their identity."""
    spec: dict[str, Any] = {}
    launch = run.launch
    if launch.node_selector:
        spec["nodeSelector"] = dict(launch.node_selector)
    if launch.tolerations:
        spec["tolerations"] = [dict(t) for t in launch.tolerations]
    if launch.affinity:
        spec["affinity"] = dict(launch.affinity)
    if launch.service_account:
        spec["serviceAccountName"] = launch.service_account
    if launch.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in launch.image_pull_secrets]
    return spec


def pod_metadata(run: ClusterRun) -> dict[str, Any]:
    """Pod labels; no Istio sidecar (a training pod with one never completes)."""
    return {"labels": run.labels, "annotations": {"sidecar.istio.io/inject": "false"}}
