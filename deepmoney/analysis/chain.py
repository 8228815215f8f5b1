"""The three-step news analysis, batched across news items, and its structural checks.

1. sectors: which sectors or targets the news affects (most affected first);
2. method: for the top sector, a quantitative method and the data series it needs;
3. analysis: the item's series that best match those names, as a table, and the specific quantitative analysis.

`generate` is any batch generator (a served model, a local one, a scripted fake): it takes a list of chat message
lists and returns one text for each, and it is called once per step. The checks are structural, not taste: was a
sector named, were data series named, does the analysis use the data it was given, is it more than a stub.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from deepmoney.analysis.prompts import Messages, analysis_messages, method_messages, sectors_messages
from deepmoney.analysis.structured import read_analysis, read_method, read_sectors
from deepmoney.errors import UserError
from deepmoney.jsonl import json_lines
from deepmoney.scoring import extract_numbers

log = logging.getLogger(__name__)

NEWS_EVAL = Path(__file__).with_name("news_eval.jsonl")
CHECKS = ("sectors_parsed", "data_named", "data_used", "method_nonempty")
MIN_ANALYSIS_CHARS = 20  # a step-3 answer this short is a stub, not an analysis
MATCH_THRESHOLD = 0.5  # Dice similarity of a requested name and a series name, for the series to be passed
MENTION_THRESHOLD = 0.6  # share of a series name's tokens the analysis must contain to count as naming it
VALUE_REL_TOL = 1e-2

Series = list[tuple[str, float]]
Generate = Callable[[list[Messages]], list[str]]


class SeriesSource(Protocol):
    """Where step 3's data comes from when it is not the item's own series (e.g. `analysis.market.MarketSeries`)."""

    def lookup(self, requested: list[str], sector: str, as_of: dt.date | None, language: str
               ) -> tuple[dict[str, str], dict[str, Series]]:  # fmt: skip
        """(requested name -> the series it matched, series -> its points as of `as_of`)."""
        ...


_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[a-z0-9]+")
_UNIT = re.compile(r"\([^()]*\)")
_STOP = frozenset("a an the of and or in on for to by from per vs with".split())
_UNIT_SCALES = {"万亿": 1e12, "亿": 1e8, "万": 1e4, "千": 1e3, "百万": 1e6, "bp": 1e-4, "bps": 1e-4, "k": 1e3}
_UNIT_SCALES |= {"thousand": 1e3, "mn": 1e6, "million": 1e6, "bn": 1e9, "billion": 1e9, "tn": 1e12, "trillion": 1e12}


@dataclass
class NewsItem:
    """One news item with the series a market database would return for it (series name -> [(period, value)])."""

    id: str
    language: str
    text: str
    data: dict[str, Series]
    expected_sectors: list[str] = field(default_factory=list)  # informational; not used for scoring
    date: dt.date | None = None  # when the news was published: a market source reads its data as of this day


@dataclass
class ChainResult:
    """Every step's raw output and what was read from it, for one news item."""

    item: NewsItem
    sectors_raw: str
    sectors: list[str]
    method_raw: str
    method: str
    data_requested: list[str]
    data_matched: dict[str, str]  # requested name -> the item's series it matched
    data_passed: dict[str, Series]  # the series given to step 3
    data_fallback: bool  # no requested name matched, so all the item's series were given
    analysis_raw: str

    @property
    def sector(self) -> str:
        """The top sector (what steps 2 and 3 were about), or "" when step 1 named none."""
        return self.sectors[0] if self.sectors else ""

    def to_dict(self) -> dict:
        """A JSON-ready record: the item's id and language, and every field but the item."""
        record = {k: v for k, v in asdict(self).items() if k != "item"}
        return {"id": self.item.id, "language": self.item.language, "sector": self.sector, **record}


