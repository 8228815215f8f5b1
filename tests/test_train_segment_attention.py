"""segment_sdpa: attention per packed segment gives the same loss and gradients as the block-diagonal mask
and as running every segment alone, without a mask and without attention over the whole block."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from deepmoney.train import fused_loss, segment_attention
from deepmoney.train.packed import IGNORE_INDEX, segment_ids, training_collate
from deepmoney.train.segment_attention import KWARG, SEGMENT_SDPA, bucket_length, segment_plan
from deepmoney.train.sft_data import Example, block_item

VOCAB, LENGTH = 97, 64
# Several segments of different lengths per row, including length-1 segments and a row that is one segment.
STARTS = [[0, 5, 17, 40], [0, 30], [0, 1, 2, 33, 63], [0]]


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    segment_attention.register()


def _model(attention: str, seed: int = 0) -> LlamaForCausalLM:
    """A tiny random LLaMA with grouped-query attention (6 query heads share 2 key/value heads), fp32."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=LENGTH,
                         attn_implementation=attention)  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).train()


def _same_weights(model: LlamaForCausalLM, attention: str) -> LlamaForCausalLM:
    other = copy.deepcopy(model)
    other.set_attn_implementation(attention)
    return other


def _pt_items(starts: list[list[int]], seed: int = 1) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, VOCAB, (LENGTH,), generator=generator), "segment_starts": s}
            for s in starts]  # fmt: skip


