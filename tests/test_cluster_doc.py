"""docs/cluster.md: every command in it is run or rendered here, and they agree with one another.

Each command of its bash blocks goes to the handler of its program: helm commands run as `helm template`
with the same arguments, Secrets and namespaces are created with the real kubectl as client-side dry runs,
the image build runs with an `echo` engine, the pipeline is compiled and `kfp run create` is parsed by the
KFP CLI's own parser against it, and each `kubectl get/logs/port-forward` and `curl` names objects, labels
and ports that the chart and the launcher render. A command no handler knows fails the test, so the guide
cannot gain a command nothing checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deepmoney.launch.cluster import MLFLOW_KEYS, S3_KEYS
from deepmoney.launch.render import render_objects as render_job
from tests.conftest import ROOT, run_cli
from tests.test_chart import _helm
from tests.test_chart_serving import pod_settings

GUIDE = ROOT / "docs" / "cluster.md"
KUBECTL_OFFLINE = {"KUBECONFIG": os.devnull}


def _commands() -> list[list[str]]:
    """The guide's commands: each line of its ```bash blocks (no comments), split as the shell would."""
    blocks = re.findall(r"```bash\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S)
    lines = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


@dataclass
class Cluster:
    """What the guide's commands have made so far: Secrets, the rendered release, the compiled pipeline, forwards."""

    tmp: Path
    helm: Path
    kubectl: Path
    namespace: str | None = None
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    image: str | None = None
    objects: list[dict[str, Any]] = field(default_factory=list)
    pipeline: Path | None = None
    forwards: dict[int, tuple[str, int]] = field(default_factory=dict)

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name), None)


def _namespace(args: list[str]) -> tuple[str | None, list[str]]:
    for flag in ("-n", "--namespace"):
        if flag in args:
            i = args.index(flag)
            return args[i + 1], args[:i] + args[i + 2 :]
    return None, args


def _kubectl_command(cluster: Cluster, args: list[str]) -> None:
    namespace, rest = _namespace(args)
    verb = rest[0]
    if verb == "create":
        result = subprocess.run([str(cluster.kubectl), *args, "--dry-run=client", "-o", "yaml"], capture_output=True,
                                text=True, env={**os.environ, **KUBECTL_OFFLINE}, timeout=60)  # fmt: skip
        assert result.returncode == 0, (args, result.stderr)
        created = yaml.safe_load(result.stdout)
        if created["kind"] == "Namespace":
            cluster.namespace = created["metadata"]["name"]
        else:
            assert created["metadata"]["namespace"] == cluster.namespace, "a Secret outside the guide's namespace"
            import base64

            cluster.secrets[created["metadata"]["name"]] = {
                k: base64.b64decode(v).decode() for k, v in created["data"].items()
            }
        return
    if verb == "apply":  # kustomize: the namespace is the kustomization's
        assert rest[1] == "-k", args
        result = subprocess.run([str(cluster.kubectl), "kustomize", str(ROOT / rest[2])], capture_output=True,
                                text=True, timeout=60)  # fmt: skip
        assert result.returncode == 0, (args, result.stderr)
        applied = [o for o in yaml.safe_load_all(result.stdout) if o]
        assert applied and {o["metadata"].get("namespace") for o in applied} == {cluster.namespace}, args
        return
    assert namespace == cluster.namespace, (args, "every kubectl command names the guide's namespace")
    if verb == "get":
        kinds = rest[1].split(",")
        selector = rest[rest.index("-l") + 1] if "-l" in rest else None
        for kind in kinds:
            assert kind in KNOWN_RESOURCES, (args, kind)
        if selector:  # the launcher puts exactly these labels on its jobs and pods
            key, value = selector.split("=")
            assert _job_labels(cluster).get(key) == value, (args, _job_labels(cluster))
    elif verb == "logs":
        key, value = rest[rest.index("-l") + 1].split("=")
        stages = {_job_labels(cluster, stage)[key] for stage in ("pt", "sft")}
        assert value in stages, (args, stages)
    elif verb == "port-forward":
        kind, name = rest[1].split("/")
        local, remote = (int(p) for p in rest[2].split(":"))
        assert kind == "svc" and remote in _service_ports(cluster, name), (args, _service_ports(cluster, name))
        cluster.forwards[local] = (name, remote)
    else:
        raise AssertionError(f"no handler for kubectl {verb}: {args}")


