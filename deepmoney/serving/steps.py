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
from deepmoney.analysis.structured import (
    read_analysis,
    read_method,
    read_program,
    read_sectors,
    read_spec,
    step_schema,
)
from deepmoney.analysis.taxonomy import BY_ID, classify
from deepmoney.config import IntakeConfig, ServingConfig
from deepmoney.errors import ServiceUnavailable, UserError
from deepmoney.intake.classifier import Classifier
from deepmoney.intake.dedup import WindowDeduplicator
from deepmoney.intake.policy import goes_on
from deepmoney.llm.client import LLMRequestError, OpenAIChatClient, RetryPolicy, Sampling
from deepmoney.llm.errors import LLMEndpointDown, LLMFatalError, LLMGaveUp
from deepmoney.llm.roles import Endpoint
from deepmoney.marketdata.source import MarketData
from deepmoney.quant.compute import Available, Computed, compute
from deepmoney.serving import metrics
from deepmoney.serving.errors import BadRequest, ServingError, StepTimeout, Unavailable, UpstreamFailed
from deepmoney.serving.payload import (
    INTAKE,
    REQUEST_ID_HEADER,
    ChainPayload,
    ComputedOut,
    IntakeOut,
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

    def __init__(self, llm: Endpoint | None, config: ServingConfig, market_url: str | None, window: int,
                 intake: IntakeConfig | None = None, intake_model: str | None = None) -> None:  # fmt: skip
        self.llm, self.config, self.market_url, self.window = llm, config, market_url, window
        self.intake, self.intake_model = intake or IntakeConfig(), intake_model
        self._client: OpenAIChatClient | None = None
        self._market: MarketSeries | None = None
        self._classifier: Classifier | None = None
        self._dictionary: dict[str, list[tuple[str, str]]] = {}
        self.dedup = WindowDeduplicator(self.intake.dedup, self.intake.window)

    def classifier(self) -> Classifier:
        """The intake's subjective/objective classifier (loaded at start-up by the intake model's `load`)."""
        if self._classifier is None:
            if self.intake_model is None:
                raise UserError("the intake step needs a classifier: pass --intake-model DIR (deepmoney intake train)")
            self._classifier = Classifier.load(self.intake_model)
        return self._classifier

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

    def dictionary(self, language: str) -> list[tuple[str, str]]:
        """(id, name with unit) of every series, for step 2's prompt — when there are at most
        `dictionary_in_prompt` of them and the database answers; else [] (step 2 names series freely)."""
        limit = self.config.dictionary_in_prompt
        if not limit:
            return []
        try:
            catalogue = self.market().market.catalogue()
        except UserError:  # down: the data step reports it
            return []
        if len(catalogue) > limit:
            return []
        if language not in self._dictionary:  # the catalogue is read once per server, as the name index is
            self._dictionary[language] = [(i.id, label_of(name(i, language), i.unit, language)) for i in catalogue]
        return self._dictionary[language]

    async def ask(self, step: str, messages: list[dict[str, str]], payload: ChainPayload,
                  series_ids: list[str] | None = None) -> str:  # fmt: skip
        """The LLM's answer to one step's messages (by the step's JSON schema unless `structured` is off;
        `series_ids`: the ids step 2 may name)."""
        if self.llm is None:
            raise Unavailable(f"step {step}: this server has no LLM (pass --model or --llm)", step)
        max_tokens = self.config.max_tokens(step)
        program = step == "analysis" and self.config.quant.sandbox
        schema = step_schema(step, max_tokens, program, series_ids or ()) if self.config.structured else None
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


async def intake_step(payload: ChainPayload, ctx: StepContext) -> None:
    """The intake: the classifier's label, and whether the news repeats a recent item; either may stop the chain."""
    predict = ctx.classifier().predict
    verdict = (await asyncio.to_thread(predict, [payload.news], threshold=ctx.intake.subjective_threshold))[0]
    key = payload.id or str(payload.request_id)
    # the same id again (a client's retry) is the same item, not a duplicate of itself
    duplicate = None if key in ctx.dedup else ctx.dedup.check(key, payload.news)
    forward = goes_on(verdict.label, duplicate is not None, ctx.intake)
    payload.intake = IntakeOut(label=verdict.label, score=round(verdict.score, 6), forward=forward)
    if duplicate is not None:
        payload.intake.duplicate_of, payload.intake.duplicate_kind = duplicate.kept_id, duplicate.kind
        payload.intake.similarity = round(duplicate.similarity, 4)
    metrics.INTAKE_VERDICTS.labels(verdict.label, "duplicate" if duplicate else "new").inc()
    if forward:
        return
    if verdict.label not in ctx.intake.forward_labels:
        reason = (
            f"the intake classifier labels this news {verdict.label} (probability {verdict.score:.2f}); only "
            f"{' and '.join(ctx.intake.forward_labels)} news goes on to the analysis (intake.forward_labels)"
        )
    else:
        assert duplicate is not None
        reason = (f"{duplicate.reason()} among the last {ctx.intake.window} items, which was analysed already "
                  "(intake.forward_duplicates)")  # fmt: skip
    payload.stopped = Stopped(step=INTAKE, reason=reason)


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
    dictionary = await asyncio.to_thread(ctx.dictionary, payload.lang)
    messages = method_messages(payload.news, top.name, payload.lang, dictionary)
    text = await ctx.ask("method", messages, payload, series_ids=[series_id for series_id, _ in dictionary])
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
    """Step 3: the specific quantitative analysis with the fetched data, and the figures its specification computes."""
    top = _top(payload, "analysis")
    table = {label_of(s.name, s.unit, payload.lang): s.values for s in payload.data or []}
    ids = {label_of(s.name, s.unit, payload.lang): s.id for s in payload.data or []}
    messages = analysis_messages(payload.news, top.name, payload.method or "", table, payload.lang, ids)
    text = await ctx.ask("analysis", messages, payload)
    payload.analysis, payload.direction = read_analysis(text)
    if ctx.config.quant.enabled:
        payload.computed = await _computed(payload, ctx, text)


async def _computed(payload: ChainPayload, ctx: StepContext, text: str) -> ComputedOut:
    """Run the answer's specification (or the default) on the fetched series, as of the news date."""
    series = payload.data or []
    try:
        market = ctx.market().market
        available = [Available(market.info(s.id), (s.name, label_of(s.name, s.unit, payload.lang))) for s in series]
        computed = (await asyncio.to_thread(compute, read_spec(text), available, market, payload.date,
                                            ctx.config.quant, payload.ex_post)).to_dict()  # fmt: skip
    except UserError as exc:  # the database went away between the data step and this one
        if ctx.config.on_data_unavailable == "error":
            raise Unavailable(f"step analysis: {exc}", "analysis") from None
        computed = Computed(method=None, spec=None, source="default", spec_error=None, figures=None,
                            as_of=payload.date and payload.date.isoformat(),
                            error=f"market data unavailable ({exc}); nothing was computed").to_dict()  # fmt: skip
    if ctx.config.quant.sandbox:
        computed["program"] = await _program(text, series, ctx)
    metrics.COMPUTED.labels(computed["method"] or "none", computed["source"]).inc()
    return ComputedOut(**computed)


async def _program(text: str, series: list[SeriesOut], ctx: StepContext) -> dict[str, Any]:
    from deepmoney.quant.sandbox import SandboxLimits, run_program

    program = read_program(text)
    if program is None:
        return {"ok": False, "error": "step 3 wrote no program", "stdout": ""}
    quant = ctx.config.quant
    limits = SandboxLimits(cpu_seconds=quant.sandbox_cpu_seconds, wall_seconds=quant.sandbox_wall_seconds,
                           memory_bytes=quant.sandbox_memory_mb << 20)  # fmt: skip
    data = {s.id: [(period, value) for period, value in s.values] for s in series}
    result = await asyncio.to_thread(run_program, program, data, limits)
    return {"code": program, **result.to_dict()}


HOOKS = {INTAKE: intake_step, "sectors": sectors_step, "method": method_step, "data": data_step,
         "analysis": analysis_step}  # fmt: skip


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
        """Ready at once; the intake loads its classifier, the data step builds or opens the market database first."""
        if self.step == INTAKE:
            self.ctx.classifier()
        if self.step in ("data", "analysis"):
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
        metrics.STEP_SECONDS.labels(self.ctx.llm.model if self.ctx.llm else "", self.step).observe(elapsed)
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
