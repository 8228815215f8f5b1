"""Chat messages for the three analysis steps; templates are files under prompts/ (one per step and language).

Step 1 asks which sectors or targets a news item affects, step 2 asks for a quantitative method and the data series
it needs, step 3 gives the fetched series as a compact table and asks for the analysis with those numbers.
Templates are read and filled with deepmoney.llm.prompts, as the synthesis prompts are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from deepmoney.llm.prompts import TemplateSet, fill

PROMPT_VERSION = "2026-12-3"
STEPS = ("sectors", "method", "analysis")
MAX_SECTORS = 5
TEMPLATES = TemplateSet(Path(__file__).with_name("prompts"))
_PLACEHOLDERS = {
    "en": {
        "sector": "the most affected sector",
        "method": "(no method was given: choose a suitable one)",
        "data": "(no data)",
        "series_ids": "(the names in the table)",
    },
    "zh": {
        "sector": "受影响最大的行业",
        "method": "（未给出方法：请自行选择合适的方法）",
        "data": "（无数据）",
        "series_ids": "（表中的名称）",
    },
}

Messages = list[dict[str, str]]
SeriesData = Mapping[str, Sequence[tuple[str, float]] | Mapping[str, float]]


def _lang(language: str | None) -> str:
    return "zh" if language == "zh" else "en"


def template(name: str, language: str | None) -> str:
    """The template `name` (system or a step) in `language` (Chinese for "zh", English otherwise)."""
    return TEMPLATES.template(name, language)


def templates_digest() -> str:
    """A digest of every analysis template file: changes whenever any of these prompts changes."""
    return TEMPLATES.digest()


def _messages(step: str, language: str | None, **fields: object) -> Messages:
    lang = _lang(language)
    values = {k: (v if str(v).strip() else _PLACEHOLDERS[lang].get(k, v)) for k, v in fields.items()}
    return [
        {"role": "system", "content": template("system", lang)},
        {"role": "user", "content": fill(template(step, lang), optional=("dictionary",), **values)},
    ]


def format_value(value: float) -> str:
    """A number as a table shows it: no exponent, no trailing zeros, up to ten significant digits."""
    text = f"{value:.10g}"
    if "e" in text:
        text = f"{value:.10f}".rstrip("0").rstrip(".")
    return text


def format_data(data: SeriesData, language: str | None = "en") -> str:
    """The series as a compact table: one line per series, `- name: period value; period value; ...`."""
    lines = []
    for name, points in data.items():
        pairs = points.items() if isinstance(points, Mapping) else points
        lines.append(f"- {name}: " + "; ".join(f"{period} {format_value(float(value))}" for period, value in pairs))
    return "\n".join(lines) or _PLACEHOLDERS[_lang(language)]["data"]


def quoted(news: str) -> str:
    """News text as it goes between the templates' triple quotes: stripped, and unable to close them early."""
    return news.strip().replace('"""', "\u201c\u201c\u201c")


def sectors_messages(news: str, language: str) -> Messages:
    """Step 1: which sectors or targets the news affects, as `{"sectors": [...]}`, most affected first."""
    return _messages("sectors", language, news=quoted(news), max_sectors=MAX_SECTORS)


_DICTIONARY = {
    "en": "\n\nThe market database holds these series; name the ones the method needs by their id:\n",
    "zh": "\n\n市场数据库中有以下数据序列，请用编号列出方法需要的序列：\n",
}


def method_messages(news: str, sector: str, language: str, dictionary: Sequence[tuple[str, str]] = ()) -> Messages:
    """Step 2: a quantitative method for `sector`, as `{"method": "...", "data": ["series name", ...]}`.

    `dictionary` — (id, name with unit) of every series in the database, when it is small enough to list — is
    shown to the model, which then names the series by id; without it the prompt is as it always was.
    """
    listed = ""
    if dictionary:
        lang = _lang(language)
        separator = "：" if lang == "zh" else ": "
        listed = _DICTIONARY[lang] + "\n".join(f"- {sid}{separator}{label}" for sid, label in dictionary)
    return _messages("method", language, news=quoted(news), sector=sector.strip(), dictionary=listed)


def analysis_messages(news: str, sector: str, method: str, data: SeriesData, language: str,
                      series_ids: Mapping[str, str] | None = None) -> Messages:  # fmt: skip
    """Step 3: the fetched series as a table; the analysis with them, and a specification of what to compute.

    `series_ids` maps each table name to its database id (the specification names series by id).
    """
    ids = "; ".join(f"{name} = {series_id}" for name, series_id in (series_ids or {}).items())
    return _messages(
        "analysis",
        language,
        news=quoted(news),
        sector=sector.strip(),
        method=method.strip(),
        data=format_data(data, language),
        series_ids=ids,
    )
