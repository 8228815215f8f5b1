"""The data dictionary: what one series is, and the calendar periods its observations cover."""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

Frequency = Literal["daily", "monthly", "quarterly"]
FREQUENCIES: tuple[str, ...] = ("daily", "monthly", "quarterly")


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesInfo:
    """One entry of the data dictionary: a time series, its names and where its numbers come from."""

    id: str
    """A stable slug, lower case with dots: `us.cpi.core`."""
    name_en: str
    """The English name shown to readers: "US core CPI (all items less food and energy)"."""
    name_zh: str
    """The Chinese name: "美国核心CPI"."""
    aliases: tuple[str, ...] = ()
    """Other names, English and Chinese, that news text uses for the series (matched exactly)."""
    unit: str = ""
    """The unit of a value: "USD per barrel", "% per annum", "index, 1982-84 = 100"."""
    frequency: Frequency = "daily"
    """daily (one value per trading day), monthly or quarterly."""
    source: str = ""
    """Where the numbers come from, e.g. "FRED series CPILFESL via the arch package 8.0"."""
    citation: str = ""
    """How to cite the source and the terms its data come under."""
    sectors: tuple[str, ...] = field(default=())
    """The sectors whose news the series bears on: "Energy", "Banks", "Macro"."""
    release_lag_days: int = 0
    """Days after a period's end until its value was public (0: a market close, known that evening)."""

    def __post_init__(self) -> None:
        if not self.id or self.id != self.id.strip() or " " in self.id:
            raise ValueError(f"SeriesInfo.id must be a slug without spaces, got {self.id!r}")
        if self.frequency not in FREQUENCIES:
            raise ValueError(f"SeriesInfo.frequency of {self.id} must be one of {', '.join(FREQUENCIES)}")
        if self.release_lag_days < 0:
            raise ValueError(f"SeriesInfo.release_lag_days of {self.id} must be >= 0")


def period_of(frequency: str, day: dt.date) -> tuple[dt.date, dt.date]:
    """The (first day, last day) of the `frequency` period that contains `day`."""
    if frequency == "daily":
        return day, day
    if frequency == "monthly":
        first_month = last_month = day.month
    elif frequency == "quarterly":
        first_month = 3 * ((day.month - 1) // 3) + 1
        last_month = first_month + 2
    else:
        raise ValueError(f"unknown frequency {frequency!r}: expected one of {', '.join(FREQUENCIES)}")
    last_day = calendar.monthrange(day.year, last_month)[1]
    return dt.date(day.year, first_month, 1), dt.date(day.year, last_month, last_day)


def available_at(info: SeriesInfo, period_end: dt.date) -> dt.date:
    """The first date on which the value for the period ending `period_end` was public."""
    return period_end + dt.timedelta(days=info.release_lag_days)
