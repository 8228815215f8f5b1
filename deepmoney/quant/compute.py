"""Run step 3's analysis specification on series read as of the news date, and return the figures.

The specification names a toolbox method and series the data step fetched for the item. Each
series is read again from the market database as of the news date, as far back as the method
needs (an event study: its estimation window, gap and event window; the others: `quant.history`
observations), so only values public on that date enter the estimation. The event window after the
news date is read only for an ex-post study the request asked for, and the result says so.

A specification that is missing, invalid or that the data cannot support is reported in
`spec_error` and replaced by the default for the data at hand — an event study of the most relevant
fetched series, against the market index when it is daily — never silently. When even the default
cannot run, `error` says why and there are no figures.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from deepmoney.config import QuantConfig
from deepmoney.errors import ServiceUnavailable, UserError
from deepmoney.marketdata.dictionary import SeriesInfo
from deepmoney.marketdata.source import MarketData
from deepmoney.quant import methods
from deepmoney.quant.spec import AnalysisSpec, SpecError, parse_spec, resolve

log = logging.getLogger(__name__)

GAP = 5  # returns between an event study's estimation window and its event window
_PERIOD_DAYS = {"daily": 1, "monthly": 31, "quarterly": 92}  # calendar days per period (at least)


@dataclass
class Computed:
    """What step 3 computed: the specification run, where it came from, the figures, the series windows."""

    method: str | None
    spec: dict[str, Any] | None
    source: str  # "model" (the specification step 3 wrote) | "default" (it was missing or unusable)
    spec_error: str | None
    figures: dict[str, Any] | None
    series: list[dict[str, Any]] = field(default_factory=list)  # each series read: id, role, first, last, count
    as_of: str | None = None
    ex_post: bool = False
    notes: list[str] = field(default_factory=list)
    chart_png: str | None = None  # base64
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Available:
    """A series the data step fetched for the item: its dictionary entry and the names a prompt showed for it."""

    info: SeriesInfo
    names: tuple[str, ...]


def default_spec(available: list[Available], config: QuantConfig) -> AnalysisSpec | None:
    """An event study of the most relevant fetched series: the first daily one (else the first), or None."""
    if not available:
        return None
    daily = [a for a in available if a.info.frequency == "daily" and a.info.id != config.market_series]
    chosen = (daily or available)[0]
    return AnalysisSpec(method="event_study", series=[chosen.info.id], before=5, after=0,
                        estimation_window=_default_estimation(chosen.info.frequency))  # fmt: skip


def _default_estimation(frequency: str) -> int:
    return {"daily": 120, "monthly": 60, "quarterly": 40}.get(frequency, 60)


class _Reader:
    """Series as pandas, read as of the news date (and, for an ex-post study, the observations after it)."""

    def __init__(self, market: MarketData, as_of: dt.date | None) -> None:
        self.market, self.as_of = market, as_of
        self.read: list[dict[str, Any]] = []

    def series(self, series_id: str, count: int, role: str, after: int = 0) -> pd.Series:
        try:
            points = list(self.market.fetch(series_id, self.as_of, count).points)
            if after and self.as_of is not None:
                # read up to a span that holds `after` periods past the news date, then keep the first `after`
                period = _PERIOD_DAYS[self.market.info(series_id).frequency]
                later_day = self.as_of + dt.timedelta(days=period * (2 * after + 5))
                later = self.market.fetch(series_id, later_day, count + 2 * after + 10).points
                points += [p for p in later if p.period_end > self.as_of][:after]
        except ServiceUnavailable:
            raise
        except UserError as exc:  # e.g. quant.market_series is not in this database
            raise methods.QuantError(str(exc)) from None
        if not points:
            raise methods.QuantError(f"series {series_id} has no observations public on {self.as_of}")
        index = pd.DatetimeIndex([pd.Timestamp(p.period_end) for p in points])
        values = pd.Series([p.value for p in points], index=index, name=series_id, dtype=float)
        self.read.append(
            {
                "id": series_id,
                "role": role,
                "first": points[0].period_end.isoformat(),
                "last": points[-1].period_end.isoformat(),
                "count": len(points),
                "after_news_date": sum(self.as_of is not None and p.period_end > self.as_of for p in points),
            }
        )
        return values


def _event_day(series: pd.Series, event: dt.date, notes: list[str], ex_post: bool) -> dt.date:
    """Day 0 for an as-of study: the event date, else the last observation before it (the news came out then)."""
    before = series.index[series.index <= pd.Timestamp(event)]
    if ex_post or len(before) == 0 or before[-1].date() == event:
        return event
    day = before[-1].date()
    notes.append(f"{series.name} has no observation on {event.isoformat()}; day 0 is the last one before it, "
                 f"{day.isoformat()}")  # fmt: skip
    return day


def _run(spec: AnalysisSpec, reader: _Reader, config: QuantConfig, news_date: dt.date | None, ex_post: bool,
         frequency: dict[str, str], notes: list[str]) -> tuple[Any, dict[str, pd.Series], dt.date | None]:  # fmt: skip
    event = spec.event_date or news_date
    if event is not None and news_date is not None and event > news_date and not ex_post:
        raise SpecError(f"event_date {event} is after the news date {news_date}: only data public on the news date "
                        "may be used (ask for an ex-post study to look later)")  # fmt: skip
    after = spec.after if ex_post else 0
    if spec.after and not ex_post:
        notes.append(f"after={spec.after} needs observations after the news date: ex_post was not asked, so the "
                     "event window ends on day 0")  # fmt: skip
    ids = spec.series
    if spec.method == "event_study":
        need = spec.estimation_window + GAP + spec.before + 12  # a margin for days one series lacks
        asset = reader.series(ids[0], need, "asset", after)
        market_id = ids[1] if len(ids) > 1 else None
        if market_id is None and frequency.get(ids[0]) == "daily" and ids[0] != config.market_series:
            market_id = config.market_series
        market = reader.series(market_id, need + 10, "market", after) if market_id else None
        if event is None:  # undated: the last day both series have
            last = (
                min(asset.index[-1 - after], market.index[-1 - after])
                if market is not None
                else asset.index[-1 - after]
            )
            event = last.date()
            notes.append(f"undated news: the event day is the last observation, {event.isoformat()}")
        day0 = _event_day(asset, event, notes, ex_post)
        result = methods.event_study(asset, day0, market, spec.estimation_window, GAP, spec.before, after)
        plotted = {"asset": asset, **({"market": market} if market is not None else {})}
        return result, plotted, day0
    count = config.history
    transform = spec.transform
    if spec.method == "diff_means":
        if event is None:
            raise SpecError("diff_means needs an event date: the news is undated and the specification gives none")
        level = reader.series(ids[0], count, "input", after)
        series = level if transform in (None, "level") else methods.transform(level, transform)
        # as of the news date, "after" holds the observations from the event date up to the news date
        return methods.diff_means(series, event, spec.before, after or count), {"input": level}, event
    data = [reader.series(series_id, count, "input") for series_id in ids]
    moved = [methods.transform(s, transform or _auto_transform(s)) for s in data]
    if spec.method == "ols_hac":
        result = methods.ols_hac(moved[0], moved[1:], spec.lags)
    elif spec.method == "correlation":
        result = methods.correlation(moved[0], moved[1], spec.window)
    elif spec.method == "granger":
        result = methods.granger(moved[0], moved[1], spec.lags)
    else:
        result = methods.var_irf(moved, spec.lags, spec.horizon)
    return result, {s.name: s for s in data}, event


def _auto_transform(series: pd.Series) -> str:
    return "log_return" if bool((series > 0).all()) else "diff"


def _chart(plotted: dict[str, pd.Series], event: dt.date | None, figures: dict[str, Any], title: str) -> str | None:
    from deepmoney.quant.chart import event_chart

    series = {str(s.name): s for s in plotted.values() if bool((s > 0).all())}
    if not series or event is None:
        return None
    if "estimation_first" in figures:
        start = pd.Timestamp(figures["estimation_first"])
        series = {name: s[s.index >= start] for name, s in series.items()}
    spans = {}
    if "estimation_first" in figures:
        spans = {"estimation": (dt.date.fromisoformat(figures["estimation_first"]),
                                dt.date.fromisoformat(figures["estimation_last"])),
                 "event": (dt.date.fromisoformat(figures["event_first"]),
                           dt.date.fromisoformat(figures["event_last"]))}  # fmt: skip
    try:
        png = event_chart(series, event, title, **spans)
    except ValueError as exc:
        log.info("no chart: %s", exc)
        return None
    return base64.b64encode(png).decode("ascii")


def compute(raw_spec: object, available: list[Available], market: MarketData, news_date: dt.date | None,
            config: QuantConfig, ex_post: bool = False) -> Computed:  # fmt: skip
    """Run the specification in `raw_spec` (the model's, decoded JSON) on `available`'s series as of `news_date`.

    Never raises for what the model wrote or the data cannot support: that is in `spec_error` / `error`.
    Database failures (UserError, ServiceUnavailable) propagate: the caller decides how to answer them.
    """
    fetched = {a.info.id: [*a.names, a.info.name_en, a.info.name_zh, *a.info.aliases] for a in available}
    frequency = {a.info.id: a.info.frequency for a in available}
    source, spec_error = "model", None
    try:
        spec: AnalysisSpec | None = resolve(parse_spec(raw_spec), fetched)
    except SpecError as exc:
        source, spec_error, spec = "default", str(exc), default_spec(available, config)
    out = Computed(method=None, spec=None, source=source, spec_error=spec_error, figures=None,
                   as_of=news_date.isoformat() if news_date else None, ex_post=ex_post)  # fmt: skip
    if news_date is None:
        out.notes.append("undated news: the latest data in the database were used")
    while spec is not None:
        reader = _Reader(market, news_date)
        notes: list[str] = []
        try:
            result, plotted, event = _run(spec, reader, config, news_date, ex_post, frequency, notes)
        except (methods.QuantError, SpecError) as exc:
            if out.source == "model":
                out.source, out.spec_error = "default", str(exc)
                replacement = default_spec(available, config)
                spec = replacement if replacement is not None and replacement != spec else None
                if spec is None:
                    out.error = f"the specification could not be run ({exc}) and there is no default for this data"
                continue
            out.error = f"the default {spec.method} could not be run: {exc}"
            out.spec = spec.model_dump(mode="json")
            return out
        out.method, out.spec = spec.method, spec.model_dump(mode="json")
        out.figures, out.series, out.notes = result.to_dict(), reader.read, out.notes + notes
        out.ex_post = ex_post and any(s["after_news_date"] for s in reader.read)
        if config.chart:
            out.chart_png = _chart(plotted, event, out.figures, f"{spec.method}: {', '.join(spec.series)}")
        return out
    if out.error is None:
        out.error = "no series were fetched for this news, so there is nothing to compute"
    return out
