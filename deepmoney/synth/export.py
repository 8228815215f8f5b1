"""The synthesized dataset in the layouts LLaMA-Factory loads unchanged: alpaca and sharegpt JSONL,
plus the `dataset_info.json` entries (`deepmoney_alpaca`, `deepmoney_sharegpt`) that describe them."""

from __future__ import annotations

from typing import Any

ALPACA_FILE = "alpaca.jsonl"
SHAREGPT_FILE = "sharegpt.jsonl"

DATASET_INFO: dict[str, Any] = {
    "deepmoney_alpaca": {
        "file_name": ALPACA_FILE,
        "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"},
    },
    "deepmoney_sharegpt": {
        "file_name": SHAREGPT_FILE,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "system"},
        "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
    },
}


def instruction(question: str, assets: list[str], language: str | None) -> str:
    """The question with the report's underlying assets written into it, as the recipe does."""
    if not assets:
        return question
    if language == "zh":
        return f"标的：{'、'.join(assets)}\n{question}"
    return f"Underlying assets: {', '.join(assets)}\n{question}"


def alpaca(record: dict[str, Any]) -> dict[str, Any]:
    """One alpaca-layout line."""
    return {"instruction": record["instruction"], "input": "", "output": record["answer"],
            "system": record["system"], "meta": record["meta"]}  # fmt: skip


def sharegpt(record: dict[str, Any]) -> dict[str, Any]:
    """One sharegpt-layout line."""
    return {
        "conversations": [
            {"from": "human", "value": record["instruction"]},
            {"from": "gpt", "value": record["answer"]},
        ],
        "system": record["system"],
        "meta": record["meta"],
    }
