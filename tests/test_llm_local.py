"""The in-process backend on the tiny model: batching, determinism, cache, context limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from deepmoney.errors import UserError
from deepmoney.llm.cache import RequestCache
from deepmoney.llm.client import LLMRequestError, Sampling
from deepmoney.llm.local import LocalChatBackend
from deepmoney.llm.roles import parse_endpoint

GREEDY = Sampling(temperature=0.0, max_tokens=12)


def _run(backend: LocalChatBackend, prompts: list[str], sampling: Sampling = GREEDY) -> list:
    async def run() -> list:
        try:
            return await asyncio.gather(
                *(backend.chat([{"role": "user", "content": p}], sampling) for p in prompts), return_exceptions=True
            )
        finally:
            await backend.aclose()

    return asyncio.run(run())


def test_batched_greedy_answers_match_one_at_a_time(tiny_model: Path) -> None:
    prompts = ["Which sectors does a rate cut affect?", "铜价上涨影响哪些行业？", "Name one data series."]
    together = _run(LocalChatBackend(parse_endpoint("answerer", f"local:{tiny_model}")), prompts)
    alone = [_run(LocalChatBackend(parse_endpoint("answerer", f"local:{tiny_model}")), [p])[0] for p in prompts]
    assert [c.text for c in together] == [c.text for c in alone]
    assert all(c.completion_tokens <= GREEDY.max_tokens and c.prompt_tokens > 0 for c in together)


def test_cache_and_context_limit(tiny_model: Path, tmp_path: Path) -> None:
    cache_path = tmp_path / "cache.sqlite"
    backend = LocalChatBackend(parse_endpoint("questioner", f"local:{tiny_model}"), cache=RequestCache(cache_path))
    huge = "rates " * 5000  # far beyond the tiny model's 2048 positions
    first = _run(backend, ["short question", huge])
    assert first[0].text is not None and not first[0].cached
    assert isinstance(first[1], LLMRequestError) and "exceeds the model's context" in str(first[1])
    # The refusal is counted: attempts = successes + failures, as for an HTTP endpoint.
    assert backend.stats.failed == 1 and backend.stats.requests == 2
    again = LocalChatBackend(parse_endpoint("questioner", f"local:{tiny_model}"), cache=RequestCache(cache_path))
    (cached,) = _run(again, ["short question"])
    assert cached.cached and cached.text == first[0].text and again.stats.requests == 0


def test_missing_model_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no Hugging Face model"):
        LocalChatBackend(parse_endpoint("answerer", f"local:{tmp_path}"))


def test_one_generator_refuses_what_does_not_fit_and_fits_text_in_tokens(tiny_model: Path) -> None:
    """models.generate is the one generator: the local role and evaluation agree on over-long prompts."""
    from deepmoney.evaluate.generation import ModelUnderTest
    from deepmoney.models.generate import GenerationSettings, Generator, PromptTooLong
    from deepmoney.models.load import load_causal_lm

    model, tokenizer = load_causal_lm(tiny_model)
    generator = Generator(model, tokenizer)
    huge = [{"role": "user", "content": "rates " * 5000}]
    short = [{"role": "user", "content": "Which sectors does a rate cut affect?"}]
    long_result, short_result = generator.generate([huge, short], GenerationSettings(max_new_tokens=8))
    assert isinstance(long_result, PromptTooLong) and long_result.context == generator.context
    assert short_result.text is not None and short_result.completion_tokens <= 8
    mut = ModelUnderTest(model, tokenizer, batch_size=2, max_new_tokens=8, quiet=True)
    assert mut.chat([huge, short])[0] == "" and mut.too_long == 1  # refused and counted, never cut silently
    text, cut = generator.fit_text("rates " * 5000, 100)
    assert cut and generator.count_tokens(text) <= 100
    assert generator.fit_text("short", 100) == ("short", False)
