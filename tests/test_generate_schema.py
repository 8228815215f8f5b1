"""Constrained decoding: a random tiny model answers with JSON valid for the schema it is given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepmoney.models.generate import Generated, GenerationSettings, Generator
from deepmoney.models.load import load_causal_lm

SECTORS = {
    "type": "object",
    "properties": {"sectors": {"type": "array", "items": {"type": "string", "maxLength": 16}, "minItems": 1,
                               "maxItems": 3}},
    "required": ["sectors"],
    "additionalProperties": False,
}  # fmt: skip
METHOD = {
    "type": "object",
    "properties": {"method": {"type": "string", "maxLength": 40},
                   "data": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4}},
    "required": ["method", "data"],
    "additionalProperties": False,
}  # fmt: skip


@pytest.fixture(scope="module")
def generator(tiny_model: Path) -> Generator:
    model, tokenizer = load_causal_lm(tiny_model)
    return Generator(model, tokenizer)


def _conversations(n: int) -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": f"Which sectors does news item {i} affect? 哪些行业受影响？"}] for i in range(n)
    ]


def _valid(document: object, schema: dict) -> bool:
    """A small check of the two schemas' shape (what a parser downstream relies on)."""
    if not isinstance(document, dict) or set(document) != set(schema["required"]):
        return False
    for key, rule in schema["properties"].items():
        value = document[key]
        if rule["type"] == "string" and not (isinstance(value, str) and len(value) <= rule["maxLength"]):
            return False
        if rule["type"] == "array":
            items_ok = all(isinstance(v, str) and len(v) <= rule["items"]["maxLength"] for v in value)
            if not (isinstance(value, list) and rule.get("minItems", 0) <= len(value) <= rule["maxItems"] and items_ok):
                return False
    return True


@pytest.mark.parametrize("schema", [SECTORS, METHOD], ids=["sectors", "method"])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_every_reply_parses_and_fits_the_schema(generator: Generator, schema: dict, temperature: float) -> None:
    settings = GenerationSettings(max_new_tokens=160, temperature=temperature, seed=7, json_schema=json.dumps(schema))
    replies = generator.generate(_conversations(6), settings)
    assert all(isinstance(r, Generated) for r in replies)
    documents = [json.loads(r.text) for r in replies]  # raises if any reply is not JSON
    assert all(_valid(d, schema) for d in documents), documents
    assert all(r.completion_tokens < settings.max_new_tokens for r in replies)  # each ended on its own


def test_without_a_schema_the_same_model_writes_no_json(generator: Generator) -> None:
    """The constraint is what makes the replies parse: unconstrained, the random model writes noise."""
    replies = generator.generate(_conversations(6), GenerationSettings(max_new_tokens=40, temperature=0.9, seed=7))

    def parses(text: str) -> bool:
        try:
            return _valid(json.loads(text), SECTORS)
        except ValueError:
            return False

    assert not any(parses(r.text) for r in replies)


def test_an_unusable_schema_is_a_clear_error(generator: Generator) -> None:
    with pytest.raises(ValueError, match="JSON schema not usable"):
        generator.generate(_conversations(1), GenerationSettings(max_new_tokens=8, json_schema='{"type": "nonsense"}'))


@pytest.mark.parametrize("max_tokens", [64, 96, 768])
def test_with_the_data_dictionary_step_2_names_only_series_that_exist(generator: Generator, max_tokens: int) -> None:
    """Step 2's schema with the database's ids: even a random model names existing series, and closes its JSON
    within the step's token budget."""
    import jsonschema

    from deepmoney.analysis.structured import read_method, step_schema
    from deepmoney.marketdata.source import MarketData

    with MarketData.open(None) as market:
        ids = [info.id for info in market.catalogue()]
    schema = step_schema("method", max_tokens, series_ids=ids)
    settings = GenerationSettings(max_new_tokens=max_tokens, temperature=0.9, seed=3, json_schema=schema)
    replies = generator.generate(_conversations(4), settings)
    for reply in replies:
        document = json.loads(reply.text)
        jsonschema.validate(document, json.loads(schema))
        _, data = read_method(reply.text)
        assert data and set(data) <= set(ids), data
        assert reply.completion_tokens < max_tokens
