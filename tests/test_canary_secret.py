"""A canary secret planted in every secret-carrying value and variable turns up in nothing deepmoney renders or records.

One unique value is the password of the market-data URL and of the MLflow tracking URI, every role's API key
(one of them from a mounted key file), the S3 secret key and session token, and the MLflow password and token.
It must not reach the Helm chart's objects (unless the chart refuses the values, naming the one to fix), the
compiled pipeline, a training job's ConfigMap, the output and log lines of the verbs that read those secrets,
nor the params and tags of an MLflow run. Every check looks for the canary in what the real code produced.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from uuid import uuid4

import pytest
import yaml

from deepmoney import env
from deepmoney.config import load_config
from deepmoney.llm.scripted_server import ScriptedOpenAIServer
from deepmoney.tracking.training import Tracker
from tests.conftest import ROOT, SAMPLE_CORPUS, assert_clean_error, refused_url, run_cli
from tests.test_synth import MODELS, ROLE_ARGS, scripted_analyst

CANARY = f"canary-{uuid4().hex}"
CHART = ROOT / "helm" / "deepmoney"
LAUNCH_RUN = ("--stage", "pt", "--model", "s3://models/base", "--data", "/workspace/corpus/pt", "--output",
              "/workspace/runs/pt-canary", "--nodes", "2", "--gpus-per-node", "8", "--render")  # fmt: skip

# Chart values a hurried user might put a secret into: (the value, what is set, other values the render needs).
# Secret *names* get the secret itself, in a form that is no valid name (a URL, a key with '/' or '_').
HURRIED = [
    ("config.marketdata.url", f"postgresql://deepmoney:{CANARY}@db:5432/market", ()),
    ("config.train.mlflow.tracking_uri", f"http://deepmoney:{CANARY}@mlflow:5000", ()),
    ("config.storage.s3_endpoint_url", f"http://AKIAEXAMPLE:{CANARY}@minio:9000", ()),
    ("config.launch.env.AWS_SECRET_ACCESS_KEY", CANARY, ()),
    ("config.synth.questioner.api_key", CANARY, ()),
    ("mlflow.artifacts.s3EndpointUrl", f"http://AKIAEXAMPLE:{CANARY}@minio:9000", ()),
    ("mlflow.artifacts.existingSecret", f"{CANARY}/K7MDENG+bPxRfiCY", ()),
    ("mlflow.backendStore.postgres.existingSecret", f"postgresql+psycopg2://mlflow:{CANARY}@db:5432/mlflow",
     ("mlflow.backendStore.type=postgres",)),
    ("serving.marketData.existingSecret", f"postgresql://deepmoney:{CANARY}@db:5432/market", ()),
    ("serving.llm.modelUri", f"s3://AKIAEXAMPLE:{CANARY}@models/deepmoney", ("serving.enabled=true",)),
    ("serving.intake.modelUri", f"s3://AKIAEXAMPLE:{CANARY}@models/intake",
     ("serving.enabled=true", "serving.llm.modelUri=s3://models/deepmoney", "serving.intake.enabled=true")),
    ("imagePullSecrets[0].name", f"ghp_{CANARY}", ()),
]  # fmt: skip


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment with the canary in every secret deepmoney and its tools read."""
    key_file = tmp_path_factory.mktemp("secrets") / "extractor-api-key"
    key_file.write_text(CANARY + "\n", encoding="utf-8")
    keys = {env.role_api_key(role): CANARY for role in env.ROLES_WITH_KEYS if role != "extractor"}
    return {
        **keys,
        env.role_api_key_file("extractor"): str(key_file),  # a mounted secret
        env.OPENAI_API_KEY: CANARY,
        "DEEPMONEY_MARKETDATA__URL": f"postgresql://deepmoney:{CANARY}@{refused_url().removeprefix('http://')}/market",
        env.AWS_SECRET_ACCESS_KEY: CANARY,
        env.AWS_SESSION_TOKEN: CANARY,
        env.MLFLOW_TRACKING_URI: f"http://deepmoney:{CANARY}@{refused_url().removeprefix('http://')}",
        env.MLFLOW_TRACKING_USERNAME: "deepmoney",
        env.MLFLOW_TRACKING_PASSWORD: CANARY,
        env.MLFLOW_TRACKING_TOKEN: CANARY,
        env.LOG_LEVEL: "DEBUG",  # every log line there is
    }


