"""Submit, wait, logs and cancel against a Kubernetes API emulator on loopback, with the real SDK clients.

A fake controller moves each job's status over time as the operator would: a PyTorchJob that
succeeds, one that fails with an OOMKilled pod, one stuck Restarting, a create answered 409
(attached), transient 500s (retried), a cancel; a TrainJob that completes and one whose runtime
is missing. The command line is driven through a kubeconfig that points at the emulator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepmoney.config import load_config
from deepmoney.errors import UserError
from deepmoney.launch.jobs import JobFailed, JobStuck
from deepmoney.launch.launcher import Launcher, launcher_for
from deepmoney.launch.render import render_objects
from tests.conftest import assert_clean_error, run_cli
from tests.kube_emulator import (  # noqa: F401  (kube_fixture: the `kube` fixture)
    FakeController,
    KubeEmulator,
    condition,
    kube_fixture,
    pytorchjob_pod,
    rfc3339,
    torch_runtime,
    trainjob_pod,
)

NS = "ml"
RUN = {"model": "s3://models/base", "data": "/workspace/corpus/pt", "output": "/workspace/runs/pt-a"}
NAME = "pt-pt-a"  # default_name("pt", RUN["output"])
FAST = {"poll_seconds": 0.05, "restarting_limit_seconds": 0.5, "api_attempts": 4}


def _config(**launch: Any):
    return load_config(overrides={"train": dict(RUN), "launch": {"volume_claim": "shared", "namespace": NS, **FAST,
                                                                 **launch}})  # fmt: skip


def _submit(kube: KubeEmulator, backend: str = "pytorchjob", *, wait: bool = True, nodes: int = 2, **launch: Any):
    return _launcher(kube, backend, nodes=nodes, **launch).submit(wait=wait, timeout=30)


def _launcher(kube: KubeEmulator, backend: str = "pytorchjob", *, nodes: int = 2, config: Any = None,
              **launch: Any) -> Launcher:  # fmt: skip
    """The launcher interface the CLI uses, connected to the emulator."""
    return launcher_for(config or _config(**launch), backend, nodes=nodes, gpus_per_node=8,
                        client_configuration=kube.configuration())  # fmt: skip


def _status(*types: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"conditions": [condition(t, reason=reason if t == types[-1] else "", message=message if t == types[-1]
                                     else "") for t in types]}  # fmt: skip


def _in_state(pod: dict[str, Any], field: str, **state: dict[str, Any]) -> dict[str, Any]:
    """`pod` with its `pytorch` container's `state` or `lastState` (e.g. terminated=..., waiting=...) set."""
    status = {"name": "pytorch", "ready": False, "restartCount": 0, "image": "x", "imageID": "", field: state}
    pod["status"]["containerStatuses"] = [status]
    return pod


def _running_pods(kube: KubeEmulator) -> None:
    for replica, index in (("master", 0), ("worker", 0)):
        kube.put(pytorchjob_pod(NAME, replica, index, namespace=NS))
    kube.set_pod_log(NS, f"{NAME}-master-0", "pytorch", "step 1/2 loss 2.31\nstep 2/2 loss 2.05\ntrained pt: 2 steps\n")
    kube.set_status("pytorchjobs", NS, NAME, _status("Created", "Running"))


def test_a_pytorchjob_is_submitted_as_rendered_and_waited_on_until_it_succeeds(kube: KubeEmulator) -> None:
    def succeeded(k: KubeEmulator) -> None:
        k.set_status("pytorchjobs", NS, NAME, _status("Created", "Running", "Succeeded"))

    timeline = [(0.1, _running_pods), (0.3, succeeded)]
    with FakeController(kube, "pytorchjobs", NS, NAME, timeline):
        result = _submit(kube)
    assert result == {"kind": "PyTorchJob", "namespace": NS, "name": NAME, "attached": False, "phase": "Succeeded"}
    config_map, job = render_objects(_config(), "pytorchjob", nodes=2, gpus_per_node=8)
    stored = kube.get("pytorchjobs", NS, NAME)
    assert stored["spec"]["pytorchReplicaSpecs"] == job["spec"]["pytorchReplicaSpecs"]  # exactly what --render shows
    assert kube.get("configmaps", NS, f"{NAME}-config")["data"] == config_map["data"]
    logs = _launcher(kube).logs()
    assert "trained pt: 2 steps" in logs[f"{NAME}-master-0"]
    followed = list(_launcher(kube).follow())
    assert followed == ["step 1/2 loss 2.31", "step 2/2 loss 2.05", "trained pt: 2 steps"]


