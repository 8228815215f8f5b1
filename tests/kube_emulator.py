"""A Kubernetes API server on loopback for tests of the training launchers, with a scriptable fake controller.

The server is kmock's `KubernetesEmulator` (aiohttp, async) run on its own event loop in a background thread, so
synchronous code under test talks to it over real HTTP with the real client libraries; nothing in those clients is
patched. Use the `kube` fixture (importing `kube_fixture` from this module into a test module registers it as `kube`)
or `with KubeEmulator() as kube:`, and point a client at `kube.configuration()`:

* `kubernetes`: `kubernetes.client.ApiClient(kube.configuration())`, then `CoreV1Api(api)`, `CustomObjectsApi(api)`.
* `kubeflow.training.TrainingClient(client_configuration=kube.configuration(), namespace="default")`. With
  `client_configuration` set it loads no kubeconfig. Its `namespace` default is worked out once at import time, so pass
  it explicitly.
* `kubeflow.trainer.TrainerClient(backend_config=KubernetesBackendConfig(namespace="default",
  client_configuration=kube.configuration()))`, with `KubernetesBackendConfig` from `kubeflow.trainer` (it is
  `kubeflow.common.types.KubernetesBackendConfig`). Without `namespace` it reads the current kubeconfig context.
  The constructor reads the ConfigMap `kubeflow-system/kubeflow-trainer-public`; the emulator seeds it (see
  `KubeEmulator(trainer_version=...)`) so the SDK does not log a warning.

Served: core v1 pods (with `log`), events, configmaps, secrets, services, persistentvolumeclaims, namespaces;
`kubeflow.org/v1` pytorchjobs; `trainer.kubeflow.org/v1alpha1` trainjobs, trainingruntimes (namespaced) and
clustertrainingruntimes (cluster-scoped); discovery (`/api`, `/api/v1`, `/apis`, `/apis/<group>[/<version>]`).
`KubeEmulator.register` adds more.

What this adds to kmock 0.8, each checked against its source:

* `?watch=True` (what the official client sends) is treated as `watch=true`; kmock only knows the lower-case
  spelling, and anything else turns a watch into a one-shot list. Watches also honour `timeoutSeconds` (kmock never
  ends a watch) and end when the emulator stops.
* `labelSelector` (equality `a=b`, `a==b`, `a!=b`, set-based `a in (x, y)`, `a notin (x)`, `a`, `!a`) and
  `fieldSelector` (`path=value`, `path!=value`) filter lists and watches; kmock ignores both. The Trainer SDK sends a
  set-based selector, so splitting on commas alone would not do.
* Create adds `metadata.uid`, `creationTimestamp`, `resourceVersion`, `generation`, `namespace` (from the URL),
  fills `name` from `generateName`, and rejects a name already taken with a real `409 AlreadyExists` Status; every
  update bumps `resourceVersion` (and `generation` when `spec` changes). kmock adds none of these.
* A PyTorchJob created over HTTP gets `spec.runPolicy.cleanPodPolicy: None` if unset, as the Training Operator's
  defaulting webhook does; without `runPolicy` the TrainingClient cannot deserialize the job.
* PUT (replace, used by `replace_*` calls) works; kmock answers it with 404. PATCH is served here too: a merge patch
  follows RFC 7386 (kmock's merge fails with a 500 when a patch turns a scalar into a dict), a JSON patch goes
  through `jsonpatch`; a strategic merge patch is treated as a merge patch (lists are replaced, not merged by key);
  server-side apply is not emulated (415). A `resourceVersion` in a PUT or merge-patch body must be the current one.
* `GET .../pods/{pod}/log?container=X` returns the text given by `set_pod_log` (kmock would return the Pod JSON), with
  the API server's 400s for a missing or unknown container and `tailLines`. `follow=true` sends it all and closes.
* Error bodies are Kubernetes `Status` objects with the real reason names (`NotFound`, `AlreadyExists`, ...).
* kmock stores a created object before any user rule runs, so a scripted failure built from kmock rules would leave
  the object behind. `fail_next` answers before the request reaches kmock, so nothing is stored or changed.
* kmock's own lock is an `asyncio.Lock`; the controller API below runs its work on the emulator's loop, so it is safe
  to call from the test thread or a `FakeController` thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import itertools
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp.web
import jsonpatch
import jsonpointer
import kmock
import pytest
from kubernetes import client as k8s_client

JSON = dict[str, Any]
Step = Callable[["KubeEmulator"], object]
_T = TypeVar("_T")

_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

# Status.reason by HTTP code, as the API server names them.
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "AlreadyExists",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass(frozen=True)
class ResourceType:
    """One served resource: where it lives in the API and what its objects are called."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        """`apiVersion` of its objects, e.g. `kubeflow.org/v1` or `v1`."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> kmock.resource:
        """The kmock key of the resource."""
        return kmock.resource(self.group, self.version, self.plural)