def _files_with_canary(directory: Path) -> list[str]:
    return sorted(str(p) for p in directory.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes())


# -- 1. the Helm chart -------------------------------------------------------------------------------


def _names(field: str, stderr: str) -> bool:
    """Whether a refusal names `field`, dotted (config.marketdata.url) or as helm's schema path (/config/...)."""
    pointer = "/" + field.replace("[", ".").replace("]", "").replace(".", "/")
    return field in stderr or pointer in stderr


@pytest.mark.parametrize(("field", "value", "needs"), HURRIED, ids=[h[0] for h in HURRIED])
def test_the_chart_renders_no_secret_given_in_its_values(helm: Path, field: str, value: str,
                                                         needs: tuple[str, ...]) -> None:  # fmt: skip
    sets = [arg for need in needs for arg in ("--set", need)]
    result = subprocess.run([str(helm), "template", "dm", str(CHART), "--namespace", "ml", *sets, "--set-string",
                             f"{field}={value}"], capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    if result.returncode != 0:
        assert _names(field, result.stderr), f"refused without naming {field}: {result.stderr}"
        return
    leaked = [f"{o['kind']}/{o['metadata']['name']}" for o in yaml.safe_load_all(result.stdout)
              if o and CANARY in yaml.safe_dump(o)]  # fmt: skip
    assert not leaked, f"{field}: the chart copied the secret into {leaked}; it must refuse this value instead"


# -- 2. the compiled pipeline ------------------------------------------------------------------------


def test_the_compiled_pipeline_holds_no_secret(planted: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "pipeline.yaml"
    result = run_cli("pipeline", "compile", "--output", str(out), env=planted)
    assert result.returncode == 0, result.stderr
    spec = next(yaml.safe_load_all(out.read_text(encoding="utf-8")))
    assert "pipelineInfo" in spec and "deploymentSpec" in spec
    assert CANARY not in out.read_text(encoding="utf-8")
    assert CANARY not in result.stdout + result.stderr


# -- 3. a training job's ConfigMap --------------------------------------------------------------------


def test_a_training_jobs_configmap_and_spec_hold_no_secret(
    planted: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The session's moto fixture exports the endpoint setting, and a variable beats the config file: without
    # this, the hurried config file's s3_endpoint_url below would never be read when an S3 test ran first.
    monkeypatch.delenv("DEEPMONEY_STORAGE__S3_ENDPOINT_URL", raising=False)
    cluster = {**planted, "DEEPMONEY_LAUNCH__VOLUME_CLAIM": "deepmoney-workspace",
               "DEEPMONEY_LAUNCH__MLFLOW_SECRET": "mlflow-credentials", "DEEPMONEY_LAUNCH__S3_SECRET": "s3-credentials",
               "KUBECONFIG": str(tmp_path / "no-such-kubeconfig")}  # fmt: skip
    settings = tmp_path / "settings.yaml"  # plain settings are not mistaken for credentials
    settings.write_text(yaml.safe_dump({"launch": {"env": {"TOKENIZERS_PARALLELISM": "true", "NCCL_IB_HCA": "mlx5"}}}),
                        encoding="utf-8")  # fmt: skip
    for backend in ("pytorchjob", "trainjob"):
        result = run_cli("launch", "--backend", backend, *LAUNCH_RUN, env={**cluster, env.CONFIG: str(settings)})
        assert result.returncode == 0, result.stderr
        config_map, job = yaml.safe_load_all(result.stdout)
        assert config_map["kind"] == "ConfigMap" and job["kind"] in ("PyTorchJob", "TrainJob")
        assert CANARY not in result.stdout + result.stderr, backend
        assert "mlflow-credentials" in result.stdout and "NCCL_IB_HCA" in result.stdout  # Secrets go by reference
    # What a hurried user writes into the config file instead: refused before anything is rendered, by name.
    hurried = [({"train": {"mlflow": {"tracking_uri": f"http://deepmoney:{CANARY}@mlflow:5000"}}},
                "train.mlflow.tracking_uri"),
               ({"storage": {"s3_endpoint_url": f"http://AKIAEXAMPLE:{CANARY}@minio:9000"}}, "storage.s3_endpoint_url"),
               ({"launch": {"env": {"HF_TOKEN": CANARY}}}, "launch.env: HF_TOKEN")]  # fmt: skip
    for i, (values, field) in enumerate(hurried):
        config = tmp_path / f"hurried-{i}.yaml"
        config.write_text(yaml.safe_dump(values), encoding="utf-8")
        result = run_cli("launch", "--backend", "pytorchjob", *LAUNCH_RUN, env={**cluster, env.CONFIG: str(config)})
        assert_clean_error(result, field, "Secret")
        assert not result.stdout and CANARY not in result.stderr, result.stderr


# -- 4. log lines of the verbs that read the secrets ----------------------------------------------------


@pytest.mark.skipif(not SAMPLE_CORPUS.is_dir(), reason="sample corpus not present")
def test_synth_sends_every_roles_key_and_logs_and_writes_none(planted: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "sft"
    with ScriptedOpenAIServer(responder=scripted_analyst, models=MODELS, api_key=CANARY) as server:
        roles = [a.format(url=server.base_url) for a in ROLE_ARGS]
        result = run_cli("synth", "--input", str(SAMPLE_CORPUS), "--output", str(out), *roles,
                         "--questions-per-chapter", "1", "--max-chapters", "2", env=planted)  # fmt: skip
        outcomes = server.outcomes()
    assert result.returncode == 0, result.stderr
    # The server answers only requests that carry the canary as their key: every role read and sent it.
    assert outcomes["ok"] >= 3 and set(outcomes) == {"ok"}, outcomes
    assert {body["model"] for body in server.bodies} == set(MODELS)
    assert "DEBUG" in result.stderr  # the most verbose log there is was written, and holds no secret
    assert CANARY not in result.stdout + result.stderr
    assert _files_with_canary(out) == []


def test_market_data_errors_name_the_database_without_its_password(planted: dict[str, str]) -> None:
    url = planted["DEEPMONEY_MARKETDATA__URL"]
    cases = {
        url: "market-data database postgresql://deepmoney:***@127.0.0.1:",  # does not answer (or no driver)
        url.replace("://", "//", 1): "invalid market-data database URL",  # a typo
        url.replace("/market", "x/market"): "invalid market-data database URL",  # a port that is no number
    }
    for bad, expected in cases.items():
        result = run_cli("marketdata", "list", env={**planted, "DEEPMONEY_MARKETDATA__URL": bad})
        assert_clean_error(result, expected)
        assert CANARY not in result.stdout + result.stderr, result.stderr


# -- 5. MLflow params and tags ---------------------------------------------------------------------------


@pytest.mark.integration
def test_a_tracked_runs_params_tags_and_logs_hold_no_secret(mlflow_server: str, planted: dict[str, str],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    import mlflow

    host = mlflow_server.removeprefix("http://")
    for name, value in {**planted, env.MLFLOW_TRACKING_URI: f"http://deepmoney:{CANARY}@{host}",
                        "DEEPMONEY_TRAIN__MLFLOW__TRACKING_URI": f"http://deepmoney:{CANARY}@{host}",
                        "DEEPMONEY_TRAIN__MLFLOW__EXPERIMENT": f"canary-{uuid4().hex[:8]}",
                        "DEEPMONEY_TRAIN__MLFLOW__SYSTEM_METRICS": "false"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    config = load_config()
    caplog.set_level(logging.DEBUG)
    tracker = Tracker(config.train.mlflow, True, tmp_path)
    try:  # what the trainer logs: its train settings and the facts of the run
        run_id = tracker.start("canary", {"train": config.train.model_dump(mode="json"), "world_size": 1},
                               {"deepmoney.stage": "pt"})  # fmt: skip
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.end()
    finally:
        mlflow.set_tracking_uri(None)  # mlflow keeps the URI in a global; monkeypatch restores the variable
    assert run_id is not None, caplog.text  # the server was reached through the URI with the password
    run = mlflow.MlflowClient(mlflow_server).get_run(run_id)
    params, run_tags = run.data.params, run.data.tags
    assert params["train.mlflow.tracking_uri"] == f"http://deepmoney:***@{host}" and params["world_size"] == "1"
    assert {"train.zero.stage", "train.mlflow.experiment"} <= params.keys() and "mlflow.user" in run_tags
    assert [k for k, v in {**params, **run_tags}.items() if CANARY in k + v] == []
    assert "MLflow run" in caplog.text and CANARY not in caplog.text
    assert _files_with_canary(tmp_path) == []