KNOWN_RESOURCES = {"pytorchjobs", "trainjobs", "inferenceservices", "inferencegraphs", "pods"}


def _job_labels(cluster: Cluster, stage: str = "pt") -> dict[str, str]:
    config_map = cluster.find("ConfigMap", "deepmoney-config")
    assert config_map, "the chart is installed before training is watched"
    job = render_job(pod_settings(config_map, cluster.tmp, stage), "pytorchjob", nodes=1, gpus_per_node=8)[1]
    return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"]


def _service_ports(cluster: Cluster, name: str) -> set[int]:
    """Ports of a Service the chart renders, or of one KServe makes for a rendered (or deployed) serving object."""
    service = cluster.find("Service", name)
    if service:
        return {p["port"] for p in service["spec"]["ports"]}
    serving = {"deepmoney"} | {f"deepmoney-{s}-predictor" for s in ("intake", "sectors", "method", "data", "analysis")}
    return {80} if name in serving else set()  # Standard mode: <graph> and <isvc>-predictor on port 80


def _helm_command(cluster: Cluster, args: list[str]) -> None:
    if args[0] == "test":
        hooks = [o for o in cluster.objects if o["kind"] == "Pod"
                 and o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]  # fmt: skip
        assert args[1] == "deepmoney" and hooks, args
        return
    assert args[:2] == ["upgrade", "--install"], args
    release, chart, rest = args[2], args[3], args[4:]
    result = _helm(cluster.helm, "template", release, str(ROOT / chart), *rest)
    assert result.returncode == 0, (args, result.stderr)
    cluster.objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    namespaces = {o["metadata"].get("namespace") for o in cluster.objects}
    assert namespaces == {cluster.namespace}, namespaces
    # the Secrets the guide made are the ones the chart reads, with the keys it reads
    mlflow = cluster.find("Deployment", "deepmoney-mlflow")
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for c in mlflow["spec"]["template"]["spec"]["containers"]
            for e in c.get("env", []) if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]}  # fmt: skip
    refs |= {s["secretRef"]["name"] for c in mlflow["spec"]["template"]["spec"]["containers"]
             for s in c.get("envFrom", []) if "secretRef" in s}  # fmt: skip
    assert refs <= set(cluster.secrets), (refs, set(cluster.secrets))
    tracking = cluster.find("ConfigMap", "deepmoney-config")["data"]["MLFLOW_TRACKING_URI"]
    assert cluster.secrets["deepmoney-mlflow"]["MLFLOW_TRACKING_URI"] == tracking
    assert {k for k, optional in S3_KEYS if not optional} <= set(cluster.secrets["deepmoney-s3"])
    assert {k for k, optional in MLFLOW_KEYS if not optional} <= set(cluster.secrets["deepmoney-mlflow"])
    images = {c["image"] for o in cluster.objects if o["kind"] in ("Deployment", "Pod")
              for c in (o["spec"] if o["kind"] == "Pod" else o["spec"]["template"]["spec"])["containers"]}  # fmt: skip
    assert images == {cluster.image}, (images, cluster.image)  # the image the guide built and pushed


