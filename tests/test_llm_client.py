"""The OpenAI-compatible client against a real HTTP server on loopback with injected faults."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from deepmoney.llm.cache import RequestCache
from deepmoney.llm.client import LLMRequestError, OpenAIChatClient, RetryPolicy, Sampling
from deepmoney.llm.errors import LLMEndpointDown, LLMFatalError, LLMGaveUp
from deepmoney.llm.roles import parse_endpoint
from deepmoney.llm.scripted_server import Faults, ScriptedOpenAIServer, echo_responder

# Timeouts generous enough that only the injected ones (which sleep longer) fire on a loaded machine.
FAST = RetryPolicy(attempts=8, base_delay=0.01, max_delay=0.05, timeout=1.5)


def _client(
    server: ScriptedOpenAIServer, model: str = "test-model", policy: RetryPolicy = FAST, **kw
) -> OpenAIChatClient:
    endpoint = parse_endpoint("answerer", f"{server.base_url}#{model}", environ=kw.pop("environ", {}))
    return OpenAIChatClient(endpoint, policy=policy, **kw)


def _ask(client: OpenAIChatClient, prompts: list[str]) -> list:
    async def run() -> list:
        try:
            return await asyncio.gather(
                *(client.chat([{"role": "user", "content": p}], Sampling(seed=1)) for p in prompts),
                return_exceptions=True,
            )
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_every_request_completes_through_mixed_faults() -> None:
    prompts = [f"Which sectors does news item {i} affect?" for i in range(60)]
    with ScriptedOpenAIServer(faults=Faults(rate=0.3, timeout_sleep=3.0)) as server:
        client = _client(server, concurrency=8)
        answers = _ask(client, prompts)
    expected = [echo_responder("test-model", [{"role": "user", "content": p}]) for p in prompts]
    assert [a.text for a in answers] == expected
    outcomes = server.outcomes()
    assert {"429", "500", "timeout", "malformed", "empty"} <= set(outcomes), outcomes
    injected = sum(n for kind, n in outcomes.items() if kind != "ok")
    assert client.stats.retries >= injected  # every injected fault was retried (a slow machine may add timeouts)
    assert max(server.completed().values()) == 1 and len(server.completed()) == 60


def test_retry_after_is_honoured() -> None:
    faults = Faults(rate=1.0, kinds=("429",), retry_after=0.3, max_faulty_attempts=1)
    with ScriptedOpenAIServer(faults=faults) as server:
        (answer,) = _ask(_client(server), ["one question"])
    first, second = server.log
    assert (first.outcome, second.outcome) == ("429", "ok")
    assert second.at - first.at >= 0.3  # a lower bound: the client waited at least as long as asked
    assert answer.text.startswith("[test-model:")


def test_wrong_api_key_stops_at_once_without_leaking_it() -> None:
    with ScriptedOpenAIServer(api_key="sk-right-key") as server:
        client = _client(server, environ={"DEEPMONEY_ANSWERER_API_KEY": "sk-wrong-key-123"})
        (result,) = _ask(client, ["q"])
    assert isinstance(result, LLMFatalError)
    assert "API key" in str(result) and "HTTP 401" in str(result) and "sk-wrong-key-123" not in str(result)
    assert len(server.log) == 1


def test_key_from_a_mounted_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("sk-right-key\n")
    with ScriptedOpenAIServer(api_key="sk-right-key") as server:
        client = _client(server, environ={"DEEPMONEY_ANSWERER_API_KEY_FILE": str(secret)})
        (answer,) = _ask(client, ["q"])
    assert answer.text and "sk-right-key" not in repr(client.endpoint)


def test_unknown_model_is_fatal_with_a_hint() -> None:
    with ScriptedOpenAIServer() as server:
        (result,) = _ask(_client(server, model="capybara-34b"), ["q"])
    assert isinstance(result, LLMFatalError) and "capybara-34b" in str(result) and "404" in str(result)
    assert len(server.log) == 1


def test_refused_request_fails_alone() -> None:
    def responder(model: str, messages: list[dict[str, str]]) -> str:
        if "too long" in messages[-1]["content"]:
            raise ValueError("This model's maximum context length is 4096 tokens")
        return "fine"

    with ScriptedOpenAIServer(responder=responder) as server:
        results = _ask(_client(server), ["short", "this one is too long"])
    assert results[0].text == "fine"
    assert isinstance(results[1], LLMRequestError) and "maximum context length" in str(results[1])


def test_gives_up_after_the_policy_s_attempts() -> None:
    faults = Faults(rate=1.0, kinds=("500",), max_faulty_attempts=100)
    with ScriptedOpenAIServer(faults=faults) as server:
        client = _client(server, policy=RetryPolicy(attempts=3, base_delay=0.01, timeout=1))
        (result,) = _ask(client, ["q"])
    assert isinstance(result, LLMGaveUp) and result.attempts == 3 and "HTTP 500" in str(result)
    assert len(server.log) == 3 and client.stats.failed == 1


def test_an_endpoint_that_stops_answering_stops_the_run_after_a_few_requests() -> None:
    """Answered once, then hung: three requests give up alone, the fourth in a row stops the run."""
    policy = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02, timeout=0.5, down_after=4)

    def answers_once(model: str, messages: list[dict[str, str]]) -> str:
        if messages[-1]["content"] != "first":
            time.sleep(0.8)  # longer than the client's timeout: every later attempt times out
        return echo_responder(model, messages)

    with ScriptedOpenAIServer(responder=answers_once) as server:
        results = _ask_in_turn(_client(server, policy=policy, concurrency=1), ["first", *(f"q{i}" for i in range(5))])
    assert results[0].text.endswith("first")
    assert [type(r) for r in results[1:]] == [LLMGaveUp] * 3 + [LLMEndpointDown] * 2
    message = str(results[4])
    assert "stopped answering: 4 requests in a row failed after 1 answer " in message and "timeout" in message
    assert "run the same command again" in message


def _ask_in_turn(client: OpenAIChatClient, prompts: list[str]) -> list:
    async def run() -> list:
        results = []
        try:
            for p in prompts:
                try:
                    results.append(await client.chat([{"role": "user", "content": p}], Sampling(seed=1)))
                except (LLMGaveUp, LLMEndpointDown) as exc:
                    results.append(exc)
        finally:
            await client.aclose()
        return results

    return asyncio.run(run())


def test_cache_means_no_request_is_sent_twice(tmp_path: Path) -> None:
    prompts = [f"question {i}" for i in range(20)]
    with ScriptedOpenAIServer() as server:
        first = _ask(_client(server, cache=RequestCache(tmp_path / "cache.sqlite")), prompts)
        seen = len(server.log)
        again_client = _client(server, cache=RequestCache(tmp_path / "cache.sqlite"))
        again = _ask(again_client, prompts)
    assert seen == 20 and len(server.log) == 20
    assert [a.text for a in again] == [a.text for a in first]
    assert again_client.stats.cached == 20 and all(a.cached for a in again)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ftp://x", "expected local:MODEL_DIR"),
        ("http://127.0.0.1:8000/v1", "add the model name after '#'"),
        ("local:", "expected local:MODEL_DIR"),
    ],
)
def test_bad_role_specs(spec: str, message: str) -> None:
    from deepmoney.errors import UserError

    with pytest.raises(UserError, match=message):
        parse_endpoint("questioner", spec, environ={})