def test_an_oomkilled_pod_is_named_in_the_failure(kube: KubeEmulator) -> None:
    def oom(k: KubeEmulator) -> None:
        k.put(_in_state(pytorchjob_pod(NAME, "worker", 0, namespace=NS, phase="Failed"), "state",
                        terminated={"exitCode": 137, "reason": "OOMKilled"}))  # fmt: skip
        k.set_status("pytorchjobs", NS, NAME, _status("Created", "Running", "Failed", reason="PyTorchJobFailed",
                                                      message=f"PyTorchJob {NAME} is failed because 1 Worker "
                                                      "replica(s) failed."))  # fmt: skip

    with (
        FakeController(kube, "pytorchjobs", NS, NAME, [(0.1, _running_pods), (0.2, oom)]),
        pytest.raises(JobFailed) as failed,
    ):
        _submit(kube)
    message = str(failed.value)
    assert f"PyTorchJob {NS}/{NAME} failed" in message and "PyTorchJobFailed" in message
    assert f"pod {NAME}-worker-0 was OOMKilled" in message and "exit 137" in message
    assert "\n" not in message


def test_a_job_stuck_restarting_is_reported_not_waited_on(kube: KubeEmulator) -> None:
    def restarting(k: KubeEmulator) -> None:
        k.set_status("pytorchjobs", NS, NAME, _status("Created", "Running", "Restarting"))

    with (
        FakeController(kube, "pytorchjobs", NS, NAME, [(0.1, _running_pods), (0.1, restarting)]),
        pytest.raises(JobStuck, match=f"PyTorchJob {NS}/{NAME} has been Restarting for"),
    ):
        _submit(kube)


def test_submitting_again_attaches_instead_of_creating_a_duplicate(kube: KubeEmulator) -> None:
    first = _submit(kube, wait=False)
    posts = kube.requests("POST", "pytorchjobs")
    again = _submit(kube, wait=False)
    assert first["attached"] is False and again["attached"] is True
    assert kube.requests("POST", "pytorchjobs") == posts + 1  # the second create was answered 409, not stored twice
    assert len(kube.list_objects("pytorchjobs", NS)) == 1
    with pytest.raises(UserError, match="already exists with another config"):  # same name, other settings
        other = load_config(
            overrides={"train": {**RUN, "max_steps": 7}, "launch": {"volume_claim": "shared", "namespace": NS, **FAST}}
        )
        _launcher(kube, config=other).submit(wait=False, timeout=None)


def test_transient_api_failures_are_retried(kube: KubeEmulator) -> None:
    kube.fail_next("POST", "pytorchjobs", 500, count=2)
    kube.fail_next("POST", "configmaps", 503, count=1)
    result = _submit(kube, wait=False)
    assert result["attached"] is False and kube.get("pytorchjobs", NS, NAME) is not None
    assert kube.requests("POST", "pytorchjobs") == 3 and kube.requests("POST", "configmaps") == 2


def test_a_permanent_api_error_is_not_retried(kube: KubeEmulator) -> None:
    kube.fail_next("POST", "pytorchjobs", 403, reason="Forbidden", message="pytorchjobs is forbidden")
    with pytest.raises(RuntimeError, match=r"Forbidden|403"):
        _submit(kube, wait=False)
    assert kube.requests("POST", "pytorchjobs") == 1


def test_cancel_deletes_the_job_and_its_config(kube: KubeEmulator) -> None:
    _submit(kube, wait=False)
    result = _launcher(kube).cancel()
    assert result["cancelled"] and kube.get("pytorchjobs", NS, NAME) is None
    assert kube.get("configmaps", NS, f"{NAME}-config") is None
    with pytest.raises(UserError, match=f"no PyTorchJob {NS}/{NAME} to cancel"):
        _launcher(kube).cancel()


def test_a_trainjob_runs_on_its_runtime_until_complete(kube: KubeEmulator) -> None:
    kube.put(torch_runtime())

    def running(k: KubeEmulator) -> None:
        for index in range(2):
            k.put(trainjob_pod(NAME, "node", index, namespace=NS))
        k.set_pod_log(NS, f"{NAME}-node-0-0", "node", "trained pt: 2 steps\n")

    def complete(k: KubeEmulator) -> None:
        k.set_status("trainjobs", NS, NAME, _status("Complete", reason="JobSetCompleted"))

    with FakeController(kube, "trainjobs", NS, NAME, [(0.1, running), (0.3, complete)]):
        result = _submit(kube, "trainjob")
    assert result["kind"] == "TrainJob" and result["phase"] == "Succeeded"
    _, job = render_objects(_config(), "trainjob", nodes=2, gpus_per_node=8)
    assert kube.get("trainjobs", NS, NAME)["spec"] == job["spec"]
    logs = _launcher(kube, "trainjob").logs()
    assert "trained pt: 2 steps" in logs[f"{NAME}-node-0-0"]


