"""The embedded LLM predictor and the OpenAI-compatible chat-completions API it serves.

On a cluster the LLM is KServe's Hugging Face runtime (vLLM), which serves `/openai/v1/...`.
KServe 0.21's own OpenAI routes need vLLM, which does not install on a CPU machine, so this
module serves the same API from the trained model in this process: `POST
/openai/v1/chat/completions` (plain, or streamed as server-sent events) and `GET
/openai/v1/models`. Concurrent requests are batched by the in-process backend
(`llm.local.LocalChatBackend`, the one batched generator). A `response_format` JSON schema is
followed by grammar-constrained decoding. Streaming sends the reply in pieces once its batch
has finished decoding (batches decode together; the API and its chunks are the standard ones).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from kserve import Model

from deepmoney.llm.client import Completion, LLMRequestError, Sampling
from deepmoney.llm.roles import Endpoint
from deepmoney.serving import metrics

log = logging.getLogger(__name__)

OPENAI_PREFIX = "/openai/v1"
_ROLES = ("system", "user", "assistant")
_STREAM_PIECE = 16  # characters per streamed chunk


class OpenAIError(Exception):
    """A request the API refuses, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def response(self) -> JSONResponse:
        """The JSON error response."""
        kind = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error"}
        error = {"message": self.message, "type": kind.get(self.status, "server_error"), "param": self.param,
                 "code": self.status}  # fmt: skip
        return JSONResponse({"error": error}, status_code=self.status)


class LLMPredictor(Model):
    """The trained model, served in-process: a KServe model (ready when loaded) behind the OpenAI API."""

    def __init__(self, name: str, model_dir: Path, max_batch: int, batch_window_s: float) -> None:
        super().__init__(name)
        self.model_dir, self.max_batch, self.batch_window_s = model_dir, max_batch, batch_window_s
        self.backend: Any = None

    def load(self) -> bool:
        """Load the model and its tokenizer (the chat template is required)."""
        from deepmoney.llm.local import LocalChatBackend

        endpoint = Endpoint("serve", "local", str(self.model_dir), str(self.model_dir))
        self.backend = LocalChatBackend(endpoint, max_batch=self.max_batch, batch_window=self.batch_window_s)
        self.backend.on_batch = metrics.EMBEDDED_BATCH.observe
        self.ready = True
        return True

    @property
    def context(self) -> int:
        """The model's context, in tokens."""
        return int(self.backend.context_tokens)

    async def chat(self, messages: list[dict[str, str]], sampling: Sampling) -> Completion:
        """One reply, batched with whatever else is being asked."""
        return await self.backend.chat(messages, sampling)

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """KServe v1 predict: `{"messages": [...], "max_tokens": N}` -> `{"text": ..., "usage": ...}`."""
        request = _chat_request(payload, self.name, self.context)
        completion = await self.chat(request["messages"], request["sampling"])
        return {"text": completion.text, "usage": _usage(completion)}

    async def unload_backend(self) -> None:
        """Stop the batching task."""
        if self.backend is not None:
            await self.backend.aclose()


def _usage(completion: Completion) -> dict[str, int]:
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}  # fmt: skip


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise OpenAIError(400, f"'{key}' must be a number from {low:g} to {high:g}, not {value!r}", key)
    return float(value)


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise OpenAIError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise OpenAIError(400, f"messages[{i}] needs a role of {', '.join(_ROLES)}", f"messages[{i}].role")
        content = message.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise OpenAIError(400, f"messages[{i}].content must be a string", f"messages[{i}].content")
        out.append({"role": message["role"], "content": content})
    return out


def _schema(response_format: Any) -> str | None:
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return json.dumps({"type": "object"})
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise OpenAIError(400, "response_format.json_schema.schema must be a JSON schema object", "response_format")
        return json.dumps(schema, separators=(",", ":"), sort_keys=True)
    raise OpenAIError(400, "response_format.type must be text, json_object or json_schema", "response_format")


def _chat_request(body: Any, served: str, context: int) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise OpenAIError(400, "the body must be a JSON object")
    model = body.get("model", served)
    if model != served:
        raise OpenAIError(404, f"the model {model!r} does not exist; this server serves {served!r}", "model")
    if body.get("n", 1) != 1:
        raise OpenAIError(400, "only n=1 is supported", "n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens")) or min(512, context // 2)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens < context:
        raise OpenAIError(400, f"'max_tokens' must be an integer from 1 to {context - 1}", "max_tokens")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise OpenAIError(400, "'seed' must be an integer", "seed")
    sampling = Sampling(
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0) or 1.0,
        max_tokens=max_tokens,
        seed=seed,
        json_schema=_schema(body.get("response_format")),
    )
    return {"messages": _messages(body.get("messages")), "sampling": sampling, "stream": bool(body.get("stream")),
            "usage_in_stream": bool((body.get("stream_options") or {}).get("include_usage"))}  # fmt: skip


def _finish(completion: Completion, sampling: Sampling) -> str:
    return "length" if completion.completion_tokens >= sampling.max_tokens else "stop"


async def _chunks(completion: Completion, request: dict, served: str, rid: str, created: int) -> AsyncIterator[bytes]:
    def event(delta: dict, finish: str | None, usage: dict | None = None) -> bytes:
        chunk: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": served,
                                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        if usage is not None:
            chunk["choices"], chunk["usage"] = [], usage
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()

    yield event({"role": "assistant", "content": ""}, None)
    text = completion.text
    for start in range(0, len(text), _STREAM_PIECE):
        yield event({"content": text[start : start + _STREAM_PIECE]}, None)
    yield event({}, _finish(completion, request["sampling"]))
    if request["usage_in_stream"]:
        yield event({}, None, _usage(completion))
    yield b"data: [DONE]\n\n"


def openai_router(predictor: LLMPredictor) -> APIRouter:
    """The `/openai/v1` routes of the embedded predictor."""
    router = APIRouter(prefix=OPENAI_PREFIX, tags=["OpenAI"])

    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": predictor.name, "object": "model", "created": 0,
                                            "owned_by": "deepmoney", "max_model_len": predictor.context}]}  # fmt: skip

    async def chat_completions(raw: Request) -> Any:
        try:
            try:
                body = json.loads(await raw.body())
            except ValueError as exc:
                raise OpenAIError(400, f"the body is not valid JSON ({exc})") from None
            request = _chat_request(body, predictor.name, predictor.context)
            try:
                completion = await predictor.chat(request["messages"], request["sampling"])
            except LLMRequestError as exc:  # the prompt does not fit the context
                raise OpenAIError(400, str(exc), "messages") from None
        except OpenAIError as exc:
            log.info("chat completion refused (%d): %s", exc.status, exc.message)
            return exc.response()
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if request["stream"]:
            return StreamingResponse(_chunks(completion, request, predictor.name, rid, created),
                                     media_type="text/event-stream")  # fmt: skip
        choice = {"index": 0, "message": {"role": "assistant", "content": completion.text},
                  "finish_reason": _finish(completion, request["sampling"])}  # fmt: skip
        return {"id": rid, "object": "chat.completion", "created": created, "model": predictor.name,
                "choices": [choice], "usage": _usage(completion)}  # fmt: skip

    router.add_api_route("/models", models, methods=["GET"])
    router.add_api_route("/chat/completions", chat_completions, methods=["POST"])
    return router
