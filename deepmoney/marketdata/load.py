"""Fill a firm's own market-data database (any SQLAlchemy URL) from a dictionary file and an observations file.

Both files are CSV (`.csv`, `.csv.gz`) or Parquet (`.parquet`, `.pq`). The dictionary file has the
`series` columns (`id`, `name_en`, `name_zh`, `aliases`, `unit`, `frequency`, `source`, `citation`,
`sectors`, `release_lag_days`; aliases and sectors as a JSON list or `|`-separated). The observations
file has `series_id`, `period_end`, `value` and optionally `period_start` (default: the start of the
period that ends on `period_end`) and `available_at` (default: `period_end` + the series'
`release_lag_days`). Everything is checked before anything is written; the first bad row is named
(rows count from 1, the header not counted). The write is one transaction: the dictionary rows are
inserted or updated, and each series in the observations file gets exactly the file's observations.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from pathlib import Path
from typing import Any

from deepmoney.errors import UserError
from deepmoney.marketdata.dictionary import FREQUENCIES, SeriesInfo, period_of

log = logging.getLogger(__name__)

DICTIONARY_COLUMNS = ("id", "name_en", "name_zh", "frequency")  # required; the other series columns may be absent
OBSERVATION_COLUMNS = ("series_id", "period_end", "value")


def _read(path: Path) -> Any:
    import pandas as pd

    if not path.is_file():
        raise UserError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return pd.read_parquet(path).reset_index(drop=True)
    if name.endswith((".csv", ".csv.gz")):
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    raise UserError(f"{path}: expected a .csv, .csv.gz, .parquet or .pq file")


def _require(frame: Any, path: Path, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; it has {', '.join(map(str, frame.columns))}")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _list(value: Any) -> tuple[str, ...]:
    """Aliases or sectors from a cell: a JSON list, `a|b|c`, or (Parquet) a list column; blank is ()."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ()
    if isinstance(value, str):
        text = value.strip()
        items = json.loads(text) if text.startswith("[") else text.split("|")
    else:
        items = list(value)
    return tuple(str(v).strip() for v in items if str(v).strip())


def read_dictionary(path: str | Path) -> list[SeriesInfo]:
    """The entries of a dictionary file, checked; a UserError naming the first bad row."""
    path = Path(path)
    frame = _read(path)
    _require(frame, path, DICTIONARY_COLUMNS)
    infos, seen = [], set()
    for number, row in enumerate(frame.to_dict("records"), start=1):
        where = f"{path}: row {number}"
        for column in DICTIONARY_COLUMNS:
            if _blank(row.get(column)):
                raise UserError(f"{where}: {column} is empty")
        series_id = str(row["id"]).strip()
        if series_id in seen:
            raise UserError(f"{where}: series id {series_id!r} appears twice")
        seen.add(series_id)
        lag = row.get("release_lag_days")
        try:
            lag_days = 0 if _blank(lag) else int(str(lag).strip())
        except ValueError:
            raise UserError(f"{where}: release_lag_days {lag!r} is not a whole number of days") from None
        if str(row["frequency"]).strip() not in FREQUENCIES:
            raise UserError(f"{where}: frequency {row['frequency']!r} is not one of {', '.join(FREQUENCIES)}")
        try:
            infos.append(
                SeriesInfo(
                    id=series_id,
                    name_en=str(row["name_en"]).strip(),
                    name_zh=str(row["name_zh"]).strip(),
                    aliases=_list(row.get("aliases")),
                    unit="" if _blank(row.get("unit")) else str(row["unit"]),
                    frequency=str(row["frequency"]).strip(),  # type: ignore[arg-type]
                    source="" if _blank(row.get("source")) else str(row["source"]),
                    citation="" if _blank(row.get("citation")) else str(row["citation"]),
                    sectors=_list(row.get("sectors")),
                    release_lag_days=lag_days,
                )
            )
        except (ValueError, json.JSONDecodeError) as exc:
            raise UserError(f"{where}: {exc}") from exc
    return infos


