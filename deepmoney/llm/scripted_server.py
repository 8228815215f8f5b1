"""A scripted OpenAI-compatible server on loopback, for tests and benchmarks.

Real HTTP (`/v1/chat/completions`, `/v1/models`) with deterministic answers from a responder
function, deterministic fault injection (429 with Retry-After, 500, timeouts, malformed bodies,
empty choice lists), an optional capacity limit with log-normal latency, API-key checking, and a
log of every request so a test can prove that no completed request was sent twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[str, list[dict[str, str]]], str]
FAULT_KINDS = ("429", "500", "timeout", "malformed", "empty")


def echo_responder(model: str, messages: list[dict[str, str]]) -> str:
    """A deterministic answer that names the request it answers."""
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:12]
    return f"[{model}:{digest}] {messages[-1]['content'][:80]}"


@dataclass(frozen=True)
class Faults:
    """Which attempts fail, and how. The choice is a hash of (seed, request, attempt): deterministic."""

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    retry_after: float = 0.05
    timeout_sleep: float = 1.0  # longer than the client's timeout
    max_faulty_attempts: int = 3  # later attempts of the same request always succeed
    seed: int = 0


@dataclass(frozen=True)
class Capacity:
    """A server that can run `concurrency` requests at once, each taking log-normal time of mean `mean_latency`."""

    concurrency: int | None = None
    mean_latency: float = 0.0
    sigma: float = 0.5


@dataclass
class LoggedRequest:
    """One request as the server saw it."""

    digest: str
    attempt: int
    outcome: str  # "ok" or a fault kind, "401", "404", "400"
    at: float


@dataclass
class ScriptedOpenAIServer:
    """Start with `with ScriptedOpenAIServer(...) as server:`; `server.base_url` ends in /v1."""

    responder: Responder = echo_responder
    models: tuple[str, ...] = ("test-model",)
    api_key: str | None = None
    faults: Faults = field(default_factory=Faults)
    capacity: Capacity = field(default_factory=Capacity)
    log: list[LoggedRequest] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)  # every chat request's JSON body, in arrival order

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._attempts: Counter[str] = Counter()
        self._slots = threading.Semaphore(self.capacity.concurrency) if self.capacity.concurrency else None
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> ScriptedOpenAIServer:
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of this server."""
        assert self._httpd is not None, "start the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # -- what tests ask ------------------------------------------------------------------------
    def completed(self) -> Counter[str]:
        """How many times each request was answered successfully (more than 1 = a duplicate)."""
        with self._lock:
            return Counter(r.digest for r in self.log if r.outcome == "ok")

    def outcomes(self) -> Counter[str]:
        """How many attempts ended in each outcome."""
        with self._lock:
            return Counter(r.outcome for r in self.log)

    # -- decisions -----------------------------------------------------------------------------
    def _next_attempt(self, digest: str) -> int:
        with self._lock:
            self._attempts[digest] += 1
            return self._attempts[digest]

    def _fault(self, digest: str, attempt: int) -> str | None:
        f = self.faults
        if f.rate <= 0 or attempt > f.max_faulty_attempts:
            return None
        u = int(hashlib.sha256(f"{f.seed}:{digest}:{attempt}".encode()).hexdigest()[:12], 16) / 16**12
        if u >= f.rate:
            return None
        return f.kinds[min(int(u / f.rate * len(f.kinds)), len(f.kinds) - 1)]

    def _latency(self, digest: str, attempt: int) -> float:
        c = self.capacity
        if c.mean_latency <= 0:
            return 0.0
        rng = random.Random(f"{digest}:{attempt}")
        mu = math.log(c.mean_latency) - c.sigma**2 / 2  # so that the mean is mean_latency
        return rng.lognormvariate(mu, c.sigma)

    def _record(self, digest: str, attempt: int, outcome: str) -> None:
        with self._lock:
            self.log.append(LoggedRequest(digest, attempt, outcome, time.monotonic()))


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops connections when dozens of clients connect at once,
    # and each dropped SYN costs the client a 1 s retransmission: a latency the real servers don't have.
    request_queue_size = 1024


class _Handler(BaseHTTPRequestHandler):
    owner: ScriptedOpenAIServer
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would hold the second

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes | dict, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout fault)
            pass

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": {"message": message, "type": "test_error", "code": status}}, headers)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.owner.models]})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        owner = self.owner
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._error(404, f"no route {self.path}")
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._error(400, "request body is not JSON")
            return
        with owner._lock:
            owner.bodies.append(body)
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        attempt = owner._next_attempt(digest)
        if owner.api_key and self.headers.get("Authorization") != f"Bearer {owner.api_key}":
            owner._record(digest, attempt, "401")
            self._error(401, "Incorrect API key provided")
            return
        if body.get("model") not in owner.models:
            owner._record(digest, attempt, "404")
            self._error(404, f"The model `{body.get('model')}` does not exist")
            return
        fault = owner._fault(digest, attempt)
        if fault:  # logged now: a client that times out does not wait for the rest
            owner._record(digest, attempt, fault)
        if owner._slots:
            owner._slots.acquire()
        try:
            time.sleep(owner._latency(digest, attempt))
            if fault == "timeout":
                time.sleep(owner.faults.timeout_sleep)
            try:
                text = owner.responder(body["model"], body["messages"])
            except ValueError as exc:  # the responder refuses this request
                owner._record(digest, attempt, "400")
                self._error(400, str(exc))
                return
        finally:
            if owner._slots:
                owner._slots.release()
        if not fault:
            owner._record(digest, attempt, "ok")
        if fault == "429":
            self._error(429, "Rate limit reached", {"Retry-After": f"{owner.faults.retry_after:g}"})
        elif fault == "500":
            self._error(500, "The server had an error while processing your request")
        elif fault == "malformed":
            self._send(200, b'{"id": "chatcmpl-x", "choices": [{"message": ')
        else:
            choices = (
                []
                if fault == "empty"
                else [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
            )
            prompt_tokens = sum(len(m.get("content", "").split()) for m in body["messages"])
            self._send(200, {
                "id": f"chatcmpl-{digest[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"], "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                          "total_tokens": prompt_tokens + len(text.split())},
            })  # fmt: skip
