"""One interface for a training job on the cluster — submit, state, pods, logs, cancel — and waiting on it.

`ClusterBackend` is what `pytorchjob_client.PyTorchJobBackend` (Training Operator SDK) and
`trainjob_client.TrainJobBackend` (Kubeflow Trainer SDK) implement; `wait_for_job` is written once
over it: a job that succeeds returns, one that fails raises `JobFailed` with the reason in one line
(its condition, and the pod-level cause such as OOMKilled, ImagePullBackOff, Unschedulable), one
Restarting too long or with pods left Terminating raises `JobStuck` instead of being waited on
forever, and the client's own wall-clock limit raises `JobStillRunning` (the job goes on).
Transient API failures (5xx, 429, a dropped connection) are retried by `call_api`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from deepmoney.errors import EXIT_TRANSIENT, UserError
from deepmoney.launch.cluster import ClusterRun
from deepmoney.launch.diagnose import failure_reason, parse_time, stuck_reason, true_conditions

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRYABLE_STATUS = {429, 500, 502, 503, 504}
SUCCEEDED, FAILED = "Succeeded", "Failed"


class JobFailed(UserError):
    """The job failed on the cluster; the message says why (its condition and the pods' cause)."""


class JobStuck(UserError):
    """No progress (Restarting too long, pods Terminating on a lost node): reported, not waited on."""

    exit_code = EXIT_TRANSIENT


class JobStillRunning(UserError):
    """The wait ran out of time; the job itself goes on (attach again or cancel it)."""

    exit_code = EXIT_TRANSIENT


@dataclass(frozen=True)
class JobState:
    """Where a job is: its phase (the newest true condition, Succeeded for a TrainJob's Complete) and since when."""

    phase: str
    since: dt.datetime | None
    status: dict[str, Any]


@dataclass(frozen=True)
class Submission:
    """A submitted job, and whether an existing one of that name was attached instead of creating a duplicate."""

    kind: str
    namespace: str
    name: str
    attached: bool


class ClusterBackend(Protocol):
    """A job kind on the cluster, reached through its operator's SDK."""

    kind: str

    def submit(self, run: ClusterRun) -> Submission:
        """Create the run's ConfigMap and job, or attach to the job of that name when it already exists."""

    def state(self, name: str) -> JobState:
        """The job's phase now."""

    def pods(self, name: str) -> list[dict[str, Any]]:
        """The job's pods (API JSON)."""

    def events(self, name: str, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Events about the job and its pods (API JSON)."""

    def logs(self, name: str) -> dict[str, str]:
        """Each started pod's training-container log."""

    def follow(self, name: str) -> Iterator[str]:
        """The first pod's log lines as they come, until it ends."""

    def cancel(self, name: str) -> bool:
        """Delete the job and its ConfigMap; False when there was none."""


def phase_of(status: dict[str, Any] | None) -> tuple[str, dt.datetime | None]:
    """The job's phase and since when: Failed or Succeeded once either is true, else the newest true condition.

    'Pending' before the operator wrote any condition; a TrainJob's Complete counts as Succeeded.
    """
    conditions = true_conditions(status)
    for final, types in ((FAILED, ("Failed",)), (SUCCEEDED, ("Succeeded", "Complete"))):
        matching = [c for c in conditions if c.get("type") in types]
        if matching:
            return final, parse_time(matching[-1].get("lastTransitionTime"))
    if not conditions:
        return "Pending", None
    return str(conditions[-1].get("type")), parse_time(conditions[-1].get("lastTransitionTime"))


def api_status(exc: BaseException) -> int | None:
    """The HTTP status behind an SDK error (they wrap ApiException in RuntimeError), or None."""
    for error in (exc, exc.__cause__, exc.__context__):
        status = getattr(error, "status", None)
        if isinstance(status, int):
            return status
    return None


def _transient(exc: BaseException) -> bool:
    status = api_status(exc)
    if status is not None:
        return status in RETRYABLE_STATUS
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    return bool(names & {"MaxRetryError", "ProtocolError", "ConnectionError", "TimeoutError", "ReadTimeoutError"})


def call_api(what: str, call: Callable[[], T], attempts: int = 5, backoff: float = 0.5) -> T:
    """`call()`, retried on transient API failures (5xx, 429, dropped connections) with doubling waits."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts or not _transient(exc):
                raise
            wait = min(backoff * 2 ** (attempt - 1), 8.0)
            log.warning("%s failed (%s); retrying in %.1f s (%d/%d)", what, api_status(exc) or type(exc).__name__,
                        wait, attempt, attempts - 1)  # fmt: skip
            time.sleep(wait)
    raise AssertionError("unreachable")


def utcnow() -> dt.datetime:
    """Now, timezone-aware (the API's timestamps are UTC)."""
    return dt.datetime.now(dt.UTC)


def wait_for_job(backend: ClusterBackend, namespace: str, name: str, *, timeout: float | None, poll: float,
                 restarting_limit: float, on_phase: Callable[[str], None] | None = None) -> JobState:  # fmt: skip
    """Poll the job until it succeeds (returned), fails (`JobFailed`), is stuck (`JobStuck`) or `timeout` passes."""
    what = f"{backend.kind} {namespace}/{name}"
    started = time.monotonic()
    seen = None
    while True:
        state = backend.state(name)
        if state.phase != seen:
            seen = state.phase
            log.info("%s is %s", what, state.phase)
            if on_phase is not None:
                on_phase(state.phase)
        if state.phase == SUCCEEDED:
            return state
        pods = backend.pods(name)
        if state.phase == FAILED:
            raise JobFailed(failure_reason(what, state.status, pods, backend.events(name, pods)))
        stuck = stuck_reason(what, state.phase, state.since, pods, utcnow(), restarting_limit)
        if stuck:
            raise JobStuck(stuck)
        if timeout is not None and time.monotonic() - started > timeout:
            raise JobStillRunning(
                f"{what} is still {state.phase} after {timeout:.0f} s; it goes on running — "
                "run the same deepmoney launch again to attach, or add --cancel to stop it"
            )
        time.sleep(poll)