DEFAULT_RESOURCES = (
    ResourceType("", "v1", "pods", "Pod", subresources=("log", "status")),
    ResourceType("", "v1", "events", "Event"),
    ResourceType("", "v1", "configmaps", "ConfigMap"),
    ResourceType("", "v1", "secrets", "Secret"),
    ResourceType("", "v1", "services", "Service", subresources=("status",)),
    ResourceType("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", subresources=("status",)),
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, subresources=("status",)),
    ResourceType("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob", subresources=("status",)),
    ResourceType("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob", subresources=("status",)),
    ResourceType("trainer.kubeflow.org", "v1alpha1", "trainingruntimes", "TrainingRuntime"),
    ResourceType("trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", "ClusterTrainingRuntime", False),
)


def rfc3339(moment: datetime.datetime | None = None) -> str:
    """A timestamp as the API server writes it: UTC, whole seconds, `Z` (now when `moment` is None)."""
    moment = moment or datetime.datetime.now(datetime.UTC)
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type: str, status: str = "True", reason: str = "", message: str = "") -> JSON:
    """A job condition in the Training Operator's shape (also accepted by the Trainer SDK for TrainJobs)."""
    now = rfc3339()
    return {
        "type": type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
        "lastUpdateTime": now,
    }


# --- Label and field selectors -------------------------------------------------------------------------------------

_KEY = r"[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?"
_SET_REQUIREMENT = re.compile(rf"(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)")
_EQ_REQUIREMENT = re.compile(rf"(?P<key>{_KEY})\s*(?P<op>==|!=|=)\s*(?P<value>{_VALUE})")
_EXISTS_REQUIREMENT = re.compile(rf"(?P<neg>!?)\s*(?P<key>{_KEY})")


