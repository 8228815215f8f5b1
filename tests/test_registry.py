"""Train tiny -> evaluate -> register -> promote, against a real MLflow server on loopback.

The server keeps its runs in sqlite and its artifacts in a moto S3 bucket (proxied, as with
`--serve-artifacts`). A first model becomes champion; a deliberately worse one (one step at a
negligible learning rate, i.e. the untrained base) becomes challenger and leaves the champion
alone; the version tags hold both sets of metrics; a promotion that raced another changes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from deepmoney.config import RegistryConfig, load_config, overrides_from_flags
from deepmoney.data.pt import build_pt
from deepmoney.errors import UserError
from deepmoney.llm.scripted_server import ScriptedOpenAIServer
from deepmoney.registry import CHALLENGER, CHAMPION, decide, storage_location
from tests.conftest import ROOT, SAMPLE_CORPUS, S3Endpoint, assert_clean_error, refused_url, run_cli
from tests.test_synth import MODELS, ROLE_ARGS, scripted_analyst
from tests.test_train import train_cli

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SAMPLE_CORPUS.is_dir(), reason="sample corpus not present")]

HELDOUT = {"DEEPMONEY_DATA__HELDOUT_FRACTION": "0.4"}  # five of the sample corpus's documents
EVAL_FLAGS = ("--max-qa", "6", "--max-new-tokens", "16", "--batch-size", "4")
TRAIN_FLAGS = ("--stage", "pt", "--launcher", "local", "--nproc", "1", "--zero", "0", "--micro-batch", "4")
NAME = "deepmoney-tiny"


@pytest.fixture(scope="module")
def evalset(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A pt corpus and an sft dataset with the same documents held out, side by side in one directory."""
    root = tmp_path_factory.mktemp("evalset")
    config = load_config(overrides=overrides_from_flags(**{"data.block_size": 128, "data.workers": 1,
                                                           "data.heldout_fraction": 0.4}))  # fmt: skip
    build_pt([str(SAMPLE_CORPUS)], str(tiny_model), str(root / "pt"), config, quiet=True)
    with ScriptedOpenAIServer(responder=scripted_analyst, models=MODELS) as server:
        roles = [a.format(url=server.base_url) for a in ROLE_ARGS]
        result = run_cli("synth", "--input", str(SAMPLE_CORPUS), "--output", str(root / "sft"), *roles,
                         "--questions-per-chapter", "2", "--max-chapters", "20", "--quiet", env=HELDOUT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def tracking(mlflow_server: str, s3_endpoint: S3Endpoint) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint.url,
            "DEEPMONEY_REGISTRY__ARTIFACTS_DESTINATION": "s3://mlflow/artifacts"}  # fmt: skip


def _train(tiny_model: Path, evalset: Path, out: Path, tracking: dict[str, str], *flags: str) -> dict:
    result = train_cli(tiny_model, evalset / "pt", out, *TRAIN_FLAGS, *flags, env=tracking)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "manifest.json").read_text())


def _evaluate(model: str, evalset: Path, out: Path, tracking: dict[str, str]) -> dict:
    bench = str(Path("examples/benchmarks/fpb_sample.jsonl").resolve())
    result = run_cli("evaluate", "--model", model, "--data", str(evalset), "--output", str(out), *EVAL_FLAGS,
                     "--benchmark", bench, env=tracking)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "manifest.json").read_text())


def _promote(tracking: dict[str, str], version: int, *flags: str) -> tuple[int, dict]:
    result = run_cli("promote", "--name", NAME, "--version", str(version), *flags, env=tracking)
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else {"stderr": result.stderr}


