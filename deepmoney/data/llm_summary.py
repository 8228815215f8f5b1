"""The LLM `summarizer` role for the pt corpus's context headers.

The pt build's workers are plain processes, so the requests are made up front: the main process
asks the summarizer about every document concurrently (bounded), and each answer is committed to
the run's request cache as it arrives. Workers then build the same request, look its answer up
in the cache, and fall back to the extractive summary (recorded in documents.jsonl) for a
document whose request failed. A resumed build asks only what is not cached yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path

from tqdm.auto import tqdm

from deepmoney.config import DeepmoneyConfig, RoleConfig
from deepmoney.data.document import Chapter, Document
from deepmoney.data.summarize import ContextSummary, ExtractiveSummarizer, Summarizer
from deepmoney.errors import UserError
from deepmoney.llm.backends import make_backend
from deepmoney.llm.cache import RequestCache, request_key
from deepmoney.llm.client import ChatBackend, LLMRequestError, Sampling
from deepmoney.llm.errors import LLMGaveUp
from deepmoney.llm.prompts import TemplateSet
from deepmoney.llm.roles import Endpoint, parse_endpoint

log = logging.getLogger(__name__)
_DOCUMENT_CHARS = 6000
TEMPLATES = TemplateSet(Path(__file__).with_name("prompts"))


def summarizer_name(config: DeepmoneyConfig) -> str:
    """Which summarizer a config selects (checking its endpoint): part of the pt fingerprint."""
    if config.summarizer is None:
        return ExtractiveSummarizer.name
    return f"llm:{summarizer_endpoint(config.summarizer).label}"


def make_summarizer(config: DeepmoneyConfig, cache_path: Path) -> Summarizer:
    """The configured summarizer: extractive unless the `summarizer` LLM role is set.

    The LLM summarizer reads its answers from the request cache at `cache_path`, which
    `prefetch_summaries` fills first.
    """
    if config.summarizer is None:
        return ExtractiveSummarizer(config.data.summary)
    return LLMSummarizer(config, cache_path)


def summarizer_endpoint(role: RoleConfig) -> Endpoint:
    """The summarizer's endpoint, or a one-line error naming the config field."""
    if not role.endpoint:
        raise UserError("summarizer.endpoint is not set: give local:MODEL_DIR or URL#MODEL, or remove `summarizer`")
    return parse_endpoint("summarizer", role.endpoint)


def _sampling(role: RoleConfig) -> Sampling:
    return Sampling(temperature=role.temperature, top_p=role.top_p, max_tokens=role.max_tokens, seed=role.seed)


def _messages(doc: Document, role: RoleConfig, template: str | None) -> list[dict[str, str]]:
    prompt = TEMPLATES.render("summarizer", doc.language, template, title=doc.title, publisher=doc.publisher,
                    date=doc.date, text=doc.text[:_DOCUMENT_CHARS])  # fmt: skip
    return [{"role": "user", "content": prompt}]


def _template(role: RoleConfig) -> str | None:
    if not role.prompt:
        return None
    try:
        return Path(role.prompt).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"summarizer.prompt: cannot read {role.prompt}: {exc.strerror}") from None


class LLMSummarizer:
    """Context summaries from the summarizer role's answers in the request cache (picklable)."""

    def __init__(self, config: DeepmoneyConfig, cache_path: Path) -> None:
        assert config.summarizer is not None
        self.role = config.summarizer
        self.endpoint = summarizer_endpoint(self.role)
        self.name = f"llm:{self.endpoint.label}"  # the same name summarize.summarizer_name gives
        self.template = _template(self.role)
        self.cache_path = cache_path
        self.fallback = ExtractiveSummarizer(config.data.summary)
        self._cache: RequestCache | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}  # each process opens the database itself

    def key(self, doc: Document) -> str:
        """The request key of `doc`'s summary."""
        messages = _messages(doc, self.role, self.template)
        return request_key("summarizer", self.endpoint.model, messages, _sampling(self.role).key())

    def summarize(self, doc: Document, chapters: list[Chapter]) -> ContextSummary:
        """The extractive header with the summarizer's paragraph as its summary (extractive if missing)."""
        summary = self.fallback.summarize(doc, chapters)
        if self._cache is None:
            self._cache = RequestCache(self.cache_path)
        hit = self._cache.get(self.key(doc))
        if hit and hit["text"].strip():
            summary.summary = " ".join(hit["text"].split())
            summary.source = "llm"
        else:
            summary.source = "extractive (summarizer request failed)"
        return summary


async def _ask_all(backend: ChatBackend, docs: Iterable[Document], summarizer: LLMSummarizer, quiet: bool) -> int:
    sampling = _sampling(summarizer.role)
    failures = 0
    limit = asyncio.Semaphore(summarizer.role.concurrency * 2)  # bounds the documents held in memory

    async def one(doc: Document) -> None:
        nonlocal failures
        try:
            await backend.chat(_messages(doc, summarizer.role, summarizer.template), sampling)
        except (LLMGaveUp, LLMRequestError) as exc:
            failures += 1
            log.warning("summarizer failed for %s: %s; its header keeps the extractive summary", doc.source, exc)
        finally:
            limit.release()

    tasks = []
    with tqdm(desc="summaries", unit="doc", disable=quiet, dynamic_ncols=True) as bar:
        for doc in docs:
            await limit.acquire()
            task = asyncio.create_task(one(doc))
            task.add_done_callback(lambda _: bar.update(1))
            tasks.append(task)
        try:
            await asyncio.gather(*tasks)
        finally:
            await backend.aclose()
    return failures


def prefetch_summaries(docs: Iterable[Document], summarizer: LLMSummarizer, quiet: bool = False) -> int:
    """Ask the summarizer about every document (cached answers are not asked again); return failures."""
    cache = RequestCache(summarizer.cache_path)
    role = summarizer.role
    backend = make_backend(summarizer.endpoint, cache, role.concurrency, role.timeout, role.attempts)
    try:
        return asyncio.run(_ask_all(backend, docs, summarizer, quiet))
    finally:
        cache.close()