def _split_requirements(selector: str) -> list[str]:
    """Split on the commas between requirements, not those inside `in (...)`."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced parentheses in selector {selector!r}")
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if depth:
        raise ValueError(f"unbalanced parentheses in selector {selector!r}")
    parts.append("".join(current).strip())
    return [part for part in parts if part] if selector.strip() else []


def matches_label_selector(selector: str, labels: Mapping[str, str] | None) -> bool:
    """Whether `labels` satisfy a Kubernetes label selector string; a malformed selector raises ValueError."""
    labels = labels or {}
    result = True
    for requirement in _split_requirements(selector):
        if match := _SET_REQUIREMENT.fullmatch(requirement):
            values = {value.strip() for value in match["values"].split(",")}
            present = match["key"] in labels and labels[match["key"]] in values
            ok = present if match["op"] == "in" else not present
        elif match := _EQ_REQUIREMENT.fullmatch(requirement):
            equal = labels.get(match["key"]) == match["value"]
            ok = not equal if match["op"] == "!=" else equal
        elif match := _EXISTS_REQUIREMENT.fullmatch(requirement):
            ok = (match["key"] in labels) != bool(match["neg"])
        else:
            raise ValueError(f"unable to parse requirement {requirement!r} of label selector {selector!r}")
        result = result and ok
    return result


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def matches_field_selector(selector: str, obj: Mapping[str, Any]) -> bool:
    """Whether an object satisfies a field selector (`a.b=c`, `a.b==c`, `a.b!=c`; a missing field reads as "")."""
    result = True
    for requirement in _split_requirements(selector):
        match = re.fullmatch(r"(?P<path>[A-Za-z0-9_.]+)\s*(?P<op>==|!=|=)\s*(?P<value>[^,]*)", requirement)
        if match is None:
            raise ValueError(f"invalid field selector requirement {requirement!r}")
        equal = _field_value(obj, match["path"]) == match["value"].strip()
        result = result and (not equal if match["op"] == "!=" else equal)
    return result


def _selected(obj: Mapping[str, Any], params: Mapping[str, str]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels")
    return matches_label_selector(params.get("labelSelector", ""), labels) and matches_field_selector(
        params.get("fieldSelector", ""), obj
    )


def _merge(base: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386): dicts merge recursively, None removes a key, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(base) if isinstance(base, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


# --- The kmock handler -------------------------------------------------------------------------------------------


@dataclass
class _Failure:
    method: str
    plural: str
    status: int
    remaining: int
    reason: str | None
    message: str | None


def _api_error(status: int, message: str, *, reason: str | None = None, details: JSON | None = None) -> Exception:
    return kmock.KubernetesError(
        status=status, reason=reason or _REASONS.get(status, "Unknown"), message=message, details=details or {}
    )


def _status_body(status: int, reason: str, message: str, details: JSON | None = None) -> JSON:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": status,
    }


class _Handler(kmock.KubernetesEmulator):
    """kmock's emulator with the fixes listed in the module docstring. Runs on the emulator's event loop only."""

    def __init__(self, resources: Iterable[ResourceType]) -> None:
        super().__init__()
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self.kinds: dict[tuple[str, str], ResourceType] = {}
        self.plurals: dict[str, ResourceType] = {}
        for rtype in resources:
            self.add_type(rtype)
        self.logs: dict[tuple[str, str, str], str] = {}
        self.closing = asyncio.Event()
        self.script_lock = threading.Lock()
        self.failures: list[_Failure] = []
        self.counts: Counter[tuple[str, str]] = Counter()
        self.log: list[tuple[str, str]] = []
        self.changed = threading.Condition()
        self.changes = 0
        self._rv = itertools.count(1)

    def add_type(self, rtype: ResourceType) -> None:
        self.types[(rtype.group, rtype.version, rtype.plural)] = rtype
        self.kinds[(rtype.api_version, rtype.kind)] = rtype
        self.plurals[rtype.plural] = rtype
        self.resources[rtype.resource] = kmock.ResourceInfo(
            namespaced=rtype.namespaced,
            kind=rtype.kind,
            singular=rtype.kind.lower(),
            verbs=set(_VERBS),
            subresources=set(rtype.subresources),
        )

    def next_rv(self) -> str:
        return str(next(self._rv))

    def notify(self) -> None:
        with self.changed:
            self.changes += 1
            self.changed.notify_all()

    def stored(self, rtype: ResourceType, namespace: str | None, name: str) -> kmock.Object | None:
        key = (rtype.resource, namespace if rtype.namespaced else None, name)
        if key not in self._objects:
            return None
        obj = self._objects[key]
        return None if obj.deleted else obj

    async def publish(self, rtype: ResourceType, event: str, raw: JSON) -> None:
        await self._buses[rtype.resource].put({"type": event, "object": raw})

    def write(self, rtype: ResourceType, namespace: str | None, name: str, raw: JSON) -> None:
        """Store a new version of an object, keeping kmock's history."""
        key = (rtype.resource, namespace if rtype.namespaced else None, name)
        if key not in self._objects:
            self._objects[key] = raw
        elif self._objects[key].deleted:
            self._objects[key].create(raw)
        else:
            self._objects[key].history.append(raw)

    # The entry point from aiohttp: record the request as sent and normalise `watch`.
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        with self.script_lock:
            self.log.append((raw_request.method, raw_request.path_qs))
        url = raw_request.rel_url
        watch = url.query.get("watch")
        if raw_request.method == "GET" and watch is not None and watch != "true" and watch.lower() in {"true", "1"}:
            url = url.update_query(watch="true")
        if len(url.path) > 1 and url.path.endswith("/"):  # `ApisApi` asks for `/apis/`; kmock serves `/apis` only
            url = url.with_path(url.path.rstrip("/")).with_query(url.query)
        if url != raw_request.rel_url:
            raw_request = raw_request.clone(rel_url=url)
        return await super().__call__(raw_request)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        if resource is None or resource.plural is None:  # discovery, /version
            return await super()._handle(request)
        method = request.method.value
        plural = f"{resource.plural}/{request.subresource}" if request.subresource else resource.plural
        failure = self._count_and_script(method, plural)
        if failure is not None:
            return aiohttp.web.json_response(self._failure_body(failure, request), status=failure.status)

        rtype = self.types.get((resource.group or "", resource.version or "", resource.plural))
        if rtype is None:
            return await super()._handle(request)
        if method == "GET" and request.subresource == "log" and rtype.plural == "pods" and request.name:
            return await self._serve_log(request, rtype)
        if method in {"PUT", "PATCH"} and request.name:
            response = await (self._replace if method == "PUT" else self._patch)(request, rtype)
            self.notify()
            return response
        if request.name is not None and method in {"GET", "DELETE"} and request.action != kmock.action.WATCH:
            await self._check_exists(request, rtype)
        if method == "POST" and request.name is None:
            await self._prepare_create(request, rtype)
        response = await super()._handle(request)
        if method in {"POST", "DELETE"}:
            self.notify()
        return response

    def _count_and_script(self, method: str, plural: str) -> _Failure | None:
        with self.script_lock:
            self.counts[(method, plural)] += 1
            for failure in self.failures:
                if failure.method == method and failure.plural == plural and failure.remaining > 0:
                    failure.remaining -= 1
                    return copy.copy(failure)
        return None

    def _failure_body(self, failure: _Failure, request: kmock.Request) -> JSON:
        resource = request.resource
        assert resource is not None
        data = request.data if isinstance(request.data, Mapping) else {}
        name = request.name or (data.get("metadata") or {}).get("name") or ""
        qualified = f"{resource.plural}.{resource.group}" if resource.group else str(resource.plural)
        default_reason = _REASONS.get(failure.status, "Unknown")
        if failure.status == 409 and failure.method == "POST":
            default_message = f'{qualified} "{name}" already exists'
        elif failure.status == 409:  # an update that lost a race, not a duplicate name
            default_reason = "Conflict"
            default_message = f'Operation cannot be fulfilled on {qualified} "{name}": the object has been modified'
        elif failure.status == 404:
            default_message = f'{qualified} "{name}" not found'
        else:
            default_message = f"scripted failure {failure.status} for {failure.method} {failure.plural}"
        message = failure.message if failure.message is not None else default_message
        reason = failure.reason or default_reason
        details = {"name": name, "group": resource.group or "", "kind": resource.plural}
        return _status_body(failure.status, reason, message, details)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if not isinstance(exc, kmock.KubernetesError):
            return await super()._render_error(exc)  # a harness bug: kmock's 500 with the traceback
        # kmock's own errors carry reasons such as "Object Not Found"; the API server's are single CamelCase words.
        reason = exc.reason if exc.reason and " " not in exc.reason else _REASONS.get(exc.status, "Unknown")
        details = exc.details if isinstance(exc.details, dict) else {}
        body = _status_body(exc.status, reason, exc.message or reason, details)
        return aiohttp.web.json_response(body, status=exc.status)

    async def _check_exists(self, request: kmock.Request, rtype: ResourceType) -> None:
        """Answer a missing object with the API server's 404 message rather than kmock's."""
        assert request.name is not None
        async with self._lock:
            found = self.stored(rtype, request.namespace, request.name) is not None
        if not found:
            raise self._not_found(rtype, request.name)

    @staticmethod
    def _not_found(rtype: ResourceType, name: str) -> Exception:
        qualified = f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural
        details = {"name": name, "group": rtype.group, "kind": rtype.plural}
        return _api_error(404, f'{qualified} "{name}" not found', details=details)

    @staticmethod
    def _conflict(rtype: ResourceType, name: str) -> Exception:
        message = (
            f'Operation cannot be fulfilled on {rtype.plural} "{name}": the object has been modified; '
            "please apply your changes to the latest version and try again"
        )
        return _api_error(409, message, reason="Conflict", details={"name": name, "kind": rtype.plural})

    async def _prepare_create(self, request: kmock.Request, rtype: ResourceType) -> None:
        data = request.data
        if not isinstance(data, dict):
            raise _api_error(400, "the body of the request was not a JSON object")
        if not isinstance(data.get("metadata"), dict):
            data["metadata"] = {}
        meta = data["metadata"]
        namespace = request.namespace
        if rtype.namespaced:
            if namespace is None:
                raise _api_error(404, "the server could not find the requested resource")
            if meta.get("namespace") not in (None, "", namespace):
                raise _api_error(
                    400, "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        name = meta.get("name")
        if not name:
            raise _api_error(422, f"{rtype.kind} is invalid: metadata.name: Required value: name or generateName")
        async with self._lock:
            if self.stored(rtype, namespace, name) is not None:
                qualified = f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural
                raise _api_error(
                    409,
                    f'{qualified} "{name}" already exists',
                    details={"name": name, "group": rtype.group, "kind": rtype.plural},
                )
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = rfc3339()
            meta["resourceVersion"] = self.next_rv()
            meta["generation"] = 1
            data.setdefault("apiVersion", rtype.api_version)
            data.setdefault("kind", rtype.kind)
            if rtype.plural == "pytorchjobs" and isinstance(data.get("spec"), dict):
                run_policy = data["spec"].setdefault("runPolicy", {})
                if isinstance(run_policy, dict):
                    run_policy.setdefault("cleanPodPolicy", "None")

    async def _patch(self, request: kmock.Request, rtype: ResourceType) -> aiohttp.web.StreamResponse:
        """PATCH: a JSON patch (a list) or a merge patch (strategic merge patches are treated as merge patches)."""
        assert request.name is not None
        data = request.data
        async with self._lock:
            obj = self.stored(rtype, request.namespace, request.name)
            if obj is None:
                raise self._not_found(rtype, request.name)
            old = copy.deepcopy(obj.raw)
            old_meta = old.get("metadata") or {}
            if isinstance(data, list):
                try:
                    new = jsonpatch.apply_patch(old, data)
                except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                    raise _api_error(422, f"the JSON patch could not be applied: {exc}") from exc
            elif isinstance(data, dict):
                wanted = (data.get("metadata") or {}).get("resourceVersion")
                if wanted and wanted != old_meta.get("resourceVersion"):
                    raise self._conflict(rtype, request.name)
                if request.subresource == "status":  # the status endpoint changes nothing else
                    data = {"status": data["status"]} if "status" in data else {}
                new = _merge(old, data)
            else:
                raise _api_error(415, "only JSON patches and merge patches are emulated (no server-side apply)")
            meta = new.setdefault("metadata", {})
            for key in ("name", "namespace", "uid", "creationTimestamp"):
                if key in old_meta:
                    meta[key] = old_meta[key]
                else:
                    meta.pop(key, None)
            if new.get("spec") != old.get("spec"):
                meta["generation"] = int(old_meta.get("generation") or 0) + 1
            meta["resourceVersion"] = self.next_rv()
            self.write(rtype, request.namespace, request.name, new)
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                obj.delete()  # the last finalizer is gone: the object goes, as kmock does for its own patches
                await self.publish(rtype, "DELETED", new)
            else:
                await self.publish(rtype, "MODIFIED", new)
        return aiohttp.web.json_response(new)

    async def _replace(self, request: kmock.Request, rtype: ResourceType) -> aiohttp.web.StreamResponse:
        assert request.name is not None
        data = request.data
        if not isinstance(data, dict):
            raise _api_error(400, "the body of the request was not a JSON object")
        async with self._lock:
            obj = self.stored(rtype, request.namespace, request.name)
            if obj is None:
                raise self._not_found(rtype, request.name)
            old = copy.deepcopy(obj.raw)
            old_meta = old.get("metadata") or {}
            wanted = (data.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != old_meta.get("resourceVersion"):
                raise self._conflict(rtype, request.name)
            if request.subresource == "status":
                new = old
                new["status"] = copy.deepcopy(data.get("status"))
            else:
                new = copy.deepcopy(data)
                if new.get("metadata", {}).get("name") not in (None, request.name):
                    raise _api_error(400, "the name of the object does not match the name on the URL")
                new.setdefault("apiVersion", rtype.api_version)
                new.setdefault("kind", rtype.kind)
                meta = new.setdefault("metadata", {})
                for key in ("name", "namespace", "uid", "creationTimestamp", "generation"):
                    if key in old_meta:
                        meta[key] = old_meta[key]
                if new.get("spec") != old.get("spec"):
                    meta["generation"] = int(old_meta.get("generation") or 0) + 1
            new["metadata"]["resourceVersion"] = self.next_rv()
            self.write(rtype, request.namespace, request.name, new)
            await self.publish(rtype, "MODIFIED", new)
        return aiohttp.web.json_response(new)

    async def _serve_log(self, request: kmock.Request, rtype: ResourceType) -> aiohttp.web.StreamResponse:
        assert request.name is not None and request.namespace is not None
        async with self._lock:
            pod = self.stored(rtype, request.namespace, request.name)
            raw = copy.deepcopy(pod.raw) if pod is not None else None
        if raw is None:
            raise _api_error(404, f'pods "{request.name}" not found', details={"name": request.name, "kind": "pods"})
        spec = raw.get("spec") or {}
        containers = [c.get("name") for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])]
        container = request.params.get("container", "")
        if not container and len(containers) == 1:
            container = containers[0]
        elif not container and containers:
            raise _api_error(
                400, f"a container name must be specified for pod {request.name}, choose one of: {containers}"
            )
        elif containers and container not in containers:
            raise _api_error(400, f"container {container} is not valid for pod {request.name}")
        text = self.logs.get((request.namespace, request.name, container), "")
        tail = request.params.get("tailLines")
        if tail is not None and tail.isdigit():
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(tail) :]) if int(tail) else ""
        return aiohttp.web.Response(text=text, content_type="text/plain")

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        try:
            _selected({}, request.params)
        except ValueError as exc:
            raise _api_error(400, str(exc)) from exc
        result = await super()._serve_list(request)
        assert isinstance(result, dict) and request.resource is not None
        items = [item for item in result["items"] if _selected(item, request.params)]
        items.sort(key=lambda item: ((item.get("metadata") or {}).get("namespace") or "", item["metadata"]["name"]))
        resource = request.resource
        rtype = self.types.get((resource.group or "", resource.version or "", resource.plural or ""))
        kind = f"{rtype.kind}List" if rtype else "List"
        api_version = rtype.api_version if rtype else "v1"
        return {"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": ""}, "items": items}

    async def _serve_watch(self, request: kmock.Request) -> Any:
        try:
            _selected({}, request.params)
            timeout = float(request.params.get("timeoutSeconds") or 0)
        except ValueError as exc:
            raise _api_error(400, str(exc)) from exc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout > 0 else None
        stream = aiter(super()._serve_watch(request))
        closing = asyncio.ensure_future(self.closing.wait())
        pending: asyncio.Future[Any] | None = None
        try:
            while True:
                pending = asyncio.ensure_future(anext(stream))
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait({pending, closing}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if pending not in done:
                    return  # timeoutSeconds passed or the emulator is stopping
                try:
                    item = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                event_object = item.get("object") if isinstance(item, Mapping) else None
                if isinstance(event_object, Mapping) and not _selected(event_object, request.params):
                    continue
                yield item
        finally:
            for future in (pending, closing):
                if future is not None and not future.done():
                    future.cancel()
            await asyncio.gather(*(f for f in (pending, closing) if f is not None), return_exceptions=True)
            with contextlib.suppress(RuntimeError):
                await stream.aclose()


# --- The synchronous harness -------------------------------------------------------------------------------------


class KubeEmulator:
    """A Kubernetes API server on 127.0.0.1 (kmock on a background event loop) plus a thread-safe controller API.

    `trainer_version` seeds the ConfigMap `kubeflow-system/kubeflow-trainer-public` that `TrainerClient` reads on
    start-up; None leaves it out.
    """

    def __init__(
        self,
        *,
        trainer_version: str | None = "v2.1.0",
        resources: Iterable[ResourceType] = DEFAULT_RESOURCES,
        start_timeout: float = 10.0,
    ) -> None:
        self._handler = _Handler(resources)
        self._trainer_version = trainer_version
        self._start_timeout = start_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._port: int | None = None
        self._startup_error: BaseException | None = None
        self._internal_errors: list[Exception] = []

    # -- lifecycle --

    def start(self) -> Self:
        """Start the server thread and wait until it listens."""
        if self._thread is not None:
            raise RuntimeError("KubeEmulator is already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._thread.start()
        if not self._started.wait(self._start_timeout):
            raise TimeoutError("the Kubernetes emulator did not start")
        if self._startup_error is not None:
            raise RuntimeError("the Kubernetes emulator failed to start") from self._startup_error
        if self._trainer_version is not None:
            self.put(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "kubeflow-trainer-public", "namespace": "kubeflow-system"},
                    "data": {"kubeflow_trainer_version": self._trainer_version},
                }
            )
        return self

    def stop(self) -> None:
        """Stop the server (ending open watches) and raise if the handler itself failed on any request."""
        if self._thread is None or self._loop is None:
            return
        loop, stop = self._loop, self._stop
        if stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._handler.closing.set)
            loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout=30)
        self._thread = None
        if self._internal_errors:
            errors = self._internal_errors
            self._internal_errors = []
            raise ExceptionGroup("the Kubernetes emulator failed while serving requests", errors)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.stop()
        else:
            with contextlib.suppress(Exception):  # the test's own failure matters more
                self.stop()

    def _run(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        try:
            self._stop = asyncio.Event()
            async with self._handler, kmock.Server(self._handler, host="127.0.0.1") as server:
                self._port = server.port
                self._started.set()
                await self._stop.wait()
                self._internal_errors = [e for e in self._handler.errors if not isinstance(e, kmock.KubernetesError)]
        except BaseException as exc:
            if not self._started.is_set():
                self._startup_error = exc
                self._started.set()
                return
            raise

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        if self._loop is None or self._thread is None:
            coro.close()
            raise RuntimeError("KubeEmulator is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- connection --

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise RuntimeError("KubeEmulator is not started")
        return self._port

    @property
    def url(self) -> str:
        """The server's base URL, `http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self.port}"

    def configuration(self) -> k8s_client.Configuration:
        """A fresh `kubernetes.client.Configuration` pointing at the emulator (no auth, no TLS)."""
        configuration = k8s_client.Configuration(host=self.url)
        configuration.verify_ssl = False
        return configuration

    def api_client(self) -> k8s_client.ApiClient:
        """A `kubernetes.client.ApiClient` on `configuration()`."""
        return k8s_client.ApiClient(self.configuration())

    # -- resources --

    def register(
        self, api_version: str, plural: str, kind: str, *, namespaced: bool = True, subresources: Sequence[str] = ()
    ) -> ResourceType:
        """Serve one more resource, e.g. `register("jobset.x-k8s.io/v1alpha2", "jobsets", "JobSet")`."""
        group, _, version = api_version.rpartition("/")
        rtype = ResourceType(group, version, plural, kind, namespaced, tuple(subresources))
        self._handler.add_type(rtype)
        return rtype

    def _type(self, plural: str) -> ResourceType:
        try:
            return self._handler.plurals[plural]
        except KeyError:
            raise KeyError(f"resource {plural!r} is not served; see KubeEmulator.register") from None

    # -- scripting and counting --

    def fail_next(
        self,
        method: str,
        plural: str,
        status: int,
        count: int = 1,
        *,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next `count` requests `method` on `plural` with `status` and a Kubernetes Status body.

        `plural` is the resource's plural, with the subresource for subresource calls (`"pods/log"`,
        `"pytorchjobs/status"`). A failed request changes nothing: a create is not stored, an existing object is left
        as it was. Scripts queue up in order; requests that no script matches are served normally.
        """
        failure = _Failure(method.upper(), plural, status, count, reason, message)
        with self._handler.script_lock:
            self._handler.failures.append(failure)

    def requests(self, method: str, plural: str) -> int:
        """How many requests `method` on `plural` (as in `fail_next`) arrived, scripted failures included."""
        with self._handler.script_lock:
            return self._handler.counts[(method.upper(), plural)]

    def request_log(self) -> list[tuple[str, str]]:
        """Every request so far as (method, path with the query string exactly as the client sent it)."""
        with self._handler.script_lock:
            return list(self._handler.log)

    # -- the fake controller's view of the cluster --

    def get(self, plural: str, namespace: str | None, name: str) -> JSON | None:
        """A copy of the stored object, or None."""
        rtype = self._type(plural)

        async def read() -> JSON | None:
            async with self._handler._lock:
                obj = self._handler.stored(rtype, namespace, name)
                return copy.deepcopy(obj.raw) if obj is not None else None

        return self._call(read())

    def list_objects(self, plural: str, namespace: str | None = None, label_selector: str = "") -> list[JSON]:
        """Copies of the stored objects of a resource (all namespaces when `namespace` is None)."""
        rtype = self._type(plural)

        async def read() -> list[JSON]:
            async with self._handler._lock:
                return [
                    copy.deepcopy(obj.raw)
                    for (resource, ns, _), obj in self._handler._objects.items()
                    if resource == rtype.resource and not obj.deleted and namespace in (None, ns)
                ]

        items = self._call(read())
        return [item for item in items if matches_label_selector(label_selector, item["metadata"].get("labels"))]

    def put(self, obj: Mapping[str, Any]) -> JSON:
        """Create or replace any object (found by `apiVersion` + `kind`) and return what is stored.

        Namespaced objects without `metadata.namespace` go to `default`. A replaced object keeps its uid and
        creationTimestamp unless `obj` sets them; the resourceVersion is always new. Watches see ADDED or MODIFIED.
        """
        key = (str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        rtype = self._handler.kinds.get(key)
        if rtype is None:
            raise KeyError(f"no served resource has apiVersion/kind {key}; see KubeEmulator.register")
        new = copy.deepcopy(dict(obj))
        meta = new.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise ValueError("put() needs metadata.name")
        namespace = (meta.get("namespace") or "default") if rtype.namespaced else None
        if namespace is None:
            meta.pop("namespace", None)
        else:
            meta["namespace"] = namespace
        handler = self._handler

        async def write() -> JSON:
            async with handler._lock:
                old = handler.stored(rtype, namespace, name)
                old_meta = (old.raw.get("metadata") or {}) if old is not None else {}
                meta.setdefault("uid", old_meta.get("uid") or str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", old_meta.get("creationTimestamp") or rfc3339())
                meta.setdefault("generation", old_meta.get("generation") or 1)
                meta["resourceVersion"] = handler.next_rv()
                handler.write(rtype, namespace, name, new)
                await handler.publish(rtype, "ADDED" if old is None else "MODIFIED", new)
            handler.notify()
            return copy.deepcopy(new)

        return self._call(write())

    def delete(self, plural: str, namespace: str | None, name: str) -> bool:
        """Delete an object at once (finalizers ignored); False if there was none."""
        rtype = self._type(plural)
        handler = self._handler

        async def remove() -> bool:
            async with handler._lock:
                obj = handler.stored(rtype, namespace, name)
                if obj is None:
                    return False
                raw = copy.deepcopy(obj.raw)
                obj.delete()
                await handler.publish(rtype, "DELETED", raw)
            handler.notify()
            return True

        return self._call(remove())

    def set_status(self, plural: str, namespace: str | None, name: str, status: Mapping[str, Any]) -> JSON:
        """Merge `status` into the object's `.status` (JSON merge patch: lists replace, None removes a key)."""
        rtype = self._type(plural)
        handler = self._handler

        async def patch() -> JSON:
            async with handler._lock:
                obj = handler.stored(rtype, namespace, name)
                if obj is None:
                    raise KeyError(f"{plural} {namespace}/{name} does not exist")
                new = copy.deepcopy(obj.raw)
                new["status"] = _merge(new.get("status"), dict(status))
                new.setdefault("metadata", {})["resourceVersion"] = handler.next_rv()
                handler.write(rtype, namespace, name, new)
                await handler.publish(rtype, "MODIFIED", new)
            handler.notify()
            return copy.deepcopy(new)

        return self._call(patch())

    def set_pod_log(self, namespace: str, pod: str, container: str, text: str) -> None:
        """The text `GET .../pods/{pod}/log?container={container}` returns (the pod itself must exist to be read)."""
        handler = self._handler

        async def write() -> None:
            handler.logs[(namespace, pod, container)] = text

        self._call(write())

    def add_event(
        self,
        namespace: str,
        involved_kind: str,
        involved_name: str,
        reason: str,
        message: str,
        type: str = "Warning",
    ) -> JSON:
        """Record a core/v1 Event about an object, timestamped now (both SDKs filter events by these times)."""
        now = rfc3339()
        involved: JSON = {"kind": involved_kind, "name": involved_name, "namespace": namespace}
        for rtype in self._handler.kinds.values():
            if rtype.kind == involved_kind:
                involved["apiVersion"] = rtype.api_version
                target = self.get(rtype.plural, namespace if rtype.namespaced else None, involved_name)
                if target is not None:
                    involved["uid"] = target["metadata"].get("uid")
                break
        return self.put(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{involved_name}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
                "involvedObject": involved,
                "reason": reason,
                "message": message,
                "type": type,
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "source": {"component": "kube-emulator"},
                "reportingComponent": "kube-emulator",
            }
        )

    def wait_for(
        self,
        plural: str,
        namespace: str | None,
        name: str,
        predicate: Callable[[JSON], bool] | None = None,
        timeout: float = 10.0,
    ) -> JSON:
        """Block until the object exists (and satisfies `predicate`) and return it; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        changed = self._handler.changed
        while True:
            with changed:
                seen = self._handler.changes
            obj = self.get(plural, namespace, name)
            if obj is not None and (predicate is None or predicate(obj)):
                return obj
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{plural} {namespace}/{name} did not appear or reach the expected state")
            with changed:
                changed.wait_for(lambda seen=seen: self._handler.changes != seen, timeout=remaining)


# Registered as `kube`; the function has another name so that a test module importing it (`from tests.kube_emulator
# import kube_fixture`, with a noqa for F401) does not get F811 from every `kube` parameter shadowing the import.
@pytest.fixture(name="kube")
def kube_fixture() -> Iterator[KubeEmulator]:
    """The `kube` fixture: a started KubeEmulator, stopped after the test (failing it if the emulator broke)."""
    with KubeEmulator() as emulator:
        yield emulator


# --- A scripted controller ---------------------------------------------------------------------------------------


class FakeController:
    """Plays a timeline against the emulator in a background thread, as a controller would.

    It waits for the object `plural`/`namespace`/`name` to be created (by the code under test), then for each
    `(delay_seconds, step)` sleeps `delay_seconds` (counted from the previous step) and calls `step(kube)`.
    Use it as a context manager, or `start()` and `join()`; an exception in a step, or the object never appearing,
    is raised again by `join()` / on exit.
    """

    def __init__(
        self,
        kube: KubeEmulator,
        plural: str,
        namespace: str | None,
        name: str,
        steps: Iterable[tuple[float, Step]],
        *,
        appear_timeout: float = 10.0,
    ) -> None:
        self.kube = kube
        self.plural = plural
        self.namespace = namespace
        self.name = name
        self.steps = list(steps)
        self.appear_timeout = appear_timeout
        self.applied = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"fake-controller-{name}", daemon=True)

    def start(self) -> Self:
        """Start playing the timeline."""
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.kube.wait_for(self.plural, self.namespace, self.name, timeout=self.appear_timeout)
            for delay, step in self.steps:
                if self._stop.wait(delay):
                    return
                step(self.kube)
                self.applied += 1
        except BaseException as exc:
            self._error = exc

    @property
    def done(self) -> bool:
        """Whether every step has been applied."""
        return self.applied == len(self.steps)

    def stop(self) -> None:
        """Skip the steps not yet applied."""
        self._stop.set()

    def join(self, timeout: float = 10.0) -> None:
        """Wait for the timeline to finish; re-raise a step's exception."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"FakeController for {self.name} still running after {timeout} s")
        if self._error is not None:
            raise self._error

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self.stop()
            self._thread.join(5)
            return
        self.join()


# --- Objects as the controllers would create them ----------------------------------------------------------------


def pod(
    name: str,
    namespace: str = "default",
    *,
    labels: Mapping[str, str] | None = None,
    containers: Sequence[str] = ("main",),
    phase: str = "Running",
    image: str = "busybox",
    limits: Mapping[str, str] | None = None,
) -> JSON:
    """A minimal valid Pod (the clients reject pods without containers) in `phase`."""
    container_list: list[JSON] = []
    for container in containers:
        entry: JSON = {"name": container, "image": image}
        if limits:
            entry["resources"] = {"limits": dict(limits), "requests": dict(limits)}
        container_list.append(entry)
    status: JSON = {"phase": phase}
    if phase != "Pending":
        status["startTime"] = rfc3339()
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": {"containers": container_list, "restartPolicy": "Never"},
        "status": status,
    }


def pytorchjob_pod(
    job: str, replica_type: str, index: int = 0, *, namespace: str = "default", phase: str = "Running"
) -> JSON:
    """A pod as the Training Operator makes it for a PyTorchJob replica: `{job}-{type}-{index}`, container `pytorch`.

    Labels: `training.kubeflow.org/job-name`, `.../replica-type` (lower case), `.../replica-index`,
    `.../operator-name`, and `.../job-role: master` on the Master replica.
    """
    labels = {
        "training.kubeflow.org/job-name": job,
        "training.kubeflow.org/operator-name": "pytorchjob-controller",
        "training.kubeflow.org/replica-type": replica_type.lower(),
        "training.kubeflow.org/replica-index": str(index),
    }
    if replica_type.lower() == "master":
        labels["training.kubeflow.org/job-role"] = "master"
    return pod(f"{job}-{replica_type.lower()}-{index}", namespace, labels=labels, containers=("pytorch",), phase=phase)


def trainjob_pod(
    trainjob: str,
    step: str = "node",
    index: int = 0,
    *,
    namespace: str = "default",
    phase: str = "Running",
    limits: Mapping[str, str] | None = None,
) -> JSON:
    """A pod as JobSet makes it for a TrainJob step (`node`, `dataset-initializer`, `model-initializer`, `launcher`).

    Named `{trainjob}-{step}-0-{index}` (the real name ends in a random suffix), with the container named after the
    step and the labels the Trainer SDK selects on: `jobset.sigs.k8s.io/jobset-name`,
    `jobset.sigs.k8s.io/replicatedjob-name`, `batch.kubernetes.io/job-completion-index`.
    """
    labels = {
        "jobset.sigs.k8s.io/jobset-name": trainjob,
        "jobset.sigs.k8s.io/replicatedjob-name": step,
        "jobset.sigs.k8s.io/job-index": "0",
        "batch.kubernetes.io/job-completion-index": str(index),
    }
    if step == "node":
        labels["trainer.kubeflow.org/trainjob-ancestor-step"] = "trainer"
    return pod(f"{trainjob}-{step}-0-{index}", namespace, labels=labels, containers=(step,), phase=phase, limits=limits)


def torch_runtime(
    name: str = "torch-distributed",
    *,
    image: str = "pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime",
    num_nodes: int = 1,
    namespace: str | None = None,
    limits: Mapping[str, str] | None = None,
) -> JSON:
    """A torch runtime the Trainer SDK accepts: a ClusterTrainingRuntime, or a TrainingRuntime in `namespace`.

    The SDK needs the `trainer.kubeflow.org/framework` label, `spec.mlPolicy`, and a replicated job whose template
    carries `trainer.kubeflow.org/trainjob-ancestor-step` and a container named `node` with an image.
    """
    container: JSON = {"name": "node", "image": image}
    if limits:
        container["resources"] = {"limits": dict(limits)}
    metadata: JSON = {"name": name, "labels": {"trainer.kubeflow.org/framework": "torch"}}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainingRuntime" if namespace is not None else "ClusterTrainingRuntime",
        "metadata": metadata,
        "spec": {
            "mlPolicy": {"numNodes": num_nodes, "torch": {}},
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": "node",
                            "replicas": 1,
                            "template": {
                                "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                                "spec": {"template": {"spec": {"containers": [container]}}},
                            },
                        }
                    ]
                }
            },
        },
    }
