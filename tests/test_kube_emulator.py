"""The Kubernetes emulator harness, exercised through the real `kubernetes`, Training Operator and Trainer clients."""

from __future__ import annotations

import datetime
import threading
import time
import uuid

import pytest
from kubeflow.trainer import KubernetesBackendConfig, TrainerClient
from kubeflow.training import TrainingClient, models
from kubernetes import client, watch

from tests.kube_emulator import (
    FakeController,
    KubeEmulator,
    condition,
    kube_fixture,  # noqa: F401  (registers the `kube` fixture)
    matches_field_selector,
    matches_label_selector,
    pod,
    pytorchjob_pod,
    torch_runtime,
    trainjob_pod,
)

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"


def _pytorchjob_body(name: str) -> dict:
    container = {"name": "pytorch", "image": "trainer:dev"}
    replica = {"replicas": 1, "restartPolicy": "OnFailure", "template": {"spec": {"containers": [container]}}}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "labels": {"app": "deepmoney"}},
        "spec": {"pytorchReplicaSpecs": {"Master": replica, "Worker": replica}},
    }


def _pytorchjob_model(name: str) -> models.KubeflowOrgV1PyTorchJob:
    template = models.V1PodTemplateSpec(
        spec=models.V1PodSpec(containers=[models.V1Container(name="pytorch", image="trainer:dev")])
    )
    replica = models.KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy="OnFailure", template=template)
    return models.KubeflowOrgV1PyTorchJob(
        api_version="kubeflow.org/v1",
        kind="PyTorchJob",
        metadata=models.V1ObjectMeta(name=name),
        spec=models.KubeflowOrgV1PyTorchJobSpec(
            run_policy=models.KubeflowOrgV1RunPolicy(backoff_limit=0),
            pytorch_replica_specs={"Master": replica, "Worker": replica},
        ),
    )


def _parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def _trainjob(name: str) -> dict:
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": name},
        "spec": {"runtimeRef": {"name": "torch-distributed"}, "trainer": {"numNodes": 2}},
    }


def test_custom_objects_crud_adds_identity_and_versions(kube: KubeEmulator) -> None:
    custom = client.CustomObjectsApi(kube.api_client())

    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _pytorchjob_body("job-a"))
    meta = created["metadata"]
    assert meta["namespace"] == "default"
    assert uuid.UUID(meta["uid"])
    assert abs(_parse_time(meta["creationTimestamp"]) - datetime.datetime.now(datetime.UTC)).total_seconds() < 60
    assert meta["resourceVersion"].isdigit() and meta["generation"] == 1
    # The Training Operator's defaulting webhook would set this; the TrainingClient cannot read a job without it.
    assert created["spec"]["runPolicy"] == {"cleanPodPolicy": "None"}
    assert custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "job-a") == created
    assert kube.get(PLURAL, "default", "job-a") == created

    listed = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    assert listed["kind"] == "PyTorchJobList" and [i["metadata"]["name"] for i in listed["items"]] == ["job-a"]
    assert custom.list_namespaced_custom_object(GROUP, VERSION, "other", PLURAL)["items"] == []

    patched = custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "job-a", {"spec": {"runPolicy": {"backoffLimit": 2}}}
    )
    assert patched["spec"]["runPolicy"] == {"cleanPodPolicy": "None", "backoffLimit": 2}
    assert int(patched["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert patched["metadata"]["generation"] == 2
    assert patched["metadata"]["uid"] == meta["uid"]
    assert patched["metadata"]["creationTimestamp"] == meta["creationTimestamp"]

    with_status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, "job-a", {"status": {"conditions": [condition("Created")]}}
    )
    assert with_status["metadata"]["generation"] == 2  # a status change is not a spec change
    assert with_status["status"]["conditions"][0]["type"] == "Created"

    stale = dict(created, spec={**created["spec"], "suspend": True})
    with pytest.raises(client.ApiException) as conflict:
        custom.replace_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "job-a", stale)
    assert conflict.value.status == 409 and '"reason": "Conflict"' in conflict.value.body
    replaced = custom.replace_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "job-a", dict(with_status, spec={**with_status["spec"], "suspend": True})
    )
    assert replaced["spec"]["suspend"] is True and replaced["metadata"]["uid"] == meta["uid"]
    assert int(replaced["metadata"]["resourceVersion"]) > int(with_status["metadata"]["resourceVersion"])

    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "job-a")
    assert kube.get(PLURAL, "default", "job-a") is None
    with pytest.raises(client.ApiException) as missing:
        custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "job-a")
    assert missing.value.status == 404
    assert '"reason": "NotFound"' in missing.value.body and 'pytorchjobs.kubeflow.org \\"job-a\\" not found' in (
        missing.value.body
    )