def _kfp_command(cluster: Cluster, args: list[str]) -> None:
    from kfp.cli import run as kfp_run
    from kfp.cli.utils import parsing

    assert cluster.pipeline is not None, "the pipeline is compiled before it is submitted"
    create = kfp_run.run.commands[args[1]]
    with contextlib.chdir(cluster.tmp):  # where the guide compiled the pipeline; the parser checks the file exists
        context = create.make_context(args[1], args[2:])  # the CLI's own parser: unknown options fail here
    assert Path(cluster.tmp / context.params["package_file"]) == cluster.pipeline
    assert context.params["experiment_name"] and not context.params["pipeline_id"]
    given = dict(arg.split("=", 1) for arg in context.params["args"])
    spec = next(yaml.safe_load_all(cluster.pipeline.read_text()))
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(given) <= set(inputs), set(given) - set(inputs)
    required = {name for name, p in inputs.items() if "defaultValue" not in p and not p.get("isOptional")}
    assert required <= set(given), required - set(given)
    kinds = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "BOOLEAN": bool, "LIST": list,
             "STRUCT": dict}  # fmt: skip
    for name, text in given.items():
        value = parsing.parse_parameter_value(text)
        assert isinstance(value, kinds[inputs[name]["parameterType"]]), (name, value, inputs[name])
    assert given["volume_claim"] == next(o for o in cluster.objects if o["kind"] == "PersistentVolumeClaim"
                                         and "workspace" in o["metadata"]["name"])["metadata"]["name"]  # fmt: skip


def _deepmoney_command(cluster: Cluster, args: list[str], env: dict[str, str]) -> None:
    if args[:2] == ["pipeline", "compile"]:
        output = args.index("--output") + 1
        cluster.pipeline = cluster.tmp / args[output]
        result = run_cli(*args[:output], str(cluster.pipeline), *args[output + 1 :])
        assert result.returncode == 0, result.stderr
        assert cluster.pipeline.is_file()
        return
    # the rest reach a forwarded port: nothing listens here, so each must fail on the connection, not its usage
    port = int(re.search(r"localhost:(\d+)", " ".join([*args, *env.values()])).group(1))
    assert port in cluster.forwards, (args, cluster.forwards)
    result = run_cli(*args, env=env)
    assert result.returncode != 0 and "Usage:" not in result.stderr and "No such option" not in result.stderr, (
        args, result.stderr)  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    if args[0] == "registry":
        assert cluster.forwards[port][0] == "deepmoney-mlflow"
    else:
        assert cluster.forwards[port][0] == "deepmoney"  # the graph's Service


def _curl_command(cluster: Cluster, args: list[str]) -> None:
    url = args[-1]
    port = int(re.search(r"localhost:(\d+)", url).group(1))
    name, _ = cluster.forwards[port]
    assert url.endswith("/metrics") and name.endswith("-predictor"), (url, name)  # KServe's ModelServer route


def test_every_command_of_the_cluster_guide_runs_or_renders(helm: Path, kubectl: Path, tmp_path: Path) -> None:
    commands = _commands()
    assert len(commands) >= 15
    cluster = Cluster(tmp_path, helm, kubectl)
    programs = []
    for args in commands:
        env = {}
        while args and re.match(r"^[A-Z_]+=", args[0]):
            key, value = args.pop(0).split("=", 1)
            env[key] = value
        programs.append(args[0])
        if args[0] == "kubectl":
            _kubectl_command(cluster, args[1:])
        elif args[0] == "helm":
            _helm_command(cluster, args[1:])
        elif args[0] == "scripts/build-image.sh":
            built = subprocess.run(["bash", str(ROOT / args[0]), *args[1:]], capture_output=True, text=True,
                                   env={"PATH": "/usr/bin:/bin", "CONTAINER_ENGINE": "echo"}, cwd=ROOT)  # fmt: skip
            assert built.returncode == 0, built.stderr
            cluster.image = built.stdout.strip().splitlines()[-1]
        elif args[0] == "kfp":
            _kfp_command(cluster, args[1:])
        elif args[0] == "deepmoney":
            _deepmoney_command(cluster, args[1:], env)
        elif args[0] == "curl":
            _curl_command(cluster, args[1:])
        else:
            raise AssertionError(f"docs/cluster.md: no test handles {args[0]!r}: {shlex.join(args)}")
    assert {"kubectl", "helm", "kfp", "deepmoney", "scripts/build-image.sh"} <= set(programs)
    assert json.dumps(cluster.secrets)  # the Secrets were made and read
