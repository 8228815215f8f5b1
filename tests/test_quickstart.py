"""The README's first command runs `deepmoney quickstart`: the main job on the embedded default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_CORPUS, assert_clean_error, run_cli


@pytest.mark.skipif(not SAMPLE_CORPUS.is_dir(), reason="sample corpus not present")
def test_quickstart_builds_the_corpus_trains_and_reuses_it(tmp_path: Path) -> None:
    workdir = tmp_path / "qs"
    first = run_cli("--quiet", "quickstart", "--workdir", str(workdir), env={"MLFLOW_TRACKING_URI": ""})
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("deepmoney quickstart") and "first block" in first.stdout
    # stdout is the summary only; under --quiet stderr holds no INFO lines (MLflow, DeepSpeed, bars)
    assert "View run" not in first.stdout and " INFO " not in first.stdout + first.stderr
    assert "Loading weights" not in first.stdout + first.stderr
    manifest = json.loads((workdir / "pt" / "manifest.json").read_text())
    assert manifest["documents"] >= 20 and manifest["rejected"] == 0 and manifest["dedup_removed"] >= 1
    assert f"{manifest['tokens']} in {manifest['blocks']} blocks" in first.stdout
    model = json.loads((workdir / "base-model" / "manifest.json").read_text())
    assert model["architecture"] == "LlamaForCausalLM"
    trained = json.loads((workdir / "pt-model" / "manifest.json").read_text())
    assert trained["steps"] == 40 and trained["final_loss"] < trained["first_loss"]
    assert (workdir / "pt-model" / "final" / "model.safetensors").is_file()
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}").get_run(trained["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["loss"] == pytest.approx(trained["final_loss"])
    assert f"MLflow run    {trained['mlflow_run_id']}" in first.stdout
    evaluation = json.loads((workdir / "evaluation" / "manifest.json").read_text())
    assert evaluation["training_run_id"] == trained["mlflow_run_id"] and manifest["heldout"]["documents"] >= 1
    assert evaluation["metrics"]["heldout_documents"] == manifest["heldout"]["documents"]
    assert 1.0 < evaluation["metrics"]["perplexity"] < evaluation["tokenizer_size"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("deepmoney-quickstart", "champion")
    assert champion.run_id == trained["mlflow_run_id"] and champion.tags["deepmoney.decision"] == "champion"
    assert "deepmoney-quickstart version 1: champion" in first.stdout
    second = run_cli("--quiet", "quickstart", "--workdir", str(workdir), env={"MLFLOW_TRACKING_URI": ""})
    assert second.returncode == 0 and "(reused)" in second.stdout and "already the champion" in second.stdout
    assert json.loads((workdir / "pt-model" / "manifest.json").read_text()) == trained  # not trained again


def test_quickstart_with_a_missing_corpus(tmp_path: Path) -> None:
    result = run_cli("quickstart", "--workdir", str(tmp_path), "--corpus", str(tmp_path / "none"))
    assert_clean_error(result, "corpus directory not found")
