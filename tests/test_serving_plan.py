"""`serve render` sized by the capacity planner: the least tensor parallelism that holds weights plus KV cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deepmoney.errors import UserError
from deepmoney.plan.shapes import from_config, shape
from deepmoney.serving.render import Sizing, layout, render_yaml
from tests import crd_schema
from tests.conftest import assert_clean_error, run_cli
from tests.crd_schema import needs_crds

DEEPSEEK_67B = {"hidden_size": 8192, "intermediate_size": 22016, "num_attention_heads": 64, "num_hidden_layers": 95,
                "num_key_value_heads": 8, "vocab_size": 102400}  # fmt: skip
GB = 1e9
USABLE = {"a100-40": 0.9 * 40 * GB, "h100-80": 0.9 * 80 * GB, "h200-141": 0.9 * 141 * GB}


def _needed_bytes(config: dict, context: int, concurrency: int) -> float:
    """bf16 weights plus bf16 K and V of every layer for every token in flight, counted from the config."""
    h, layers, heads = config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]
    kv_heads, f, vocab = config["num_key_value_heads"], config["intermediate_size"], config["vocab_size"]
    head_dim = h // heads
    per_layer = 2 * h * heads * head_dim + 2 * h * kv_heads * head_dim + 3 * h * f
    weights = 2 * (layers * per_layer + 2 * vocab * h)
    kv_cache = 2 * layers * kv_heads * head_dim * 2 * context * concurrency
    return weights + kv_cache


def _llm(text: str) -> dict:
    objects = [o for o in yaml.safe_load_all(text) if o]
    (llm,) = [o for o in objects if o["metadata"]["labels"]["app.kubernetes.io/component"] == "llm"]
    return llm


@pytest.mark.parametrize(
    ("gpu", "context", "concurrency"),
    [("h100-80", 4096, 1), ("h100-80", 4096, 32), ("a100-40", 4096, 8), ("h200-141", 32768, 16)],
)
def test_planned_tensor_parallel_is_the_least_that_holds_weights_and_kv_cache(
    tmp_path: Path, gpu: str, context: int, concurrency: int
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(DEEPSEEK_67B))
    text = render_yaml(model_uri="s3://models/deepmoney/3", gpus=None, nodes=None, image=None, namespace="ml",
                       model_config=str(config), kind="inferenceservice", market_data_secret=None,
                       served_model_name="deepmoney", sizing=Sizing(gpu, 8, context, concurrency))  # fmt: skip
    args = _llm(text)["spec"]["predictor"]["model"]["args"]
    tp = int(next(a for a in args if a.startswith("--tensor-parallel-size=")).split("=")[1])
    assert f"--max_model_len={context}" in args and f"--max_num_seqs={concurrency}" in args
    need = _needed_bytes(DEEPSEEK_67B, context, concurrency)
    assert need / tp <= USABLE[gpu]
    smaller = [t for t in (1, 2, 4) if t < tp]  # the sizes that split 64 heads and 8 KV heads below tp
    assert all(need / t > USABLE[gpu] for t in smaller), (tp, need / GB)


@needs_crds
def test_a_model_past_one_node_is_planned_over_nodes_and_validates(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(DEEPSEEK_67B))
    for kind in ("inferenceservice", "llminferenceservice"):
        text = render_yaml(model_uri="pvc://models/deepmoney", gpus=None, nodes=None, image=None, namespace="ml",
                           model_config=str(config), kind=kind, market_data_secret=None,
                           served_model_name="deepmoney", sizing=Sizing("h100-80", 8, 4096, 512))  # fmt: skip
        for obj in yaml.safe_load_all(text):
            if obj:
                crd_schema.validate(obj)
        llm = _llm(text)
        need = _needed_bytes(DEEPSEEK_67B, 4096, 512)
        if kind == "inferenceservice":
            worker = llm["spec"]["predictor"]["workerSpec"]
            tp, pp = worker["tensorParallelSize"], worker["pipelineParallelSize"]
        else:
            tp, pp = llm["spec"]["parallelism"]["tensor"], llm["spec"]["parallelism"]["pipeline"]
            env = llm["spec"]["template"]["containers"][0]["env"]
            assert {"name": "VLLM_ADDITIONAL_ARGS", "value": "--max-model-len 4096 --max-num-seqs 512"} in env
        assert tp == 8 and need / (tp * pp) <= USABLE["h100-80"] < need / (tp * (pp - 1))


def test_a_given_layout_is_checked_against_the_same_figures() -> None:
    deepseek = shape("deepseek-llm-67b")
    assert layout(deepseek, 8, None, Sizing("h100-80")) == (8, 1)
    assert layout(deepseek, 16, 2, Sizing("h100-80")) == (16, 2)
    assert layout(deepseek, 2, None, Sizing()) == (2, 1)  # no GPU type: nothing to check against
    with pytest.raises(UserError, match=r"--gpus 2 h100-80 .* cannot hold .* the planner needs 4 GPUs") as caught:
        layout(deepseek, 2, None, Sizing("h100-80"))
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="the planner needs 8 GPUs"):
        layout(deepseek, 4, None, Sizing("h100-80", context=32768, concurrency=16))


@pytest.mark.parametrize(
    ("model", "gpus", "nodes", "sizing", "message"),
    [
        (None, None, None, Sizing(), r"give --gpus N, or --gpu TYPE with --model-config"),
        (None, 8, None, Sizing("h100-80"), r"--gpu needs --model-config"),
        ("deepseek-llm-67b", None, None, Sizing(), r"give --gpus N, or --gpu TYPE"),
        ("deepseek-llm-67b", None, 2, Sizing("h100-80"), r"--nodes goes with --gpus"),
        ("deepseek-llm-67b", None, None, Sizing("b200"), r"--gpu 'b200': unknown GPU"),
        ("deepseek-llm-67b", None, None, Sizing("a100-40", 8, 131072, 4096), r"does not fit 8 x 64 a100-40"),
        ("deepseek-llm-67b", None, None, Sizing("h100-80", gpus_per_node=0), r"--gpus-per-node 0"),
    ],
)
def test_what_cannot_be_planned_is_refused_in_one_line(
    model: str | None, gpus: int | None, nodes: int | None, sizing: Sizing, message: str
) -> None:
    with pytest.raises(UserError, match=message) as caught:
        layout(shape(model) if model else None, gpus, nodes, sizing)
    assert "\n" not in str(caught.value)


def test_a_config_with_its_own_head_width_is_counted_with_it() -> None:
    config = {**DEEPSEEK_67B, "head_dim": 256}
    wide = from_config(config, "wide")
    assert wide.head_dim == 256 and wide.parameters > shape("deepseek-llm-67b").parameters
    with pytest.raises(UserError, match=r"no 'num_attention_heads'"):
        from_config({"hidden_size": 8}, "x", "--model-config x")
    with pytest.raises(UserError, match="JSON object"):
        from_config([1, 2], "x", "--model-config x")


def test_serve_render_plans_from_the_command_line(tmp_path: Path) -> None:
    planned = run_cli("serve", "render", "--model-uri", "s3://m/deepmoney/3", "--model-config", "deepseek-llm-67b",
                      "--gpu", "h100-80", "--concurrency", "1")  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    args = _llm(planned.stdout)["spec"]["predictor"]["model"]["args"]
    tp = int(next(a for a in args if a.startswith("--tensor-parallel-size=")).split("=")[1])
    need = _needed_bytes(DEEPSEEK_67B, 4096, 1)
    assert need / tp <= USABLE["h100-80"] < need / (tp // 2)
    assert "planned tensor parallel" in planned.stderr
    assert_clean_error(run_cli("serve", "render", "--model-uri", "s3://m/x", "--model-config", "deepseek-llm-67b",
                               "--gpu", "h100-80", "--gpus", "2"), "cannot hold", "omit --gpus")  # fmt: skip
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    assert_clean_error(run_cli("serve", "render", "--model-uri", "s3://m/x", "--model-config", str(bad),
                               "--gpus", "8"), "not a readable config.json")  # fmt: skip
