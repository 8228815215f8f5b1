"""What each chain step asks the model for, as a JSON schema, and how its answer is read.

Every step asks for one JSON object (a root object, as OpenAI's structured outputs require):
sectors `{"sectors": [...]}`, method `{"method": "...", "data": [...]}`, analysis
`{"analysis": "...", "direction": ...}`. Given the schema, vLLM (`response_format`) and the
embedded model (grammar-constrained decoding) can only produce such objects; an endpoint that
ignores `response_format` answers in free text, which the parsers of `analysis.parse` read.

String lengths in a schema are bounded by the step's token budget, so that a constrained answer
always closes its JSON before `max_tokens` runs out (a token is at least one character).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from deepmoney.analysis.parse import MAX_SECTOR_CHARS, dedupe_names, find_object, parse_method, parse_sectors
from deepmoney.analysis.prompts import MAX_SECTORS
from deepmoney.quant.spec import SPEC_MAX_CHARS, spec_schema

DIRECTIONS = ("positive", "negative", "mixed", "unclear")
MAX_DATA_SERIES = 6
SAFETY = 0.9  # of the token budget a constrained answer may fill: margin for characters that take two tokens
MIN_ANALYSIS_ROOM = 200  # characters of analysis text a budget must leave before a specification is asked for too
_NAME_START = "[A-Za-z\u00c0-\u024f\u4e00-\u9fff]"  # Latin or CJK letters
_NAME_REST = '[^"\\\\{}\\[\\]<>=:\uff1a\\n]'  # no quote, backslash, brackets, '=', colon or newline
PROGRAM_SHARE = 0.4  # of step 3's room, what a sandboxed program may take (quant.sandbox on)


def _room(max_tokens: int, fixed: int) -> int:
    """Characters left for a step's strings: the budget, less the margin, less the object's fixed characters."""
    return max(0, int(max_tokens * SAFETY) - fixed)


def _string(max_length: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max(1, max_length)}


def _list(item: int, most: int) -> dict[str, Any]:
    return {"type": "array", "items": _string(item), "minItems": 1, "maxItems": most}


def step_schema(step: str, max_tokens: int, program: bool = False, series_ids: Sequence[str] = ()) -> str:
    """The JSON schema (compact text) of `step`'s answer, its strings sized to fit in `max_tokens`.

    The compact object's fixed characters (keys, quotes, brackets, commas; 3 per list item) are counted
    exactly, so a constrained answer at its longest still closes within the budget. Step 3 also asks
    for an analysis specification (`quant.spec`) when the budget leaves room for it, and with `program`
    for a short program for the sandbox. With `series_ids` (the database's data dictionary, listed in the
    prompt), step 2's data are those ids only: the series it names are series that exist.
    """
    properties: dict[str, Any]
    if step == "sectors":  # {"sectors":["…","…"]}
        item = min(60, _room(max_tokens, 14) // MAX_SECTORS - 3)
        # A name: it starts with a letter and holds no markup or explanation (what `parse_sectors` would cut or
        # drop), so that even a weak model's constrained answer names something.
        name = {"type": "string", "pattern": f"^{_NAME_START}{_NAME_REST}{{0,{max(0, item - 1)}}}$"}
        properties = {"sectors": {"type": "array", "items": name, "minItems": 1, "maxItems": MAX_SECTORS}}
    elif step == "method" and series_ids:  # {"method":"…","data":["us.cpi",…]}
        room = _room(max_tokens, 22 + 3 * MAX_DATA_SERIES)
        longest = max(len(json.dumps(i, ensure_ascii=False)) - 2 for i in series_ids)
        most = max(1, min(MAX_DATA_SERIES, room * 2 // 5 // longest))
        ids = {"type": "array", "items": {"enum": list(series_ids)}, "minItems": 1, "maxItems": most}
        properties = {"method": _string(room - most * longest), "data": ids}
    elif step == "method":  # {"method":"…","data":["…"]}
        room = _room(max_tokens, 22 + 3 * MAX_DATA_SERIES)
        properties = {"method": _string(room * 3 // 5), "data": _list(min(60, room * 2 // 5 // MAX_DATA_SERIES),
                                                                       MAX_DATA_SERIES)}  # fmt: skip
    elif step == "analysis":  # {"analysis":"…","direction":"positive","spec":{…},"program":"…"}
        room = _room(max_tokens, 40)
        properties = {"analysis": _string(room), "direction": {"enum": list(DIRECTIONS)}}
        if room - SPEC_MAX_CHARS - 8 >= MIN_ANALYSIS_ROOM:
            room -= SPEC_MAX_CHARS + 8  # ,"spec":
            properties["spec"] = spec_schema()
            if program:
                code = int(room * PROGRAM_SHARE)
                room -= code + 13  # ,"program":""
                properties["program"] = _string(code)
            properties["analysis"] = _string(room)
    else:
        raise ValueError(f"unknown chain step {step!r}")
    schema = {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}
    return json.dumps(schema, separators=(",", ":"))


def _json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_sectors(text: str) -> list[str]:
    """The sectors of a step-1 answer: the schema's object, else whatever `parse_sectors` reads from free text."""
    obj = _json_object(text) if isinstance(text, str) else None
    if obj is not None and isinstance(obj.get("sectors"), list):
        return dedupe_names(
            [s for s in obj["sectors"] if isinstance(s, str)], cut_explanation=True, max_chars=MAX_SECTOR_CHARS
        )
    return parse_sectors(text)


def read_method(text: str) -> tuple[str, list[str]]:
    """(method, data series names) of a step-2 answer, from the schema's object or free text."""
    return parse_method(text)


def _answer_object(text: str) -> dict | None:
    if not isinstance(text, str):
        return None
    return _json_object(text.strip()) or find_object(text)


def read_spec(text: str) -> object:
    """The analysis specification of a step-3 answer (None when it has none; validated by `quant.spec`)."""
    obj = _answer_object(text)
    return obj.get("spec") if obj is not None else None


def read_program(text: str) -> str | None:
    """The sandbox program of a step-3 answer, if it wrote one."""
    obj = _answer_object(text)
    program = obj.get("program") if obj is not None else None
    return program if isinstance(program, str) and program.strip() else None


def read_analysis(text: str) -> tuple[str, str | None]:
    """(analysis text, direction) of a step-3 answer: the schema's object, else the free text and no direction."""
    if not isinstance(text, str):
        return "", None
    obj = _json_object(text.strip()) or find_object(text)
    if obj is not None and isinstance(obj.get("analysis"), str):
        direction = obj.get("direction")
        return obj["analysis"].strip(), direction if direction in DIRECTIONS else None
    return text.strip(), None
