"""Held-out synthesized QA: answer the questions asked about held-out documents, score against the answerer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepmoney.errors import UserError
from deepmoney.scoring import mean_scores, score_answer
from deepmoney.synth.export import HELDOUT_FILE


def load_heldout_qa(sft_dir: Path, limit: int) -> list[dict[str, Any]]:
    """The first `limit` held-out questions of a synth output (alpaca layout, with provenance)."""
    path = sft_dir / HELDOUT_FILE
    if not path.is_file():
        raise UserError(
            f"no {HELDOUT_FILE} in {sft_dir}: it was synthesized before held-out splits existed; rerun synth"
        )
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows.append(
                    {
                        "instruction": row["instruction"],
                        "input": row.get("input", ""),
                        "reference": row["output"],
                        "system": row.get("system"),
                        "meta": row.get("meta", {}),
                    }
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise UserError(f"{path}: line {number}: not an alpaca record ({exc})") from None
    return rows


def messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """The chat an sft-trained model saw for this kind of question."""
    user = row["instruction"] + (f"\n{row['input']}" if row["input"] else "")
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return [*system, {"role": "user", "content": user}]


def score_qa(rows: list[dict[str, Any]], chat: Callable[[list[list[dict[str, str]]]], list[str]]
             ) -> tuple[dict[str, float], list[dict[str, Any]]]:  # fmt: skip
    """Answer every question, score each answer; returns the mean scores (qa_*) and the scored rows."""
    if not rows:
        return {}, []
    answers = chat([messages(r) for r in rows])
    scored = []
    for row, answer in zip(rows, answers, strict=True):
        scored.append({"question": row["instruction"], "reference": row["reference"], "answer": answer,
                       **score_answer(answer, row["reference"]), "doc_id": row["meta"].get("doc_id")})  # fmt: skip
    means = mean_scores([{k: r[k] for k in ("rouge_l", "token_f1", "numeric_em")} for r in scored])
    metrics = {f"qa_{k}": float(v) for k, v in means.items() if v is not None}
    metrics["qa_count"] = float(len(scored))
    return metrics, scored