def _sft_items(seed: int = 2) -> list[dict[str, Any]]:
    """Blocks made as `load_sft` makes them: prompts masked with -100, the rest of the block padding."""
    generator = torch.Generator().manual_seed(seed)
    blocks = []
    for sizes in ([(7, 5), (3, 12), (20, 6)], [(10, 30)], [(4, 4), (4, 4), (9, 2)]):
        examples = []
        for prompt, answer in sizes:
            ids = torch.randint(3, VOCAB, (prompt + answer,), generator=generator).tolist()
            examples.append(Example(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
        blocks.append(block_item(examples, LENGTH, pad_id=0))
    return blocks


def _bounds(starts: list[int]) -> list[tuple[int, int]]:
    return list(zip(starts, [*starts[1:], LENGTH], strict=True))


def _loss_and_grads(model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    inputs = {k: v for k, v in inputs.items() if k != "n_tokens"}
    loss = model(**inputs).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    return loss.detach(), grads


def _assert_same(actual: tuple[torch.Tensor, dict], expected: tuple[torch.Tensor, dict]) -> None:
    torch.testing.assert_close(actual[0], expected[0], atol=1e-5, rtol=1e-5)
    assert actual[1].keys() == expected[1].keys()
    for name, grad in expected[1].items():
        torch.testing.assert_close(actual[1][name], grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def _alone(model: LlamaForCausalLM, items: list[dict[str, Any]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Every segment run through the model on its own; the mean over all trained targets, as packed."""
    model.zero_grad(set_to_none=True)
    total, count = torch.zeros(()), 0
    for item in items:
        ids = item["input_ids"]
        labels = item.get("labels", ids)
        for left, right in _bounds(item["segment_starts"]):
            targets = labels[left + 1 : right]
            logits = model(input_ids=ids[None, left:right]).logits[0, :-1]
            total = total + torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX,
                                                              reduction="sum")  # fmt: skip
            count += int((targets != IGNORE_INDEX).sum())
    loss = total / count
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.fixture
def sdpa_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, ...], bool, bool]]:
    """(query shape, mask given, is_causal) of every scaled_dot_product_attention call."""
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(query: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append((tuple(query.shape), kwargs.get("attn_mask") is not None, bool(kwargs.get("is_causal"))))
        return original(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


@pytest.mark.parametrize("stage", ["pt", "sft"])
def test_equals_the_block_diagonal_mask_and_each_segment_alone(stage: str, sdpa_calls: list) -> None:
    items = _pt_items(STARTS) if stage == "pt" else _sft_items()
    model = _model(SEGMENT_SDPA)
    inputs = training_collate(items, attention=SEGMENT_SDPA)
    assert "attention_mask" not in inputs and isinstance(inputs[KWARG], segment_attention.SegmentPlan)
    segmented = _loss_and_grads(model, inputs)
    # No mask, causal kernel calls only, and the attention work is that of the (bucketed) segments in every layer.
    assert sdpa_calls and all(not masked and causal for _, masked, causal in sdpa_calls)
    segments = [right - left for item in items for left, right in _bounds(item["segment_starts"])]
    work = sum(bucket_length(n, LENGTH) ** 2 for n in segments)
    assert sum(shape[0] * shape[-2] ** 2 for shape, _, _ in sdpa_calls) == model.config.num_hidden_layers * work
    assert work < len(items) * LENGTH**2

    masked_inputs = training_collate(items, attention="sdpa")
    assert masked_inputs["attention_mask"].shape == (len(items), 1, LENGTH, LENGTH) and KWARG not in masked_inputs
    _assert_same(segmented, _loss_and_grads(_same_weights(model, "sdpa"), masked_inputs))
    _assert_same(segmented, _alone(_same_weights(model, "sdpa"), items))


def test_single_segment_blocks_take_the_plain_causal_path(sdpa_calls: list) -> None:
    items = _pt_items([[0], [0], [0]])
    inputs = training_collate(items, attention=SEGMENT_SDPA)
    assert "attention_mask" not in inputs and KWARG not in inputs
    model = _model(SEGMENT_SDPA)
    segmented = _loss_and_grads(model, inputs)
    assert sdpa_calls and all(shape == (3, 6, LENGTH, 8) and causal and not masked
                              for shape, masked, causal in sdpa_calls)  # fmt: skip
    _assert_same(segmented, _loss_and_grads(_same_weights(model, "sdpa"), training_collate(items)))
    _assert_same(segmented, _alone(_same_weights(model, "sdpa"), items))


@pytest.mark.parametrize("variant", ["fused_loss", "gradient_checkpointing", "lora", "repeated_kv_heads"])
def test_training_variants_see_the_same_segments(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the trainer adds around the model (fused loss, checkpointing, peft) passes the plan through;
    where the kernel cannot take grouped-query attention itself, repeated key/value heads give the same."""
    items = _sft_items()
    if variant == "repeated_kv_heads":
        import transformers.integrations.sdpa_attention as hf_sdpa

        monkeypatch.setattr(hf_sdpa, "use_gqa_in_sdpa", lambda *args: False)

    def prepared(attention: str) -> torch.nn.Module:
        model = _model(attention)
        if variant == "gradient_checkpointing":
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if variant == "lora":
            from peft import LoraConfig, get_peft_model

            torch.manual_seed(3)
            lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                              task_type="CAUSAL_LM", init_lora_weights=False)  # fmt: skip
            model = get_peft_model(model, lora)
        if variant == "fused_loss":
            assert fused_loss.install(model)
        return model

    segmented = _loss_and_grads(prepared(SEGMENT_SDPA), training_collate(items, attention=SEGMENT_SDPA))
    _assert_same(segmented, _loss_and_grads(prepared("sdpa"), training_collate(items, attention="sdpa")))


def test_plan_covers_every_token_once_in_few_buckets() -> None:
    starts = [[0, 100, 103, 600], [0, 1000], [0, 2047]]
    plan = segment_plan(starts, 2048)
    assert plan is not None and segment_plan([[0], [0]], 2048) is None
    # Each token's scatter entry gathers that very token; the padding entries repeat a token of their segment.
    assert torch.equal(plan.gather[plan.scatter], torch.arange(3 * 2048))
    assert plan.gather.numel() == sum(size * n for size, n in plan.buckets)
    segment = torch.cat([segment_ids(s, 2048) + 10 * row for row, s in enumerate(starts)])[plan.gather]
    for rows, (size, n) in zip(segment.split([size * n for size, n in plan.buckets]), plan.buckets, strict=True):
        rows = rows.view(n, size)
        assert (rows == rows[:, :1]).all() and len(set(rows[:, 0].tolist())) == n  # one segment per padded row
    lengths = [right - left for s in starts for left, right in zip(s, [*s[1:], 2048], strict=True)]
    assert sorted(size for size, _ in plan.buckets) == sorted({bucket_length(n, 2048) for n in lengths})
    for n in [*lengths, 1, 15, 16, 17, 129, 1048, 1500, 2048]:
        size = bucket_length(n, 2048)
        assert n <= size <= 2048 and size - n < max(16, n / 8)
    moved = plan.to("cpu")
    assert torch.equal(moved.scatter, plan.scatter) and moved.buckets == plan.buckets


def test_a_plan_for_another_shape_is_refused() -> None:
    model = _model(SEGMENT_SDPA)
    items = _pt_items(STARTS)
    inputs = training_collate(items, attention=SEGMENT_SDPA)
    inputs[KWARG] = segment_plan([[0, 3]] * 4, LENGTH - 1)
    with pytest.raises(ValueError, match="packed_segments describes"):
        _loss_and_grads(model, inputs)