def test_patches_follow_the_api_server(kube: KubeEmulator) -> None:
    api = kube.api_client()
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    kube.put(pod("p", labels={"a": "1", "b": "2"}))
    strategic = core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"a": None, "c": "3"}}})
    assert strategic.metadata.labels == {"b": "2", "c": "3"}
    json_patch = core.patch_namespaced_pod(
        "p", "default", [{"op": "replace", "path": "/status/phase", "value": "Failed"}]
    )
    assert json_patch.status.phase == "Failed"
    assert int(json_patch.metadata.resource_version) > int(strategic.metadata.resource_version)

    body = _pytorchjob_body("merge")
    body["spec"]["note"] = "scalar"
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    merged = custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "merge", {"spec": {"note": {"now": "a dict"}}}
    )
    assert merged["spec"]["note"] == {"now": "a dict"}  # RFC 7386; kmock alone answers 500

    kube.put({**kube.get(PLURAL, "default", "merge"), "metadata": {"name": "merge", "finalizers": ["x/y"]}})
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "merge")
    terminating = kube.get(PLURAL, "default", "merge")
    assert terminating is not None and terminating["metadata"]["deletionTimestamp"]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "merge", {"metadata": {"finalizers": None}}
    )
    assert kube.get(PLURAL, "default", "merge") is None


def test_cluster_scoped_objects_and_discovery(kube: KubeEmulator) -> None:
    api = kube.api_client()
    kube.put(torch_runtime())
    runtime = client.CustomObjectsApi(api).get_cluster_custom_object(
        "trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", "torch-distributed"
    )
    assert "namespace" not in runtime["metadata"] and runtime["metadata"]["uid"]

    groups = {group.name for group in client.ApisApi(api).get_api_versions().groups}
    assert {"kubeflow.org", "trainer.kubeflow.org"} <= groups
    resources = client.CustomObjectsApi(api).get_api_resources("trainer.kubeflow.org", "v1alpha1").resources
    scopes = {r.name: (r.kind, r.namespaced) for r in resources}
    assert scopes["trainjobs"] == ("TrainJob", True)
    assert scopes["clustertrainingruntimes"] == ("ClusterTrainingRuntime", False)
    core = {r.name for r in client.CoreV1Api(api).get_api_resources().resources}
    assert {"pods", "pods/log", "events", "configmaps", "namespaces"} <= core


def _job_running(kube: KubeEmulator) -> None:
    kube.put(pytorchjob_pod("mnist", "Master", 0))
    kube.put(pytorchjob_pod("mnist", "Worker", 0))
    kube.set_pod_log("default", "mnist-master-0", "pytorch", "rank 0 step 1 loss 2.5\nrank 0 step 2 loss 1.9\n")
    kube.set_pod_log("default", "mnist-worker-0", "pytorch", "rank 1 ready\n")
    kube.add_event("default", "PyTorchJob", "mnist", "SuccessfulCreatePod", "Created pod: mnist-master-0", "Normal")
    kube.set_status(
        PLURAL, "default", "mnist", {"conditions": [condition("Created"), condition("Running", reason="Running")]}
    )


def _job_succeeded(kube: KubeEmulator) -> None:
    for name in ("mnist-master-0", "mnist-worker-0"):
        kube.set_status("pods", "default", name, {"phase": "Succeeded"})
    kube.set_status(
        PLURAL,
        "default",
        "mnist",
        {
            "conditions": [
                condition("Created"),
                condition("Running", status="False"),
                condition("Succeeded", reason="PyTorchJobSucceeded", message="done"),
            ]
        },
    )


