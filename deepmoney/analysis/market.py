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

from deepmoney.marketdata.dictionary import SeriesInfo
from deepmoney.marketdata.source import MarketData

FALLBACK_SERIES = 3
Points = list[tuple[str, float]]


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
        found = self.market.match(requested) if requested else {}
        infos = list({info.id: info for info in found.values()}.values()) or self._of_sector(sector)
        passed: dict[str, Points] = {}
        for info in infos:
            points = self.market.fetch(info.id, as_of, self.window).points
            if points:
                passed[label(info, language)] = [(p.period_end.isoformat(), p.value) for p in points]
        matched = {name: label(info, language) for name, info in found.items() if label(info, language) in passed}
        return matched, passed

    def _of_sector(self, sector: str) -> list[SeriesInfo]:
        wanted = _fold(sector)
        if not wanted:
            return []
        return [info for info in self.market.catalogue() if any(_fold(s) == wanted for s in info.sectors)][
            :FALLBACK_SERIES
        ]


def label(info: SeriesInfo, language: str) -> str:
    """How a series is named in a prompt: its name in the item's language and its unit."""
    return f"{info.name_zh}（{info.unit}）" if language == "zh" else f"{info.name_en} ({info.unit})"


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip().casefold()
