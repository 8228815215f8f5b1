"""The synthesis roles' prompt templates (files under prompts/, one per role and language) and their version.

Every synthesized record carries PROMPT_VERSION and the digest of the template set, so a dataset
says exactly which prompts produced it.
"""

from __future__ import annotations

from pathlib import Path

from deepmoney.llm.prompts import TemplateSet

PROMPT_VERSION = "2026-11-1"
ROLES = ("questioner", "answerer", "extractor", "repair")
TEMPLATES = TemplateSet(Path(__file__).with_name("prompts"))


def render(role: str, language: str | None, override: str | None = None, **fields: object) -> str:
    """Fill the template of `role` (or the user's `override` of it); missing metadata shows as "unknown"."""
    return TEMPLATES.render(role, language, override, **fields)


def templates_digest() -> str:
    """A digest of every synthesis template file: changes whenever any prompt changes."""
    return TEMPLATES.digest()