@pytest.fixture(scope="module")
def champion_run(tiny_model: Path, evalset: Path, tracking: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("runs")
    manifest = _train(tiny_model, evalset, out / "good", tracking, "--max-steps", "20", "--learning-rate", "3e-3")
    # The path `train` prints (OUT/final) is linked to the training run through OUT's manifest.
    evaluation = _evaluate(manifest["final"], evalset, out / "eval-good", tracking)
    return manifest, evaluation, out


def test_evaluation_measures_everything_and_is_tracked(champion_run, evalset: Path, mlflow_server: str) -> None:
    import mlflow

    manifest, evaluation, out = champion_run
    metrics = evaluation["metrics"]
    pt_manifest = json.loads((evalset / "pt" / "manifest.json").read_text())
    assert metrics["heldout_documents"] == pt_manifest["heldout"]["documents"] >= 2
    assert metrics["heldout_tokens"] > 0 and 1.0 < metrics["perplexity"] < evaluation["tokenizer_size"]
    # The uniform-guess floor is the tokenizer's size, not the embedding's rows (padded past the tokenizer).
    tokenizer = AutoTokenizer.from_pretrained(manifest["final"])
    assert evaluation["tokenizer_size"] == len(tokenizer) < evaluation["embedding_rows"]
    assert evaluation["training_run_id"] == manifest["mlflow_run_id"]
    assert evaluation["evaluation_set"]["tokenizer"] == pt_manifest["tokenizer"]["digest"]  # the digest covers it
    assert metrics["qa_count"] == 6 and 0.0 <= metrics["qa_rouge_l"] <= 1.0 and 0.0 <= metrics["qa_token_f1"] <= 1.0
    assert {"chain_sectors_parsed", "chain_data_named", "chain_data_used", "chain_pass_rate"} <= set(metrics)
    assert metrics["bench_fpb_sample_count"] == 8 and 0.0 <= metrics["bench_fpb_sample_accuracy"] <= 1.0
    qa = [json.loads(line) for line in (out / "eval-good" / "qa.jsonl").open()]
    assert len(qa) == 6 and all(set(r) >= {"question", "reference", "answer", "rouge_l"} for r in qa)
    heldout_docs = {json.loads(line)["meta"]["doc_id"] for line in (evalset / "sft" / "heldout_alpaca.jsonl").open()}
    assert {r["doc_id"] for r in qa} <= heldout_docs
    assert (out / "eval-good" / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(evaluation["mlflow_run_id"])
    assert run.data.tags["deepmoney.evaluated_run_id"] == manifest["mlflow_run_id"]
    assert run.data.tags["deepmoney.eval_digest"] == evaluation["eval_digest"]
    assert run.data.tags["deepmoney.tokenizer_size"] == str(len(tokenizer))
    assert run.data.metrics["perplexity"] == pytest.approx(metrics["perplexity"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"evaluation.json", "qa.jsonl", "chain.jsonl", "evaluation.png"} <= artifacts


def test_a_repeated_evaluation_is_reused_and_a_killed_one_resumes(champion_run, evalset: Path, tmp_path: Path) -> None:
    """The same evaluation again reuses the output; a killed one resumes from its committed replies."""
    manifest, evaluation, out = champion_run
    assert evaluation["generations_from_cache"] == 0
    again = _evaluate(manifest["final"], evalset, out / "eval-good", {"MLFLOW_TRACKING_URI": ""})
    assert again == evaluation  # reused: not a single reply generated again
    args = ["evaluate", "--model", manifest["final"], "--data", str(evalset), "--output", str(tmp_path / "killed"),
            *EVAL_FLAGS, "--benchmark", str(Path("examples/benchmarks/fpb_sample.jsonl").resolve())]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    proc = subprocess.Popen([sys.executable, "-m", "deepmoney", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    while _committed_replies(tmp_path) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    committed = _committed_replies(tmp_path)
    assert committed >= 2 and not (tmp_path / "killed").exists()  # nothing published by the killed run
    resumed = run_cli(*args, env={"MLFLOW_TRACKING_URI": ""})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert record["generations_from_cache"] >= committed
    assert record["metrics"] == evaluation["metrics"] and record["eval_digest"] == evaluation["eval_digest"]


def _committed_replies(directory: Path) -> int:
    import sqlite3

    total = 0
    for db in directory.glob(".killed.staging-*/state/generations.sqlite"):
        try:
            with sqlite3.connect(db, timeout=1) as connection:
                total += connection.execute("select count(*) from responses").fetchone()[0]
        except sqlite3.Error:
            pass
    return total


def test_register_promote_and_a_worse_candidate(
    champion_run, tiny_model: Path, evalset: Path, tracking: dict[str, str], mlflow_server: str, s3_endpoint
) -> None:
    import mlflow

    manifest, good_eval, out = champion_run
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    first = run_cli("register", "--run-id", manifest["mlflow_run_id"], "--name", NAME, env=tracking)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "1"
    again = run_cli("register", "--run-id", manifest["mlflow_run_id"], "--name", NAME, env=tracking)
    assert again.stdout.strip() == "1"  # safe to retry: the same version
    tags = client.get_model_version(NAME, "1").tags
    assert tags["deepmoney.training_run_id"] == manifest["mlflow_run_id"]
    assert tags["deepmoney.eval_digest"] == good_eval["eval_digest"] and json.loads(tags["deepmoney.data_digests"])
    assert tags["deepmoney.base_model"] == str(tiny_model)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert tags["deepmoney.git_revision"] == (head.stdout.strip() if head.returncode == 0 else "unknown")

    code, dry = _promote(tracking, 1, "--dry-run")
    assert code == 0 and dry["decision"] == CHAMPION and dry["changed"] is False
    assert not client.get_registered_model(NAME).aliases  # a dry run changes nothing
    code, decision = _promote(tracking, 1)
    assert code == 0 and decision["decision"] == CHAMPION and decision["changed"]
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == "1"

    # The champion's files are where `registry uri` says, in S3, as a complete Hugging Face folder.
    uri = run_cli("registry", "uri", "--name", NAME, "--alias", CHAMPION, env=tracking)
    assert uri.returncode == 0, uri.stderr
    bucket, _, prefix = uri.stdout.strip().removeprefix("s3://").partition("/")
    keys = {o["Key"].rsplit("/", 1)[-1] for o in s3_endpoint.client().list_objects_v2(
        Bucket=bucket, Prefix=prefix + "/")["Contents"]}  # fmt: skip
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= keys

    worse_manifest = _train(tiny_model, evalset, out / "worse", tracking, "--max-steps", "1", "--learning-rate",
                            "1e-9")  # fmt: skip
    unevaluated = run_cli("register", "--run-id", worse_manifest["mlflow_run_id"], "--name", NAME, env=tracking)
    assert unevaluated.stdout.strip() == "2"
    code, missing = _promote(tracking, 2)
    assert code == 2 and "has no evaluation" in missing["stderr"]
    worse_eval = _evaluate(f"models:/{NAME}/2", evalset, out / "eval-worse", tracking)
    assert worse_eval["eval_digest"] == good_eval["eval_digest"]  # the same evaluation set
    assert worse_eval["metrics"]["perplexity"] > good_eval["metrics"]["perplexity"]

    code, decision = _promote(tracking, 2)
    assert code == 0 and decision["decision"] == CHALLENGER and decision["champion_before"] == 1
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == "1"
    assert client.get_model_version_by_alias(NAME, CHALLENGER).version == "2"
    tags = client.get_model_version(NAME, "2").tags
    assert tags["deepmoney.decision"] == CHALLENGER and tags["deepmoney.compared_with"] == "1"
    assert json.loads(tags["deepmoney.candidate_metrics"])["perplexity"] == pytest.approx(
        worse_eval["metrics"]["perplexity"])  # fmt: skip
    assert json.loads(tags["deepmoney.champion_metrics"])["perplexity"] == pytest.approx(
        good_eval["metrics"]["perplexity"])  # fmt: skip
    assert "perplexity" in tags["deepmoney.decision_reasons"]

    # Promotion is idempotent; a promotion that raced another (it saw version 2 as champion) changes nothing.
    code, repeat = _promote(tracking, 2)
    assert code == 0 and repeat["decision"] == CHALLENGER
    decided_at = client.get_model_version(NAME, "2").tags["deepmoney.decided_at"]
    raced = run_cli("promote", "--name", NAME, "--version", "2", "--expect-champion", "2", env=tracking)
    assert raced.returncode == 2 and "the champion is version 1, not version 2 (--expect-champion)" in raced.stderr
    assert json.loads(raced.stdout)["champion_now"] == 1
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == "1"
    assert client.get_model_version(NAME, "2").tags["deepmoney.decided_at"] == decided_at

    # A better candidate, promoted twice at once (say, a retried pipeline step): both see version 1 as
    # champion and decide the same; one makes the change, the other finds the champion changed under it.
    better = _train(tiny_model, evalset, out / "better", tracking, "--max-steps", "40", "--learning-rate", "3e-3")
    assert run_cli("register", "--run-id", better["mlflow_run_id"], "--name", NAME, env=tracking).stdout.strip() == "3"
    better_eval = _evaluate(f"models:/{NAME}/3", evalset, out / "eval-better", tracking)
    assert better_eval["metrics"]["perplexity"] < 0.99 * good_eval["metrics"]["perplexity"]
    env = {**os.environ, **tracking, "DEEPMONEY_REGISTRY__LOCK_SETTLE_SECONDS": "2"}
    command = [sys.executable, "-m", "deepmoney", "promote", "--name", NAME, "--version", "3"]
    racers = [subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]  # fmt: skip
    finished = [(p.wait(timeout=240), p.stdout.read(), p.stderr.read()) for p in racers]
    assert all(stdout.strip() for _, stdout, _ in finished), [stderr[-2000:] for _, _, stderr in finished]
    outcomes = sorted((code, json.loads(stdout), stderr) for code, stdout, stderr in finished)
    (won, won_result, _), (lost, lost_result, lost_err) = outcomes
    assert won == 0 and won_result["decision"] == CHAMPION and won_result["changed"]
    assert lost == 2 and lost_result["champion_now"] == 3 and "champion changed to version 3" in lost_err
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == "3"
    assert "deepmoney.promotion_lock" not in client.get_registered_model(NAME).tags
    assert {"promotion.png", "evaluation.json"} <= {a.path for a in client.list_artifacts(better_eval["mlflow_run_id"])}


def test_the_resolver_takes_every_form_of_model_reference(
    champion_run, tracking: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runs:/, models:/NAME/VERSION, models:/NAME@ALIAS, models:/m-… and OUT/final name the same weights."""
    from safetensors.torch import load_file

    from deepmoney.models.resolve import resolve_model

    for name, value in tracking.items():
        monkeypatch.setenv(name, value)
    manifest, _, out = champion_run
    config = load_config()
    expected = load_file(Path(manifest["final"]) / "model.safetensors")
    forms = {
        "final/": (manifest["final"], None),
        "train output": (str(out / "good"), None),
        "runs:/": (f"runs:/{manifest['mlflow_run_id']}/model", None),
        "models:/m-": (manifest["mlflow_model_uri"], None),
        "models:/NAME/VERSION": (f"models:/{NAME}/1", (NAME, "1")),
        "models:/NAME@ALIAS": (f"models:/{NAME}@{CHALLENGER}", (NAME, "2")),
    }
    for form, (uri, registered) in forms.items():
        resolved = resolve_model(uri, config, tmp_path / "cache")
        assert (resolved.path / "config.json").is_file() and (resolved.path / "tokenizer.json").is_file(), form
        assert resolved.registered == registered, form
        if registered != (NAME, "2"):  # version 2 is the deliberately worse run
            assert resolved.training_run_id == manifest["mlflow_run_id"], form
            weights = load_file(resolved.path / "model.safetensors")
            assert all(torch.equal(weights[k], expected[k]) for k in expected), form
    assert resolve_model(str(out / "good"), config, tmp_path / "cache").train_output == out / "good"
    # The alias moves: the same URI now names version 1, and the cache does not hand back version 2's weights.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking["MLFLOW_TRACKING_URI"])
    client.set_registered_model_alias(NAME, CHALLENGER, "1")
    try:
        moved = resolve_model(f"models:/{NAME}@{CHALLENGER}", config, tmp_path / "cache")
        assert moved.registered == (NAME, "1") and moved.training_run_id == manifest["mlflow_run_id"]
        weights = load_file(moved.path / "model.safetensors")
        assert all(torch.equal(weights[k], expected[k]) for k in expected)
    finally:
        client.set_registered_model_alias(NAME, CHALLENGER, "2")


def test_registry_bad_inputs(champion_run, tracking: dict[str, str], tmp_path: Path) -> None:
    _, evaluation, _ = champion_run
    assert_clean_error(run_cli("register", "--run-id", "0" * 32, "--name", NAME, env=tracking), "no MLflow run")
    assert_clean_error(run_cli("register", "--run-id", evaluation["mlflow_run_id"], "--name", NAME, env=tracking),
                       "has no model")  # fmt: skip
    down = {**tracking, "MLFLOW_TRACKING_URI": refused_url()}
    assert_clean_error(run_cli("promote", "--name", NAME, "--version", "1", env=down), "does not answer")
    assert_clean_error(run_cli("evaluate", "--model", "x", "--data", str(tmp_path / "none"), "--output",
                               str(tmp_path / "o"), env=tracking), "no such directory")  # fmt: skip
    assert_clean_error(run_cli("promote", "--name", "no-such-model", "--version", "1", env=tracking), "no-such-model")


@pytest.mark.parametrize(
    ("candidate", "champion", "expected"),
    [
        ({"perplexity": 90.0}, {"perplexity": 100.0}, CHAMPION),  # 10% better, margin 1%
        ({"perplexity": 99.5}, {"perplexity": 100.0}, CHALLENGER),  # better, but within the margin
        ({"perplexity": 110.0}, {"perplexity": 100.0}, CHALLENGER),
        ({"perplexity": 90.0, "qa_token_f1": 0.30}, {"perplexity": 100.0, "qa_token_f1": 0.40}, CHALLENGER),  # guard
        ({"perplexity": 90.0, "qa_token_f1": 0.39}, {"perplexity": 100.0, "qa_token_f1": 0.40}, CHAMPION),  # in tol.
        ({"perplexity": 50.0}, None, CHAMPION),  # first model, better than uniform over its 5049 tokens
        ({"perplexity": 9000.0}, None, CHALLENGER),  # first model, no better than a uniform guess
        ({"perplexity": 8180.0}, None, CHALLENGER),  # below the embedding's 8192 rows, yet worse than uniform
    ],
)
def test_decision_table(candidate: dict, champion: dict | None, expected: str) -> None:
    assert decide(candidate, champion, RegistryConfig(), tokenizer_size=5049).decision == expected


def test_decision_floors_and_higher_is_better_primary() -> None:
    policy = RegistryConfig(primary_metric="qa_rouge_l", floors={"qa_rouge_l": 0.2})
    assert decide({"qa_rouge_l": 0.1}, None, policy).decision == CHALLENGER
    assert decide({"qa_rouge_l": 0.3}, None, policy).decision == CHAMPION
    assert decide({"qa_rouge_l": 0.303}, {"qa_rouge_l": 0.3}, policy).decision == CHAMPION  # 1% better
    assert decide({"qa_rouge_l": 0.302}, {"qa_rouge_l": 0.3}, policy).decision == CHALLENGER
    with pytest.raises(UserError, match="no perplexity"):
        decide({"qa_rouge_l": 0.3}, None, RegistryConfig())


def test_artifact_locations_map_onto_the_destination() -> None:
    dest = "s3://mlflow/artifacts"
    assert storage_location("mlflow-artifacts:/1/models/m-1/artifacts/model", dest) == (
        "s3://mlflow/artifacts/1/models/m-1/artifacts/model")  # fmt: skip
    assert storage_location("mlflow-artifacts://mlflow.mlops:5000/1/abc/artifacts/m", dest + "/") == (
        "s3://mlflow/artifacts/1/abc/artifacts/m")  # fmt: skip
    assert storage_location("s3://weights/final", None) == "s3://weights/final"
    with pytest.raises(UserError, match="artifacts_destination"):
        storage_location("mlflow-artifacts:/1/x", None)


def test_evaluate_bad_inputs(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "out")
    no_server = {"MLFLOW_TRACKING_URI": ""}
    missing = run_cli("evaluate", "--model", "x", "--data", str(tmp_path / "empty"), "--output", out, env=no_server)
    assert_clean_error(missing, "the evaluation set is missing")
    (tmp_path / "news.jsonl").write_text('{"id": "a", "language": "en", "text": "t", "data": {}}\nnot json\n')
    bad_news = run_cli("evaluate", "--model", "x", "--news", str(tmp_path / "news.jsonl"), "--output", out,
                       env=no_server)  # fmt: skip
    assert_clean_error(bad_news, "news.jsonl:")
    no_model = run_cli("evaluate", "--model", str(tmp_path / "nowhere"), "--output", out, env=no_server)
    assert_clean_error(no_model, "no such directory")
    no_tracking = run_cli("evaluate", "--model", "models:/x/1", "--output", out, env=no_server)
    assert_clean_error(no_tracking, "no MLflow tracking server")
    assert not (tmp_path / "out").exists()  # a failed evaluation leaves no output directory behind


def test_reference_mode_registers_where_the_weights_are(tiny_model: Path, evalset: Path, tracking: dict[str, str],
                                                       s3_endpoint: S3Endpoint, tmp_path: Path) -> None:  # fmt: skip
    """A model too large to copy into MLflow is registered by reference to its weights in S3."""
    reference = {**tracking, "DEEPMONEY_TRAIN__MLFLOW__LOG_MODEL": "reference"}
    manifest = _train(tiny_model, evalset, tmp_path / "big", reference, "--max-steps", "2")
    local = run_cli("register", "--run-id", manifest["mlflow_run_id"], "--name", "deepmoney-ref", env=tracking)
    assert_clean_error(local, "pass --source s3://")  # the run's reference is a local path the server refuses
    client = s3_endpoint.client()
    client.create_bucket(Bucket="weights")
    final = tmp_path / "big" / "final"
    for path in final.iterdir():
        client.upload_file(str(path), "weights", f"runs/big/final/{path.name}")
    registered = run_cli("register", "--run-id", manifest["mlflow_run_id"], "--name", "deepmoney-ref", "--source",
                         "s3://weights/runs/big/final", env=tracking)  # fmt: skip
    assert registered.returncode == 0 and registered.stdout.strip() == "1", registered.stderr
    uri = run_cli("registry", "uri", "--name", "deepmoney-ref", "--version", "1", env=tracking)
    assert uri.stdout.strip() == "s3://weights/runs/big/final"
    evaluation = _evaluate("models:/deepmoney-ref/1", evalset, tmp_path / "eval", tracking)
    assert evaluation["metrics"]["perplexity"] > 1.0 and evaluation["training_run_id"] == manifest["mlflow_run_id"]
    assert evaluation["registered"] == ["deepmoney-ref", "1"]


@pytest.mark.parametrize("vocab_size", [400, 12000])  # an embedding smaller, then larger, than the corpus's ids
def test_evaluate_refuses_a_model_whose_tokenizer_made_other_ids(
    vocab_size: int, evalset: Path, tokenizer_corpus: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other-model"
    made = run_cli("model", "init", "--tokenizer-corpus", str(tokenizer_corpus), "--output", str(other),
                   "--vocab-size", str(vocab_size))  # fmt: skip
    assert made.returncode == 0, made.stderr
    result = run_cli("evaluate", "--model", str(other), "--data", str(evalset / "pt"), "--output",
                     str(tmp_path / "eval"), "--no-chain", env={"MLFLOW_TRACKING_URI": ""})  # fmt: skip
    assert_clean_error(
        result, "was tokenized with", "not with the tokenizer of", "its perplexity would measure nothing"
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "eval").exists()


def test_evaluate_takes_each_dataset_once(champion_run, evalset: Path, tmp_path: Path) -> None:
    """`--data PT --data SFT` is the same evaluation set as their parent directory; two of one kind are refused."""
    manifest, _, _ = champion_run
    flags = ("--no-chain", "--max-qa", "2", "--max-new-tokens", "8", "--batch-size", "4")
    quiet = {"MLFLOW_TRACKING_URI": ""}
    both = run_cli("-q", "evaluate", "--model", manifest["final"], "--data", str(evalset / "pt"), "--data",
                   str(evalset / "sft"), "--output", str(tmp_path / "a"), *flags, env=quiet)  # fmt: skip
    parent = run_cli("-q", "evaluate", "--model", manifest["final"], "--data", str(evalset), "--output",
                     str(tmp_path / "b"), *flags, env=quiet)  # fmt: skip
    assert both.returncode == 0 and parent.returncode == 0, both.stderr[-2000:] + parent.stderr[-2000:]
    a, b = (json.loads((tmp_path / n / "manifest.json").read_text()) for n in "ab")
    assert a["eval_digest"] == b["eval_digest"] and a["metrics"] == b["metrics"]
    assert a["metrics"]["qa_count"] == 2 and "perplexity" in a["metrics"]
    printed = dict(line.split() for line in both.stdout.splitlines()[1:] if len(line.split()) == 2)
    assert printed["qa_count"] == "2" and printed["heldout_tokens"] == str(int(a["metrics"]["heldout_tokens"]))
    assert printed["qa_rouge_l"] == f"{a['metrics']['qa_rouge_l']:.4f}"  # counts as integers, scores with decimals
    twice = run_cli("evaluate", "--model", manifest["final"], "--data", str(evalset / "pt"), "--data",
                    str(evalset), "--output", str(tmp_path / "c"), *flags, env=quiet)  # fmt: skip
    assert_clean_error(twice, "names two pt-corpus", "pass one")
    assert not (tmp_path / "c").exists()


def test_offline_training_and_evaluation_sync_then_register_and_promote(
    tiny_model: Path, evalset: Path, tracking: dict[str, str], mlflow_server: str, tmp_path: Path
) -> None:
    """MLflow down for training and evaluation: both finish, keep what MLflow missed, and once it answers
    `track sync` uploads them, so the model is registered and promoted like one tracked live."""
    import mlflow

    dead = {**tracking, "MLFLOW_TRACKING_URI": refused_url()}
    manifest = _train(tiny_model, evalset, tmp_path / "run", dead, "--max-steps", "20", "--learning-rate", "3e-3")
    assert manifest["mlflow_run_id"] is None and manifest["mlflow_pending"] is True
    evaluation = _evaluate(manifest["final"], evalset, tmp_path / "eval", dead)
    assert evaluation["mlflow_run_id"] is None and evaluation["mlflow_pending"] is True
    refused = run_cli("register", "--run-id", "none", "--name", "deepmoney-offline", env=dead)
    assert_clean_error(refused, "does not answer")

    eval_first = run_cli("track", "sync", str(tmp_path / "eval"), env=tracking)
    assert_clean_error(eval_first, "not in MLflow yet", "sync it first")
    synced = run_cli("track", "sync", str(tmp_path / "run"), str(tmp_path / "eval"), env=tracking)
    assert synced.returncode == 0, synced.stderr[-3000:]
    trained = json.loads((tmp_path / "run" / "manifest.json").read_text())
    evaluated = json.loads((tmp_path / "eval" / "manifest.json").read_text())
    assert trained["mlflow_run_id"] and trained["mlflow_pending"] is False and trained["mlflow_model_uri"]
    assert evaluated["mlflow_run_id"] and evaluated["training_run_id"] == trained["mlflow_run_id"]
    assert not (tmp_path / "run" / "mlflow_offline.json").exists()
    assert synced.stdout.splitlines() == [
        f"{tmp_path / 'run'}: synced to MLflow run {trained['mlflow_run_id']}",
        f"{tmp_path / 'eval'}: synced to MLflow run {evaluated['mlflow_run_id']}",
    ]
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(trained["mlflow_run_id"])
    losses = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")]
    local = [(line["step"], line["loss"]) for line in map(json.loads, (tmp_path / "run" / "metrics.jsonl").open())]
    assert [step for step, _ in sorted(losses)] == [step for step, _ in local]  # every step, once
    assert [value for _, value in sorted(losses)] == pytest.approx([value for _, value in local])
    assert run.data.tags["deepmoney.stage"] == "pt" and run.data.params["train.max_steps"] == "20"
    assert run.inputs.dataset_inputs and run.info.status == "FINISHED"

    again = run_cli("track", "sync", str(tmp_path / "run"), env=tracking)
    assert again.stdout.strip() == f"{tmp_path / 'run'}: already in MLflow run {trained['mlflow_run_id']}"
    version = run_cli("register", "--run-id", trained["mlflow_run_id"], "--name", "deepmoney-offline", env=tracking)
    assert version.returncode == 0 and version.stdout.strip() == "1", version.stderr
    promoted = run_cli("promote", "--name", "deepmoney-offline", "--version", "1", env=tracking)
    assert promoted.returncode == 0, promoted.stderr
    assert json.loads(promoted.stdout)["decision"] == CHAMPION
    assert client.get_model_version_by_alias("deepmoney-offline", CHAMPION).version == "1"
