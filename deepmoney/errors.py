"""Errors that are the user's to fix, and the exit codes every entrypoint ends with.

The exit codes are one contract for the CLI, the training pods and the launchers. They follow the
Training Operator's `restartPolicy: ExitCode` convention — 1–127 is a permanent failure (retrying
cannot help), 128–255 is retryable — so the same number tells the local launcher and a PyTorchJob
whether to start the ranks again.
"""

EXIT_OK = 0
EXIT_FAILED = 1  # an unexpected error (a bug, shown with its traceback): permanent
EXIT_USER = 2  # a UserError: the user must change something first; permanent
EXIT_TRANSIENT = 128  # a failure worth retrying (lost peer, network, store timeout)
EXIT_SIGINT = 130  # interrupted by Ctrl-C (128 + SIGINT): retryable, the run resumes
EXIT_SIGTERM = 143  # stopped by SIGTERM (128 + SIGTERM; pod eviction, preemption): retryable


def is_retryable(code: int) -> bool:
    """Whether a process that ended with `code` may succeed when started again (signals count as retryable).

    Negative codes are how Python reports a child killed by a signal (-9 for SIGKILL).
    """
    return code < 0 or code >= EXIT_TRANSIENT


class UserError(Exception):
    """Something the user can fix: a bad path, a bad flag, a bad config value.

    The message must say what was wrong and what to do about it, in one line.
    """


class ServiceUnavailable(UserError):
    """A service the command needs does not answer (an LLM endpoint that answered none of many requests).

    One line like any UserError, but the exit code is EXIT_TRANSIENT: the user may have to start or
    fix the service, yet running the same command again later may succeed (and resumes).
    """

    exit_code = EXIT_TRANSIENT


class InputRejected(Exception):
    """One input file cannot be used; the run records it in rejected.jsonl and goes on."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # crosses process boundaries intact
        return (InputRejected, (self.path, self.reason))
