"""The whole deepmoney pipeline, run by `deepmoney pipeline run --local` (kfp.local), end to end on small sizes.

build-pt in 2 shards and synthesis in 2 shards (the roles played by a scripted OpenAI-compatible server
on loopback), pt then sft training as 2 CPU ranks under torchrun through the local launcher, evaluation,
registration and promotion in a real MLflow server, the intake classifier; then the same run again,
which reuses every finished stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepmoney.llm.scripted_server import ScriptedOpenAIServer
from tests.conftest import SAMPLE_CORPUS, run_cli
from tests.test_synth import MODELS, scripted_analyst

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SAMPLE_CORPUS.is_dir(), reason="sample corpus not present")]

SMALL = {
    "data": {"block_size": 128, "workers": 1, "heldout_fraction": 0.3},
    "synth": {"questions_per_chapter": 2},
    "train": {"micro_batch": 2, "zero": {"stage": 0}, "save_every": 1000, "log_every": 2},
    "evaluate": {"max_qa": 4, "max_new_tokens": 8, "chain": False},
    "intake": {"classifier": {"epochs": 1}},
}


def test_the_local_pipeline_runs_every_stage_and_a_second_run_reuses_them(
    tmp_path: Path, tiny_model: Path, mlflow_server: str
) -> None:
    workdir = tmp_path / "work"
    params = tmp_path / "run.yaml"
    with ScriptedOpenAIServer(responder=scripted_analyst, models=MODELS) as server:
        params.write_text(json.dumps({
            "corpus": [str(SAMPLE_CORPUS)], "base_model": str(tiny_model), "workdir": str(workdir),
            "questioner": f"{server.base_url}#{MODELS[0]}", "answerer": f"{server.base_url}#{MODELS[1]}",
            "extractor": f"{server.base_url}#{MODELS[2]}", "pt_shards": 2, "sft_shards": 2, "gpus_per_node": 2,
            "pt_max_steps": 4, "sft_max_steps": 2, "registered_model": "deepmoney-e2e", "config": SMALL,
        }))  # fmt: skip
        env = {"MLFLOW_TRACKING_URI": mlflow_server}
        first = run_cli("pipeline", "run", "--local", "--params", str(params), env=env, timeout=1200)
        assert first.returncode == 0, first.stderr[-6000:]
        result = json.loads(first.stdout)
        outputs = {name: Path(uri) for name, uri in result["outputs"].items()}
        manifests = {name: json.loads((path / "manifest.json").read_text()) for name, path in outputs.items()}
        assert manifests["pt_corpus"]["kind"] == "pt-corpus" and manifests["pt_corpus"]["documents"] > 0
        assert manifests["sft_dataset"]["records"] > 0
        assert manifests["pt_model"]["steps"] == 4 and manifests["sft_model"]["steps"] == 2
        assert manifests["sft_model"]["base_model"].startswith(str(outputs["pt_model"]))
        assert manifests["pt_model"]["mlflow_run_id"] and manifests["sft_model"]["mlflow_run_id"]
        assert "perplexity" in manifests["evaluation"]["metrics"]
        assert "promote" in first.stderr or "champion" in first.stderr or "challenger" in first.stderr

        from mlflow import MlflowClient

        versions = MlflowClient(mlflow_server).search_model_versions("name='deepmoney-e2e'")
        assert [v.run_id for v in versions] == [manifests["sft_model"]["mlflow_run_id"]]

        again = run_cli("pipeline", "run", "--local", "--params", str(params), env=env, timeout=1200)
        assert again.returncode == 0, again.stderr[-6000:]
        for name, path in outputs.items():
            assert json.loads((path / "manifest.json").read_text())["created_at"] == manifests[name]["created_at"], name
        assert "reusing it" in again.stderr and "already holds this finished run" in again.stderr
