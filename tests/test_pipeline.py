"""The Kubeflow pipeline: compiled by kfp's own compiler, loaded by its own loader, equal to the committed YAML.

Also what every task gets on a cluster (the Secrets' keys as variables, the claim, /dev/shm), and the
stage functions' plain refusals (they run in the components, and in tests without KFP).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from deepmoney.errors import UserError
from deepmoney.kube import default_image
from deepmoney.launch.cluster import MLFLOW_KEYS, S3_KEYS
from deepmoney.pipeline import stages
from deepmoney.pipeline.compile import COMMITTED
from tests.conftest import ROOT, assert_clean_error, refused_url, run_cli

kfp = pytest.importorskip("kfp")


def _without_sdk_version(text: str) -> list[dict]:
    documents = [d for d in yaml.safe_load_all(text) if d]  # the pipeline spec, then its Kubernetes platform spec
    for document in documents:
        document.pop("sdkVersion", None)
    return documents


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pipeline") / "deepmoney_pipeline.yaml"
    result = run_cli("pipeline", "compile", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out) and "kfp run create -f" in result.stderr
    return out


def test_the_committed_pipeline_is_what_the_code_compiles(compiled: Path) -> None:
    committed = ROOT / COMMITTED
    assert committed.is_file(), f"{COMMITTED} is missing: run deepmoney pipeline compile --output {COMMITTED}"
    assert _without_sdk_version(compiled.read_text()) == _without_sdk_version(committed.read_text()), (
        f"{COMMITTED} is stale: run deepmoney pipeline compile --output {COMMITTED} and commit it"
    )


def test_kfp_loads_the_pipeline_with_every_component_and_parameter(compiled: Path) -> None:
    from kfp import components

    from deepmoney.pipeline.components import COMPONENTS

    loaded = components.load_component_from_file(str(compiled))
    assert loaded.name == "deepmoney"
    inputs = set(loaded.component_spec.inputs)
    assert {"corpus", "base_model", "workdir", "questioner", "answerer", "extractor", "pt_shards", "sft_shards",
            "backend", "nodes", "gpus_per_node", "lora", "registered_model", "deploy", "config"} <= inputs  # fmt: skip
    assert not inputs & {"aws_secret_access_key", "mlflow_tracking_password", "password", "token"}
    spec = next(yaml.safe_load_all(compiled.read_text()))
    executors = spec["deploymentSpec"]["executors"]
    names = {c.component_spec.name.replace("_", "-") for c in COMPONENTS}
    assert {re.sub(r"-\d+$", "", name.removeprefix("exec-")) for name in executors} == names
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == default_image()
        assert "pip install" not in " ".join(container["command"])  # the image carries kfp and deepmoney
    dag = spec["root"]["dag"]["tasks"]
    fan_outs = [t["componentRef"]["name"] for t in dag.values() if "parameterIterator" in t]
    inner = {task for loop in fan_outs for task in spec["components"][loop]["dag"]["tasks"]}
    assert len(fan_outs) == 2 and inner == {"build-pt-shard", "synthesize-sft-shard"}  # ParallelFor over shards
    assert all(t.get("cachingOptions", {}) == {} for t in dag.values())  # stages reuse by fingerprint, not KFP
    (gate,) = [t for t in dag.values() if "triggerPolicy" in t]  # deploy only when asked
    assert gate["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--deploy'] == true"
    assert set(spec["components"][gate["componentRef"]["name"]]["dag"]["tasks"]) == {"deploy"}


def test_every_task_gets_the_secrets_the_claim_and_shared_memory(compiled: Path) -> None:
    documents = list(yaml.safe_load_all(compiled.read_text()))
    platform = next(d for d in documents if "platforms" in d)["platforms"]["kubernetes"]["deploymentSpec"]
    executors = platform["executors"]
    assert len(executors) >= 9  # every task but the shard plans
    for name, settings in executors.items():
        variables = {v["keyToEnv"][0]["envVar"] for v in settings["secretAsEnv"]}
        assert variables == {key for key, _ in (*S3_KEYS, *MLFLOW_KEYS)}, name
        optional = {v["keyToEnv"][0]["envVar"] for v in settings["secretAsEnv"] if v.get("optional")}
        assert optional == {key for key, opt in (*S3_KEYS, *MLFLOW_KEYS) if opt}, name
        assert settings["pvcMount"][0]["mountPath"] == "/workspace"
        assert settings["emptyDirMounts"][0]["mountPath"] == "/dev/shm"


def test_compile_refuses_to_overwrite_what_is_not_a_pipeline(tmp_path: Path) -> None:
    notes = tmp_path / "notes.yaml"
    notes.write_text("my: notes\n")
    assert_clean_error(run_cli("pipeline", "compile", "--output", str(notes)), "is not a compiled pipeline")
    assert notes.read_text() == "my: notes\n"
    target = tmp_path / "deepmoney.yaml"
    for _ in range(2):  # a compiled pipeline is replaced by a new compile
        again = run_cli("pipeline", "compile", "--output", str(target))
        assert again.returncode == 0, again.stderr
    assert_clean_error(run_cli("pipeline", "compile", "--output", str(tmp_path)), "is a directory")
    assert_clean_error(run_cli("pipeline", "compile", "--output", str(tmp_path / "no" / "x.yaml")), "no directory")


def test_stage_functions_refuse_bad_inputs_in_one_line(tmp_path: Path) -> None:
    assert stages.shard_plan(3) == ["0/3", "1/3", "2/3"]
    assert stages.output_uri("s3://b/run", "pt") == "s3://b/run/pt"
    cases = [
        (lambda: stages.shard_plan(0), "shards 0: give at least 1"),
        (lambda: stages.output_uri(" ", "pt"), "workdir is empty"),
        (lambda: stages.build_pt_shard([], "m", str(tmp_path), "0/1"), "corpus is empty"),
        (lambda: stages.build_pt_shard(["x"], "m", str(tmp_path), "2/2"), "shard '2/2'"),
        (lambda: stages.train("rl", "m", "d", str(tmp_path), "local", 1, 1), "stage 'rl'"),
        (lambda: stages.register_and_promote(None, "deepmoney"), "was not tracked in MLflow"),
        (lambda: stages.uri_of({}, "pt corpus"), "the pt corpus artifact carries no uri"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message) as caught:
            call()
        assert "\n" not in str(caught.value)


def test_a_stage_error_ends_the_component_with_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        stages.run_stage(stages.shard_plan, 0)
    assert ended.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: shard-plan: shards 0: give at least 1"


@pytest.mark.slow
def test_the_corpus_components_fan_out_and_merge_under_kfp_local(tmp_path: Path, tiny_model: Path) -> None:
    """build-pt-shard x 2 under ParallelFor, then merge-pt, run by kfp.local: the unsharded build's bytes."""
    import warnings

    from kfp import local

    from deepmoney.config import load_config
    from deepmoney.data.pt import build_pt
    from tests.conftest import SAMPLE_CORPUS
    from tests.kfp_corpus_pipeline import SETTINGS, corpus_only

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    workdir = tmp_path / "work"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "custom base image in a Python environment": intended
        corpus_only(corpus=[str(SAMPLE_CORPUS)], base_model=str(tiny_model), workdir=str(workdir), shards=2)
    reference = tmp_path / "unsharded"
    build_pt([str(SAMPLE_CORPUS)], str(tiny_model), str(reference), load_config(overrides=SETTINGS), quiet=True)
    merged = workdir / stages.PT_CORPUS
    assert sorted(p.name for p in (workdir / stages.PT_SHARDS).iterdir()) == ["0-of-2", "1-of-2"]
    expected = {p.relative_to(reference): p.read_bytes() for p in reference.rglob("*") if p.is_file()}
    got = {p.relative_to(merged): p.read_bytes() for p in merged.rglob("*") if p.is_file()}
    assert sorted(got) == sorted(expected)
    assert all(got[name] == expected[name] for name in expected if name.name != "manifest.json")