def test_training_client_runs_a_pytorchjob(kube: KubeEmulator) -> None:
    training = TrainingClient(client_configuration=kube.configuration(), namespace="default")
    steps = [(0.1, _job_running), (0.3, _job_succeeded)]
    with FakeController(kube, PLURAL, "default", "mnist", steps) as controller:
        training.create_job(job=_pytorchjob_model("mnist"))
        job = training.get_job("mnist")
        assert isinstance(job, models.KubeflowOrgV1PyTorchJob)
        assert job.metadata.uid and job.metadata.creation_timestamp is not None

        running = training.wait_for_job_conditions(
            "mnist", expected_conditions={"Running"}, polling_interval=0.05, wait_timeout=5
        )
        assert running.status.conditions[-1].type == "Running"
        assert sorted(training.get_job_pod_names("mnist")) == ["mnist-master-0", "mnist-worker-0"]
        assert training.get_job_pod_names("mnist", is_master=True) == ["mnist-master-0"]
        assert training.get_job_pod_names("mnist", replica_type="worker", replica_index=0) == ["mnist-worker-0"]

        logs, events = training.get_job_logs("mnist", verbose=True)
        assert logs == {"mnist-master-0": "rank 0 step 1 loss 2.5\nrank 0 step 2 loss 1.9\n"}
        assert events["pytorchjob/mnist"][0].endswith("Created pod: mnist-master-0")
        worker_logs, _ = training.get_job_logs("mnist", is_master=False, replica_type="worker")
        assert worker_logs == {"mnist-worker-0": "rank 1 ready\n"}

        done = training.wait_for_job_conditions("mnist", polling_interval=0.05, wait_timeout=5)
        assert done.status.conditions[-1].message == "done"
    assert controller.done
    assert training.is_job_succeeded("mnist")

    training.delete_job("mnist")
    assert kube.get(PLURAL, "default", "mnist") is None
    assert kube.requests("DELETE", PLURAL) == 1


def test_training_client_create_job_needs_a_model_not_a_dict(kube: KubeEmulator) -> None:
    training = TrainingClient(client_configuration=kube.configuration(), namespace="default")
    with pytest.raises(AttributeError, match="kind"):
        training.create_job(job=_pytorchjob_body("as-dict"))  # type: ignore[arg-type]
    assert kube.requests("POST", PLURAL) == 0


def test_trainer_client_reads_a_trainjob(kube: KubeEmulator) -> None:
    kube.put(torch_runtime(num_nodes=2, limits={"nvidia.com/gpu": "1"}))
    trainer = TrainerClient(
        backend_config=KubernetesBackendConfig(namespace="default", client_configuration=kube.configuration())
    )
    assert kube.requests("GET", "configmaps") == 1  # the control-plane version check, answered by the seed

    runtime = trainer.get_runtime("torch-distributed")
    assert (runtime.name, runtime.kind.value) == ("torch-distributed", "ClusterTrainingRuntime")
    assert (runtime.trainer.framework, runtime.trainer.num_nodes, runtime.trainer.device) == ("torch", 2, "gpu")
    assert kube.requests("GET", "trainingruntimes") == 1  # namespaced first (404), then cluster-scoped

    client.CustomObjectsApi(kube.api_client()).create_namespaced_custom_object(
        "trainer.kubeflow.org", "v1alpha1", "default", "trainjobs", _trainjob("tj")
    )
    fresh = trainer.get_job("tj")
    assert (fresh.status, fresh.steps, fresh.num_nodes) == ("Created", [], 2)

    kube.put(trainjob_pod("tj", "node", 0, limits={"nvidia.com/gpu": "1"}))
    kube.put(trainjob_pod("tj", "node", 1, phase="Pending"))
    kube.put(pod("tj-unrelated", labels={"jobset.sigs.k8s.io/jobset-name": "tj"}))  # no replicatedjob-name label
    kube.set_pod_log("default", "tj-node-0-0", "node", "epoch 1\nepoch 2\n")
    pending = trainer.get_job("tj")
    assert pending.status == "Created"  # one of two nodes still Pending
    assert [(s.name, s.status, s.pod_name) for s in sorted(pending.steps, key=lambda s: s.name)] == [
        ("node-0", "Running", "tj-node-0-0"),
        ("node-1", "Pending", "tj-node-0-1"),
    ]
    assert list(trainer.get_job_logs("tj")) == ["epoch 1", "epoch 2"]
    assert list(trainer.get_job_logs("tj", follow=True)) == ["epoch 1", "epoch 2"]
    assert list(trainer.get_job_logs("tj", step="node-1")) == []  # a Pending step has no logs to read

    kube.set_status("pods", "default", "tj-node-0-1", {"phase": "Running"})
    assert trainer.get_job("tj").status == "Running"

    kube.add_event("default", "TrainJob", "tj", "Created", "TrainJob created", "Normal")
    assert [e.message for e in trainer.get_job_events("tj")] == ["TrainJob created"]

    complete = [(0.1, lambda k: k.set_status("trainjobs", "default", "tj", {"conditions": [condition("Complete")]}))]
    with FakeController(kube, "trainjobs", "default", "tj", complete):
        assert trainer.wait_for_job_status("tj", polling_interval=0.05, timeout=5).status == "Complete"


