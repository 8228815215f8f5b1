"""Reading JSON Lines files the one way every input of deepmoney is read: line by line, one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from deepmoney.errors import UserError


def json_lines(path: Path, what: str = "news file", hint: str = "give a JSONL file of news items"
               ) -> Iterator[tuple[int, str, object]]:  # fmt: skip
    """(line number, "path:line", decoded value) of each non-blank line of a JSONL file; one-line UserErrors.

    `what` names the file in messages ("news file"), `hint` says what to give instead when it is missing.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}; {hint}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a {what}; {hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield number, where, json.loads(line)
        except ValueError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.args[0] if exc.args else exc})") from None
