"""Which news goes on to the analysis chain: one rule for the stream filter and the served intake."""

from __future__ import annotations

from deepmoney.config import IntakeConfig


def goes_on(label: str, duplicate: bool, intake: IntakeConfig) -> bool:
    """Whether an item labelled `label` (and a near-duplicate of a kept one, or not) goes on to the chain."""
    return label in intake.forward_labels and (intake.forward_duplicates or not duplicate)
