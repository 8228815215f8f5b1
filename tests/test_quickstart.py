"""README command 1 runs `deepmoney quickstart`: the whole pipeline, locally (kfp.local), on the embedded default.

The test runs the same quickstart on smaller sizes: build-pt and synthesis in 2 shards each (the embedded role
models: tiny local models, the answerer another model than the questioner), pt then sft on 2 CPU ranks under
torchrun, evaluation, registration and promotion in the local MLflow server the quickstart starts, the
intake classifier; then the champion served by the KServe ModelServer and one bundled dated news item
analysed. A second run reuses every stage and the running MLflow server; `--stop` ends that server.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from deepmoney.config import deep_merge
from tests.conftest import ROOT, SAMPLE_CORPUS, assert_clean_error, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SAMPLE_CORPUS.is_dir(), reason="sample corpus not present")]

SMALLER = {
    "data": {"block_size": 128},
    "synth": {"max_chapters": 24},  # the tiny role models' generation was the longest stage
    "evaluate": {"max_qa": 4, "max_new_tokens": 8},
}
STEPS = ["-p", "pt_max_steps=40", "-p", "sft_max_steps=2"]


def _ui_address(stdout: str) -> str:
    match = re.search(r"MLflow UI\s+(http://127\.0\.0\.1:\d+)", stdout)
    assert match, stdout
    return match.group(1)


def test_the_quickstart_runs_the_whole_pipeline_and_answers_a_news_item(tmp_path: Path) -> None:
    recipe = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text(encoding="utf-8"))
    config = tmp_path / "quickstart-small.yaml"
    config.write_text(yaml.safe_dump(deep_merge(recipe, SMALLER)), encoding="utf-8")
    workdir = tmp_path / "qs"
    env = {"MLFLOW_TRACKING_URI": "", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    args = ["quickstart", "--workdir", str(workdir), "--config", str(config), *STEPS]
    try:
        first = run_cli(*args, env=env, timeout=1500)
        assert first.returncode == 0, first.stderr[-6000:]
        out = first.stdout
        for label in ("step 1", "step 2", "step 3", "figures", "MLflow UI", "written to"):
            assert re.search(rf"^  {label}\s", out, re.MULTILINE), (label, out)
        assert "Executor" not in first.stderr and "executor_input" not in first.stderr  # kfp's noise is filtered

        # Every stage's output, made by the pipeline's own fan-outs and chain of stages.
        assert sorted(p.name for p in (workdir / "pt-shards").iterdir()) == ["0-of-2", "1-of-2"]
        assert sorted(p.name for p in (workdir / "sft-shards").iterdir()) == ["0-of-2", "1-of-2"]
        manifests = {name: json.loads((workdir / name / "manifest.json").read_text())
                     for name in ("pt", "sft", "train-pt", "train-sft", "evaluation", "intake-classifier")}  # fmt: skip
        assert manifests["pt"]["documents"] > 0 and manifests["sft"]["records"] > 0
        questioner, answerer = manifests["sft"]["roles"]["questioner"], manifests["sft"]["roles"]["answerer"]
        assert questioner != answerer and questioner.startswith("local:") and answerer.startswith("local:")
        assert manifests["train-pt"]["steps"] == 40 and manifests["train-sft"]["steps"] == 2
        # sft at a fine-tuning rate, pt at the recipe's (a random-init model learns fast)
        assert manifests["train-sft"]["settings"]["train.learning_rate"] == 2e-5
        assert manifests["train-pt"]["settings"]["train.learning_rate"] == recipe["train"]["learning_rate"]
        assert manifests["train-pt"]["world_size"] == 2 == manifests["train-sft"]["world_size"]
        assert manifests["train-sft"]["base_model"].startswith(str(workdir / "train-pt"))
        assert f"{manifests['pt']['tokens']} tokens in {manifests['pt']['blocks']} blocks" in out

        # The registry: the sft run is the champion, in the MLflow server whose address was printed.
        from mlflow import MlflowClient

        url = _ui_address(out)
        client = MlflowClient(url)
        champion = client.get_model_version_by_alias("deepmoney-quickstart", "champion")
        assert champion.run_id == manifests["train-sft"]["mlflow_run_id"] == manifests["evaluation"]["training_run_id"]
        assert f"version {champion.version} is the champion (run {champion.run_id})" in out

        # The answer printed is the one the chain gave, with the figures step 3 computed from the data.
        answer = json.loads((workdir / "analysis" / "n001.json").read_text())
        news = json.loads((ROOT / "examples" / "news" / "news.jsonl").read_text().splitlines()[0])
        assert answer["id"] == news["id"] and answer["date"] == news["date"] and answer["intake"]["forward"]
        sectors = ", ".join(s["name"] for s in answer["sectors"])
        assert f"step 1         sectors or targets affected: {sectors}" in out
        assert answer["stopped"] is None and answer["computed"]["figures"], answer
        figures = answer["computed"]["figures"]
        numbers = {k: v for k, v in figures.items() if isinstance(v, float)}
        assert numbers and all(f"{k} = {v:.4g}" in out for k, v in numbers.items())  # the values step 3 computed
        assert f"as of {answer['computed']['as_of']}" in out and answer["computed"]["as_of"] == news["date"]
        assert all(s["last"] <= news["date"] and s["after_news_date"] == 0 for s in answer["computed"]["series"])

        # A second run reuses every stage and the running server.
        again = run_cli(*args, env=env, timeout=600)
        assert again.returncode == 0, again.stderr[-6000:]
        for name, manifest in manifests.items():
            assert json.loads((workdir / name / "manifest.json").read_text())["created_at"] == manifest["created_at"]
        assert _ui_address(again.stdout) == url and "(reused;" in again.stdout
        assert [v.run_id for v in client.search_model_versions("name='deepmoney-quickstart'")] == [champion.run_id]
    finally:
        stopped = run_cli("quickstart", "--workdir", str(workdir), "--stop")
    assert stopped.returncode == 0 and "stopped the MLflow server" in stopped.stdout
    import requests

    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/health", timeout=5)


def test_quickstart_refuses_bad_input_before_it_starts_anything(tmp_path: Path) -> None:
    cases = [
        (["--corpus", str(tmp_path / "none")], "corpus directory not found"),
        (["-p", "colour=red"], "unknown pipeline parameter 'colour'"),
        (["--news", "n999"], "--news n999: no such item"),
    ]
    for flags, message in cases:
        result = run_cli("quickstart", "--workdir", str(tmp_path / "qs"), *flags, env={"MLFLOW_TRACKING_URI": ""})
        assert_clean_error(result, message)
        assert result.returncode == 2 and not result.stdout
        assert not (tmp_path / "qs" / "mlflow").exists()  # no server was started
    stopped = run_cli("quickstart", "--workdir", str(tmp_path / "qs"), "--stop")
    assert stopped.returncode == 0 and "no MLflow server was running" in stopped.stdout
