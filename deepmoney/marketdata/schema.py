"""The SQL schema of a market-data database: the same for the embedded SQLite file and a firm's own database.

Three tables (SQLAlchemy Core, so any SQLAlchemy URL works: SQLite, PostgreSQL, MySQL ...):

`series` — the data dictionary, one row per series:
    id TEXT PRIMARY KEY            slug, e.g. `us.cpi.core`
    name_en, name_zh TEXT          English and Chinese names
    aliases TEXT                   JSON list of other names, English and Chinese
    unit, frequency TEXT           frequency is `daily`, `monthly` or `quarterly`
    source, citation TEXT          where the numbers come from; how to cite them and under which terms
    sectors TEXT                   JSON list of sectors ("Energy", "Banks")
    release_lag_days INTEGER       days after a period's end until its value was public

`observations` — one value per series and period:
    series_id TEXT REFERENCES series(id)
    period_start, period_end DATE  the calendar period the value covers (equal for daily series)
    available_at DATE              the first day the value was public; reads as of D see only rows with
                                   available_at <= D
    value FLOAT
    PRIMARY KEY (series_id, period_end); INDEX (series_id, available_at)

`marketdata_meta` — key/value text: `schema_version` (SCHEMA_VERSION) and, for the embedded database, `build`
(a digest of what it was built from, so a changed build is rebuilt).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)

from deepmoney.marketdata.dictionary import SeriesInfo

SCHEMA_VERSION = 1
_ID = 200  # VARCHAR length for ids: MySQL cannot index unbounded TEXT

metadata = MetaData()

series = Table(
    "series",
    metadata,
    Column("id", String(_ID), primary_key=True),
    Column("name_en", Text, nullable=False),
    Column("name_zh", Text, nullable=False),
    Column("aliases", Text, nullable=False, default="[]"),
    Column("unit", Text, nullable=False, default=""),
    Column("frequency", String(16), nullable=False),
    Column("source", Text, nullable=False, default=""),
    Column("citation", Text, nullable=False, default=""),
    Column("sectors", Text, nullable=False, default="[]"),
    Column("release_lag_days", Integer, nullable=False, default=0),
)

observations = Table(
    "observations",
    metadata,
    Column("series_id", String(_ID), ForeignKey("series.id"), primary_key=True),
    Column("period_start", Date, nullable=False),
    Column("period_end", Date, primary_key=True),
    Column("available_at", Date, nullable=False),
    Column("value", Float, nullable=False),
    Index("ix_observations_available", "series_id", "available_at"),
)

meta = Table(
    "marketdata_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


def info_to_row(info: SeriesInfo) -> dict[str, Any]:
    """A `series` row for `info` (aliases and sectors as JSON text)."""
    return {
        "id": info.id,
        "name_en": info.name_en,
        "name_zh": info.name_zh,
        "aliases": json.dumps(list(info.aliases), ensure_ascii=False),
        "unit": info.unit,
        "frequency": info.frequency,
        "source": info.source,
        "citation": info.citation,
        "sectors": json.dumps(list(info.sectors), ensure_ascii=False),
        "release_lag_days": int(info.release_lag_days),
    }


def row_to_info(row: Mapping[str, Any]) -> SeriesInfo:
    """The SeriesInfo a `series` row describes."""
    return SeriesInfo(
        id=row["id"],
        name_en=row["name_en"],
        name_zh=row["name_zh"],
        aliases=tuple(json.loads(row["aliases"] or "[]")),
        unit=row["unit"] or "",
        frequency=row["frequency"],
        source=row["source"] or "",
        citation=row["citation"] or "",
        sectors=tuple(json.loads(row["sectors"] or "[]")),
        release_lag_days=int(row["release_lag_days"]),
    )


def write(
    conn: Connection,
    infos: Iterable[SeriesInfo],
    rows: Iterable[Mapping[str, Any]],
    extra_meta: Mapping[str, str] | None = None,
) -> None:
    """Create the tables if needed, upsert `infos`, and replace the observations of every series in `rows`.

    Runs inside the caller's transaction (`engine.begin()`), so a failure leaves the database unchanged.
    """
    metadata.create_all(conn)
    existing = set(conn.scalars(select(series.c.id)))
    for info in infos:
        row = info_to_row(info)
        if info.id in existing:
            conn.execute(update(series).where(series.c.id == info.id).values(row))
        else:
            conn.execute(insert(series), [row])
    rows = list(rows)
    replaced = sorted({row["series_id"] for row in rows})
    for start in range(0, len(replaced), 500):  # keep IN lists short for every backend
        conn.execute(delete(observations).where(observations.c.series_id.in_(replaced[start : start + 500])))
    for start in range(0, len(rows), 10_000):
        conn.execute(insert(observations), rows[start : start + 10_000])
    values = {"schema_version": str(SCHEMA_VERSION), **(extra_meta or {})}
    conn.execute(delete(meta).where(meta.c.key.in_(list(values))))
    conn.execute(insert(meta), [{"key": k, "value": v} for k, v in values.items()])