def test_scripted_conflict_on_create_stores_nothing(kube: KubeEmulator) -> None:
    custom = client.CustomObjectsApi(kube.api_client())
    kube.fail_next("POST", PLURAL, 409)
    with pytest.raises(client.ApiException) as scripted:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _pytorchjob_body("dup"))
    assert scripted.value.status == 409
    assert '"reason": "AlreadyExists"' in scripted.value.body and '\\"dup\\" already exists' in scripted.value.body
    assert kube.get(PLURAL, "default", "dup") is None

    original = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _pytorchjob_body("dup"))
    second = _pytorchjob_body("dup")
    second["metadata"]["labels"] = {"app": "someone-else"}
    with pytest.raises(client.ApiException) as real:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, second)
    assert real.value.status == 409 and '"reason": "AlreadyExists"' in real.value.body
    assert kube.get(PLURAL, "default", "dup") == original
    assert kube.requests("POST", PLURAL) == 3


def test_scripted_server_errors_then_success(kube: KubeEmulator) -> None:
    custom = client.CustomObjectsApi(kube.api_client())
    kube.fail_next("POST", PLURAL, 500, count=2, message="etcd is down")
    statuses = []
    for _ in range(3):
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _pytorchjob_body("retry"))
            break
        except client.ApiException as exc:
            statuses.append(exc.status)
            assert '"reason": "InternalError"' in exc.body and "etcd is down" in exc.body
    assert statuses == [500, 500]
    assert kube.requests("POST", PLURAL) == 3
    assert kube.get(PLURAL, "default", "retry") is not None

    training = TrainingClient(client_configuration=kube.configuration(), namespace="default")
    kube.fail_next("GET", PLURAL, 503)
    with pytest.raises(RuntimeError, match="Failed to get PyTorchJob"):
        training.get_job("retry")
    assert training.get_job("retry").metadata.name == "retry"
    assert kube.requests("GET", PLURAL) == 2


def test_label_and_field_selectors_filter_lists(kube: KubeEmulator) -> None:
    core = client.CoreV1Api(kube.api_client())
    kube.put(pod("a-master", labels={"job": "a", "role": "master"}))
    kube.put(pod("a-worker", labels={"job": "a", "role": "worker"}, phase="Pending"))
    kube.put(pod("b-master", labels={"job": "b", "role": "master"}))
    kube.put(pod("bare", namespace="other"))

    def names(**kwargs: str) -> list[str]:
        return [p.metadata.name for p in core.list_namespaced_pod("default", **kwargs).items]

    assert names(label_selector="job=a") == ["a-master", "a-worker"]
    assert names(label_selector="job=a,role=master") == ["a-master"]
    assert names(label_selector="job==a,role!=master") == ["a-worker"]
    assert names(label_selector="job in (a, b),role notin (worker)") == ["a-master", "b-master"]
    assert names(label_selector="role") == ["a-master", "a-worker", "b-master"]
    assert names(label_selector="!job") == []
    assert names(field_selector="status.phase=Pending") == ["a-worker"]
    assert names(field_selector="metadata.name!=a-master", label_selector="job=a") == ["a-worker"]
    assert [p.metadata.name for p in core.list_pod_for_all_namespaces(label_selector="!job").items] == ["bare"]
    with pytest.raises(client.ApiException) as bad:
        core.list_namespaced_pod("default", label_selector="job in (a")
    assert bad.value.status == 400

    kube.add_event("default", "Pod", "a-master", "Started", "Started container pytorch", "Normal")
    kube.add_event("default", "Pod", "b-master", "BackOff", "Back-off restarting failed container")
    events = core.list_namespaced_event("default", field_selector="involvedObject.name=b-master").items
    assert [(e.reason, e.type) for e in events] == [("BackOff", "Warning")]
    assert events[0].involved_object.uid == kube.get("pods", "default", "b-master")["metadata"]["uid"]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("a=1", True),
        ("a=2", False),
        ("a!=2,b", True),
        ("a in (1,2), c notin (x)", True),
        ("a notin (1)", False),
        ("!c", True),
        ("!a", False),
        ("x.io/k=v", False),
    ],
)
def test_label_selector_grammar(selector: str, expected: bool) -> None:
    assert matches_label_selector(selector, {"a": "1", "b": "2"}) is expected


