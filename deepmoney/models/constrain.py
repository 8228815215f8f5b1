"""JSON-schema-constrained decoding for the in-process generator: every reply parses, whatever the model.

At each step the logits of tokens that cannot continue a document valid for the schema are set to
-inf (llguidance's matcher computes the allowed set), so a tiny or random model answers with JSON
as a large one does — what `response_format: {"type": "json_schema", ...}` gives on an
OpenAI-compatible server such as vLLM (whose `guidance` backend is the same library). No free
whitespace between tokens: with bounded lengths in the schema, a reply ends within its budget.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor

COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class SchemaConstraints:
    """Constraints for one tokenizer: the llguidance view of it is built once, each schema's grammar once."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        import llguidance.hf

        self.vocab_size = vocab_size  # the embedding's rows: may exceed the tokenizer's tokens
        self._tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self._grammars: dict[str, str] = {}

    def grammar(self, schema: str) -> str:
        """The grammar of `schema` (JSON Schema text); ValueError, naming the problem, if it cannot be used."""
        from llguidance import LLMatcher

        if schema not in self._grammars:
            try:
                grammar = LLMatcher.grammar_from_json_schema(json.loads(schema), overrides=COMPACT)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"JSON schema not usable for constrained decoding: {exc}") from None
            problem = LLMatcher.validate_grammar(grammar, self._tokenizer)
            if problem and not problem.startswith("WARNING"):
                raise ValueError(f"JSON schema not usable for constrained decoding: {problem}")
            self._grammars[schema] = grammar
        return self._grammars[schema]

    def processor(self, schema: str, batch: int) -> Any:
        """A fresh logits processor for one `generate` call of `batch` rows (it keeps each row's parse state)."""
        return _SchemaLogitsProcessor(self._tokenizer, self.grammar(schema), batch, self.vocab_size)


class _SchemaLogitsProcessor(LogitsProcessor):
    def __init__(self, tokenizer: Any, grammar: str, batch: int, vocab_size: int) -> None:
        from llguidance import LLMatcher
        from llguidance.numpy import allocate_token_bitmask

        self.matchers = [LLMatcher(tokenizer, grammar) for _ in range(batch)]
        self.bitmask = allocate_token_bitmask(batch, vocab_size)
        self.started = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        from llguidance.numpy import fill_next_token_bitmask

        if self.started:  # the previous step's tokens: advance every row still inside its document
            last = input_ids[:, -1].tolist()
            for matcher, token in zip(self.matchers, last, strict=True):
                if not matcher.is_stopped():
                    matcher.consume_token(int(token))
        self.started = True
        for row, matcher in enumerate(self.matchers):
            fill_next_token_bitmask(matcher, self.bitmask, row)  # a finished row may only end (EOS)
        allowed = np.unpackbits(self.bitmask.view(np.uint8), axis=1, bitorder="little")[:, : scores.shape[1]]
        return scores.masked_fill(torch.from_numpy(allowed == 0).to(scores.device), float("-inf"))