def _series(name: str, points: object, where: str) -> Series:
    pairs = list(points.items()) if isinstance(points, dict) else points
    if not isinstance(pairs, list) or not pairs:
        raise UserError(f"{where}: series {name!r} must be a non-empty list of [period, value] pairs")
    out = []
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise UserError(f"{where}: series {name!r} has {pair!r}, not a [period, value] pair")
        period, value = pair
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{where}: series {name!r} has value {value!r} for {period!r}, not a finite number")
        out.append((str(period), float(value)))
    return out


def _item(record: object, where: str) -> NewsItem:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object per line")
    missing = [k for k in ("id", "language", "text", "data") if k not in record]
    if missing:
        raise UserError(f"{where}: missing field(s) {', '.join(missing)}")
    if record["language"] not in ("en", "zh"):
        raise UserError(f"{where}: language must be 'en' or 'zh', not {record['language']!r}")
    if not isinstance(record["text"], str) or not record["text"].strip():
        raise UserError(f"{where}: 'text' must be a non-empty string")
    data = record["data"]
    if not isinstance(data, dict) or not data:
        raise UserError(f"{where}: 'data' must be an object of series name -> [[period, value], ...]")
    date = record.get("date")
    if date is not None:
        try:
            date = dt.date.fromisoformat(str(date)[:10])
        except ValueError:
            raise UserError(f"{where}: 'date' must be an ISO date (YYYY-MM-DD), not {record['date']!r}") from None
    expected = record.get("expected_sectors") or []
    if not isinstance(expected, list):
        raise UserError(f"{where}: 'expected_sectors' must be a list of strings")
    return NewsItem(
        id=str(record["id"]),
        language=record["language"],
        text=record["text"],
        data={str(name): _series(str(name), points, where) for name, points in data.items()},
        expected_sectors=[str(s) for s in expected],
        date=date,
    )


