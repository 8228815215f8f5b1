"""The analysis specification step 3 writes: a toolbox method, the series it runs on, the event and its windows.

The model names series by id or by the name the prompt's table showed; `resolve` maps them onto
the series that were fetched for the item, and a name that was not fetched is an error (the
figures can only come from data the analysis was given, as of the news date). `SPEC_SCHEMA` is
the JSON schema of the object, for the step's structured output; `parse_spec` reads one with
one-line errors, so that an unusable specification is reported and replaced, never run half-read.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deepmoney.errors import UserError

METHODS = ("event_study", "ols_hac", "correlation", "granger", "var_irf", "diff_means")
TRANSFORMS = ("level", "diff", "pct_change", "log_return")
MAX_SERIES = 4
# How many series each method reads: (least, most); the first is the asset / dependent / effect.
SERIES_COUNT = {"event_study": (1, 2), "ols_hac": (2, 4), "correlation": (2, 2), "granger": (2, 2),
                "var_irf": (2, 4), "diff_means": (1, 1)}  # fmt: skip


class SpecError(UserError):
    """A specification that cannot be run as written (unknown method, a series not fetched, a bad window)."""


class AnalysisSpec(BaseModel):
    """One toolbox run: the method, its series (ids of fetched series), the event date, windows and parameters."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["event_study", "ols_hac", "correlation", "granger", "var_irf", "diff_means"]
    series: list[str] = Field(min_length=1, max_length=MAX_SERIES)
    event_date: dt.date | None = None  # default: the news date
    estimation_window: int = Field(120, ge=10, le=1000)  # event study: returns the market model is fitted on
    before: int = Field(5, ge=0, le=250)  # event study: returns before the event day; diff_means: observations
    after: int = Field(0, ge=0, le=250)  # observations after the event day: ex-post studies only
    lags: int = Field(4, ge=1, le=24)  # granger / var_irf: the largest lag tried; ols_hac: HAC lags
    window: int | None = Field(None, ge=3, le=1000)  # correlation: rolling window
    horizon: int = Field(10, ge=1, le=60)  # var_irf: periods of the impulse response
    transform: Literal["level", "diff", "pct_change", "log_return"] | None = None  # None: log returns if positive


def spec_schema() -> dict[str, Any]:
    """The JSON schema of a specification, for step 3's structured output (every bound the model checks)."""
    integer = {"type": "integer"}
    return {
        "type": "object",
        "properties": {
            "method": {"enum": list(METHODS)},
            "series": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 60},
                "minItems": 1,
                "maxItems": MAX_SERIES,
            },
            "event_date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
            "estimation_window": integer | {"minimum": 10, "maximum": 1000},
            "before": integer | {"minimum": 0, "maximum": 250},
            "after": integer | {"minimum": 0, "maximum": 250},
            "lags": integer | {"minimum": 1, "maximum": 24},
            "window": integer | {"minimum": 3, "maximum": 1000},
            "horizon": integer | {"minimum": 1, "maximum": 60},
            "transform": {"enum": list(TRANSFORMS)},
        },
        "required": ["method", "series"],
        "additionalProperties": False,
    }


SPEC_MAX_CHARS = 14 + 60 * MAX_SERIES + 3 * MAX_SERIES + 8 * 20 + 12 * 8  # the longest compact spec, with slack


def parse_spec(raw: object) -> AnalysisSpec:
    """The specification in `raw` (a decoded JSON object); a SpecError in one line when it is not one."""
    if raw is None:
        raise SpecError("the answer has no analysis specification")
    if not isinstance(raw, dict):
        raise SpecError(f"the specification must be a JSON object, not {type(raw).__name__}")
    try:
        spec = AnalysisSpec.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "spec"
        if error["type"] == "literal_error" and where == "method":
            raise SpecError(f"unknown method {raw.get('method')!r}; the toolbox has {', '.join(METHODS)}") from None
        raise SpecError(f"specification field {where!r}: {error['msg']}") from None
    least, most = SERIES_COUNT[spec.method]
    if not least <= len(spec.series) <= most:
        wanted = str(least) if least == most else f"{least} to {most}"
        raise SpecError(f"{spec.method} reads {wanted} series, the specification names {len(spec.series)}")
    return spec


def _fold(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def resolve(spec: AnalysisSpec, fetched: dict[str, list[str]]) -> AnalysisSpec:
    """`spec` with each series named by the id of a fetched series; `fetched`: id -> the names shown for it.

    A SpecError names the first series that was not fetched, and lists those that were.
    """
    by_name = {_fold(series_id): series_id for series_id in fetched}
    for series_id, names in fetched.items():
        for name in names:
            by_name.setdefault(_fold(name), series_id)
    ids = []
    for wanted in spec.series:
        found = by_name.get(_fold(wanted))
        if found is None:
            available = ", ".join(fetched) or "none"
            raise SpecError(f"series {wanted!r} was not fetched for this news (fetched: {available})")
        if found in ids:
            raise SpecError(f"series {wanted!r} is named twice in the specification")
        ids.append(found)
    return spec.model_copy(update={"series": ids})
