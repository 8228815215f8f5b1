"""The parts of training that need no process group: the DeepSpeed config, data order, the schedule,
the distributed environment, failure reports, and the one-line refusals of bad input."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from deepmoney.config import load_config
from deepmoney.data.pt import build_pt
from deepmoney.errors import UserError
from deepmoney.launch.local import root_cause
from deepmoney.model_init import init_model
from deepmoney.train.datasets import StepBatches
from deepmoney.train.distributed import dist_env, needs_torchrun, torchrun_argv
from deepmoney.train.ds_config import batching, deepspeed_config, resolve_precision
from deepmoney.train.trainer import lr_lambda
from tests.conftest import assert_clean_error, refused_url, run_cli


def _train(**values):
    return load_config(overrides={"train": values}).train


@pytest.mark.parametrize(("stage", "offload"), [(0, False), (1, False), (2, False), (3, False), (2, True), (3, True)])
def test_generated_deepspeed_config_parses_with_deepspeed(stage: int, offload: bool) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    train = _train(zero={"stage": stage, "offload_optimizer": offload, "offload_params": offload and stage == 3},
                   micro_batch=3, grad_accum=2)  # fmt: skip
    precision = "bf16" if offload else "fp32"
    generated = deepspeed_config(train, batching(train, 1), precision, 3e-4, client_optimizer=not offload)
    parsed = DeepSpeedConfig(generated)  # DeepSpeed's own parser; without a process group it sees 1 rank
    assert parsed.zero_optimization_stage == stage
    assert (parsed.train_batch_size, parsed.gradient_accumulation_steps) == (6, 2)
    assert parsed.bfloat16_config.enabled == offload
    assert (parsed.zero_config.offload_optimizer is not None) == offload
    assert parsed.optimizer_name == ("adamw" if offload else None)
    assert parsed.zero_allow_untested_optimizer == (not offload)
    if stage == 3:
        assert parsed.zero_config.gather_16bit_weights_on_model_save


def test_batch_arithmetic_and_impossible_combinations() -> None:
    assert batching(_train(micro_batch=2, global_batch=16), 4).grad_accum == 2
    with pytest.raises(UserError, match=r"global_batch=7 is not a multiple of micro_batch x world size = 2 x 2"):
        batching(_train(micro_batch=2, global_batch=7), 2)
    with pytest.raises(UserError, match="offload_params needs ZeRO stage 3"):
        deepspeed_config(_train(zero={"stage": 2, "offload_params": True}), batching(_train(), 1), "fp32", 1e-4, True)
    with pytest.raises(UserError, match="needs a GPU"):
        resolve_precision(_train(precision="bf16"), cuda=False, bf16_supported=False)
    assert resolve_precision(_train(), cuda=True, bf16_supported=True) == "bf16"
    assert resolve_precision(_train(), cuda=False, bf16_supported=False) == "fp32"


def test_data_order_is_a_function_of_the_step() -> None:
    size, micro, accum, world = 50, 2, 3, 2
    full = [list(StepBatches(size, micro, accum, r, world, seed=7, start_step=0, total_steps=20)) for r in range(world)]
    for step in range(20):  # each step's global batch is split across ranks without overlap
        blocks = [i for r in range(world) for b in full[r][step * accum : (step + 1) * accum] for i in b]
        assert len(blocks) == len(set(blocks)) == micro * accum * world
    resumed = list(StepBatches(size, micro, accum, 1, world, seed=7, start_step=13, total_steps=20))
    assert resumed == full[1][13 * accum :]
    sampler = StepBatches(size, micro, accum, 0, world, seed=7, start_step=0, total_steps=20)
    per_epoch = size // (micro * accum * world)  # 4 whole steps, then a new permutation
    first_epoch = {i for s in range(per_epoch) for i in sampler.step_indices(s)}
    assert len(first_epoch) == per_epoch * 12
    assert sampler.step_indices(per_epoch) != sampler.step_indices(0)
    with pytest.raises(UserError, match="larger than the dataset"):
        StepBatches(10, 4, 1, 0, 4, seed=0, start_step=0, total_steps=1)


def test_learning_rate_schedule() -> None:
    cosine = lr_lambda(total=100, warmup=10, schedule="cosine", min_ratio=0.1)
    assert [round(cosine(s), 3) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    after = [cosine(s) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(after))
    assert after[-1] == pytest.approx(0.1)
    linear = lr_lambda(total=100, warmup=0, schedule="linear", min_ratio=0.0)
    assert linear(50) == pytest.approx(0.5) and linear(100) == pytest.approx(0.0)
    assert lr_lambda(100, 0, "constant", 0.1)(77) == 1.0


def test_distributed_environment_from_torchrun_and_trainer_pods() -> None:
    env = dist_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert (env.rank, env.world_size, env.local_rank, env.is_main, env.distributed) == (3, 8, 1, False, True)
    assert dist_env({}).world_size == 1
    with pytest.raises(ValueError, match="inconsistent"):
        dist_env({"RANK": "4", "WORLD_SIZE": "2"})
    pod = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "8", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "job-node-0-0",
           "PET_MASTER_PORT": "29400"}  # fmt: skip
    master = {**pod, "RANK": "1", "WORLD_SIZE": "16"}  # a PyTorchJob pod: the node's RANK, all ranks' WORLD_SIZE
    assert needs_torchrun(pod) and needs_torchrun(master)
    assert not needs_torchrun({**master, "LOCAL_RANK": "0"})  # a process torchrun started
    assert torchrun_argv(pod, max_restarts=2) == ["--nnodes=2", "--nproc-per-node=8", "--max-restarts=2",
                                                  "--node-rank=1", "--master-addr=job-node-0-0",
                                                  "--master-port=29400"]  # fmt: skip


def test_root_cause_names_the_rank_and_its_error() -> None:
    log = [
        "[rank0]: Traceback (most recent call last):",
        "[rank0]: RuntimeError: Connection closed by peer [127.0.0.1]:5854",
        "[rank1]: ValueError: bad block",
        "Root Cause (first observed failure):",
        "[0]:",
        "  time      : 2026-11-24_18:13:05",
        "  rank      : 1 (local_rank: 1)",
        "  exitcode  : 1 (pid: 24026)",
        "============================================================",
    ]
    assert root_cause([line.strip() for line in log]) == "rank 1: ValueError: bad block"
    killed = [line.replace("exitcode  : 1", "exitcode  : -9") for line in log if "rank1" not in line]
    killed.insert(-1, "traceback : Signal 9 (SIGKILL) received by PID 24026")
    assert root_cause([line.strip() for line in killed]) == "rank 1 died (Signal 9 (SIGKILL) received by PID 24026)"


@pytest.fixture(scope="module")
def small_pt(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tokenizer_corpus: Path) -> Path:
    out = tmp_path_factory.mktemp("units") / "pt"
    config = load_config(overrides={"data": {"block_size": 64, "workers": 1, "min_chars": 10}})
    build_pt([str(tokenizer_corpus)], str(tiny_model), str(out), config, quiet=True)
    return out


@pytest.fixture(scope="module")
def other_tokenizer_pt(tmp_path_factory: pytest.TempPathFactory, tokenizer_corpus: Path) -> Path:
    root = tmp_path_factory.mktemp("units-other")
    config = load_config(overrides={"model": {"vocab_size": 400, "seed": 3},
                                    "data": {"block_size": 64, "workers": 1, "min_chars": 10}})  # fmt: skip
    init_model([str(tokenizer_corpus)], str(root / "model"), config)
    build_pt([str(tokenizer_corpus)], str(root / "model"), str(root / "pt"), config, quiet=True)
    return root / "pt"


def _train_cli(tiny_model: Path, data: Path, output: Path, *flags: str, env: dict[str, str] | None = None):
    return run_cli("train", "--model", str(tiny_model), "--data", str(data), "--output", str(output), "--nproc", "2",
                   *flags, env={"MLFLOW_TRACKING_URI": "", **(env or {})})  # fmt: skip


def test_bad_input_is_refused_before_any_rank_starts(
    tmp_path: Path, tiny_model: Path, small_pt: Path, other_tokenizer_pt: Path
) -> None:
    out = tmp_path / "out"
    assert_clean_error(run_cli("train", "--stage", "pt", "--model", str(tiny_model)), "missing --data, --output")
    assert_clean_error(_train_cli(tiny_model, tmp_path / "nowhere", out), "training data not found")
    assert_clean_error(_train_cli(tmp_path, small_pt, out), "no Hugging Face model", "no config.json")
    assert_clean_error(_train_cli(tiny_model, tmp_path, out, "--stage", "pt"), "is not a pt corpus")
    assert_clean_error(_train_cli(tiny_model, small_pt, out, "--stage", "sft"), "holds a pt-corpus, not an sft dataset")
    assert_clean_error(_train_cli(tiny_model, other_tokenizer_pt, out), "was tokenized with", "rebuild the corpus")
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"instruction": "Q?", "input": "", "output": "A."}) + "\n")
    assert_clean_error(_train_cli(tiny_model, sft, out, "--stage", "sft", "--block-size", "4096"),
                       "exceeds the model's 2048 positions")  # fmt: skip
    assert_clean_error(_train_cli(tiny_model, small_pt, out, "--micro-batch", "100000"),
                       "not enough memory for micro-batch 100000", "lower --micro-batch")  # fmt: skip
    assert_clean_error(_train_cli(tiny_model, small_pt, out, "--micro-batch", "2",
                                  env={"DEEPMONEY_TRAIN__GLOBAL_BATCH": "7"}), "is not a multiple of")  # fmt: skip
    assert_clean_error(_train_cli(tiny_model, small_pt, out, env={"DEEPMONEY_TRAIN__ZERO__OFFLOAD_PARAMS": "true"}),
                       "offload_params needs ZeRO stage 3")  # fmt: skip
    assert_clean_error(_train_cli(tiny_model, small_pt, out, "--zero", "5"), "train.zero.stage")
    assert_clean_error(_train_cli(tiny_model, small_pt, out, "--launcher", "slurm"), "expected auto, local or none")
    assert not out.exists()  # nothing half-made
    out.mkdir()
    (out / "final").mkdir()
    other = {"kind": "model", "fingerprint": "another run", "settings": {"train.micro_batch": 1}}
    (out / "manifest.json").write_text(json.dumps(other))
    assert_clean_error(_train_cli(tiny_model, small_pt, out), "holds a finished model made with other inputs or "
                       "settings", "train.micro_batch (1 -> 4)", "--overwrite")  # fmt: skip
    (out / "manifest.json").unlink()
    (out / "notes.txt").write_text("somebody else's")
    assert_clean_error(_train_cli(tiny_model, small_pt, out), "is not empty", "not a deepmoney output")
    assert (out / "notes.txt").read_text() == "somebody else's"


def test_a_small_dataset_is_refused_once_before_any_rank_starts(tmp_path: Path, tiny_model: Path) -> None:
    """The batch arithmetic against the dataset is checked by the launcher: one line, and nothing is left behind."""
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"instruction": f"Q{i}?", "input": "", "output": "A."}) + "\n" for i in range(3)))
    result = _train_cli(tiny_model, sft, tmp_path / "out", "--stage", "sft")  # the default micro-batch of 4
    assert_clean_error(result, "is larger than the dataset")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: a global batch of 8 blocks")  # printed once
    assert not (tmp_path / "out").exists()  # no launcher.log, no train-config.yaml, no run.json


def test_an_unreachable_model_uri_is_refused_before_any_rank_starts(tmp_path: Path, small_pt: Path) -> None:
    # The endpoint setting itself: the session's moto fixture exports DEEPMONEY_STORAGE__S3_ENDPOINT_URL,
    # which outranks AWS_ENDPOINT_URL.
    dead = {"DEEPMONEY_STORAGE__S3_ENDPOINT_URL": refused_url(), "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "x", "DEEPMONEY_STORAGE__MAX_ATTEMPTS": "1"}  # fmt: skip
    result = run_cli("train", "--model", "s3://models/base", "--data", str(small_pt), "--output",
                     str(tmp_path / "out"), env={"MLFLOW_TRACKING_URI": "", **dead})  # fmt: skip
    assert_clean_error(result, "cannot reach S3")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_a_ranks_user_error_stops_the_launcher_at_once(tmp_path: Path, tiny_model: Path, small_pt: Path) -> None:
    """Found only by the ranks (building the LoRA model): exit code 2, reported once, not retried."""
    bad_lora = {"DEEPMONEY_TRAIN__LORA__TARGET_MODULES": '["no_such_layer"]'}
    result = _train_cli(tiny_model, small_pt, tmp_path / "out", "--lora", "--micro-batch", "1", env=bad_lora)
    assert_clean_error(result, "train.lora.target_modules")
    assert result.returncode == 2 and "restarting the ranks" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0]  # both ranks said it; shown once


def test_the_launcher_splits_rank_output_keeping_carriage_returns() -> None:
    from deepmoney.launch.local import _split_keeping_ends

    assert _split_keeping_ends(b"a\rb\nc") == [b"a\r", b"b\n", b"c"]
    assert _split_keeping_ends(b"done\n") == [b"done\n", b""]