CLOSED = refused_url() + "/v1"  # an endpoint nothing answers at


@pytest.mark.slow
@pytest.mark.parametrize(
    ("param", "stages_needing_it", "message"),
    [
        ("corpus=[/no/such/reports]", ("build-pt-shard", "synthesize-sft-shard"), "/no/such/reports"),
        ("base_model=/no/such/model", ("build-pt-shard",), "/no/such/model"),
        (f"questioner={CLOSED}#questioner", ("synthesize-sft-shard",), f"questioner endpoint {CLOSED}#questioner"),
    ],
    ids=["missing-corpus", "bad-model-uri", "unreachable-endpoint"],
)
def test_a_bad_parameter_fails_the_local_run_at_the_first_stage_with_its_message(
    tmp_path: Path, tiny_model: Path, param: str, stages_needing_it: tuple[str, ...], message: str
) -> None:
    """kfp.local runs independent branches in no fixed order, so the run ends at whichever stage needing the
    parameter ran first; the roles answer (a scripted server), so no other stage can fail first."""
    from deepmoney.llm.scripted_server import ScriptedOpenAIServer
    from tests.conftest import SAMPLE_CORPUS
    from tests.test_synth import MODELS, scripted_analyst

    with ScriptedOpenAIServer(responder=scripted_analyst, models=MODELS) as server:
        roles = [f"{role}={server.base_url}#{model}" for role, model in zip(("questioner", "answerer", "extractor"),
                                                                          MODELS, strict=True)]  # fmt: skip
        # Small sizes: the stages that do not need the parameter run on (kfp.local, as KFP, runs every branch
        # whose inputs are there) and are not what is tested.
        small = {"data": {"heldout_fraction": 0.3, "block_size": 128}, "synth": {"questioner": {"attempts": 1}},
                 "intake": {"classifier": {"epochs": 1, "hidden_size": 32, "layers": 1, "heads": 2}}}  # fmt: skip
        args = ["pipeline", "run", "--local", "-p", f"corpus=[{SAMPLE_CORPUS}]", "-p", f"base_model={tiny_model}",
                "-p", f"workdir={tmp_path / 'work'}", "-p", f"config={json.dumps(small)}", "-p", "pt_max_steps=1",
                "-p", "gpus_per_node=1", *[a for role in roles for a in ("-p", role)], "-p", param]  # fmt: skip
        result = run_cli(*args, timeout=900)
    assert result.returncode == 2 and result.stdout == "", result.stdout[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert any(last.startswith(f"error: the pipeline failed at {stage}: ") for stage in stages_needing_it), last
    assert message in last and "Traceback" not in last


def test_local_run_parameters_are_checked_before_anything_runs(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("corpus: [reports]\nbase_model: m\n")
    cases = [
        (["pipeline", "run"], "--local runs it here"),
        (["pipeline", "run", "--local", "--params", str(params)], "missing pipeline parameter workdir"),
        (["pipeline", "run", "--local", "--params", str(tmp_path / "none.yaml")], "no such file"),
        (["pipeline", "run", "--local", "-p", "colour=red"], "unknown pipeline parameter 'colour'"),
        (["pipeline", "run", "--local", "-p", "novalue"], "expected NAME=VALUE"),
        (
            ["pipeline", "run", "--local", "--config", str(tmp_path / "none.yaml"), "--params", str(params)],
            "config file not found",
        ),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert_clean_error(result, message)
        assert result.returncode == 2 and not result.stdout
    assert not (tmp_path / ".kfp").exists()


def test_training_pods_get_the_claim_and_secrets_the_pipeline_tasks_get(tmp_path: Path) -> None:
    from deepmoney.launch.render import render_objects

    pods = {"volume_claim": "team-claim", "s3_secret": "team-s3", "mlflow_secret": "team-mlflow"}
    config = stages.train_config("pt", "s3://models/base", "s3://corpora/pt", "/workspace/runs", "pytorchjob", 8,
                                 overrides={"launch": {"namespace": "ml"}}, cluster=pods)  # fmt: skip
    assert (config.launch.volume_claim, config.launch.s3_secret, config.launch.mlflow_secret) == tuple(pods.values())
    assert config.train.output == "/workspace/runs/train-pt" and config.launch.namespace == "ml"
    _, job = render_objects(config, "pytorchjob", nodes=2, gpus_per_node=8)
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in pod["containers"][0]["env"] if "valueFrom" in e}
    assert claims == {"team-claim"} and secrets == {"team-s3", "team-mlflow"}
    local = stages.train_config("sft", str(tmp_path / "m"), str(tmp_path / "d"), str(tmp_path), "local", 2,
                                max_steps=3, cluster=pods)  # fmt: skip
    assert local.launch.volume_claim is None and local.train.nproc == 2 and local.train.max_steps == 3
