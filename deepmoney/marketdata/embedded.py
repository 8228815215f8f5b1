"""The embedded default: real public series that installed packages ship, written into one SQLite file.

Nothing is downloaded: the values come from the data sets of the `arch` package (`arch.data.*`) and
from `statsmodels.datasets.macrodata`. The dictionary (`catalogue.py`) says where each series comes from, how
to cite it and under which terms, as far as the packages say it (where they do not, the entry says so).

Release lags (`release_lag_days`, days after a period's end until its value was public) are
approximations: the data sets carry no vintage dates. Market closes are known the same day (0);
monthly averages of market prices and yields the day after the month ends (1); US CPI about 15 days
after the month; the national accounts (GDP and its parts) about 30 days after the quarter (the
advance estimate). Revisions are not modelled: every value is the final vintage the package ships,
so an "as of" read sees today's revised number on the day the first estimate came out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from deepmoney.marketdata.catalogue import CATALOGUE, EMBEDDED
from deepmoney.marketdata.dictionary import available_at, period_of

log = logging.getLogger(__name__)

BUILD_VERSION = 1  # bump when the way values are read from the packages changes
FILE_NAME = "embedded.sqlite"
__all__ = ["CATALOGUE", "EMBEDDED", "FILE_NAME", "build_digest", "build_embedded", "built_digest"]


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def build_digest() -> str:
    """A digest of everything the embedded database is built from; a file with another digest is rebuilt."""
    from deepmoney.marketdata.schema import SCHEMA_VERSION

    what = {
        "schema": SCHEMA_VERSION,
        "build": BUILD_VERSION,
        "series": [[asdict(info), dataset, column] for info, dataset, column in EMBEDDED],
        "arch": _package_version("arch"),
        "statsmodels": _package_version("statsmodels"),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def built_digest(path: Path) -> str | None:
    """The build digest recorded in the database at `path` (None if it is missing, unreadable or not ours)."""
    if not path.is_file():
        return None
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT value FROM marketdata_meta WHERE key = 'build'").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def load_dataset(name: str) -> Any:
    """One data set as a pandas DataFrame indexed by date (for macrodata: the first day of each quarter)."""
    import pandas as pd

    if name == "macrodata":
        from statsmodels.datasets import macrodata

        data = macrodata.load_pandas().data
        months = (data["quarter"].astype(int) - 1) * 3 + 1
        data.index = pd.to_datetime({"year": data["year"].astype(int), "month": months, "day": 1})
        return data
    import importlib

    data = importlib.import_module(f"arch.data.{name}").load()
    if name == "frenchdata" and (data.index.year == 1970).all():
        # arch reads the YYYYMM integers (192607) as nanoseconds since 1970; turn them back into months
        yyyymm = data.index.as_unit("ns").asi8
        data.index = pd.to_datetime({"year": yyyymm // 100, "month": yyyymm % 100, "day": 1})
    return data


def observation_rows() -> Iterator[dict[str, Any]]:
    """Every observation of the embedded series, as `observations` rows."""
    datasets: dict[str, Any] = {}
    for info, dataset, column in EMBEDDED:
        if dataset not in datasets:
            datasets[dataset] = load_dataset(dataset)
        values = datasets[dataset][column].dropna()  # FRED marks holidays as missing
        for stamp, value in zip(values.index.date, values.to_numpy(dtype=float), strict=True):
            start, end = period_of(info.frequency, stamp)
            yield {
                "series_id": info.id,
                "period_start": start,
                "period_end": end,
                "available_at": available_at(info, end),
                "value": float(value),
            }


def build_embedded(path: str | Path, force: bool = False) -> bool:
    """Write the embedded database to `path` unless it already holds this build; True if it (re)built it.

    The file is written under a temporary name in the same directory and renamed into place, so a reader
    sees the old database or the whole new one, and an interrupted build leaves the old one in place.
    """
    from sqlalchemy import create_engine

    from deepmoney.marketdata import schema
    from deepmoney.storage import file_mode

    path = Path(path)
    digest = build_digest()
    if not force and built_digest(path) == digest:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, file_mode())
        engine = create_engine(f"sqlite:///{tmp}")
        try:
            with engine.begin() as conn:
                schema.write(conn, CATALOGUE, observation_rows(), {"build": digest, "built_at": _now()})
        finally:
            engine.dispose()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("built the embedded market-data database %s (%d series)", path, len(CATALOGUE))
    return True


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
