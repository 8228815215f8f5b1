"""The OpenAI-compatible chat client: bounded concurrency, retries with backoff, a request cache.

Retries are ours, not the SDK's (`max_retries=0`), so that every kind of transient failure — 429
(honouring `Retry-After`), 5xx, timeouts, connection errors, malformed bodies, an empty choice
list — goes through one policy and one set of counters. Failures that retrying cannot fix stop at
once: a rejected API key (401/403) or an unknown model or endpoint (404) end the run with one
line; a request the server refuses (400, e.g. context too long) fails only that request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from deepmoney.llm.cache import RequestCache, request_key
from deepmoney.llm.errors import LLMEndpointDown, LLMFatalError, LLMGaveUp, LLMRetryableError
from deepmoney.llm.roles import Endpoint, redact

log = logging.getLogger(__name__)


class LLMRequestError(Exception):
    """The server refused this one request (HTTP 400 and the like); others may still succeed."""


@dataclass(frozen=True)
class Sampling:
    """Generation parameters sent with each request (and part of its cache key)."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int | None = None
    json_schema: str | None = None  # JSON Schema text the answer must follow (response_format / constrained decoding)

    def key(self) -> dict[str, Any]:
        """The fields that decide an answer, for cache keys and fingerprints (an unset schema adds nothing)."""
        fields = asdict(self)
        if fields["json_schema"] is None:
            del fields["json_schema"]
        return fields


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry transient failures."""

    attempts: int = 8
    base_delay: float = 0.5
    max_delay: float = 30.0
    timeout: float = 120.0
    max_retry_after: float = 300.0  # a server asking for longer than this is treated as asking for this
    # Requests given up in a row (every attempt failed, none answered in between) that stop the run: a
    # dead endpoint would otherwise fail each of thousands of chapters in turn, for hours.
    down_after: int = 4

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt `attempt + 1`: the server's Retry-After, else capped exponential
        backoff with equal jitter (half fixed, half random), so that clients do not retry in lockstep."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        cap = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return cap / 2 + random.uniform(0, cap / 2)


@dataclass
class Completion:
    """One answer."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False


@dataclass
class ClientStats:
    """Counters for progress bars and manifests."""

    requests: int = 0
    retries: int = 0
    cached: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)


class ChatBackend(Protocol):
    """What a role needs from a model: answer a chat."""

    endpoint: Endpoint
    stats: ClientStats

    async def chat(self, messages: list[dict[str, str]], sampling: Sampling) -> Completion:
        """Answer `messages`."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def _retry_after(response: Any) -> float | None:
    try:
        value = response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


class CachedChat:
    """The part every backend shares: answer from the request cache, else ask and remember."""

    endpoint: Endpoint
    cache: RequestCache | None
    stats: ClientStats
    _in_flight: dict[str, asyncio.Future] | None = None

    async def chat(self, messages: list[dict[str, str]], sampling: Sampling) -> Completion:
        """Answer `messages`, from the cache if this exact request was answered before.

        Identical requests made while the first is still in flight wait for its answer instead of
        being sent again (two chapters with the same text ask the same question).
        """
        key = request_key(self.endpoint.role, self.endpoint.model, messages, sampling.key())
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.stats.cached += 1
            return Completion(hit["text"], hit.get("prompt_tokens", 0), hit.get("completion_tokens", 0), cached=True)
        if self._in_flight is None:
            self._in_flight = {}
        if key in self._in_flight:
            self.stats.cached += 1
            return await asyncio.shield(self._in_flight[key])
        future = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            completion = await self._answer(messages, sampling)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: the waiters, if any, get it too
            raise
        finally:
            del self._in_flight[key]
        if self.cache is not None:
            self.cache.put(key, asdict(completion) | {"cached": False})
        future.set_result(completion)
        return completion

    async def _answer(self, messages: list[dict[str, str]], sampling: Sampling) -> Completion:
        raise NotImplementedError


def nodelay_transport(limits: Any) -> Any:
    """An httpx transport with `limits` and Nagle's algorithm off.

    The HTTP stack writes a request's headers and body separately; with Nagle on, the body waits
    for the server's delayed ACK (40 ms on Linux) — on a 200 ms request, a fifth of the throughput.
    """
    import socket

    import httpx2

    return httpx2.AsyncHTTPTransport(limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])


def _http_client(concurrency: int) -> Any:
    """Keep-alive connections for every concurrent request, with Nagle's algorithm off."""
    import httpx2
    from openai import DefaultAsyncHttpxClient

    limits = httpx2.Limits(max_connections=max(100, concurrency), max_keepalive_connections=max(20, concurrency))
    return DefaultAsyncHttpxClient(transport=nodelay_transport(limits), limits=limits)


