"""Macro and market time series for the news-analysis chain: a data dictionary and reads with no look-ahead.

`MarketData.open(url)` opens the embedded default (url None: real public series that the `arch` and
`statsmodels` packages ship, built into a SQLite file on first use) or a firm's own database (any
SQLAlchemy URL, filled with `load_table`). `fetch(series_id, as_of)` returns only values that were
public on `as_of`. See docs/marketdata.md.

The names below are imported on first use, so importing this package does not import SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SeriesInfo": "deepmoney.marketdata.dictionary",
    "match_names": "deepmoney.marketdata.match",
    "MarketData": "deepmoney.marketdata.source",
    "Observations": "deepmoney.marketdata.source",
    "Point": "deepmoney.marketdata.source",
    "build_embedded": "deepmoney.marketdata.embedded",
    "load_table": "deepmoney.marketdata.load",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
