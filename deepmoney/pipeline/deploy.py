"""The pipeline's deploy step: apply the serving objects, wait until KServe says they are Ready, ask once.

The objects are `serve render`'s (the LLM, the step InferenceServices, the InferenceGraph), applied with the
Kubernetes client in their order: created when absent, replaced (with the live resourceVersion) when
present, so deploying the same champion again changes nothing and a new one rolls out. Each
InferenceService, LLMInferenceService and InferenceGraph is then polled until its `Ready` condition is
True; one that reports a failure (`Ready` False with a reason such as a failed storage initializer or a
crash loop) or is not Ready within the timeout ends the step with that reason in one line. Finally one
dated news item is posted to the graph and the answer must carry the three steps' parts: a deployment
that is up but cannot answer is not a success. API calls are retried on transient failures
(`launch.jobs.call_api`).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

from deepmoney.errors import UserError
from deepmoney.launch.jobs import call_api

log = logging.getLogger(__name__)

WAITED = ("InferenceService", "LLMInferenceService", "InferenceGraph")
SMOKE_NEWS = {"id": "smoke", "news": "The central bank raised its policy rate by 25 basis points to curb inflation.",
              "date": "2024-06-12", "language": "en"}  # fmt: skip
SMOKE_PARTS = ("sectors", "method", "analysis")  # what the three steps add to the answer


class DeployFailed(UserError):
    """The objects were refused, a service failed or was not Ready in time, or the graph did not answer."""


def plural_of(obj: dict[str, Any]) -> str:
    """The resource name of a serving object's kind (`InferenceService` -> `inferenceservices`)."""
    return obj["kind"].lower() + "s"


def _api(api_client: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api_client)


def apply_objects(api_client: Any, objects: list[dict[str, Any]], namespace: str,
                  attempts: int = 5) -> list[dict[str, str]]:  # fmt: skip
    """Create or replace each object in order; what was done to each ({kind, name, action})."""
    from kubernetes.client.exceptions import ApiException

    api = _api(api_client)
    done = []
    for obj in objects:
        group, _, version = obj["apiVersion"].rpartition("/")
        name, plural = obj["metadata"]["name"], plural_of(obj)
        ns = obj["metadata"].get("namespace") or namespace
        body = {**obj, "metadata": {**obj["metadata"], "namespace": ns}}
        where = f"{obj['kind']} {ns}/{name}"
        try:
            live = call_api(f"read {where}", partial(api.get_namespaced_custom_object, group, version, ns, plural,
                                                     name), attempts)  # fmt: skip
        except ApiException as exc:
            if exc.status != 404:
                raise DeployFailed(f"cannot read {where}: {exc.status} {exc.reason}") from None
            live = None
        try:
            if live is None:
                create = partial(api.create_namespaced_custom_object, group, version, ns, plural, body)
                call_api(f"create {where}", create, attempts)
                action = "created"
            else:
                body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
                replace = partial(api.replace_namespaced_custom_object, group, version, ns, plural, name, body)
                call_api(f"replace {where}", replace, attempts)
                action = "replaced"
        except ApiException as exc:
            detail = _message(exc)
            raise DeployFailed(f"the cluster refused {where}: {exc.status} {exc.reason}"
                               f"{': ' + detail if detail else ''}") from None  # fmt: skip
        log.info("%s %s", action, where)
        done.append({"kind": obj["kind"], "name": name, "action": action})
    return done


def _message(exc: Any) -> str:
    import json

    try:
        return str(json.loads(exc.body).get("message", ""))
    except (TypeError, ValueError, AttributeError):
        return ""


