"""One factory for a role's backend, wherever the role is used (synth roles, the pt summarizer)."""

from __future__ import annotations

from deepmoney.llm.cache import RequestCache
from deepmoney.llm.client import ChatBackend, OpenAIChatClient, RetryPolicy
from deepmoney.llm.roles import Endpoint


def make_backend(endpoint: Endpoint, cache: RequestCache | None, concurrency: int, timeout: float,
                 attempts: int = RetryPolicy.attempts) -> ChatBackend:  # fmt: skip
    """In-process for `local:`, OpenAI-compatible HTTP otherwise (`attempts` tries per request)."""
    if endpoint.kind == "local":
        from deepmoney.llm.local import LocalChatBackend  # imports torch: only when asked for

        return LocalChatBackend(endpoint, cache=cache)
    policy = RetryPolicy(attempts=attempts, timeout=timeout)
    return OpenAIChatClient(endpoint, concurrency=concurrency, policy=policy, cache=cache)
