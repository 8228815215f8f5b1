"""The one batched generator: chat conversations in, replies out, for every in-process use of a model.

The synthesis roles (`llm/local.py`), evaluation and the serving predictor all generate through
`Generator`, so they agree on the chat template, padding, stopping and — the point of having one —
on prompts that do not fit: a prompt whose tokens plus `max_new_tokens` exceed the model's context
is refused with `PromptTooLong` (what an OpenAI-compatible server answers with HTTP 400), never
silently cut. Callers fit their prompts with `fit_text`/`count_tokens` first.

Generation is left-padded and batched; temperature 0 is greedy and deterministic; sampling is
seeded from the request, so the same batch gives the same replies. Given a JSON schema
(`GenerationSettings.json_schema`), decoding is constrained to it (`models/constrain.py`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class GenerationSettings:
    """How one batch is generated."""

    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = 0
    json_schema: str | None = None  # JSON Schema text: every reply is JSON valid for it (models/constrain.py)


@dataclass
class Generated:
    """One reply and its token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int


class PromptTooLong(ValueError):
    """The prompt and the reply it may grow to do not fit in the model's context."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context: int) -> None:
        super().__init__(
            f"prompt of {prompt_tokens} tokens + max_tokens {max_new_tokens} exceeds the model's context of "
            f"{context} tokens"
        )
        self.prompt_tokens, self.max_new_tokens, self.context = prompt_tokens, max_new_tokens, context


class Generator:
    """A loaded causal LM and its tokenizer, generating replies to chat conversations in batches."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.context = int(getattr(model.config, "max_position_embeddings", 2048))
        self.device = next(model.parameters()).device
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._constraints: Any = None

    def prompt_ids(self, messages: Messages) -> list[int]:
        """The chat template applied to `messages`, ready for the assistant's reply, as token ids."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` on its own (no special tokens)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def fit_text(self, text: str, max_tokens: int) -> tuple[str, bool]:
        """`text` cut (at a token boundary) to at most `max_tokens` tokens; and whether it was cut."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_tokens:
            return text, False
        return self.tokenizer.decode(ids[: max(0, max_tokens)], skip_special_tokens=True), True

    def _schema_processor(self, schema: str, batch: int) -> Any:
        if self._constraints is None:
            from deepmoney.models.constrain import SchemaConstraints

            vocab = int(getattr(self.model.config, "vocab_size", 0) or len(self.tokenizer))
            self._constraints = SchemaConstraints(self.tokenizer, vocab)
        return self._constraints.processor(schema, batch)

    def generate(self, conversations: Sequence[Messages], settings: GenerationSettings
                 ) -> list[Generated | PromptTooLong]:  # fmt: skip
        """Replies to `conversations`, in order, in one batch; a prompt that does not fit gets PromptTooLong."""
        import torch

        prompts = [self.prompt_ids(m) for m in conversations]
        results: list[Generated | PromptTooLong | None] = [None] * len(prompts)
        fitting = []
        for i, ids in enumerate(prompts):
            if len(ids) + settings.max_new_tokens > self.context:
                results[i] = PromptTooLong(len(ids), settings.max_new_tokens, self.context)
            else:
                fitting.append(i)
        if fitting:
            tok = self.tokenizer
            width = max(len(prompts[i]) for i in fitting)
            pad = tok.pad_token_id
            ids = torch.full((len(fitting), width), pad, dtype=torch.long)
            mask = torch.zeros((len(fitting), width), dtype=torch.long)
            for row, i in enumerate(fitting):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "pad_token_id": pad,
                                      "eos_token_id": tok.eos_token_id}  # fmt: skip
            if settings.temperature > 0:
                seed = settings.seed if settings.seed is not None else 0
                digest = hashlib.sha256(repr((seed, [prompts[i] for i in fitting])).encode()).hexdigest()
                torch.manual_seed(int(digest[:8], 16))
                kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
            else:
                kwargs["do_sample"] = False
            if settings.json_schema is not None:
                kwargs["logits_processor"] = [self._schema_processor(settings.json_schema, len(fitting))]
            with torch.no_grad():
                output = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                             **kwargs)  # fmt: skip
            for row, i in enumerate(fitting):
                new = output[row, width:].tolist()
                if tok.eos_token_id in new:
                    new = new[: new.index(tok.eos_token_id)]
                while new and new[-1] == pad:
                    new.pop()
                results[i] = Generated(tok.decode(new, skip_special_tokens=True), len(prompts[i]), len(new))
        return [r for r in results if r is not None]