def read_observations(path: str | Path, known: dict[str, SeriesInfo]) -> list[dict[str, Any]]:
    """The rows of an observations file for the series in `known`, checked; a UserError naming the first bad row."""
    import numpy as np
    import pandas as pd

    path = Path(path)
    frame = _read(path)
    _require(frame, path, OBSERVATION_COLUMNS)
    n = len(frame)
    ids = frame["series_id"].astype(str).str.strip()
    end = pd.to_datetime(frame["period_end"], errors="coerce", format="ISO8601")
    value = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    start = (
        pd.to_datetime(frame["period_start"], errors="coerce", format="ISO8601") if "period_start" in frame else None
    )
    avail = (
        pd.to_datetime(frame["available_at"], errors="coerce", format="ISO8601") if "available_at" in frame else None
    )

    def given(column: str) -> Any:
        return frame[column].notna() & (frame[column].astype(str).str.strip() != "")

    # each check: (rows that fail it, what to say); the first failing row in file order is reported
    checks = [
        (~ids.isin(list(known)), lambda i: f"unknown series id {ids[i]!r} (not in the dictionary file or database)"),
        (end.isna(), lambda i: f"period_end {frame['period_end'][i]!r} is not a date"),
        (~np.isfinite(value.to_numpy()), lambda i: f"value {frame['value'][i]!r} is not a finite number"),
        (
            pd.Series(list(zip(ids, end, strict=True))).duplicated().to_numpy() & end.notna().to_numpy(),
            lambda i: f"a second value for ({ids[i]}, period_end {end[i].date()})",
        ),
    ]
    if start is not None:
        checks.append((start.isna() & given("period_start"), lambda i: "period_start is not a date"))
        checks.append((start > end, lambda i: f"period_start {start[i].date()} is after period_end {end[i].date()}"))
    if avail is not None:
        checks.append((avail.isna() & given("available_at"), lambda i: "available_at is not a date"))
        checks.append(
            (avail < end, lambda i: f"available_at {avail[i].date()} is before period_end {end[i].date()} (look-ahead)")
        )
    first = n
    message = None
    for failing, say in checks:
        where = np.flatnonzero(np.asarray(failing, dtype=bool))
        if where.size and where[0] < first:
            first, message = int(where[0]), say
    if message is not None:
        raise UserError(f"{path}: row {first + 1}: {message(first)}")

    rows = []
    for i in range(n):
        info = known[ids[i]]
        period_end = end[i].date()
        period_start = start[i].date() if start is not None and not pd.isna(start[i]) else None
        public = avail[i].date() if avail is not None and not pd.isna(avail[i]) else None
        rows.append(
            {
                "series_id": info.id,
                "period_start": period_start or period_of(info.frequency, period_end)[0],
                "period_end": period_end,
                "available_at": public or period_end + dt.timedelta(days=info.release_lag_days),
                "value": float(value[i]),
            }
        )
    return rows


def load_table(url: str, dictionary_file: str | Path, observations_file: str | Path) -> dict[str, int]:
    """Fill the database at SQLAlchemy `url` from the two files, all or nothing; the counts written.

    Creates the tables where they are missing. Returns {"series": entries written, "observations": rows
    written, "replaced_series": series whose observations were replaced}.
    """
    from sqlalchemy import select
    from sqlalchemy.exc import OperationalError

    from deepmoney.errors import ServiceUnavailable
    from deepmoney.marketdata import schema
    from deepmoney.marketdata.source import first_line, new_engine, parse_url

    infos = read_dictionary(dictionary_file)
    parsed, shown = parse_url(url)
    engine = new_engine(parsed, shown)
    try:
        with engine.begin() as conn:
            schema.metadata.create_all(conn)
            known = {info.id: info for info in map(schema.row_to_info, conn.execute(select(schema.series)).mappings())}
            known.update({info.id: info for info in infos})
            rows = read_observations(observations_file, known)
            schema.write(conn, infos, rows)
    except OperationalError as exc:
        reason = first_line(exc)
        if engine.url.get_backend_name() == "sqlite":  # a bad path or a read-only file: retrying cannot help
            raise UserError(f"market-data database {shown}: {reason}; check the path in the URL") from exc
        raise ServiceUnavailable(f"market-data database {shown} failed: {reason}") from exc
    finally:
        engine.dispose()
    replaced = len({row["series_id"] for row in rows})
    log.info("loaded %d series and %d observations into %s", len(infos), len(rows), shown)
    return {"series": len(infos), "observations": len(rows), "replaced_series": replaced}
