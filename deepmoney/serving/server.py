"""The news-analysis server: a KServe ModelServer on loopback hosting the LLM, the step models and `chain`.

What it hosts: the embedded LLM predictor (`--model`, served at `/openai/v1/...` and as a KServe
model) or nothing (`--llm URL#MODEL`: the steps ask that endpoint); the step models `sectors`,
`method`, `data`, `analysis` (or those `--steps` names); and `chain`, which runs them in order.
KServe's v1/v2 endpoints, health routes and `/metrics` come from KServe itself (its DataPlane,
model repository and REST server); the server differs from `ModelServer.start` in two ways: it
listens on the address it is given — 127.0.0.1 unless asked otherwise (KServe 0.21 always binds
0.0.0.0) — and it refuses bodies over `serving.max_body_bytes` with 413 before reading them
(KServe accepts any size). Every failure is one JSON line with its status; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepmoney.serving.kserve_import import import_kserve

import_kserve()

import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from kserve.errors import InvalidInput, ModelNotFound  # noqa: E402
from kserve.model_server import ModelServer  # noqa: E402
from kserve.protocol.rest.server import RESTServer  # noqa: E402

from deepmoney import env  # noqa: E402
from deepmoney.config import DeepmoneyConfig  # noqa: E402
from deepmoney.errors import UserError  # noqa: E402
from deepmoney.llm.roles import Endpoint, parse_endpoint  # noqa: E402
from deepmoney.serving.errors import ServingError, TooLarge  # noqa: E402
from deepmoney.serving.openai_api import OPENAI_PREFIX, LLMPredictor, OpenAIError, openai_router  # noqa: E402
from deepmoney.serving.payload import ALL_STEPS, INTAKE, REQUEST_ID_HEADER, STEPS  # noqa: E402
from deepmoney.serving.steps import ChainModel, StepContext, StepModel  # noqa: E402

log = logging.getLogger(__name__)


@dataclass
class ServeOptions:
    """What `deepmoney serve` was asked to serve."""

    config: DeepmoneyConfig
    model_dir: Path | None = None  # the embedded LLM (resolved to a local Hugging Face directory)
    llm: str | None = None  # URL#MODEL of an OpenAI-compatible LLM, instead of the embedded one
    market_data: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    steps: tuple[str, ...] = STEPS  # with an intake model, the intake comes first unless --steps says otherwise
    chain: bool = True  # host `chain` (when every step is hosted)
    intake_model: str | None = None  # the intake classifier's directory: the chain starts with the intake
    extra_models: list[Any] = field(default_factory=list)  # more KServe models (tests: an echo model)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one); a UserError when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off only on sockets that say they are TCP,
    # and with it on every response waits 40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use: stop what listens there or pass --port N") from None
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by its Content-Length or as it arrives (chunked)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: str) -> TooLarge:
        return TooLarge(f"the request body is {size} bytes; the limit is {self.max_bytes} (serving.max_body_bytes)")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            error = self._too_large(length.decode())
            return await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large(f"over {received}")
            return message

        await self.app(scope, limited, send)


async def _serving_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServingError)
    request_id = exc.request_id or request.headers.get(REQUEST_ID_HEADER)
    log_at = logging.WARNING if exc.status >= 500 else logging.INFO
    log.log(log_at, "request %s: %s %s -> %d: %s", request_id or "-", request.method, request.url.path, exc.status,
            exc.message, extra={"request_id": request_id, "step": exc.step, "status": exc.status})  # fmt: skip
    return JSONResponse(exc.body(request_id), status_code=exc.status)


async def _invalid_input(request: Request, exc: Exception) -> JSONResponse:
    log.info("%s %s -> 400: %s", request.method, request.url.path, exc)
    return JSONResponse({"error": f'{exc}: send a JSON object such as {{"news": "..."}}'}, status_code=400)


def _not_found(models: list[str]) -> Any:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        log.info("%s %s -> 404: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": f"{exc}; this server hosts {', '.join(models)}"}, status_code=404)

    return handler


async def _openai_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenAIError)
    return exc.response()


class _LoopbackREST(RESTServer):
    """KServe's REST server on our own FastAPI app and address (KServe's own always binds 0.0.0.0)."""

    def __init__(self, app: FastAPI, host: str, model_server: ModelServer, port: int) -> None:
        super().__init__("unused", model_server.dataplane, model_server.model_repository_extension, port,
                         timeout_keep_alive=65)  # fmt: skip
        self.app = app
        self.config = uvicorn.Config(app, host=host, port=port, log_config=None, timeout_keep_alive=65,
                                     timeout_graceful_shutdown=30, lifespan="off")  # fmt: skip
        self._server = uvicorn.Server(self.config)

    def create_application(self) -> None:
        self._add_middlewares(self.app)
        self._register_endpoints(self.app)
        self._add_exception_handlers(self.app)


class ChainServer:
    """The models of `options`, loaded and registered, on a KServe REST server bound to `options.host`."""

    def __init__(self, options: ServeOptions, sock: socket.socket | None = None) -> None:
        steps = options.steps
        if options.intake_model is not None and steps == STEPS:
            steps = ALL_STEPS
        unknown = [s for s in steps if s not in ALL_STEPS]
        if unknown:
            raise UserError(f"--steps: unknown step {unknown[0]!r}; the steps are {', '.join(ALL_STEPS)}")
        if INTAKE in steps and options.intake_model is None:
            raise UserError("--steps intake needs the classifier: pass --intake-model DIR (deepmoney intake train)")
        intake_only = tuple(steps) == (INTAKE,)
        if options.model_dir is not None and options.llm is not None:
            raise UserError("pass --model (serve a trained model) or --llm URL#MODEL (ask an existing LLM), not both")
        if options.model_dir is None and options.llm is None and not intake_only:
            raise UserError("pass --model (serve a trained model) or --llm URL#MODEL (ask an existing LLM)")
        self.options = options
        self.sock = sock or bind(options.host, options.port)
        self.port = self.sock.getsockname()[1]
        serving = options.config.serving
        self.model_server = ModelServer(http_port=self.port, enable_grpc=False, enable_latency_logging=False)
        self.predictor: LLMPredictor | None = None
        if options.model_dir is not None:
            self.predictor = LLMPredictor(serving.served_model_name, options.model_dir, serving.max_batch,
                                          serving.batch_window_ms / 1000)  # fmt: skip
            endpoint = Endpoint("serve", "http", f"http://127.0.0.1:{self.port}{OPENAI_PREFIX}",
                                serving.served_model_name)  # fmt: skip
        else:
            endpoint = parse_endpoint("llm", str(options.llm)) if options.llm else None
        window = options.config.marketdata.window
        self.context = StepContext(endpoint, serving, options.market_data or options.config.marketdata.url, window,
                                   options.config.intake, options.intake_model)  # fmt: skip
        self.steps = [StepModel(step, self.context) for step in steps]
        models: list[Any] = [*([self.predictor] if self.predictor else []), *self.steps, *options.extra_models]
        if options.chain and tuple(steps) in (STEPS, ALL_STEPS):
            models.append(ChainModel(self.steps))
        for model in models:
            model.load()
            self.model_server.register_model(model)
        self.models = [m.name for m in models]
        self.app = self._app()
        self.rest = _LoopbackREST(self.app, options.host, self.model_server, self.port)
        self.rest.create_application()

    def _app(self) -> FastAPI:
        app = FastAPI(title="deepmoney news analysis", docs_url=None, redoc_url=None)
        if self.predictor is not None:
            app.include_router(openai_router(self.predictor))
        return app

    def _finish_app(self) -> None:
        # Ours after KServe's: a more specific class wins, and these answer in one line without a traceback.
        self.app.add_exception_handler(ServingError, _serving_error)
        self.app.add_exception_handler(OpenAIError, _openai_error)
        self.app.add_exception_handler(InvalidInput, _invalid_input)
        self.app.add_exception_handler(ModelNotFound, _not_found(self.models))
        self.app.add_middleware(BodyLimit, max_bytes=self.options.config.serving.max_body_bytes)

    @property
    def url(self) -> str:
        """The server's base URL (loopback when bound to every address)."""
        host = self.options.host if self.options.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    async def serve(self) -> None:
        """Serve until stopped (SIGINT/SIGTERM or `stop`)."""
        self._finish_app()
        if threading.current_thread() is threading.main_thread():
            # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again for the handler it
            # found: the CLI's would report an interrupted run. A server that stopped cleanly exits 0.
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: None)
        log.info("serving %s on %s", ", ".join(self.models), self.url)
        try:
            await self.rest._server.serve(sockets=[self.sock])
        finally:
            await self.context.aclose()
            if self.predictor is not None:
                await self.predictor.unload_backend()
            log.info("stopped")

    def stop(self) -> None:
        """Ask the server to finish its requests and stop."""
        self.rest._server.should_exit = True


class BackgroundServer:
    """A `ChainServer` running in a thread of this process (tests, benchmarks): `with BackgroundServer(o) as s:`."""

    def __init__(self, options: ServeOptions) -> None:
        self.server = ChainServer(options)
        self.url = self.server.url
        self._thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        while not self.server.rest._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server stopped while starting")
            self._thread.join(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self._thread.join(30)


def serve_forever(options: ServeOptions) -> None:
    """Load the models and serve them until interrupted."""
    asyncio.run(ChainServer(options).serve())


def resolve_llm(uri: str, config: DeepmoneyConfig) -> Path:
    """The local Hugging Face directory of `--model` (downloaded once into the cache for s3://, runs:/, models:/)."""
    from deepmoney.models.resolve import resolve_model

    base = env.get(env.XDG_CACHE_HOME)
    cache = (Path(base).expanduser() if base else Path.home() / ".cache") / "deepmoney" / "models"
    return resolve_model(uri, config, cache).path
