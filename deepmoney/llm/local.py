"""The in-process backend: a Hugging Face model in this process, behind the same chat interface.

The offline default for every role. Concurrent `chat` calls are gathered into batches (up to
`max_batch`, or whatever arrived within `batch_window` seconds) and generated together with left
padding, on a worker thread so the event loop keeps serving, by the one generator every in-process
model uses (`deepmoney.models.generate`). Temperature 0 means greedy decoding, which is
deterministic; a prompt longer than the model's context is refused like an HTTP 400 (and counted
as a failed request); `fit` lets a caller cut its text to the role's token budget first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deepmoney.llm.cache import RequestCache
from deepmoney.llm.client import CachedChat, ClientStats, Completion, LLMRequestError, Sampling
from deepmoney.llm.roles import Endpoint
from deepmoney.models.generate import GenerationSettings, Generator, PromptTooLong
from deepmoney.models.load import load_causal_lm
from deepmoney.models.resolve import local_model


@dataclass
class _Pending:
    messages: list[dict[str, str]]
    sampling: Sampling
    future: asyncio.Future


class LocalChatBackend(CachedChat):
    """Chat with a local Hugging Face causal LM (`local:DIR`: a model directory, a train output or its final/)."""

    def __init__(
        self, endpoint: Endpoint, cache: RequestCache | None = None, max_batch: int = 8, batch_window: float = 0.01
    ) -> None:
        self.endpoint = endpoint
        self.cache = cache
        self.stats = ClientStats()
        self.max_batch = max_batch
        self.batch_window = batch_window
        model = local_model(Path(endpoint.target), f"--{endpoint.role}")
        self.generator = Generator(*load_causal_lm(model.path, need_chat_template=True))
        self.context_tokens = self.generator.context
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self.on_batch: Callable[[int], None] | None = None  # told each batch's size (the server's metrics)

    async def _answer(self, messages: list[dict[str, str]], sampling: Sampling) -> Completion:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._serve())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(messages, sampling, future))
        return await future

    async def _serve(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            deadline = asyncio.get_running_loop().time() + self.batch_window
            while len(batch) < self.max_batch:
                try:
                    timeout = max(0.0, deadline - asyncio.get_running_loop().time())
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            # Requests with different sampling parameters cannot share one generate() call.
            groups: dict[Sampling, list[_Pending]] = {}
            for item in batch:
                groups.setdefault(item.sampling, []).append(item)
            for sampling, items in groups.items():
                if self.on_batch is not None:
                    self.on_batch(len(items))
                try:
                    results = await asyncio.to_thread(self._generate, [i.messages for i in items], sampling)
                except Exception as exc:  # hand the failure to every caller of the batch
                    results = [exc] * len(items)
                for item, result in zip(items, results, strict=True):
                    if not item.future.done():
                        if isinstance(result, BaseException):
                            item.future.set_exception(result)
                        else:
                            item.future.set_result(result)

    def _generate(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> list[Completion | Exception]:
        settings = GenerationSettings(max_new_tokens=sampling.max_tokens, temperature=sampling.temperature,
                                      top_p=sampling.top_p, seed=sampling.seed,
                                      json_schema=sampling.json_schema)  # fmt: skip
        results: list[Completion | Exception] = []
        for item in self.generator.generate(conversations, settings):
            self.stats.requests += 1  # attempts, as for an HTTP endpoint: successes + failures (no retries here)
            if isinstance(item, PromptTooLong):
                self.stats.failed += 1
                results.append(LLMRequestError(str(item)))
                continue
            self.stats.prompt_tokens += item.prompt_tokens
            self.stats.completion_tokens += item.completion_tokens
            results.append(Completion(item.text, item.prompt_tokens, item.completion_tokens))
        return results

    def fit(self, text: str, max_tokens: int) -> tuple[str, bool]:
        """`text` cut to at most `max_tokens` of this model's tokens; and whether it was cut."""
        return self.generator.fit_text(text, max_tokens)

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens of `messages` as this model is prompted with them (chat template included)."""
        return len(self.generator.prompt_ids(messages))

    async def aclose(self) -> None:
        """Stop the batching task."""
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
            self._queue = None
