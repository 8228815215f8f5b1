"""Cluster training jobs: PyTorchJob and TrainJob rendered, checked against the upstream CRDs, refused when wrong.

Every rendering of the grid (1 and 4 nodes of 8 GPUs, elastic on/off, gang on/off, ZeRO-3 offload
on/off) validates against the real `openAPIV3Schema` in ../shared/crds, and the ConfigMap the pods
mount loads as the very config the run was rendered from.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepmoney.config import load_config
from deepmoney.errors import UserError
from deepmoney.launch.cluster import CONFIG_KEY
from deepmoney.launch.render import render_objects
from tests import crd_schema
from tests.conftest import assert_clean_error, run_cli
from tests.crd_schema import needs_crds

CLAIM = "deepmoney-shared"
RUN = {"model": "s3://models/deepseek-llm-67b-base", "data": "/workspace/corpus/pt", "output": "/workspace/runs/pt-67b"}
GRID = list(itertools.product((1, 4), (False, True), (False, True), (False, True)))  # nodes, elastic, gang, offload
SECRETS = {"s3_secret": "s3-credentials", "mlflow_secret": "mlflow-credentials"}


def _config(*, elastic: bool = False, gang: bool = False, offload: bool = False, **launch: Any):
    zero = {"stage": 3, "offload_optimizer": offload, "offload_params": offload}
    return load_config(overrides={
        "train": {**RUN, "zero": zero},
        "launch": {"volume_claim": CLAIM, "elastic": elastic, "gang": {"enabled": gang, "queue": "gpu"} if gang
                   else {"enabled": False}, **SECRETS, **launch},
    })  # fmt: skip


def _containers(job: dict) -> list[dict]:
    if job["kind"] == "PyTorchJob":
        return [c for r in job["spec"]["pytorchReplicaSpecs"].values() for c in r["template"]["spec"]["containers"]]
    return [job["spec"]["trainer"]]


def _pod_config(config_map: dict, tmp_path: Path):
    path = tmp_path / CONFIG_KEY
    path.write_text(config_map["data"][CONFIG_KEY], encoding="utf-8")
    return load_config(path)


@needs_crds
@pytest.mark.parametrize(("nodes", "elastic", "gang", "offload"), GRID,
                         ids=[f"{n}n-elastic{int(e)}-gang{int(g)}-offload{int(o)}" for n, e, g, o in GRID])  # fmt: skip
def test_every_pytorchjob_of_the_grid_validates(nodes: int, elastic: bool, gang: bool, offload: bool,
                                                tmp_path: Path) -> None:  # fmt: skip
    config = _config(elastic=elastic, gang=gang, offload=offload)
    config_map, job = render_objects(config, "pytorchjob", nodes=nodes, gpus_per_node=8)
    crd_schema.validate(job)
    spec = job["spec"]
    replicas = {role: r["replicas"] for role, r in spec["pytorchReplicaSpecs"].items()}
    if elastic:
        assert replicas == {"Worker": nodes}
        assert spec["elasticPolicy"] == {"rdzvBackend": "c10d", "minReplicas": nodes, "maxReplicas": nodes,
                                         "maxRestarts": config.launch.max_restarts}  # fmt: skip
    else:
        assert replicas == ({"Master": 1, "Worker": nodes - 1} if nodes > 1 else {"Master": 1})
        assert "elasticPolicy" not in spec
    assert sum(replicas.values()) == nodes and spec["nprocPerNode"] == "8"
    assert {r["restartPolicy"] for r in spec["pytorchReplicaSpecs"].values()} == {"ExitCode"}
    assert ("schedulingPolicy" in spec["runPolicy"]) is gang
    if gang:
        assert spec["runPolicy"]["schedulingPolicy"] == {"minAvailable": nodes, "queue": "gpu"}
    for container in _containers(job):
        assert container["name"] == "pytorch"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    pod = _pod_config(config_map, tmp_path)
    assert pod.train.zero.offload_optimizer is offload and pod.train.zero.offload_params is offload
    assert pod.train.output == RUN["output"] and pod.train.model == RUN["model"]


@needs_crds
@pytest.mark.parametrize(("nodes", "offload"), list(itertools.product((1, 4), (False, True))))
def test_every_trainjob_of_the_grid_validates(nodes: int, offload: bool, tmp_path: Path) -> None:
    config_map, job = render_objects(_config(offload=offload), "trainjob", nodes=nodes, gpus_per_node=8)
    crd_schema.validate(job)
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == nodes and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    (patch,) = job["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = replicated["template"]["spec"]["template"]["spec"]
    assert replicated["name"] == "node" and [c["name"] for c in pod["containers"]] == ["node"]
    assert {v["name"] for v in pod["volumes"]} == {"config", "dshm", "workspace"}
    assert _pod_config(config_map, tmp_path).train.zero.offload_params is offload


@needs_crds
def test_what_the_pods_get(tmp_path: Path) -> None:
    """/dev/shm sized from config, the claim, credentials only from Secrets, non-root, the pool's placement."""
    pool = {"node_selector": {"node.kubernetes.io/instance-type": "p5.48xlarge"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "shm_size": "128Gi", "env": {"NCCL_IB_DISABLE": "0"}, "kueue_queue": "team-a",
            "active_deadline_seconds": 86400}  # fmt: skip
    for backend in ("pytorchjob", "trainjob"):
        config_map, job = render_objects(_config(**pool), backend, nodes=2, gpus_per_node=8)
        crd_schema.validate(job)
        text = yaml.safe_dump(job)
        assert "secretKeyRef" in text and "AWS_SECRET_ACCESS_KEY" in text
        containers = _containers(job)
        for container in containers:
            env = {e["name"]: e for e in container["env"]}
            assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
                "name": "s3-credentials", "key": "AWS_SECRET_ACCESS_KEY"}  # fmt: skip
            assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-credentials"
            assert all("value" not in e for name, e in env.items() if name.startswith(("AWS_", "MLFLOW_")))
            assert env["NCCL_IB_DISABLE"]["value"] == "0" and env["NCCL_DEBUG"]["value"] == "WARN"
            assert container["command"] == ["python", "-m", "deepmoney.train"]
        if backend == "pytorchjob":
            pods = [r["template"] for r in job["spec"]["pytorchReplicaSpecs"].values()]
            assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 86400
            assert job["spec"]["runPolicy"]["suspend"] is True
        else:
            patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
            pods = [patch["template"]["spec"]["template"]]
            assert job["spec"]["activeDeadlineSeconds"] == 86400 and job["spec"]["suspend"] is True
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        for pod in pods:
            spec = pod["spec"]
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "128Gi"}
            assert volumes["workspace"]["persistentVolumeClaim"]["claimName"] == CLAIM
            assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
            assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
            assert spec["nodeSelector"] == pool["node_selector"] and spec["tolerations"] == pool["tolerations"]
            mounts = {m["mountPath"] for c in spec["containers"] for m in c["volumeMounts"]}
            assert {"/dev/shm", "/workspace", "/etc/deepmoney"} <= mounts
            assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        pod_config = _pod_config(config_map, tmp_path)
        assert pod_config.train.max_restarts == 0  # the operator restarts whole pods; torchrun in a pod does not
        assert "launch" not in yaml.safe_load(config_map["data"][CONFIG_KEY])  # placement is not the pods' business


