"""The capacity planner against published figures: the ZeRO paper's model-state formulas (its Figure 1),
LLaMA-Factory's hardware table (full-parameter AMP ~18 bytes/parameter, pure bf16 ~8), deepseek-llm-67b's
size, and the 67B recipe (8 x 8 H100, ZeRO-3 with activation checkpointing) as the setup it recommends."""

from __future__ import annotations

import json

import pytest
import yaml

from deepmoney.errors import UserError
from deepmoney.plan import memory
from deepmoney.plan.hardware import GB, gpu
from deepmoney.plan.plan import Request, options, recommended, serving
from deepmoney.plan.shapes import shape
from tests.conftest import ROOT, assert_clean_error, run_cli


@pytest.mark.parametrize(("stage", "published_gb"), [(0, 120), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_model_states_match_the_zero_paper(stage: int, published_gb: float) -> None:
    # ZeRO (Rajbhandari et al. 2020), Figure 1: a 7.5B-parameter model on 64 data-parallel GPUs, K = 12
    states = memory.model_states(7.5e9, 64, stage)
    assert states.gpu / GB == pytest.approx(published_gb, rel=0.02)


@pytest.mark.parametrize(
    ("model", "precision", "published_gb"),
    [("llama-2-70b", "amp", 1200), ("llama-2-70b", "pure_bf16", 600), ("llama-2-7b", "amp", 120)],
)
def test_full_parameter_memory_matches_llama_factorys_table(model: str, precision: str, published_gb: float) -> None:
    # LLaMA-Factory's README, "Hardware Requirement": Full (AMP) 70B 1200GB, 7B 120GB; Full (pure_bf16) 70B 600GB
    states = memory.model_states(shape(model).parameters, 1, 0, precision)
    assert states.gpu / GB == pytest.approx(published_gb, rel=0.10)
    per_parameter = states.gpu / shape(model).parameters
    assert per_parameter == {"amp": 18, "pure_bf16": 8}[precision]


def test_the_recipe_models_shape() -> None:
    deepseek = shape("deepseek-llm-67b")
    assert deepseek.parameters == pytest.approx(67e9, rel=0.015)
    # a layer keeps 12 h + 4 h_kv + 8 f bytes per token, which for this shape is Korthikanti et al.'s 34 h
    assert memory.activation_bytes_per_token_layer(deepseek) == 34 * 8192
    # K and V of 95 layers x 8 KV heads x 128 wide, bf16
    assert memory.kv_cache_bytes_per_token(deepseek) == 2 * 95 * 8 * 128 * 2


def test_the_67b_recipe_is_the_setup_recommended_for_its_pool() -> None:
    recipe = yaml.safe_load((ROOT / "recipes" / "deepseek-67b-pt.yaml").read_text())["train"]
    request = Request(shape("deepseek-llm-67b"), gpu("h100-80"), nodes=8, seq_len=4096,
                      micro_batch=recipe["micro_batch"], tokens=1e11)  # fmt: skip
    found = {(o.zero_stage, o.offload, o.gradient_checkpointing): o for o in options(request)}
    assert len(found) == 10
    best = recommended(list(found.values()))
    assert (best.zero_stage, best.offload, best.gradient_checkpointing) == (
        recipe["zero"]["stage"], "none", recipe["gradient_checkpointing"])  # fmt: skip
    assert not found[(3, "none", False)].fits  # 95 layers x 4096 tokens of activations do not fit without recompute
    assert not any(o.fits for key, o in found.items() if key[0] == 2)  # unsharded 16-bit weights alone are 135 GB
    assert found[(3, "optimizer", True)].cpu_bytes_per_node == pytest.approx(12 * request.shape.parameters / 8)
    assert best.days == pytest.approx(1e11 / best.tokens_per_second / 86400)
    one_node = Request(shape("deepseek-llm-67b"), gpu("h100-80"), nodes=1, tokens=1e11)
    assert recommended(options(one_node)).offload != "none"  # eight GPUs hold it only with offload


def test_serving_needs_the_least_parallelism_that_holds_weights_and_kv_cache() -> None:
    deepseek, h100 = shape("deepseek-llm-67b"), gpu("h100-80")
    alone = serving(deepseek, h100, context=4096, concurrency=1)
    assert alone.tensor_parallel == 2 and alone.pipeline_parallel == 1  # 135 GB of weights need two 72 GB GPUs
    busy = serving(deepseek, h100, context=4096, concurrency=32)
    assert busy.kv_cache_bytes == 32 * 4096 * 389_120 and busy.tensor_parallel == 4
    assert busy.bytes_per_gpu <= busy.usable_bytes
    huge = serving(deepseek, gpu("a100-40"), context=32768, concurrency=64)
    assert huge.tensor_parallel == 8 and huge.pipeline_parallel > 1 and huge.fits


def test_bad_requests_are_one_line() -> None:
    with pytest.raises(UserError, match="neither a preset"):
        shape("gpt-9")
    with pytest.raises(UserError, match="unknown GPU"):
        gpu("v100")
    with pytest.raises(UserError, match="--mfu"):
        Request(shape("llama-2-7b"), gpu("h100-80"), nodes=1, mfu=2.0)


def test_plan_from_the_command_line() -> None:
    result = run_cli("plan", "--model", "deepseek-llm-67b", "--gpu", "h100-80", "--nodes", "8", "--seq-len", "4096",
                     "--tokens", "1e11")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "recommended: ZeRO-3, offload none, with activation checkpointing" in result.stdout
    assert "serving: tensor parallel" in result.stdout and len(result.stdout.splitlines()) == 16
    rows = [json.loads(line) for line in run_cli("plan", "--model", "deepseek-llm-67b", "--gpu", "h100-80",
                                                 "--nodes", "4", "--json").stdout.splitlines()]  # fmt: skip
    assert len(rows) == 11 and "serving" in rows[-1]
    assert all({"zero_stage", "offload", "bytes_per_gpu", "fits"} <= set(r) for r in rows[:-1])
    assert_clean_error(run_cli("plan", "--model", "deepseek-llm-67b", "--gpu", "tpu"), "unknown GPU")