def _ready(status: dict[str, Any] | None) -> tuple[bool, str | None]:
    """(Ready, the reason it failed): failed once Ready is False with a reason other than a wait."""
    for condition in (status or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            if condition.get("status") == "True":
                return True, None
            reason = condition.get("reason") or ""
            message = condition.get("message") or ""
            if reason and reason not in ("", "Unknown", "Pending", "InProgress", "PredictorNotReady",
                                         "RevisionMissing", "Waiting"):  # fmt: skip
                return False, f"{reason}{': ' + message if message else ''}"
    return False, None


def wait_ready(api_client: Any, objects: list[dict[str, Any]], namespace: str, *, timeout: float, poll: float,
               attempts: int = 5) -> dict[str, str]:  # fmt: skip
    """Poll every waited-on object until all are Ready; their `status.url`s (by name)."""
    api = _api(api_client)
    pending = [o for o in objects if o["kind"] in WAITED]
    urls: dict[str, str] = {}
    started = time.monotonic()
    while pending:
        for obj in list(pending):
            group, _, version = obj["apiVersion"].rpartition("/")
            name, ns = obj["metadata"]["name"], obj["metadata"].get("namespace") or namespace
            read = partial(api.get_namespaced_custom_object, group, version, ns, plural_of(obj), name)
            live = call_api(f"read {obj['kind']} {ns}/{name}", read, attempts)
            ready, failure = _ready(live.get("status"))
            if failure:
                raise DeployFailed(f"{obj['kind']} {ns}/{name} failed: {failure}")
            if ready:
                log.info("%s %s/%s is Ready", obj["kind"], ns, name)
                urls[name] = (live.get("status") or {}).get("url", "")
                pending.remove(obj)
        if pending and time.monotonic() - started > timeout:
            names = ", ".join(f"{o['kind']} {o['metadata']['name']}" for o in pending)
            raise DeployFailed(f"not Ready after {timeout:.0f} s: {names} (kubectl describe them for the events); "
                               "a large model needs the start-up allowance its probes give it")  # fmt: skip
        if pending:
            time.sleep(poll)
    return urls


def smoke(url: str, timeout: float = 600.0) -> dict[str, Any]:
    """Post one dated news item to the graph at `url`; its answer must carry the three steps' parts."""
    from deepmoney.serving.client import analyze

    (answer,) = analyze(url, [dict(SMOKE_NEWS)], concurrency=1, timeout=timeout)
    missing = [part for part in SMOKE_PARTS if part not in answer.body]
    if answer.status != 200 or missing:
        detail = answer.body.get("error") or f"no {', '.join(missing)} in the answer"
        raise DeployFailed(f"the graph at {url} did not answer the smoke request ({answer.status}: {detail})")
    return {"status": answer.status, "sectors": answer.body.get("sectors")}


def graph_url(objects: list[dict[str, Any]], namespace: str, urls: dict[str, str]) -> str:
    """Where the graph answers: its `status.url`, else its in-cluster address."""
    graph = next(o for o in objects if o["kind"] == "InferenceGraph")
    name = graph["metadata"]["name"]
    return urls.get(name) or f"http://{name}.{graph['metadata'].get('namespace') or namespace}.svc.cluster.local"


def deploy_objects(api_client: Any, objects: list[dict[str, Any]], namespace: str, *, timeout: float,
                   poll: float = 10.0, smoke_url: str | None = None, attempts: int = 5) -> dict[str, Any]:  # fmt: skip
    """Apply, wait until Ready, then one smoke request (to `smoke_url`, default the graph's address)."""
    applied = apply_objects(api_client, objects, namespace, attempts)
    urls = wait_ready(api_client, objects, namespace, timeout=timeout, poll=poll, attempts=attempts)
    url = smoke_url or graph_url(objects, namespace, urls)
    answered = smoke(url, timeout=min(timeout, 900.0))
    return {"graph_url": url, "applied": applied, "smoke": answered}


def cluster_api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A Kubernetes API client: the pod's service account inside a cluster, else the kubeconfig."""
    from kubernetes import client
    from kubernetes import config as kube_config

    from deepmoney import env

    try:
        if env.get(env.KUBERNETES_SERVICE_HOST) and kubeconfig is None:
            kube_config.load_incluster_config()
            return client.ApiClient()
        return kube_config.new_client_from_config(config_file=kubeconfig, context=context)
    except Exception as exc:  # the loaders raise their own ConfigException
        if type(exc).__name__ != "ConfigException":
            raise
        raise UserError(f"no cluster to deploy to ({str(exc).splitlines()[0]}): set launch.kubeconfig, "
                        "$KUBECONFIG or ~/.kube/config") from None  # fmt: skip
