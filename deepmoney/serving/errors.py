"""How a serving failure reaches the client: an HTTP status and one line, never a traceback.

A user's mistake is a 4xx (400 bad body, 404 unknown model, 413 too large); a failure of what the
service depends on is a 5xx that names the step (502 the LLM failed, 503 the market database is
down, 504 the LLM did not answer in time). Handlers log one line per failure; the server keeps
serving.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class ServingError(Exception):
    """A request that fails with `status` and a one-line `message` (and the step it failed in, if any)."""

    status = 500
    request_id: str | None = None  # set by the step that failed, for the error body and the log line

    def __init__(self, message: str, step: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message, self.step = message, step
        if status is not None:
            self.status = status

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        """The JSON error body."""
        out: dict[str, Any] = {"error": self.message}
        if self.step:
            out["step"] = self.step
        if request_id:
            out["request_id"] = request_id
        return out


class BadRequest(ServingError):
    """The request itself is wrong (400)."""

    status = 400


class TooLarge(ServingError):
    """The body is over the limit (413)."""

    status = 413


class StepTimeout(ServingError):
    """The LLM did not answer a step in time (504)."""

    status = 504


class UpstreamFailed(ServingError):
    """The LLM endpoint failed (502)."""

    status = 502


class Unavailable(ServingError):
    """A service the step needs is down (503)."""

    status = 503