def test_field_selector_grammar() -> None:
    event = {"involvedObject": {"kind": "Pod", "name": "p"}, "type": "Warning"}
    assert matches_field_selector("involvedObject.kind=Pod,type==Warning", event)
    assert matches_field_selector("involvedObject.uid=", event)
    assert not matches_field_selector("involvedObject.name!=p", event)
    with pytest.raises(ValueError):
        matches_label_selector("a=b=c", {})


def test_watch_true_streams_filtered_events(kube: KubeEmulator) -> None:
    core = client.CoreV1Api(kube.api_client())
    kube.put(pod("seen-before", labels={"app": "x"}))
    kube.put(pod("other-app", labels={"app": "y"}))

    def controller() -> None:
        time.sleep(0.2)
        kube.put(pod("new", labels={"app": "x"}, phase="Pending"))
        kube.put(pod("new-other", labels={"app": "y"}))
        kube.set_status("pods", "default", "new", {"phase": "Running"})
        kube.delete("pods", "default", "new")

    thread = threading.Thread(target=controller)
    started = time.monotonic()
    thread.start()
    stream = watch.Watch().stream(core.list_namespaced_pod, "default", label_selector="app=x", timeout_seconds=1)
    events = [(e["type"], e["object"].metadata.name, e["object"].status.phase) for e in stream]
    thread.join()

    assert events == [
        ("ADDED", "seen-before", "Running"),
        ("ADDED", "new", "Pending"),
        ("MODIFIED", "new", "Running"),
        ("DELETED", "new", "Running"),
    ]
    assert time.monotonic() - started < 5  # the server ended the watch at timeoutSeconds
    sent = [path for method, path in kube.request_log() if method == "GET" and "/pods?" in path]
    assert sent and "watch=True" in sent[-1]  # the official client's spelling, which kmock alone would list


def test_pod_log_container_rules_and_scripting(kube: KubeEmulator) -> None:
    core = client.CoreV1Api(kube.api_client())
    kube.put(pod("two", containers=("pytorch", "sidecar")))
    kube.set_pod_log("default", "two", "pytorch", "1\n2\n3\n")
    assert core.read_namespaced_pod_log("two", "default", container="pytorch", tail_lines=2) == "2\n3\n"
    assert core.read_namespaced_pod_log("two", "default", container="sidecar") == ""
    for kwargs in ({}, {"container": "nope"}):
        with pytest.raises(client.ApiException) as bad:
            core.read_namespaced_pod_log("two", "default", **kwargs)
        assert bad.value.status == 400
    with pytest.raises(client.ApiException) as missing:
        core.read_namespaced_pod_log("ghost", "default", container="pytorch")
    assert missing.value.status == 404

    kube.fail_next("GET", "pods/log", 500)
    with pytest.raises(client.ApiException):
        core.read_namespaced_pod_log("two", "default", container="pytorch")
    assert core.read_namespaced_pod_log("two", "default", container="pytorch") == "1\n2\n3\n"
    assert kube.requests("GET", "pods/log") == 7


def test_fake_controller_reports_failures(kube: KubeEmulator) -> None:
    def broken(_: KubeEmulator) -> None:
        raise ValueError("step failed")

    kube.put(pod("exists"))
    controller = FakeController(kube, "pods", "default", "exists", [(0, broken)]).start()
    with pytest.raises(ValueError, match="step failed"):
        controller.join()

    never = FakeController(kube, "pods", "default", "never", [(0, broken)], appear_timeout=0.2).start()
    with pytest.raises(TimeoutError):
        never.join()
    assert never.applied == 0
