"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Something the user can fix: a bad path, a bad flag, a bad config value.

    The message must say what was wrong and what to do about it, in one line.
    """


class InputRejected(Exception):
    """One input file cannot be used; the run records it in rejected.jsonl and goes on."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # crosses process boundaries intact
        return (InputRejected, (self.path, self.reason))
