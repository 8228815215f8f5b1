"""Kubernetes API calls both cluster backends make beside their SDK: the run's ConfigMap, events, pod logs.

Every call goes through `jobs.call_api`, so a transient failure (5xx, 429, a dropped connection)
is retried; the clients are the ones the SDKs built (`core_api`), on the same connection settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from deepmoney.errors import UserError
from deepmoney.launch.cluster import ClusterRun, config_map
from deepmoney.launch.jobs import call_api


def to_json(obj: Any) -> Any:
    """An API model object (or list of them) as the API's JSON: camelCase dicts."""
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def submit_config_map(core: Any, run: ClusterRun, attempts: int) -> None:
    """Create the run's ConfigMap; one of that name is kept when it holds the same config, else refused."""
    from kubernetes.client.exceptions import ApiException

    body = config_map(run)
    try:
        call_api(f"create ConfigMap {run.config_map_name}",
                 lambda: core.create_namespaced_config_map(run.namespace, body), attempts)  # fmt: skip
    except ApiException as exc:
        if exc.status != 409:
            raise
        existing = call_api(f"read ConfigMap {run.config_map_name}",
                            lambda: core.read_namespaced_config_map(run.config_map_name, run.namespace),
                            attempts)  # fmt: skip
        if (existing.data or {}) != body["data"]:
            raise UserError(f"{run.namespace}/{run.name} already exists with another config (ConfigMap "
                            f"{run.config_map_name}); give the new run another --output or --name, or cancel the "
                            "old one with --cancel") from None  # fmt: skip


def delete_config_map(core: Any, namespace: str, name: str, attempts: int) -> None:
    """Delete a ConfigMap; one already gone is fine."""
    from kubernetes.client.exceptions import ApiException

    try:
        call_api(f"delete ConfigMap {name}", lambda: core.delete_namespaced_config_map(name, namespace), attempts)
    except ApiException as exc:
        if exc.status != 404:
            raise


def job_events(core: Any, namespace: str, job: str, pods: list[dict[str, Any]], attempts: int) -> list[dict[str, Any]]:
    """The namespace's events about the job `job` or one of its `pods`."""
    names = {job, *(pod["metadata"]["name"] for pod in pods)}
    events = call_api("list events", lambda: core.list_namespaced_event(namespace), attempts)
    return [e for e in (to_json(x) for x in events.items) if e.get("involvedObject", {}).get("name") in names]


def read_log(core: Any, namespace: str, pod: dict[str, Any], container: str, attempts: int) -> str:
    """A pod's container log ('' when it has none yet)."""
    name = pod["metadata"]["name"]
    text = call_api(f"read the log of {name}",
                    lambda: core.read_namespaced_pod_log(name, namespace, container=container), attempts)  # fmt: skip
    return text or ""


def follow_log(core: Any, namespace: str, pod: str, container: str) -> Iterator[str]:
    """A pod's log lines as they are written, until the container ends."""
    response = core.read_namespaced_pod_log(pod, namespace, container=container, follow=True, _preload_content=False)
    try:
        buffer = b""
        for chunk in response.stream(4096):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            yield from (line.decode("utf-8", "replace") for line in lines)
        if buffer:
            yield buffer.decode("utf-8", "replace")
    finally:
        response.release_conn()
