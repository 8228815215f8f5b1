"""Step 3's data from a market database, read as of each news item's date (no look-ahead).

The chain asks for series by the names step 2 wrote; `MarketSeries` matches them to the database's
data dictionary (English or Chinese) and fetches each matched series as of the item's date, so no
value published after the news reaches a prompt. When no name matches, the series the dictionary
files under the top sector are given instead (at most `FALLBACK_SERIES`), as the item's own series are
for the evaluation set.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass

from deepmoney.marketdata.dictionary import SeriesInfo
from deepmoney.marketdata.source import MarketData, Observations

FALLBACK_SERIES = 3
Points = list[tuple[str, float]]


@dataclass(frozen=True)
class Fetched:
    """One series handed to step 3: its dictionary entry, its prompt label and its observations as of a date."""

    info: SeriesInfo
    label: str
    observations: Observations

    def points(self) -> Points:
        """(period end, value) pairs, oldest first, as the prompt's table shows them."""
        return [(p.period_end.isoformat(), p.value) for p in self.observations.points]


class MarketSeries:
    """A `SeriesSource` for `run_chain`: names -> series of `market`, each the last `window` values as of a date."""

    def __init__(self, market: MarketData, window: int = 24) -> None:
        self.market = market
        self.window = window

    def lookup(self, requested: list[str], sector: str, as_of: dt.date | None, language: str
               ) -> tuple[dict[str, str], dict[str, Points]]:  # fmt: skip
        """(requested name -> label of the series it matched, label -> points public on `as_of`).

        `as_of` None (an undated item) reads the latest data. A series with no value yet on `as_of`
        is left out, so that the analysis is never handed an empty table.
        """
        matched, fetched = self.fetch_for(requested, sector, as_of, language)
        return matched, {f.label: f.points() for f in fetched}

    def fetch_for(self, requested: list[str], sector: str, as_of: dt.date | None, language: str
                  ) -> tuple[dict[str, str], list[Fetched]]:  # fmt: skip
        """`lookup` with each series' dictionary entry and observations: (name -> label, the series fetched)."""
        found = self.market.match(requested) if requested else {}
        infos = list({info.id: info for info in found.values()}.values()) or self._of_sector(sector)
        fetched = []
        for info in infos:
            observations = self.market.fetch(info.id, as_of, self.window)
            if observations.points:
                fetched.append(Fetched(info, label(info, language), observations))
        labels = {f.label for f in fetched}
        matched = {name: label(info, language) for name, info in found.items() if label(info, language) in labels}
        return matched, fetched

    def _of_sector(self, sector: str) -> list[SeriesInfo]:
        wanted = _fold(sector)
        if not wanted:
            return []
        return [info for info in self.market.catalogue() if any(_fold(s) == wanted for s in info.sectors)][
            :FALLBACK_SERIES
        ]


def label(info: SeriesInfo, language: str) -> str:
    """How a series is named in a prompt: its name in the item's language and its unit."""
    return label_of(name(info, language), info.unit, language)


def name(info: SeriesInfo, language: str) -> str:
    """The series' name in `language`."""
    return info.name_zh if language == "zh" else info.name_en


def label_of(series_name: str, unit: str, language: str) -> str:
    """A name and its unit as a prompt's table shows them: "WTI crude oil (USD per barrel)"."""
    return f"{series_name}（{unit}）" if language == "zh" else f"{series_name} ({unit})"


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip().casefold()
