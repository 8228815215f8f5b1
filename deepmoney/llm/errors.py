"""Failures of an LLM endpoint, split by what to do about them."""

from __future__ import annotations

from deepmoney.errors import ServiceUnavailable, UserError


class LLMFatalError(UserError):
    """Retrying cannot help (wrong API key, unknown model or endpoint, bad request): stop at once."""


class LLMRetryableError(Exception):
    """This attempt failed but another may succeed (429, 5xx, timeout, malformed or empty answer)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class LLMGaveUp(Exception):
    """Every attempt failed with retryable errors; `reason` is the last one."""

    def __init__(self, reason: str, attempts: int) -> None:
        super().__init__(f"gave up after {attempts} attempts: {reason}")
        self.reason = reason
        self.attempts = attempts


class LLMEndpointDown(ServiceUnavailable):
    """Several requests in a row gave up on one endpoint: stop the run (resumable) instead of failing every chapter."""
