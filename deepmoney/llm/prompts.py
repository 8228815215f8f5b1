"""Prompt templates kept as files (one per role or step and language), filled and digested one way.

Each stage that prompts a model keeps its templates in a `prompts/` folder beside its code and
reads them through a `TemplateSet`; every record a stage writes can then carry the digest of the
exact templates that produced it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from functools import cache
from pathlib import Path


def language_code(language: str | None) -> str:
    """The template language for a document's language: Chinese for "zh", English otherwise."""
    return "zh" if language == "zh" else "en"


def fill(template: str, optional: Collection[str] = (), **fields: object) -> str:
    """Fill `template`'s `{placeholders}`; metadata that is missing shows as "unknown", an empty `optional`
    field as nothing (a section of the prompt that is left out)."""
    values = {k: ("unknown" if v in (None, "") and k not in optional else v or "") for k, v in fields.items()}
    return template.format(**values)


class TemplateSet:
    """The templates `NAME.LANG.txt` in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @cache  # noqa: B019 - a few module-level instances, alive for the whole process
    def template(self, name: str, language: str | None) -> str:
        """The template `name` in `language`."""
        return (self.directory / f"{name}.{language_code(language)}.txt").read_text(encoding="utf-8")

    def render(self, name: str, language: str | None, override: str | None = None, **fields: object) -> str:
        """Fill the template `name` (or the user's `override` of it, with the same placeholders)."""
        return fill(override or self.template(name, language), **fields)

    @cache  # noqa: B019
    def digest(self) -> str:
        """A digest of the template files: changes whenever any of them changes."""
        h = hashlib.sha256()
        for path in sorted(self.directory.glob("*.txt")):
            h.update(path.name.encode() + path.read_bytes())
        return h.hexdigest()[:16]
