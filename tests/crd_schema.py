"""Validate rendered Kubernetes objects against the real upstream CRDs in ../shared/crds (a test helper).

`validate(obj)` finds the CustomResourceDefinition whose group and kind match the object's
`apiVersion` and `kind`, takes the `openAPIV3Schema` of the served version the object names, and
checks the object with jsonschema after adapting the Kubernetes extensions:

- `x-kubernetes-int-or-string` accepts an integer or a string;
- `nullable: true` accepts null as well;
- `x-kubernetes-preserve-unknown-fields` keeps unknown fields allowed where the CRD says so;
- everywhere else, an object schema that lists `properties` (and says nothing of
  `additionalProperties`) rejects unknown fields. The API server would silently prune them
  (structural schemas), which is exactly how a misspelt field name goes unnoticed until a cluster
  misbehaves — here it fails the test instead.

CEL rules (`x-kubernetes-validations`) and `format`s are not evaluated. `metadata` is checked by
hand: a DNS-1123 name is required, the namespace is a DNS-1123 label, labels and annotations map
strings to strings, and no field outside ObjectMeta is allowed.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

CRDS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "crds"
CRDS_PRESENT = CRDS_DIR.is_dir() and any(CRDS_DIR.glob("*.yaml"))
needs_crds = pytest.mark.skipif(not CRDS_PRESENT, reason=f"the upstream CRDs are not at {CRDS_DIR}")

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the big CRDs load in about a second
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_OBJECT_META_FIELDS = {
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "finalizers",
    "ownerReferences",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
}


def validate(obj: dict[str, Any]) -> None:
    """Raise AssertionError naming every place where `obj` breaks its CRD's schema (or its metadata rules)."""
    assert isinstance(obj, dict), f"a Kubernetes object is a mapping, not {type(obj).__name__}"
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    assert isinstance(api_version, str) and "/" in api_version, f"apiVersion must be group/version, got {api_version!r}"
    assert isinstance(kind, str) and kind, f"kind is required, got {kind!r}"
    label = f"{kind} {(obj.get('metadata') or {}).get('name', '<no name>')!s}"
    problems = list(_metadata_problems(obj.get("metadata")))
    group, version = api_version.split("/", 1)
    validator = _validator(group, version, kind)
    for error in sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path]):
        problems.append(f"{_path(error.absolute_path)}: {error.message}")
    assert not problems, f"{label} does not match the {group}/{version} CRD:\n  " + "\n  ".join(problems)


def served_versions(group: str, kind: str) -> list[str]:
    """The versions of `group`'s `kind` that the CRD serves."""
    crd = _load_crd(_crd_index()[(group, kind)])
    return [v["name"] for v in crd["spec"]["versions"] if v.get("served")]


def _metadata_problems(metadata: Any) -> Iterator[str]:
    if not isinstance(metadata, dict):
        yield "metadata: required, a mapping with at least a name"
        return
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        yield "metadata.name: required"
    elif len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        yield f"metadata.name: {name!r} is not a DNS-1123 name (lower-case letters, digits, '-' and '.')"
    namespace = metadata.get("namespace")
    if namespace is not None and (
        not isinstance(namespace, str) or len(namespace) > 63 or not _DNS1123_LABEL.match(namespace)
    ):
        yield f"metadata.namespace: {namespace!r} is not a DNS-1123 label"
    for field in ("labels", "annotations"):
        value = metadata.get(field)
        if value is not None and not (
            isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            yield f"metadata.{field}: must map strings to strings, got {value!r}"
    for field in sorted(set(metadata) - _OBJECT_META_FIELDS):
        yield f"metadata: {field!r} is not an ObjectMeta field"


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


@functools.cache
def _crd_index() -> dict[tuple[str, str], Path]:
    """(group, kind) -> CRD file, read from each file's head only (group and names come before the versions)."""
    index: dict[tuple[str, str], Path] = {}
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        head = []
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.startswith("  versions:"):
                    break
                head.append(line)
        spec = (yaml.load("".join(head), Loader=_LOADER) or {}).get("spec") or {}
        if "group" not in spec or "names" not in spec:  # an unusual layout: read the whole file
            spec = _load_crd(path)["spec"]
        index[(spec["group"], spec["names"]["kind"])] = path
    return index


@functools.cache
def _load_crd(path: Path) -> dict[str, Any]:
    crd = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
    assert crd.get("kind") == "CustomResourceDefinition", f"{path} is not a CustomResourceDefinition"
    return crd


@functools.cache
def _validator(group: str, version: str, kind: str) -> jsonschema.Draft7Validator:
    index = _crd_index()
    assert (group, kind) in index, f"no CRD for {kind} in group {group} under {CRDS_DIR} (have {sorted(index)})"
    crd = _load_crd(index[(group, kind)])
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    entry = versions.get(version)
    assert entry is not None and entry.get("served"), (
        f"{group}/{version} {kind} is not a served version of the CRD (served: {served_versions(group, kind)})"
    )
    schema = _adapt(copy.deepcopy(entry["schema"]["openAPIV3Schema"]))
    schema["properties"]["metadata"] = {"type": "object"}  # checked by _metadata_problems
    # No check_schema: it costs most of a second on the InferenceService CRD, and the schemas are upstream's.
    return jsonschema.Draft7Validator(schema)


def _adapt(schema: Any) -> Any:
    """Turn a Kubernetes structural schema into a strict plain JSON schema, in place."""
    if isinstance(schema, list):
        return [_adapt(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    for key in ("properties", "patternProperties", "definitions"):
        if isinstance(schema.get(key), dict):
            schema[key] = {name: _adapt(sub) for name, sub in schema[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict | list):
            schema[key] = _adapt(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            schema[key] = [_adapt(s) for s in schema[key]]
    if schema.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and isinstance(schema.get("type"), str):
        schema["type"] = [schema["type"], "null"]
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in schema and "additionalProperties" not in schema and not preserve:
        schema["additionalProperties"] = False
    return schema
