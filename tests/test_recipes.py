"""Every recipe under recipes/ loads and validates, and the 67B ones fit the cluster they name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deepmoney.config import load_config
from deepmoney.models.shape import model_shape
from deepmoney.train.ds_config import batching, deepspeed_config
from deepmoney.train.model import estimate_bytes
from deepmoney.train.plan import default_learning_rate
from tests.conftest import ROOT

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
# deepseek-llm-67b-base's config.json (the fields the estimates read).
DEEPSEEK_67B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
                "intermediate_size": 22016, "num_hidden_layers": 95, "num_attention_heads": 64,
                "num_key_value_heads": 8, "vocab_size": 102400, "max_position_embeddings": 4096,
                "tie_word_embeddings": False}  # fmt: skip
H100_BYTES = 80 * 10**9
RANKS = 64  # 8 nodes x 8 GPUs


def test_there_are_the_documented_recipes() -> None:
    assert {p.name for p in RECIPES} >= {"quickstart.yaml", "deepseek-67b-pt.yaml", "deepseek-67b-sft.yaml",
                                         "lora-sft.yaml"}  # fmt: skip


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_every_key_is_commented(recipe: Path) -> None:
    config = load_config(recipe)  # unknown keys and bad values are errors
    assert config.model_dump()
    for number, line in enumerate(recipe.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
            assert "#" in line, f"{recipe.name}:{number}: every value says what it is ({line.strip()!r})"
    assert yaml.safe_load(recipe.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["deepseek-67b-pt.yaml", "deepseek-67b-sft.yaml"])
def test_67b_recipes_fit_8_nodes_of_8_h100(name: str, tmp_path: Path) -> None:
    config = load_config(ROOT / "recipes" / name)
    train = config.train
    assert train.zero.stage == 3 and train.precision == "bf16" and train.gradient_checkpointing
    batch = batching(train, RANKS)
    assert (
        batch.global_batch == train.global_batch and batch.micro_batch * batch.grad_accum * RANKS == batch.global_batch
    )
    ds = deepspeed_config(train, batch, "bf16", default_learning_rate(train), True)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    (tmp_path / "config.json").write_text(json.dumps(DEEPSEEK_67B))
    shape = model_shape(tmp_path)
    assert 66e9 < shape["parameters"] < 69e9
    seq = train.block_size or 4096
    assert estimate_bytes(shape, train, seq, RANKS, "bf16") < H100_BYTES  # the lower bound fits one GPU's memory
