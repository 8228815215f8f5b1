"""Kubernetes naming rules, the project image and YAML output shared by everything that renders objects.

Pure helpers, no client: the serving objects (`deepmoney.serving.manifests`) and the training jobs
(`deepmoney.launch`) are both plain dicts checked with these rules before anything is printed or
submitted.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from deepmoney import __version__
from deepmoney.errors import UserError

IMAGE_REPOSITORY = "ghcr.io/deepmoney/deepmoney"
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # RFC 1035 label: also a valid Service name
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def default_image() -> str:
    """The project image of this version (a pinned tag, never `latest`)."""
    return f"{IMAGE_REPOSITORY}:{__version__.replace('+', '-')}"


def check_label(value: str, what: str, max_len: int = 63) -> str:
    """`value` when it is a DNS label of at most `max_len` characters; else a UserError naming `what`."""
    if not value or len(value) > max_len or not DNS_LABEL.match(value):
        raise UserError(
            f"{what} {value!r}: must be lower-case letters, digits and '-', start with a letter, "
            f"at most {max_len} characters"
        )
    return value


def check_namespace(namespace: str | None) -> None:
    """A UserError unless `namespace` is unset or a DNS-1123 label."""
    if namespace is not None and (len(namespace) > 63 or not DNS_LABEL.match(namespace)):
        raise UserError(f"namespace {namespace!r}: must be a DNS-1123 label (lower-case letters, digits and '-')")


def check_subdomain(value: str, what: str) -> str:
    """`value` when it is a DNS-1123 subdomain (the names of Secrets, PVCs, ConfigMaps); else a UserError."""
    if not value or len(value) > 253 or not DNS_SUBDOMAIN.match(value):
        raise UserError(f"{what} {value!r}: not a valid Kubernetes name (lower-case letters, digits, '-' and '.')")
    return value


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings (a ConfigMap's file) as literal blocks, readable in a review."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not any(c in value for c in "\t\r") and value == value.rstrip(" ") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """Multi-document YAML, fields in the order they were built."""
    return "---\n".join(yaml.dump(obj, Dumper=_Dumper, sort_keys=False, allow_unicode=True) for obj in objects)
