"""The chain's steps as KServe models, and the `chain` model that runs them in order.

Each step model takes the accumulating payload (`serving.payload`) and returns it with its part
added; its hook is a thin call into `analysis` (prompts, schemas, readers, taxonomy) or
`marketdata` (series as of the news date). The LLM steps ask over the OpenAI-compatible API — the
cluster's vLLM InferenceService, any `--llm URL#MODEL`, or the embedded predictor of this server —
so step code is the same everywhere. `ChainModel` runs the Sequence with the InferenceGraph's
semantics: each step gets the previous step's response, a failing step fails the request (Hard
dependencies), and a step that stops the chain (no sector) makes the rest pass the payload on.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from kserve import Model

from deepmoney.analysis.market import Fetched, MarketSeries, label_of, name
from deepmoney.analysis.prompts import analysis_messages, method_messages, sectors_messages
from deepmoney.analysis.structured import read_analysis, read_method, read_sectors, step_schema
from deepmoney.analysis.taxonomy import BY_ID, classify
from deepmoney.config import ServingConfig
from deepmoney.errors import ServiceUnavailable, UserError
from deepmoney.llm.client import LLMRequestError, OpenAIChatClient, RetryPolicy, Sampling
from deepmoney.llm.errors import LLMEndpointDown, LLMFatalError, LLMGaveUp
from deepmoney.llm.roles import Endpoint
from deepmoney.marketdata.source import MarketData
from deepmoney.serving import metrics
from deepmoney.serving.errors import BadRequest, ServingError, StepTimeout, Unavailable, UpstreamFailed
from deepmoney.serving.payload import (
    REQUEST_ID_HEADER,
    ChainPayload,
    SectorOut,
    SeriesOut,
    Stopped,
    check_request_only,
    dump,
    parse_payload,
)

log = logging.getLogger(__name__)


class StepContext:
    """What the steps of one server share: the LLM client, the market data and the settings."""

    def __init__(self, llm: Endpoint, config: ServingConfig, market_url: str | None, window: int) -> None:
        self.llm, self.config, self.market_url, self.window = llm, config, market_url, window
        self._client: OpenAIChatClient | None = None
        self._market: MarketSeries | None = None

    def client(self) -> OpenAIChatClient:
        """The OpenAI-compatible client of the LLM (made in the server's event loop, on first use)."""
        if self._client is None:
            # A server must keep serving whatever the LLM does: no "endpoint down" stop, few retries.
            policy = RetryPolicy(
                attempts=self.config.llm_attempts, timeout=self.config.llm_timeout_s, max_delay=2.0, down_after=2**62
            )
            self._client = OpenAIChatClient(self.llm, concurrency=self.config.llm_concurrency, policy=policy)
        return self._client

    def market(self) -> MarketSeries:
        """The market data (the embedded default is built on first use, which `load` does at start-up)."""
        if self._market is None:
            self._market = MarketSeries(MarketData.open(self.market_url), self.window)
        return self._market

    async def ask(self, step: str, messages: list[dict[str, str]], payload: ChainPayload) -> str:
        """The LLM's answer to one step's messages (by the step's JSON schema unless `structured` is off)."""
        max_tokens = self.config.max_tokens(step)
        schema = step_schema(step, max_tokens) if self.config.structured else None
        sampling = Sampling(
            temperature=self.config.temperature, top_p=1.0, max_tokens=max_tokens, seed=0, json_schema=schema
        )
        started = time.perf_counter()
        try:
            completion = await self.client().chat(messages, sampling)
        except LLMGaveUp as exc:
            if exc.reason.startswith("timeout"):
                raise StepTimeout(
                    f"step {step}: the LLM {self.llm.label} did not answer within "
                    f"{self.config.llm_timeout_s:g} s ({exc.attempts} tries)",
                    step,
                ) from None
            raise UpstreamFailed(f"step {step}: the LLM {self.llm.label} failed ({exc.reason})", step) from None
        except (LLMFatalError, LLMEndpointDown) as exc:
            raise UpstreamFailed(f"step {step}: {exc}", step) from None
        except LLMRequestError as exc:  # e.g. the prompt does not fit the model's context
            raise BadRequest(
                f"step {step}: the LLM refused the prompt ({exc}); send a shorter news text", step
            ) from None
        elapsed = time.perf_counter() - started
        model = self.llm.model
        metrics.LLM_SECONDS.labels(model, step).observe(elapsed)
        metrics.LLM_TOKENS.labels(model, step, "prompt").inc(completion.prompt_tokens)
        metrics.LLM_TOKENS.labels(model, step, "completion").inc(completion.completion_tokens)
        payload.llm_ms[step] = round(payload.llm_ms.get(step, 0.0) + elapsed * 1000, 3)
        payload.answers.append(completion.text)
        return completion.text

    async def aclose(self) -> None:
        """Close the LLM connections and the database."""
        if self._client is not None:
            await self._client.aclose()
        if self._market is not None:
            self._market.market.close()


def _top(payload: ChainPayload, step: str) -> SectorOut:
    if not payload.sectors:
        raise BadRequest(f"step {step} needs the sectors step's answer first: send the payload it returned", step)
    return payload.sectors[0]


async def sectors_step(payload: ChainPayload, ctx: StepContext) -> None:
    """Step 1: the sectors or targets the news affects, each mapped onto the taxonomy; none stops the chain."""
    text = await ctx.ask("sectors", sectors_messages(payload.news, payload.lang), payload)
    payload.sectors = []
    for found in read_sectors(text):
        sector = classify(found)
        payload.sectors.append(
            SectorOut(
                name=found,
                taxonomy=sector and sector.id,
                taxonomy_name=sector and (sector.name_zh if payload.lang == "zh" else sector.name_en),
            )
        )
    if not payload.sectors:
        payload.stopped = Stopped(
            step="sectors",
            reason="the model named no sector or target this news affects, so there is nothing to analyse",
        )


async def method_step(payload: ChainPayload, ctx: StepContext) -> None:
    """Step 2: a quantitative method for the top sector, and the data series it needs."""
    top = _top(payload, "method")
    text = await ctx.ask("method", method_messages(payload.news, top.name, payload.lang), payload)
    payload.method, payload.data_requested = read_method(text)


def _series_out(fetched: Fetched, requested: list[str], language: str) -> SeriesOut:
    obs = fetched.observations
    points = fetched.points()
    return SeriesOut(
        id=fetched.info.id,
        name=name(fetched.info, language),
        unit=fetched.info.unit,
        frequency=fetched.info.frequency,
        source=fetched.info.source,
        requested_as=requested,
        as_of=obs.as_of.isoformat() if obs.as_of else None,
        window={"first": points[0][0], "last": points[-1][0], "count": len(points)},
        values=points,
    )


async def data_step(payload: ChainPayload, ctx: StepContext) -> None:
    """The data step: the series step 2 named (else the top sector's), as public on the news date."""
    top = _top(payload, "data")
    requested = payload.data_requested or []
    try:
        market = ctx.market()
        matched, fetched = await asyncio.to_thread(
            market.fetch_for, requested, _sector_key(top), payload.date, payload.lang
        )
    except UserError as exc:  # down, or broken under the running server (ServiceUnavailable is a UserError)
        if ctx.config.on_data_unavailable == "error":
            raise Unavailable(f"step data: {exc}", "data") from None
        payload.data = []
        payload.data_note = f"market data unavailable ({exc}); the analysis was given no data"
        return
    by_label: dict[str, list[str]] = {}
    for wanted, got in matched.items():
        by_label.setdefault(got, []).append(wanted)
    payload.data = [_series_out(f, by_label.get(f.label, []), payload.lang) for f in fetched]
    notes = []
    if payload.date is None:
        notes.append("undated news: the latest data in the database were used")
    if fetched and not matched:
        notes.append("no series matched the data step 2 named; the series filed under the sector were used")
    if not fetched:
        notes.append("no series in the database matched the data named, nor the sector")
    payload.data_note = "; ".join(notes) or None


def _sector_key(top: SectorOut) -> str:
    """The sector the data dictionary files series under: the taxonomy's English name (its sector names)."""
    sector = BY_ID.get(top.taxonomy or "")
    return sector.name_en if sector else top.name


async def analysis_step(payload: ChainPayload, ctx: StepContext) -> None:
    """Step 3: the specific quantitative analysis with the fetched data."""
    top = _top(payload, "analysis")
    table = {label_of(s.name, s.unit, payload.lang): s.values for s in payload.data or []}
    messages = analysis_messages(payload.news, top.name, payload.method or "", table, payload.lang)
    text = await ctx.ask("analysis", messages, payload)
    payload.analysis, payload.direction = read_analysis(text)


HOOKS = {"sectors": sectors_step, "method": method_step, "data": data_step, "analysis": analysis_step}


def request_id(payload: ChainPayload, headers: dict[str, str] | None) -> str:
    """The request's id: the payload's, else the x-request-id header's, else a new one."""
    return payload.request_id or (headers or {}).get(REQUEST_ID_HEADER) or uuid.uuid4().hex


class StepModel(Model):
    """One chain step served as a KServe model (`/v1/models/<step>:predict`)."""

    def __init__(self, step: str, ctx: StepContext) -> None:
        super().__init__(step)
        self.step, self.ctx = step, ctx
        self.hook = HOOKS[step]

    def load(self) -> bool:
        """Ready at once; the data step builds or opens the market database first."""
        if self.step == "data":
            try:
                self.ctx.market()
            except ServiceUnavailable as exc:  # down now may be up later: serve, and say so per request
                log.warning("step data: %s; requests will say so until it answers", exc)
        self.ready = True
        return self.ready

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """The payload with this step's part added (unchanged when an earlier step stopped the chain)."""
        return dump(await self.run(parse_payload(payload, self.ctx.config.max_news_chars), headers))

    async def run(self, payload: ChainPayload, headers: dict[str, str] | None) -> ChainPayload:
        """This step on a parsed payload."""
        payload.request_id = request_id(payload, headers)
        if payload.stopped is not None:
            return payload
        started = time.perf_counter()
        try:
            await self.hook(payload, self.ctx)
        except ServingError as exc:
            metrics.STEP_FAILURES.labels(self.step, str(exc.status)).inc()
            exc.request_id = payload.request_id
            raise
        elapsed = time.perf_counter() - started
        metrics.STEP_SECONDS.labels(self.ctx.llm.model, self.step).observe(elapsed)
        payload.timings_ms[self.step] = round(elapsed * 1000, 3)
        log.info("request %s: step %s done in %.0f ms", payload.request_id, self.step, elapsed * 1000,
                 extra={"request_id": payload.request_id, "step": self.step})  # fmt: skip
        return payload


class ChainModel(Model):
    """The whole Sequence in one model (`/v1/models/chain:predict`), with the InferenceGraph's semantics."""

    def __init__(self, steps: list[StepModel], name: str = "chain") -> None:
        super().__init__(name)
        self.steps = steps

    def load(self) -> bool:
        """Ready when every step is."""
        self.ready = all(step.ready or step.load() for step in self.steps)
        return self.ready

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Every step in order on one payload; a failing step fails the request, naming itself."""
        parsed = parse_payload(payload, self.steps[0].ctx.config.max_news_chars)
        check_request_only(parsed)
        started = time.perf_counter()
        try:
            for step in self.steps:
                parsed = await step.run(parsed, headers)
        except ServingError:
            metrics.CHAIN_REQUESTS.labels("failed").inc()
            raise
        parsed.timings_ms["chain"] = round((time.perf_counter() - started) * 1000, 3)
        metrics.CHAIN_REQUESTS.labels("stopped" if parsed.stopped else "answered").inc()
        return dump(parsed)