def test_a_trainjob_without_its_runtime_is_refused_before_anything_is_created(kube: KubeEmulator) -> None:
    with pytest.raises(UserError, match="the training runtime 'torch-distributed' is not on the cluster"):
        _submit(kube, "trainjob")
    assert kube.list_objects("trainjobs", NS) == [] and kube.get("configmaps", NS, f"{NAME}-config") is None


def _kubeconfig(kube: KubeEmulator, path: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": kube.url}}],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester", "namespace": NS}}],
    }), encoding="utf-8")  # fmt: skip
    return path


def test_launch_from_the_command_line_through_a_kubeconfig(kube: KubeEmulator, tmp_path: Path) -> None:
    env = {"KUBECONFIG": str(_kubeconfig(kube, tmp_path / "kubeconfig")), "DEEPMONEY_LAUNCH__VOLUME_CLAIM": "shared",
           "DEEPMONEY_LAUNCH__NAMESPACE": NS, "DEEPMONEY_LAUNCH__POLL_SECONDS": "0.05"}  # fmt: skip
    args = ["launch", "--backend", "pytorchjob", "--stage", "pt", "--model", RUN["model"], "--data", RUN["data"],
            "--output", RUN["output"], "--nodes", "2"]  # fmt: skip
    submitted = run_cli(*args, "--no-wait", env=env)
    assert submitted.returncode == 0, submitted.stderr
    assert json.loads(submitted.stdout) == {"kind": "PyTorchJob", "namespace": NS, "name": NAME, "attached": False,
                                            "phase": "Pending"}  # fmt: skip

    def oom(k: KubeEmulator) -> None:
        k.put(_in_state(pytorchjob_pod(NAME, "master", 0, namespace=NS, phase="Failed"), "lastState",
                        terminated={"exitCode": 137, "reason": "OOMKilled"}))  # fmt: skip
        k.set_status("pytorchjobs", NS, NAME, _status("Created", "Failed", reason="PyTorchJobFailed"))

    with FakeController(kube, "pytorchjobs", NS, NAME, [(0.5, oom)]):
        attached = run_cli(*args, env=env)  # the same run again: attaches, waits, reports the failure
    assert_clean_error(attached, "failed", f"pod {NAME}-master-0 was OOMKilled")
    assert attached.returncode == 2 and not attached.stdout
    assert len([line for line in attached.stderr.splitlines() if line.startswith("error:")]) == 1
    cancelled = run_cli(*args, "--cancel", env=env)
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["cancelled"] is True
    assert kube.get("pytorchjobs", NS, NAME) is None


def test_pods_left_terminating_on_a_lost_node_are_reported(kube: KubeEmulator) -> None:
    import datetime as dt

    def node_lost(k: KubeEmulator) -> None:
        stranded = pytorchjob_pod(NAME, "worker", 0, namespace=NS)
        stranded["metadata"]["deletionTimestamp"] = rfc3339(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20))
        stranded["spec"]["nodeName"] = "gpu-node-17"
        k.put(stranded)

    with (
        FakeController(kube, "pytorchjobs", NS, NAME, [(0.1, _running_pods), (0.1, node_lost)]),
        pytest.raises(JobStuck, match=f"pod {NAME}-worker-0 has been Terminating for 20 min — gpu-node-17"),
    ):
        _submit(kube)


def test_an_image_that_cannot_be_pulled_is_named_when_the_job_fails(kube: KubeEmulator) -> None:
    def pull_fails(k: KubeEmulator) -> None:
        k.put(_in_state(pytorchjob_pod(NAME, "master", 0, namespace=NS, phase="Pending"), "state",
                        waiting={"reason": "ImagePullBackOff", "message": "Back-off pulling image"}))  # fmt: skip
        k.set_status("pytorchjobs", NS, NAME, _status("Created", "Failed", reason="PyTorchJobFailed"))

    with FakeController(kube, "pytorchjobs", NS, NAME, [(0.1, pull_fails)]), pytest.raises(JobFailed) as failed:
        _submit(kube)
    assert f"pod {NAME}-master-0 cannot pull its image (ImagePullBackOff: Back-off pulling image)" in str(failed.value)
