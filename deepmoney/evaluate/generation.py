"""The model under evaluation as a function: chat messages in, greedy answers out; choices scored.

Generation goes through the one generator (`deepmoney.models.generate`), batched with prompts
sorted by length so a batch pads little, and greedy, so an evaluation is deterministic for a given
model and input; a prompt that does not fit the model's context is refused, counted and scored as
an empty reply, never cut silently. Replies are committed to a request cache batch by batch: an
evaluation that is killed (or run again) does not generate them twice. Choice scoring sums the
log-probabilities of each choice's tokens after the prompt, the usual way to score multiple-choice
and classification benchmarks without parsing free text.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from tqdm.auto import tqdm

from deepmoney.llm.cache import RequestCache, request_key
from deepmoney.models.generate import GenerationSettings, Generator, PromptTooLong

log = logging.getLogger(__name__)


class ModelUnderTest:
    """A loaded causal LM and its tokenizer, with batched greedy chat and choice scoring."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int, max_new_tokens: int, quiet: bool = False,
                 cache: RequestCache | None = None, model_id: str = "") -> None:  # fmt: skip
        self.generator = Generator(model, tokenizer)
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_new_tokens, self.quiet = batch_size, max_new_tokens, quiet
        self.cache, self.model_id = cache, model_id
        self.from_cache = 0
        self.too_long = 0  # prompts refused because they do not fit the model's context
        self.device = self.generator.device
        self.positions = self.generator.context

    def chat(self, conversations: list[list[dict[str, str]]], desc: str = "generate") -> list[str]:
        """Greedy replies to each conversation, in order; a prompt that does not fit the context gets ""."""
        keys = [request_key("evaluate", self.model_id, c, {"max_new_tokens": self.max_new_tokens, "greedy": True})
                for c in conversations]  # fmt: skip
        replies: list[str] = [""] * len(conversations)
        todo = []
        for i, key in enumerate(keys):
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is None:
                todo.append(i)
            else:
                replies[i] = hit["text"]
                self.from_cache += 1
        lengths = {i: len(self.generator.prompt_ids(conversations[i])) for i in todo}
        order = sorted(todo, key=lengths.__getitem__)  # similar lengths together: little padding
        settings = GenerationSettings(max_new_tokens=self.max_new_tokens)
        for start in tqdm(range(0, len(order), self.batch_size), desc=desc, unit="batch", disable=self.quiet):
            rows = order[start : start + self.batch_size]
            for i, result in zip(rows, self.generator.generate([conversations[i] for i in rows], settings),
                                 strict=True):  # fmt: skip
                if isinstance(result, PromptTooLong):
                    self.too_long += 1
                    log.warning("%s: a prompt does not fit the model (%s); its reply counts as empty", desc, result)
                    continue
                replies[i] = result.text.strip()
                if self.cache is not None:
                    self.cache.put(keys[i], {"text": replies[i]})
        return replies

    @torch.no_grad()
    def choice_logprobs(self, prompt: str, choices: tuple[str, ...]) -> list[float]:
        """log P(choice | prompt) for each choice, summed over the choice's tokens (a space joins them)."""
        context = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        answers = [self.tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in choices]
        rows = [(context + a)[-self.positions :] for a in answers]  # a long prompt loses its start
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
        logprobs = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        scores = []
        for r, (row, answer) in enumerate(zip(rows, answers, strict=True)):
            first = max(1, len(row) - len(answer))  # the answer's first token, predicted from position first - 1
            targets = torch.tensor(row[first:], device=self.device)
            scores.append(float(logprobs[r, first - 1 : len(row) - 1].gather(1, targets[:, None]).sum()))
        return scores
