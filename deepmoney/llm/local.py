"""The in-process backend: a Hugging Face model in this process, behind the same chat interface.

The offline default for every role. Concurrent `chat` calls are gathered into batches (up to
`max_batch`, or whatever arrived within `batch_window` seconds) and generated together with left
padding, on a worker thread so the event loop keeps serving. Temperature 0 means greedy decoding,
which is deterministic; a prompt longer than the model's context is refused like an HTTP 400.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepmoney.errors import UserError
from deepmoney.llm.cache import RequestCache
from deepmoney.llm.client import CachedChat, ClientStats, Completion, LLMRequestError, Sampling
from deepmoney.llm.roles import Endpoint


@dataclass
class _Pending:
    messages: list[dict[str, str]]
    sampling: Sampling
    future: asyncio.Future


class LocalChatBackend(CachedChat):
    """Chat with a local Hugging Face causal LM (directory from `local:MODEL_DIR`)."""

    def __init__(
        self, endpoint: Endpoint, cache: RequestCache | None = None, max_batch: int = 8, batch_window: float = 0.01
    ) -> None:
        self.endpoint = endpoint
        self.cache = cache
        self.stats = ClientStats()
        self.max_batch = max_batch
        self.batch_window = batch_window
        self._model, self._tokenizer = _load(Path(endpoint.target))
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None

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
        import torch

        tok, model = self._tokenizer, self._model
        limit = getattr(model.config, "max_position_embeddings", 2048)
        prompts: list[list[int] | None] = []
        results: list[Completion | Exception | None] = []
        for messages in conversations:
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
            if len(ids) + sampling.max_tokens > limit:
                prompts.append(None)
                results.append(LLMRequestError(
                    f"prompt of {len(ids)} tokens + max_tokens {sampling.max_tokens} exceeds the model's "
                    f"context of {limit} tokens"
                ))  # fmt: skip
            else:
                prompts.append(ids)
                results.append(None)
        batch = [p for p in prompts if p is not None]
        if batch:
            width = max(map(len, batch))
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
            attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "pad_token_id": pad}
            if sampling.temperature > 0:
                seed = sampling.seed if sampling.seed is not None else 0
                digest = hashlib.sha256(repr((seed, batch)).encode()).hexdigest()
                torch.manual_seed(int(digest[:8], 16))
                kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            else:
                kwargs["do_sample"] = False
            with torch.no_grad():
                output = model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
            texts = iter(output[:, width:])
            for i, prompt in enumerate(prompts):
                if prompt is None:
                    continue
                new = next(texts).tolist()
                if tok.eos_token_id in new:
                    new = new[: new.index(tok.eos_token_id)]
                results[i] = Completion(tok.decode(new, skip_special_tokens=True), len(prompt), len(new))
                self.stats.requests += 1
                self.stats.prompt_tokens += len(prompt)
                self.stats.completion_tokens += len(new)
        return [r for r in results if r is not None]

    async def aclose(self) -> None:
        """Stop the batching task."""
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
            self._queue = None


def _load(directory: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (directory / "config.json").is_file():
        raise UserError(f"no Hugging Face model in {directory} (expected config.json); pass local:MODEL_DIR")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:
        raise UserError(f"cannot load the model in {directory}: {exc}") from None
    if tokenizer.chat_template is None:
        raise UserError(f"the tokenizer in {directory} has no chat template; the roles need one")
    model.eval()
    return model, tokenizer