class OpenAIChatClient(CachedChat):
    """Chat completions against any OpenAI-compatible server (vLLM, KServe, TGI, hosted APIs)."""

    def __init__(
        self,
        endpoint: Endpoint,
        concurrency: int = 16,
        policy: RetryPolicy | None = None,
        cache: RequestCache | None = None,
    ) -> None:
        from openai import AsyncOpenAI

        self.endpoint = endpoint
        self.policy = policy or RetryPolicy()
        self.cache = cache
        self.stats = ClientStats()
        self._warned = False
        self._gave_up_in_a_row = 0
        self._answered = 0
        self._semaphore = asyncio.Semaphore(concurrency)
        self._client = AsyncOpenAI(
            base_url=endpoint.target,
            api_key=endpoint.api_key or "unused",  # local servers ignore it; the SDK insists on one
            max_retries=0,
            timeout=self.policy.timeout,
            http_client=_http_client(concurrency),
        )

    async def _answer(self, messages: list[dict[str, str]], sampling: Sampling) -> Completion:
        async with self._semaphore:
            return await self._with_retries(messages, sampling)

    async def _with_retries(self, messages: list[dict[str, str]], sampling: Sampling) -> Completion:
        for attempt in range(1, self.policy.attempts + 1):
            try:
                completion = await self._once(messages, sampling)
                self._answered += 1
                self._gave_up_in_a_row = 0
                return completion
            except LLMRequestError:
                self.stats.failed += 1
                raise
            except LLMRetryableError as exc:
                reasons = self.stats.retry_reasons
                reasons[exc.reason.split(":")[0]] = reasons.get(exc.reason.split(":")[0], 0) + 1
                if attempt == self.policy.attempts:
                    self.stats.failed += 1
                    self._gave_up_in_a_row += 1
                    if self._gave_up_in_a_row >= self.policy.down_after:
                        raise self._down(exc.reason) from None
                    raise LLMGaveUp(exc.reason, attempt) from None
                self.stats.retries += 1
                delay = self.policy.delay(attempt, exc.retry_after)
                if not self._warned:  # once per endpoint, as soon as trouble starts: silence here costs minutes
                    self._warned = True
                    log.warning("the %s endpoint %s: %s; retrying (up to %d attempts per request)",
                                self.endpoint.role, self.endpoint.label, exc.reason, self.policy.attempts)  # fmt: skip
                log.debug("%s: %s; retrying in %.2fs", self.endpoint.label, exc.reason, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _down(self, reason: str) -> LLMEndpointDown:
        n, role, label = self._gave_up_in_a_row, self.endpoint.role, self.endpoint.label
        answers = f"{self._answered} answer" + ("s" if self._answered != 1 else "")
        what = (f"stopped answering: {n} requests in a row failed after {answers}"
                if self._answered else f"answered none of {n} requests")  # fmt: skip
        return LLMEndpointDown(
            f"the {role} endpoint {label} {what} (each tried {self.policy.attempts} times; last: {reason}); check "
            "that the server is up and the URL (ending in /v1), then run the same command again: the answers "
            "so far are kept and not asked again"
        )

    async def _once(self, messages: list[dict[str, str]], sampling: Sampling) -> Completion:
        import openai
        from openai.types.chat import ChatCompletion

        label, role = self.endpoint.label, self.endpoint.role
        self.stats.requests += 1
        body: dict[str, Any] = {"model": self.endpoint.model, "messages": messages, "temperature": sampling.temperature,
                                "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}  # fmt: skip
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.json_schema is not None:  # vLLM, KServe's runtime and OpenAI follow it; others ignore it
            schema = {"name": "answer", "schema": json.loads(sampling.json_schema)}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        try:
            # The SDK's generic POST with the body as it is: `chat.completions.create` first walks every
            # parameter against its TypedDict hints, ~2 ms of CPU per request on a serving hot path. The
            # transport, errors and the typed response are the SDK's either way.
            response = await self._client.post("/chat/completions", body=body, cast_to=ChatCompletion)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise LLMFatalError(
                f"the {role} endpoint {label} rejected the API key (HTTP {exc.status_code}); set "
                f"DEEPMONEY_{role.upper()}_API_KEY (or ..._API_KEY_FILE) to a valid key"
            ) from None
        except openai.NotFoundError:
            raise LLMFatalError(
                f"the {role} endpoint {label} does not know model {self.endpoint.model!r} or the URL is wrong "
                "(HTTP 404); check the name after '#' and that the base URL ends in /v1"
            ) from None
        except openai.RateLimitError as exc:
            raise LLMRetryableError("HTTP 429", _retry_after(exc.response)) from None
        except openai.APIStatusError as exc:
            if exc.status_code >= 500 or exc.status_code == 408:
                raise LLMRetryableError(f"HTTP {exc.status_code}", _retry_after(exc.response)) from None
            detail = redact(str(exc.message)[:300], self.endpoint.api_key)
            raise LLMRequestError(f"HTTP {exc.status_code}: {detail}") from None
        except openai.APITimeoutError:
            raise LLMRetryableError(f"timeout: no answer within {self.policy.timeout:g}s") from None
        except openai.APIConnectionError as exc:
            raise LLMRetryableError(f"connection: {redact(str(exc), self.endpoint.api_key)}") from None
        except (openai.APIResponseValidationError, ValueError) as exc:
            raise LLMRetryableError(f"malformed body: {type(exc).__name__}") from None
        choices = getattr(response, "choices", None)
        if not choices or choices[0].message is None or choices[0].message.content is None:
            raise LLMRetryableError("empty choice list")
        usage = getattr(response, "usage", None)
        completion = Completion(
            text=choices[0].message.content,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        )
        self.stats.prompt_tokens += completion.prompt_tokens
        self.stats.completion_tokens += completion.completion_tokens
        return completion

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._client.close()
