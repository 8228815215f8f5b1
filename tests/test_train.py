"""`deepmoney train` end to end: 2-process torchrun on CPU with DeepSpeed ZeRO-2/3, pt and sft, full and
LoRA, a real MLflow tracking server on loopback (sqlite + moto S3 artifacts), and a rank SIGKILLed mid-run.

The runs share one pt corpus and one synthesized sft dataset. `pt_run` is the uninterrupted
reference: the killed run and the run resumed past damaged checkpoints must end where it ended.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepmoney.config import load_config, overrides_from_flags
from deepmoney.data.pt import build_pt
from deepmoney.llm.scripted_server import ScriptedOpenAIServer
from tests.conftest import ROOT, SAMPLE_CORPUS, CliResult, S3Endpoint, _free_port, refused_url, run_cli
from tests.test_synth import MODELS, ROLE_ARGS, scripted_analyst

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SAMPLE_CORPUS.is_dir(), reason="sample corpus not present")]

PT_FLAGS = ("--stage", "pt", "--launcher", "local", "--nproc", "2", "--zero", "2", "--max-steps", "30",
            "--micro-batch", "2", "--learning-rate", "2e-3")  # fmt: skip
QUIET_MLFLOW = {"MLFLOW_TRACKING_URI": "", "DEEPMONEY_TRAIN__LOG_EVERY": "5"}


def train_cli(model: Path, data: Path, output: Path, *flags: str, env: dict[str, str] | None = None) -> CliResult:
    return run_cli("train", "--model", str(model), "--data", str(data), "--output", str(output), *flags,
                   env={**QUIET_MLFLOW, **(env or {})}, timeout=600)  # fmt: skip


def manifest_of(output: Path) -> dict:
    return json.loads((output / "manifest.json").read_text())


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> int:
    """How many tensors differ between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return sum(not torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def pt_data(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    out = tmp_path_factory.mktemp("train") / "pt"
    config = load_config(overrides=overrides_from_flags(**{"data.block_size": 128, "data.workers": 1}))
    build_pt([str(SAMPLE_CORPUS)], str(tiny_model), str(out), config, quiet=True)
    return out


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sft dataset made by the real `deepmoney synth` against a scripted OpenAI-compatible server."""
    out = tmp_path_factory.mktemp("train") / "sft"
    with ScriptedOpenAIServer(responder=scripted_analyst, models=MODELS) as server:
        roles = [a.format(url=server.base_url) for a in ROLE_ARGS]
        result = run_cli("synth", "--input", str(SAMPLE_CORPUS), "--output", str(out), *roles,
                         "--questions-per-chapter", "3", "--max-chapters", "40", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def pt_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, pt_data: Path, mlflow_server: str) -> Path:
    """The uninterrupted reference run: pt, ZeRO-2, full parameters, tracked by the MLflow server."""
    out = tmp_path_factory.mktemp("train") / "pt-zero2"
    tracking = {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    result = train_cli(tiny_model, pt_data, out, *PT_FLAGS, "--save-every", "10", env=tracking)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_pt_zero2_full_trains_and_logs_to_mlflow(pt_run: Path, tiny_model: Path, pt_data: Path, mlflow_server: str):
    import mlflow
    from transformers import AutoModelForCausalLM

    m = manifest_of(pt_run)
    assert m["steps"] == 30 and m["world_size"] == 2 and m["zero_stage"] == 2 and m["resumes"] == []
    assert m["tokens"] == 30 * m["global_batch"] * 128 and m["tokens_per_second"] > 0
    assert m["final_loss"] < m["first_loss"] - 0.5, (m["first_loss"], m["final_loss"])
    assert changed(weights(pt_run / "final"), weights(tiny_model)) > 10
    AutoModelForCausalLM.from_pretrained(pt_run / "final", local_files_only=True)
    assert sorted(p.name for p in (pt_run / "checkpoints").glob("step-*")) == [
        "step-00000010", "step-00000020", "step-00000030"]  # fmt: skip
    lines = [json.loads(line) for line in (pt_run / "metrics.jsonl").open()]
    assert [r["step"] for r in lines] == [1, 5, 10, 15, 20, 25, 30]

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(m["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.zero.stage"] == "2" and run.data.params["world_size"] == "2"
    assert run.data.tags["deepmoney.stage"] == "pt"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [h.step for h in history] == [1, 5, 10, 15, 20, 25, 30]
    assert history[-1].value == pytest.approx(m["final_loss"])
    assert {"learning_rate", "tokens_per_second", "grad_norm"} <= run.data.metrics.keys()
    assert any(k.startswith("system/") for k in run.data.metrics), run.data.metrics.keys()
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.digest == manifest_of(pt_data)["fingerprint"][:36]
    model_id = m["mlflow_model_uri"].removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == run.info.run_id and logged.status.name == "READY"
    assert {"MLmodel", "model"} <= {a.path for a in client.list_logged_model_artifacts(model_id)}
    assert any(a.path == "deepspeed_config.json" for a in client.list_artifacts(run.info.run_id))

    again = train_cli(tiny_model, pt_data, pt_run, *PT_FLAGS, "--save-every", "10")
    assert again.returncode == 0 and "already holds this finished run" in again.stderr


def _rank_pids(output: Path) -> list[int]:
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd[1:3] == ["-m", "deepmoney.train.torchrun"] and str(output / "train-config.yaml") in cmd:
            return [child.pid for child in proc.children()]
    return []


def _step(output: Path) -> int:
    try:
        return json.loads((output / "progress.json").read_text())["step"]
    except (OSError, ValueError):
        return 0


def test_sigkill_of_one_rank_resumes_from_the_newest_checkpoint(
    tmp_path: Path, tiny_model: Path, pt_data: Path, pt_run: Path
) -> None:
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "deepmoney", "train", "--model", str(tiny_model), "--data", str(pt_data),
               "--output", str(out), *PT_FLAGS, "--save-every", "5"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **QUIET_MLFLOW}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while _step(out) < 7 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    pids = _rank_pids(out)
    assert len(pids) == 2 and _step(out) < 30, "the run ended before it could be interrupted"
    os.kill(pids[1], 9)
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr[-4000:]
    assert "restarting the ranks from the newest checkpoint (restart 1 of 3)" in stderr
    m = manifest_of(out)
    assert m["steps"] == manifest_of(pt_run)["steps"] == 30
    [resume] = m["resumes"]
    assert resume["from_step"] >= 5 and resume["from_step"] % 5 == 0 and resume["lost_steps"] <= 5
    # The data position, RNG and optimizer state came back exactly: the result is the uninterrupted run's.
    assert m["final_loss"] == pytest.approx(manifest_of(pt_run)["final_loss"], abs=1e-4)
    reference = weights(pt_run / "final")
    for name, tensor in weights(out / "final").items():
        torch.testing.assert_close(tensor, reference[name], atol=1e-5, rtol=1e-4)
    assert "trained pt: 30 steps" in stdout


def test_damaged_checkpoints_are_skipped_for_the_one_before(
    tmp_path: Path, tiny_model: Path, pt_data: Path, pt_run: Path
) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(pt_run / "checkpoints", out / "checkpoints")
    shutil.copy(pt_run / "run.json", out / "run.json")  # the same run, started elsewhere: resumed, not refused
    newest = out / "checkpoints" / "step-00000030"
    (newest / "complete.json").unlink()  # killed while writing: incomplete
    middle = out / "checkpoints" / "step-00000020"
    states = middle / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    states.write_bytes(b"\0" * states.stat().st_size)  # same size, unreadable
    result = train_cli(tiny_model, pt_data, out, *PT_FLAGS, "--save-every", "10")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "skipping checkpoint" in result.stderr and "incomplete" in result.stderr
    assert "failed to load" in result.stderr
    m = manifest_of(out)
    assert m["steps"] == 30 and m["resumes"][0]["from_step"] == 10
    assert m["final_loss"] == pytest.approx(manifest_of(pt_run)["final_loss"], abs=1e-4)


def test_pt_zero3_lora_merges_adapters_into_the_output(tmp_path: Path, tiny_model: Path, pt_data: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "pt-lora"
    flags = ("--stage", "pt", "--launcher", "local", "--nproc", "2", "--zero", "3", "--lora", "--max-steps", "16",
             "--micro-batch", "2", "--learning-rate", "1e-2")  # fmt: skip
    result = train_cli(tiny_model, pt_data, out, *flags)
    assert result.returncode == 0, result.stderr[-4000:]
    m = manifest_of(out)
    assert m["zero_stage"] == 3 and m["lora"]["rank"] == 16 and m["steps"] == 16
    assert m["final_loss"] < m["first_loss"]
    assert (out / "adapter" / "adapter_config.json").is_file()
    merged, base = weights(out / "final"), weights(tiny_model)
    assert not any("lora" in k for k in merged)
    projections = [k for k in base if k.endswith("q_proj.weight")]
    assert all(not torch.equal(merged[k], base[k]) for k in projections)
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])  # frozen, not adapted
    model = AutoModelForCausalLM.from_pretrained(out / "final", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(out / "final", local_files_only=True)
    ids = tokenizer("Copper", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4


def test_sft_zero3_full_on_the_synthesized_dataset(tmp_path: Path, tiny_model: Path, sft_data: Path) -> None:
    from transformers import AutoTokenizer

    out = tmp_path / "sft-full"
    flags = ("--stage", "sft", "--launcher", "local", "--nproc", "2", "--zero", "3", "--max-steps", "16",
             "--micro-batch", "2", "--block-size", "512", "--learning-rate", "2e-3")  # fmt: skip
    result = train_cli(tiny_model, sft_data, out, *flags)
    assert result.returncode == 0, result.stderr[-4000:]
    m = manifest_of(out)
    assert m["stage"] == "sft" and m["zero_stage"] == 3 and m["steps"] == 16
    assert m["data"]["uri"].endswith("sharegpt.jsonl") and m["data"]["padding_share"] < 0.15
    assert m["final_loss"] < m["first_loss"] - 0.5, (m["first_loss"], m["final_loss"])
    assert changed(weights(out / "final"), weights(tiny_model)) > 10
    tokenizer = AutoTokenizer.from_pretrained(out / "final", local_files_only=True)
    assert tokenizer.chat_template  # the served model renders chats the way it was trained


def test_sft_zero2_lora_with_mlflow_unreachable(tmp_path: Path, tiny_model: Path, sft_data: Path) -> None:
    out = tmp_path / "sft-lora"
    flags = ("--stage", "sft", "--launcher", "local", "--nproc", "2", "--zero", "2", "--lora", "--max-steps", "12",
             "--micro-batch", "2", "--block-size", "512", "--learning-rate", "1e-2")  # fmt: skip
    dead = refused_url()
    result = train_cli(tiny_model, sft_data / "alpaca.jsonl", out, *flags, env={"MLFLOW_TRACKING_URI": dead})
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stderr.count(f"MLflow at {dead} failed") == 1
    m = manifest_of(out)
    assert m["mlflow_run_id"] is None and m["data"]["uri"].endswith("alpaca.jsonl")
    assert m["final_loss"] < m["first_loss"]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()] == [1, 5, 10, 12]
    # Kept for later: the run it would have had, its dataset and its model, so that `track sync` can upload it.
    assert m["mlflow_pending"] is True and "mlflow run    (kept offline: deepmoney track sync)" in result.stdout
    # The ranks' progress bar passes through the launcher intact: it redraws in place (\r), not a line each time.
    bar_lines = [line for line in result.stderr.split("\n") if "train sft" in line]
    assert "\r" in result.stderr and 1 <= len(bar_lines) <= 3
    offline = json.loads((out / "mlflow_offline.json").read_text())
    assert offline["run"]["tags"]["deepmoney.stage"] == "sft" and offline["run"]["params"]["train.lora.enabled"]
    assert offline["datasets"][0]["info"]["stage"] == "sft" and offline["model"]["mode"] == "copy"


def _upload(client, directory: Path, bucket: str, prefix: str) -> str:
    for path in directory.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory).as_posix()}")
    return f"s3://{bucket}/{prefix}"


def test_model_data_and_checkpoints_on_s3(tmp_path: Path, tiny_model: Path, pt_data: Path, s3_endpoint: S3Endpoint):
    """A pod with nothing local: base model and corpus from S3, checkpoints copied there and resumed from there."""
    client = s3_endpoint.client()
    client.create_bucket(Bucket="train")
    model = _upload(client, tiny_model, "train", "models/tiny")
    data = _upload(client, pt_data, "train", "corpora/pt")
    out = tmp_path / "s3run"
    flags = ("--stage", "pt", "--launcher", "local", "--nproc", "2", "--zero", "2", "--max-steps", "10",
             "--micro-batch", "2", "--save-every", "5")  # fmt: skip
    env = {"DEEPMONEY_TRAIN__CHECKPOINT_URI": "s3://train/checkpoints/run1", "DEEPMONEY_TRAIN__KEEP_LAST": "1"}
    first = run_cli("train", "--model", model, "--data", data, "--output", str(out), *flags,
                    env={**QUIET_MLFLOW, **env}, timeout=600)  # fmt: skip
    assert first.returncode == 0, first.stderr[-4000:]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="train", Prefix="checkpoints/run1/")["Contents"]]
    assert "checkpoints/run1/step-00000010/complete.json" in keys
    assert not any("step-00000005" in k for k in keys)  # keep_last applies to the copies too
    assert manifest_of(out)["data"]["uri"] == data
    shutil.rmtree(out)  # the volume is gone; S3 still has the checkpoint
    second = run_cli("train", "--model", model, "--data", data, "--output", str(out), *flags,
                     env={**QUIET_MLFLOW, **env}, timeout=600)  # fmt: skip
    assert second.returncode == 0, second.stderr[-4000:]
    assert "fetched checkpoint step-00000010" in second.stderr
    m = manifest_of(out)
    assert m["steps"] == 10 and m["resumes"][0]["from_step"] == 10
    assert m["final_loss"] == pytest.approx(manifest_of(tmp_path / "s3run")["final_loss"])


@pytest.mark.parametrize(("entrypoint", "operator_sets_rank"), [(["-m", "deepmoney.train"], False),
                                                                  (["-m", "deepmoney", "train"], True)],
                         ids=["trainjob-node-module-entrypoint", "pytorchjob-master-deepmoney-train"])  # fmt: skip
def test_operator_pod_variables_start_torchrun(tmp_path: Path, tiny_model: Path, pt_data: Path,
                                               entrypoint: list[str], operator_sets_rank: bool) -> None:  # fmt: skip
    """A Trainer v2 node gets PET_* variables; a PyTorchJob's Master also the node's RANK and the WORLD_SIZE of
    all ranks. Either way, either entrypoint becomes the torchrun they describe."""
    out = tmp_path / "pet"
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps({"train": {"stage": "pt", "model": str(tiny_model), "data": str(pt_data),
                                            "output": str(out), "max_steps": 4, "micro_batch": 2}}))  # fmt: skip
    port = str(_free_port())
    pod = {"PET_NNODES": "1", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "127.0.0.1",
           "PET_MASTER_PORT": port, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}  # fmt: skip
    if operator_sets_rank:
        pod |= {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
           **QUIET_MLFLOW, **pod}  # fmt: skip
    command = [sys.executable, *entrypoint, "--config", str(config)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    m = manifest_of(out)
    assert m["world_size"] == 2 and m["steps"] == 4
    assert "trained pt: 4 steps" in result.stdout  # rank 0's summary, once
    assert result.stdout.count("trained pt") == 1