def load_news(path: str | Path | None = None) -> list[NewsItem]:
    """News items from a JSONL file, one object per line; None reads the built-in evaluation set."""
    path = NEWS_EVAL if path is None else Path(path)
    items: list[NewsItem] = []
    seen: set[str] = set()
    for _, where, record in json_lines(path):
        item = _item(record, where)
        if item.id in seen:
            raise UserError(f"{where}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise UserError(f"{path}: the news file has no items")
    log.info("loaded %d news items from %s", len(items), path)
    return items


def _grams(text: str) -> set[str]:
    """Normalised tokens of a name or text: English words (plural s dropped), and bigrams of Chinese runs."""
    text = unicodedata.normalize("NFKC", text).lower()
    grams = {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in _WORD.findall(text)}
    grams -= _STOP
    for run in _CJK_RUN.findall(text):
        grams |= {run} if len(run) == 1 else {run[i : i + 2] for i in range(len(run) - 1)}
    return grams


def _name_grams(name: str) -> set[str]:
    """The grams of a series name without its unit in parentheses ("LME copper price (USD/t)" -> lme copper price)."""
    text = unicodedata.normalize("NFKC", name)
    return _grams(_UNIT.sub(" ", text)) or _grams(text)


def match_series(requested: list[str], available: list[str]) -> dict[str, str]:
    """Each requested name that resembles one of the available series names -> the most similar one (Dice ≥ 0.5)."""
    candidates = [(name, _name_grams(name)) for name in available]
    matched: dict[str, str] = {}
    for wanted in requested:
        want = _name_grams(wanted)
        scored = [(2 * len(want & have) / (len(want) + len(have)), name) for name, have in candidates if want and have]
        best = max(scored, key=lambda pair: pair[0], default=(0.0, ""))
        if best[0] >= MATCH_THRESHOLD:
            matched[wanted] = best[1]
    return matched


def _call(generate: Generate, batch: list[Messages], step: str) -> list[str]:
    log.info("step %s: generating %d answers", step, len(batch))
    out = list(generate(batch))
    if len(out) != len(batch):
        raise ValueError(f"generate returned {len(out)} answers for {len(batch)} prompts in step {step}")
    return ["" if text is None else str(text) for text in out]


def run_chain(news: list[NewsItem], generate: Generate, source: SeriesSource | None = None) -> list[ChainResult]:
    """Run the three steps for every item, one `generate` call per step for the whole batch.

    Step 3's data is each item's own series, or, given a `source`, that source's series as of the item's date.
    """
    if not news:
        return []
    sectors_raw = _call(generate, [sectors_messages(n.text, n.language) for n in news], "sectors")
    sectors = [read_sectors(text) for text in sectors_raw]
    tops = [found[0] if found else "" for found in sectors]

    batch = [method_messages(n.text, top, n.language) for n, top in zip(news, tops, strict=True)]
    method_raw = _call(generate, batch, "method")
    methods = [read_method(text) for text in method_raw]

    matched, passed = [], []
    for n, top, (_, requested) in zip(news, tops, methods, strict=True):
        if source is not None:
            found, data = source.lookup(requested, top, n.date, n.language)
            matched.append(found)
            passed.append(data)
            continue
        found = match_series(requested, list(n.data))
        matched.append(found)
        passed.append({name: n.data[name] for name in dict.fromkeys(found.values())} if found else dict(n.data))
    batch = [
        analysis_messages(n.text, top, method, data, n.language)
        for n, top, (method, _), data in zip(news, tops, methods, passed, strict=True)
    ]
    analysis_raw = _call(generate, batch, "analysis")

    results = [
        ChainResult(
            item=n,
            sectors_raw=sectors_raw[i],
            sectors=sectors[i],
            method_raw=method_raw[i],
            method=methods[i][0],
            data_requested=methods[i][1],
            data_matched=matched[i],
            data_passed=passed[i],
            data_fallback=not matched[i],
            analysis_raw=analysis_raw[i],
        )
        for i, n in enumerate(news)
    ]
    log.info("chain done for %d items; %d fell back to all their data", len(results), sum(not m for m in matched))
    return results


def _scales(name: str) -> set[float]:
    """How a value of this series may be written: as is, as a percent (3.5 -> 3.5%), or with its unit's scale."""
    unit = " ".join(_UNIT.findall(unicodedata.normalize("NFKC", name).lower()))
    scales = {1.0, 0.01}
    scales |= {scale for word, scale in _UNIT_SCALES.items() if re.search(rf"(?<![a-z]){word}(?![a-z])", unit)}
    return scales


def _uses_values(text: str, data: dict[str, Series]) -> bool:
    found = extract_numbers(text)
    return any(
        math.isclose(number, value * scale, rel_tol=VALUE_REL_TOL, abs_tol=1e-12)
        for name, points in data.items()
        for scale in _scales(name)
        for _, value in points
        for number in found
    )


def _names_series(text: str, data: dict[str, Series]) -> bool:
    grams = _grams(text)
    for name in data:
        want = _name_grams(name)
        if want and len(want & grams) / len(want) >= MENTION_THRESHOLD:
            return True
    return False


def chain_checks(result: ChainResult) -> dict[str, bool]:
    """Structural checks of one chain: sectors_parsed, data_named, data_used, method_nonempty."""
    analysis = read_analysis(result.analysis_raw)[0]
    return {
        "sectors_parsed": len(result.sectors) >= 1,
        "data_named": bool(result.method.strip()) and len(result.data_requested) >= 1,
        "data_used": bool(analysis)
        and (_names_series(analysis, result.data_passed) or _uses_values(analysis, result.data_passed)),
        "method_nonempty": len(analysis) > MIN_ANALYSIS_CHARS,
    }


def summarize_checks(rows: list[dict[str, bool]]) -> dict[str, float]:
    """The pass rate of each check over the rows, and chain_pass_rate: the share of rows that passed every check."""
    keys = list(dict.fromkeys([*CHECKS, *(k for row in rows for k in row)]))
    if not rows:
        return {**dict.fromkeys(keys, 0.0), "chain_pass_rate": 0.0}
    summary = {key: sum(bool(row.get(key)) for row in rows) / len(rows) for key in keys}
    summary["chain_pass_rate"] = sum(all(row.get(key) for key in keys) for row in rows) / len(rows)
    return summary
