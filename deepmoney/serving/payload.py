"""The JSON payload that travels through the chain: the request's fields, and each step's part as it is added.

A client sends `{"news": "...", "date": "YYYY-MM-DD", "language": "en"|"zh", "id": "..."}` (only
`news` is required). Every step model takes the whole payload and returns it with its own part
added, so that an InferenceGraph Sequence can pass each response on verbatim (`data: $response`)
and the last step's response is the answer. Unknown fields are refused: a request cannot smuggle
prompts or schemas into a step.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deepmoney.serving.errors import BadRequest

LANGUAGES = ("en", "zh")
STEPS = ("sectors", "method", "data", "analysis")  # the chain's steps, in order: one model (and service) each
INTAKE = "intake"  # the optional first step: near-duplicates and the subjective/objective filter
ALL_STEPS = (INTAKE, *STEPS)
REQUEST_ID_HEADER = "x-request-id"  # the header a request's id travels in, through the graph to every step
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


class SectorOut(BaseModel):
    """A sector or target step 1 named, with the taxonomy entry it maps to (None when none fits)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    taxonomy: str | None = None
    taxonomy_name: str | None = None


class SeriesOut(BaseModel):
    """One series handed to step 3, exactly as it was in the prompt: values public on `as_of` only."""

    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    unit: str
    frequency: str
    source: str
    requested_as: list[str] = Field(default_factory=list)  # the step-2 names that matched it ([] = sector fallback)
    as_of: str | None  # None: undated news, the latest data
    window: dict[str, Any]  # first and last period, count
    values: list[tuple[str, float]]


class IntakeOut(BaseModel):
    """The intake's verdict on the news: its label with the classifier's probability, and what it duplicates."""

    model_config = ConfigDict(extra="forbid")
    label: str
    score: float
    duplicate_of: str | None = None
    duplicate_kind: str | None = None
    similarity: float | None = None
    forward: bool


class ComputedOut(BaseModel):
    """Step 3's computed figures: the specification run (the model's or the default) and its results."""

    model_config = ConfigDict(extra="forbid")
    method: str | None
    spec: dict[str, Any] | None
    source: str  # "model" | "default"
    spec_error: str | None  # why the model's specification was not run as written (None: it was)
    figures: dict[str, Any] | None
    series: list[dict[str, Any]]  # each series read: id, role, first, last, count, after_news_date
    as_of: str | None
    ex_post: bool
    notes: list[str]
    chart_png: str | None  # base64 PNG of the series around the event
    error: str | None  # why nothing could be computed
    program: dict[str, Any] | None = None  # the sandboxed program's result (quant.sandbox on)


class Stopped(BaseModel):
    """Why the chain ended before its last step (the response is still a 200: the answer is "nothing to do")."""

    model_config = ConfigDict(extra="forbid")
    step: str
    reason: str


class ChainPayload(BaseModel):
    """The request and every answer so far."""

    model_config = ConfigDict(extra="forbid")

    news: str
    date: dt.date | None = None
    language: str | None = None
    id: str | None = None
    request_id: str | None = None
    ex_post: bool = False  # also study the event window after the news date (marked as such; never the default)
    intake: IntakeOut | None = None
    sectors: list[SectorOut] | None = None
    method: str | None = None
    data_requested: list[str] | None = None
    data: list[SeriesOut] | None = None
    data_note: str | None = None
    analysis: str | None = None
    direction: str | None = None
    computed: ComputedOut | None = None
    answers: list[str] = Field(default_factory=list)  # the raw answer of each LLM step, in order
    timings_ms: dict[str, float] = Field(default_factory=dict)  # per step, wall time inside the step
    llm_ms: dict[str, float] = Field(default_factory=dict)  # per step, of which waiting for the LLM
    stopped: Stopped | None = None

    @field_validator("date", mode="before")
    @classmethod
    def _date(cls, value: Any) -> Any:
        if isinstance(value, str) and len(value) > 10 and value[10] in "T ":
            return value[:10]  # a timestamp: its day
        return value

    @property
    def lang(self) -> Literal["en", "zh"]:
        """The language the steps answer in (set by `parse_payload`)."""
        return "zh" if self.language == "zh" else "en"


def detect_language(text: str) -> str:
    """'zh' when at least a fifth of the letters are Chinese characters, else 'en'."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "en"
    return "zh" if sum(bool(_CJK.match(c)) for c in letters) * 5 >= len(letters) else "en"


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "body"
    if error["type"] == "extra_forbidden":
        return f"unknown field {where!r}: a request has news, date, language, id, ex_post (and the chain's own fields)"
    if error["type"] == "missing":
        return f'missing field {where!r}: send at least {{"news": "..."}}'
    return f"field {where!r}: {error['msg']}"


def parse_payload(body: Any, max_news_chars: int) -> ChainPayload:
    """The payload of a request body (a decoded JSON value), checked; BadRequest (400) with one line otherwise."""
    if isinstance(body, (bytes, str)):  # KServe leaves a body it was not told is JSON undecoded (curl -d ...)
        try:
            body = json.loads(body)
        except ValueError:
            raise BadRequest('the body is not JSON: send Content-Type: application/json and {"news": "..."}') from None
    if not isinstance(body, dict):
        raise BadRequest(f'the body must be a JSON object such as {{"news": "..."}}, not {type(body).__name__}')
    try:
        payload = ChainPayload.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(_first_error(exc)) from None
    if not payload.news.strip():
        raise BadRequest("field 'news' is empty: send the news text to analyse")
    if len(payload.news) > max_news_chars:
        raise BadRequest(
            f"field 'news' has {len(payload.news)} characters; the limit is {max_news_chars} "
            "(serving.max_news_chars): send the article's first part or raise the limit"
        )
    if payload.language is None:
        payload.language = detect_language(payload.news)
    elif payload.language not in LANGUAGES:
        raise BadRequest(f"language {payload.language!r} is not supported: use 'en' or 'zh', or leave it out")
    return payload


REQUEST_FIELDS = frozenset({"news", "date", "language", "id", "request_id", "ex_post"})


def check_request_only(payload: ChainPayload) -> None:
    """BadRequest when a request to the whole chain carries fields its steps write (answers, data, ...)."""
    owned = sorted(payload.model_fields_set - REQUEST_FIELDS)
    if owned:
        raise BadRequest(
            f"field {owned[0]!r} is written by the chain's steps; "
            "a request to the chain has news, date, language, id, ex_post"
        )


def dump(payload: ChainPayload) -> dict[str, Any]:
    """The payload as the JSON a step returns."""
    return payload.model_dump(mode="json")