def test_a_cpu_pool_gets_no_gpus_and_the_cpu_accelerator() -> None:
    _, job = render_objects(_config(), "pytorchjob", nodes=2, gpus_per_node=0)
    for container in _containers(job):
        assert "resources" not in container
        assert {"name": "DS_ACCELERATOR", "value": "cpu"} in container["env"]
    assert job["spec"]["nprocPerNode"] == "1"


def test_the_same_output_gives_the_same_job_name() -> None:
    first = render_objects(_config(), "pytorchjob", nodes=1, gpus_per_node=8)
    again = render_objects(_config(), "pytorchjob", nodes=1, gpus_per_node=8)
    assert first == again and first[1]["metadata"]["name"] == "pt-pt-67b"


@pytest.mark.parametrize(("change", "message"), [
    ({"launch": {"volume_claim": None}}, "launch.volume_claim is unset"),
    ({"train": {"data": "/home/me/pt"}}, "--data /home/me/pt: the pods cannot see this machine's disk"),
    ({"train": {"output": "s3://bucket/run"}}, "--output s3://bucket/run: the pods cannot see"),
    ({"launch": {"s3_secret": "S3_Creds"}}, "launch.s3_secret 'S3_Creds': not a valid Kubernetes name"),
    ({"launch": {"shm_size": "lots"}}, "launch.shm_size 'lots': not a Kubernetes quantity"),
    ({"launch": {"min_nodes": 9}}, "launch.min_nodes 9 is more than --nodes 4"),
    ({"launch": {"env": {"PET_NNODES": "2"}}}, "PET_NNODES: set by the operator"),
    ({"launch": {"namespace": "ML_Team"}}, "namespace 'ML_Team'"),
])  # fmt: skip
def test_a_run_the_pods_would_fail_on_is_refused_before_anything_is_printed(change: dict, message: str) -> None:
    base = {"train": dict(RUN), "launch": {"volume_claim": CLAIM}}
    for section, values in change.items():
        base[section] = {**base[section], **values}
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        render_objects(load_config(overrides=base), "pytorchjob", nodes=4, gpus_per_node=8)


