"""Why a training job failed or is stuck, in one readable line, from its conditions, pods and events.

Pure functions over the API's JSON (camelCase dicts, as `ApiClient.sanitize_for_serialization`
gives them), so the same rules read a PyTorchJob or a TrainJob and are tested without a cluster.
The reasons users meet most (the Training Operator's issue tracker): a container OOMKilled, an
image that cannot be pulled, pods that cannot be scheduled, a missing Secret or ConfigMap, a job
that keeps restarting, pods left Terminating on a lost node.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

WAITING_REASONS = {  # a container waiting for one of these will not start by itself
    "ImagePullBackOff": "cannot pull its image",
    "ErrImagePull": "cannot pull its image",
    "InvalidImageName": "has an invalid image name",
    "CreateContainerConfigError": "cannot be created (a Secret or ConfigMap it needs is missing?)",
    "CrashLoopBackOff": "keeps crashing",
}
EVENT_REASONS = ("FailedScheduling", "FailedMount", "FailedAttachVolume", "FailedCreatePodSandBox", "Evicted")


def parse_time(value: str | None) -> dt.datetime | None:
    """An RFC 3339 timestamp of the API as an aware datetime (None when absent or unreadable)."""
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def true_conditions(status: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The job's conditions whose status is True, oldest transition first."""
    conditions = [c for c in (status or {}).get("conditions") or [] if str(c.get("status")) == "True"]
    return sorted(conditions, key=lambda c: c.get("lastTransitionTime") or "")


def _container_problem(pod: dict[str, Any]) -> str | None:
    name = pod.get("metadata", {}).get("name", "?")
    statuses = [*(pod.get("status", {}).get("initContainerStatuses") or []),
                *(pod.get("status", {}).get("containerStatuses") or [])]  # fmt: skip
    for status in statuses:
        for state in (status.get("state") or {}, status.get("lastState") or {}):
            terminated = state.get("terminated") or {}
            if terminated.get("reason") == "OOMKilled":
                return (
                    f"pod {name} was OOMKilled (container {status.get('name')}, exit "
                    f"{terminated.get('exitCode', 137)}): give it more memory (launch.memory_per_node) or "
                    "use less (ZeRO-3, offload, gradient checkpointing, a smaller micro-batch; deepmoney plan)"
                )
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in WAITING_REASONS:
            detail = f": {waiting['message']}" if waiting.get("message") else ""
            return f"pod {name} {WAITING_REASONS[waiting['reason']]} ({waiting['reason']}{detail})"
    for status in statuses:
        terminated = (status.get("state") or {}).get("terminated") or {}
        if terminated and terminated.get("exitCode") not in (None, 0):
            why = f" {terminated['reason']}" if terminated.get("reason") not in (None, "Error") else ""
            return f"pod {name} exited with code {terminated['exitCode']}{why} (its log says why)"
    return None


def _unschedulable(pod: dict[str, Any]) -> str | None:
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            name = pod.get("metadata", {}).get("name", "?")
            return f"pod {name} cannot be scheduled (Unschedulable: {condition.get('message', 'no reason given')})"
    return None


def pod_problem(pods: list[dict[str, Any]], events: list[dict[str, Any]]) -> str | None:
    """The first thing that keeps the job's pods from running, if any."""
    for check in (_container_problem, _unschedulable):
        for pod in pods:
            found = check(pod)
            if found:
                return found
    for event in sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "", reverse=True):
        if event.get("type") == "Warning" and event.get("reason") in EVENT_REASONS:
            involved = event.get("involvedObject", {}).get("name", "?")
            return f"{involved}: {event['reason']}: {event.get('message', '')}".strip()
    return None


def failure_reason(what: str, status: dict[str, Any] | None, pods: list[dict[str, Any]],
                   events: list[dict[str, Any]]) -> str:  # fmt: skip
    """One line: `what` failed, the job's own reason, and the pod-level cause when there is one."""
    failed = [c for c in true_conditions(status) if c.get("type") == "Failed"]
    own = ""
    if failed:
        condition = failed[-1]
        own = ": ".join(str(p) for p in (condition.get("reason"), condition.get("message")) if p)
    cause = pod_problem(pods, events)
    parts = [f"{what} failed"] + [p for p in (own, cause) if p]
    return " — ".join(parts) if len(parts) > 1 else f"{what} failed (no reason recorded; see its pods' logs)"


def stuck_reason(what: str, phase: str, since: dt.datetime | None, pods: list[dict[str, Any]],
                 now: dt.datetime, limit_seconds: float) -> str | None:  # fmt: skip
    """Why waiting on longer is pointless: Restarting for more than `limit_seconds`, or pods left Terminating."""
    if phase == "Restarting" and since is not None and (now - since).total_seconds() > limit_seconds:
        minutes = (now - since).total_seconds() / 60
        cause = pod_problem(pods, [])
        return (f"{what} has been Restarting for {minutes:.0f} min" + (f" — {cause}" if cause else "") +
                "; it is not waited on further (deepmoney launch --cancel stops it)")  # fmt: skip
    for pod in pods:
        deleting = parse_time(pod.get("metadata", {}).get("deletionTimestamp"))
        if deleting is not None and (now - deleting).total_seconds() > limit_seconds:
            node = pod.get("spec", {}).get("nodeName") or "its node"
            return (f"{what}: pod {pod['metadata'].get('name')} has been Terminating for "
                    f"{(now - deleting).total_seconds() / 60:.0f} min — {node} is probably lost; "
                    "delete the pod with --force or drain the node")  # fmt: skip
    return None