def test_what_a_trainjob_cannot_do_is_refused() -> None:
    with pytest.raises(UserError, match="a TrainJob has no elastic mode"):
        render_objects(_config(elastic=True), "trainjob", nodes=2, gpus_per_node=8)
    with pytest.raises(UserError, match="podGroupPolicy"):
        render_objects(_config(gang=True), "trainjob", nodes=2, gpus_per_node=8)


@needs_crds
def test_launch_render_from_the_command_line(tmp_path: Path) -> None:
    env = {"DEEPMONEY_LAUNCH__VOLUME_CLAIM": CLAIM, "KUBECONFIG": str(tmp_path / "no-such-kubeconfig"),
           "DEEPMONEY_LAUNCH__ENV__NCCL_SOCKET_IFNAME": "eth0"}  # fmt: skip
    args = ["--stage", "pt", "--model", RUN["model"], "--data", RUN["data"], "--output", RUN["output"]]
    for backend, kind in (("pytorchjob", "PyTorchJob"), ("trainjob", "TrainJob")):
        result = run_cli("launch", "--backend", backend, *args, "--nodes", "4", "--gpus-per-node", "8", "--render",
                         env=env)  # fmt: skip
        assert result.returncode == 0, result.stderr
        config_map, job = yaml.safe_load_all(result.stdout)
        assert config_map["kind"] == "ConfigMap" and job["kind"] == kind
        crd_schema.validate(job)
        assert result.stderr == ""
        # a variable given through the environment keeps its name (pydantic-settings would lower-case it)
        for container in _containers(job):
            assert {"name": "NCCL_SOCKET_IFNAME", "value": "eth0"} in container["env"], container["env"]
    local = run_cli("launch", "--backend", "local", *args, "--gpus-per-node", "2", "--render", env=env)
    assert local.returncode == 0, local.stderr
    (run,) = yaml.safe_load_all(local.stdout)  # the torchrun it would start, and the config its ranks read
    assert run["kind"] == "LocalRun" and run["nproc"] == 2 and "--nproc-per-node=2" in run["command"]
    assert run["config"]["train"]["output"] == RUN["output"] and not Path(RUN["output"]).exists()
    bad = [
        (["launch", "--backend", "slurm", *args, "--render"], "--backend 'slurm': one of local, pytorchjob, trainjob"),
        (["launch", "--backend", "pytorchjob", "--stage", "pt", "--model", RUN["model"], "--data", "./pt",
          "--output", RUN["output"], "--render"], "--data ./pt: the pods cannot see this machine's disk"),
        (["launch", "--backend", "local", *args, "--nodes", "2", "--render"], "trains on this machine alone"),
        (["launch", "--backend", "local", *args, "--name", "x", "--render"], "known by its --output directory"),
        (["launch", "--backend", "trainjob", *args], "no cluster to talk to"),
        (["launch", "--backend", "trainjob", *args, "--render", "--cancel"], "different actions; give one"),
        (["launch", "--backend", "pytorchjob", *args, "--nodes", "0", "--render"], "--nodes 0: give at least 1"),
    ]  # fmt: skip
    for argv, message in bad:
        result = run_cli(*argv, env=env)
        assert_clean_error(result, message)
        assert result.returncode == 2 and not result.stdout and len(result.stderr.strip().splitlines()) == 1
