"""`deepmoney synth`: chapters -> questions (questioner) -> answers (answerer) + assets (extractor).

Documents are read and split as for the pt corpus. Per document, the extractor names the
underlying assets once; per chapter, the questioner proposes questions, which are filtered (length,
language, near-duplicates within the report) and answered, each by the answerer from that chapter
alone; answers are filtered (empty, refusal, grounding, length, language). Everything rejected is
written to rejected.jsonl with its reason — nothing is dropped silently.

Exactly once: every answer from every role is committed to a request cache in the run's work
directory the moment it arrives, and outputs are written in input order only at the end. After a
crash or SIGKILL the same command resumes: cached answers are reused, so no completed request is
sent twice, and the dataset is identical to an uninterrupted run's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from deepmoney.config import DeepmoneyConfig, SynthConfig, result_settings
from deepmoney.data.chapters import split_chapters
from deepmoney.data.document import Chapter, Document
from deepmoney.data.ingest import load_collections, read_documents, resolve_inputs
from deepmoney.data.split import is_heldout
from deepmoney.errors import InputRejected, UserError
from deepmoney.llm.backends import make_backend
from deepmoney.llm.cache import RequestCache
from deepmoney.llm.client import ChatBackend, LLMRequestError, Sampling
from deepmoney.llm.errors import LLMGaveUp
from deepmoney.llm.parse import parse_list
from deepmoney.llm.roles import Endpoint
from deepmoney.stage import SftDatasetManifest, claim_output, digest, fingerprint, write_manifest
from deepmoney.storage import Storage
from deepmoney.synth import export
from deepmoney.synth.filters import answer_problem, question_problem
from deepmoney.synth.prompts import PROMPT_VERSION, render, templates_digest

log = logging.getLogger(__name__)
KIND = "sft-dataset"
ROLES = ("questioner", "answerer", "extractor")
SYSTEM = {
    "en": "You are a financial analyst. Answer from the research material you are given.",
    "zh": "你是一名金融分析师。请依据给定的研究材料回答。",
}


@dataclass(frozen=True)
class RoleOptions:
    """How one role is asked."""

    sampling: Sampling
    concurrency: int = 16
    timeout: float = 120.0
    prompt: str | None = None  # the text of a template that replaces the built-in one
    attempts: int = 8  # tries per request
    context_tokens: int | None = None  # the endpoint's context window (a local model's is read from it)
    structured: bool = True  # ask for lists by JSON schema (see list_schema)


def list_schema(role: str, questions: int) -> str:
    """The JSON schema a role's list answer is asked in: `{"items": [...]}` with bounded lengths, so that a
    constrained small model ends its answer within its token budget."""
    count, length = (8, 60) if role == "extractor" else (max(1, questions), 240)
    item = {"type": "string", "minLength": 2, "maxLength": length}
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": item, "minItems": 1,
              "maxItems": count}}, "required": ["items"], "additionalProperties": False}  # fmt: skip
    return json.dumps(schema, sort_keys=True)


def _default_roles() -> dict[str, RoleOptions]:
    return {
        "questioner": RoleOptions(Sampling(temperature=0.7, max_tokens=512, seed=0)),
        "answerer": RoleOptions(Sampling(temperature=0.2, max_tokens=768, seed=0)),
        "extractor": RoleOptions(Sampling(temperature=0.0, max_tokens=128, seed=0)),
    }


@dataclass(frozen=True)
class SynthOptions:
    """How much to ask and how strictly to filter."""

    questions_per_chapter: int = 3
    max_chapters: int | None = None
    min_grounding: float = 0.5
    max_question_similarity: float = 0.7
    max_chapter_chars: int = 6000  # a longer chapter is cut to fit the roles' context, and that is recorded
    allow_same_model: bool = False
    shard: tuple[int, int] | None = None  # (k, n): only documents whose id hashes to k modulo n
    roles: dict[str, RoleOptions] = field(default_factory=_default_roles)

    @classmethod
    def from_config(cls, config: SynthConfig, concurrency: int | None = None, timeout: float | None = None,
                    **overrides: Any) -> SynthOptions:  # fmt: skip
        """Options from the `synth` config section; `concurrency`/`timeout` override every role's."""
        roles = {}
        for role in ROLES:
            rc = getattr(config, role)
            prompt = None
            if rc.prompt:
                try:
                    prompt = Path(rc.prompt).read_text(encoding="utf-8")
                except OSError as exc:
                    raise UserError(f"synth.{role}.prompt: cannot read {rc.prompt}: {exc.strerror}") from None
            roles[role] = RoleOptions(
                Sampling(temperature=rc.temperature, top_p=rc.top_p, max_tokens=rc.max_tokens, seed=rc.seed),
                concurrency=concurrency or rc.concurrency,
                timeout=timeout or rc.timeout,
                prompt=prompt,
                attempts=rc.attempts,
                context_tokens=rc.context_tokens,
                structured=rc.structured,
            )
        settings = {
            "questions_per_chapter": config.questions_per_chapter,
            "max_chapters": config.max_chapters,
            "min_grounding": config.min_grounding,
            "max_question_similarity": config.max_question_similarity,
            "max_chapter_chars": config.max_chapter_chars,
        }
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(roles=roles, **settings)

    def prompt_digest(self) -> str:
        """The built-in templates' digest, combined with any user templates."""
        custom = [self.roles[r].prompt or "" for r in ROLES]
        if not any(custom):
            return templates_digest()
        return hashlib.sha256((templates_digest() + "\0".join(custom)).encode()).hexdigest()[:16]

    def result_settings(self) -> dict[str, Any]:
        """The options that decide the dataset (concurrency, timeouts and retries only decide how fast)."""
        out: dict[str, Any] = {
            "synth.questions_per_chapter": self.questions_per_chapter, "synth.max_chapters": self.max_chapters,
            "synth.min_grounding": self.min_grounding, "synth.max_question_similarity": self.max_question_similarity,
            "synth.max_chapter_chars": self.max_chapter_chars, "shard": list(self.shard) if self.shard else None,
            "prompts": self.prompt_digest(),
        }  # fmt: skip
        for role, options in self.roles.items():
            out[f"synth.{role}.sampling"] = options.sampling.key()
            if not options.structured:
                out[f"synth.{role}.structured"] = False
            out[f"synth.{role}.context_tokens"] = options.context_tokens
        return out


@dataclass
class _Work:
    doc: Document
    chapter: Chapter
    text: str
    truncated: bool
    order: int = 0  # position in the whole (unsharded) run: shards merge back into this order
    heldout: bool = False  # the document is held out of training (data/split.py)

    @property
    def chapter_id(self) -> str:
        return f"{self.doc.doc_id}:{self.chapter.index}"


@dataclass
class _Outcome:
    records: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SynthResult:
    """What `synthesize` did."""

    output: str
    manifest: dict[str, Any]
    reused: bool = False


def check_roles(endpoints: dict[str, Endpoint], options: SynthOptions) -> None:
    """Refuse a model that would answer its own questions, unless explicitly allowed.

    Endpoints are compared by their canonical label (`parse_endpoint` resolves local paths), so
    spelling one directory two ways does not make two models.
    """
    q, a = endpoints["questioner"], endpoints["answerer"]
    if q.label == a.label and not options.allow_same_model:
        raise UserError(
            f"the questioner and the answerer are the same model ({q.label}): a model answering its own questions "
            "tends to answer from what it knows rather than from the chapter; use a different --answerer, or pass "
            "--allow-same-model to do it anyway"
        )


def role_messages(role: str, doc: Document, text: str, options: SynthOptions, question: str = ""
                  ) -> list[dict[str, str]]:  # fmt: skip
    """The chat a role is sent about `text` (a chapter, or a report's head for the extractor)."""
    fields: dict[str, object] = {"title": doc.title, "publisher": doc.publisher, "date": doc.date, "chapter": text}
    if role == "questioner":
        fields["n"] = options.questions_per_chapter
    if role == "answerer":
        fields["question"] = question
    prompt = render(role, doc.language, options.roles[role].prompt, **fields)
    if role != "answerer":
        return [{"role": "user", "content": prompt}]
    return [{"role": "system", "content": SYSTEM["zh" if doc.language == "zh" else "en"]},
            {"role": "user", "content": prompt}]  # fmt: skip


QUESTION_TOKENS = 96  # room kept in the answerer's prompt for the question
CHARS_PER_TOKEN = {"zh": 1.2, "en": 3.5}  # a cautious estimate, for URL roles whose tokenizer is not here


def fit_chapters(work: list[_Work], backends: dict[str, ChatBackend], options: SynthOptions) -> None:
    """Cut each chapter so that every role's prompt plus its `max_tokens` fits that role's context.

    A local model is measured with its own tokenizer; a URL role with `context_tokens` set is
    estimated (CHARS_PER_TOKEN); a URL role without it keeps only the `max_chapter_chars` cap.
    A cut chapter is marked `truncated` in its records and counted in the manifest.
    """
    budgets: dict[tuple[str, str], int] = {}
    for item in work:
        language = "zh" if item.doc.language == "zh" else "en"
        for role in ROLES:
            backend = backends[role]
            local = hasattr(backend, "fit")
            context = getattr(backend, "context_tokens", None) or options.roles[role].context_tokens
            if context is None:
                continue
            if (role, language) not in budgets:
                budgets[role, language] = _chapter_budget(role, item.doc, backend, context, options)
            budget = budgets[role, language]
            if local:
                text, cut = backend.fit(item.text, budget)  # type: ignore[attr-defined]
            else:
                limit = int(budget * CHARS_PER_TOKEN[language])
                text, cut = item.text[:limit], len(item.text) > limit
            if cut:
                item.text, item.truncated = text, True


def _chapter_budget(role: str, doc: Document, backend: ChatBackend, context: int, options: SynthOptions) -> int:
    """Tokens left for the chapter in `role`'s prompt once the template and the reply are accounted for."""
    empty = role_messages(role, doc, "", options, "?")
    if hasattr(backend, "prompt_tokens"):
        overhead = backend.prompt_tokens(empty)
    else:
        language = "zh" if doc.language == "zh" else "en"
        overhead = int(sum(len(m["content"]) for m in empty) / CHARS_PER_TOKEN[language]) + 16
    max_tokens = options.roles[role].sampling.max_tokens
    budget = context - max_tokens - overhead - (QUESTION_TOKENS if role == "answerer" else 0)
    if budget <= 0:
        raise UserError(
            f"the {role}'s context of {context} tokens leaves no room for a chapter after its prompt ({overhead} "
            f"tokens) and synth.{role}.max_tokens={max_tokens}; lower synth.{role}.max_tokens or use a model with "
            "a longer context"
        )
    return budget


class Synthesizer:
    """Drives the three roles over the chapters of the documents."""

    def __init__(self, backends: dict[str, ChatBackend], options: SynthOptions, run_started: str = "") -> None:
        self.backends = backends
        self.options = options
        self.labels = {role: backend.endpoint.label for role, backend in backends.items()}
        self.run_started = run_started
        self.prompt_digest = options.prompt_digest()
        # How each role is asked for a list: its sampling, with the list schema unless it opted out.
        self.list_sampling = {
            role: replace(o.sampling, json_schema=list_schema(role, options.questions_per_chapter))
            if o.structured else o.sampling
            for role, o in options.roles.items()
        }  # fmt: skip

    async def _list(
        self, role: str, language: str | None, messages: list[dict[str, str]]
    ) -> tuple[list[str] | None, str]:
        """Ask `role` for a list; one repair prompt if the answer cannot be parsed. (items, reason)."""
        backend, sampling = self.backends[role], self.list_sampling[role]
        try:
            first = await backend.chat(messages, sampling)
        except (LLMGaveUp, LLMRequestError) as exc:
            return None, f"{role} request failed: {exc}"
        items = parse_list(first.text)
        if items is not None:
            return items, ""
        # The repair prompt quotes the answer in full, so it stands alone: without the chapter it fits any
        # context the first prompt fitted, and costs a fraction of the tokens.
        repair = [{"role": "user", "content": render("repair", language, previous=first.text[:4000])}]
        try:
            second = await backend.chat(repair, sampling)
        except (LLMGaveUp, LLMRequestError) as exc:
            return None, f"{role} repair request failed: {exc}"
        items = parse_list(second.text)
        if items is None:
            return None, f"{role} answer is not a list, even after a repair prompt: {second.text[:200]!r}"
        return items, ""

    async def assets(self, doc: Document, head: str) -> tuple[list[str], dict[str, Any] | None]:
        """The document's underlying assets (empty, with a rejection record, if none could be read)."""
        messages = role_messages("extractor", doc, head, self.options)
        items, reason = await self._list("extractor", doc.language, messages)
        if items is None:
            return [], {"kind": "assets", "doc_id": doc.doc_id, "source": doc.source, "reason": reason}

        return [a[:80] for a in items[:8]], None

    async def chapter(self, work: _Work, assets: list[str], earlier: list[str]) -> _Outcome:
        """Questions and answers for one chapter; `earlier` holds the report's kept questions so far."""
        doc, opts, outcome = work.doc, self.options, _Outcome()
        where = {"doc_id": doc.doc_id, "chapter_id": work.chapter_id, "source": doc.source, "order": work.order}
        messages = role_messages("questioner", doc, work.text, opts)
        questions, reason = await self._list("questioner", doc.language, messages)
        if questions is None:
            outcome.rejected.append({"kind": "questions", **where, "reason": reason})
            return outcome
        kept: list[str] = []
        for question in questions:
            if len(kept) == opts.questions_per_chapter:
                break
            problem = question_problem(question, earlier + kept, doc.language, opts.max_question_similarity)
            if problem:
                outcome.rejected.append({"kind": "question", **where, "question": question, "reason": problem})
            else:
                kept.append(question)
        answers = await asyncio.gather(*(self._answer(work, q) for q in kept))
        for index, (question, (answer, problem)) in enumerate(zip(kept, answers, strict=True)):
            if problem:
                outcome.rejected.append({"kind": "answer", **where, "question": question, "reason": problem})
                continue
            language = "zh" if doc.language == "zh" else "en"
            outcome.records.append({
                "instruction": export.instruction(question, assets, doc.language),
                "answer": answer,
                "system": SYSTEM[language],
                "meta": {
                    **where, "chapter_title": work.chapter.title, "question_index": index, "question": question,
                    "assets": assets, "language": doc.language, "title": doc.title, "publisher": doc.publisher,
                    "date": doc.date, "chapter_truncated": work.truncated, "roles": self.labels,
                    "prompt_version": PROMPT_VERSION, "prompt_digest": self.prompt_digest,
                    "synthesized_at": self.run_started, "split": "heldout" if work.heldout else "train",
                },
            })  # fmt: skip
        earlier.extend(kept)
        return outcome

    async def _answer(self, work: _Work, question: str) -> tuple[str, str | None]:
        doc = work.doc
        messages = role_messages("answerer", doc, work.text, self.options, question)
        try:
            completion = await self.backends["answerer"].chat(messages, self.options.roles["answerer"].sampling)
        except (LLMGaveUp, LLMRequestError) as exc:
            return "", f"answerer request failed: {exc}"
        answer = completion.text.strip()
        return answer, answer_problem(answer, work.text, doc.language, self.options.min_grounding)


def _chapters(inputs: list[str], storage: Storage, config: DeepmoneyConfig, options: SynthOptions
              ) -> tuple[list[_Work], list[dict[str, Any]], list[Any]]:  # fmt: skip
    resolved = resolve_inputs(inputs, storage)
    rejected = [{"kind": "input", "source": r.path, "reason": r.reason} for r in resolved.rejected]
    collections = load_collections(resolved.collections, storage)
    work: list[_Work] = []
    for ref in resolved.files:
        for item in read_documents(ref, storage, config.data, collections):
            if isinstance(item, InputRejected):
                rejected.append({"kind": "input", "source": item.path, "reason": item.reason})
                continue
            if len(item.text) < config.data.min_chars:
                rejected.append({"kind": "input", "source": item.source, "reason": "too short to ask about"})
                continue
            heldout = is_heldout(item.text, config.data.heldout_fraction)
            for chapter in split_chapters(item, config.data.chapters):
                text = chapter.text
                truncated = len(text) > options.max_chapter_chars
                work.append(_Work(item, chapter, text[: options.max_chapter_chars], truncated, heldout=heldout))
    if options.max_chapters is not None:
        work = work[: options.max_chapters]
    for order, item in enumerate(work):
        item.order = order
    if options.shard is not None:
        k, n = options.shard
        work = [w for w in work if int(w.doc.doc_id, 16) % n == k]
        rejected = rejected if k == 0 else []  # input problems are reported once, by shard 0
    return work, rejected, resolved.files


def _settings(files: list[Any], endpoints: dict[str, Endpoint], options: SynthOptions,
              config: DeepmoneyConfig) -> dict[str, Any]:  # fmt: skip
    """What decides the dataset: the inputs, the roles' models, the options, chapters and the held-out split."""
    return {
        "inputs": digest([[f.uri, f.size, f.version] for f in files]),
        **{f"roles.{role}": e.label for role, e in endpoints.items()},
        **options.result_settings(),
        **{f"data.chapters.{k}": v for k, v in result_settings(config.data.chapters).items()},
        "data.heldout_fraction": config.data.heldout_fraction,
    }


def role_endpoints(config: DeepmoneyConfig, given: dict[str, str | None]) -> dict[str, Endpoint]:
    """Each role's endpoint: the one `given` (`local:DIR` or `URL#MODEL`), else `synth.<role>.endpoint`."""
    from deepmoney.llm.roles import parse_endpoint

    endpoints = {}
    for role in ROLES:
        spec = given.get(role) or getattr(config.synth, role).endpoint
        if not spec:
            raise UserError(f"no {role}: give --{role} (the pipeline's {role} parameter) as local:MODEL_DIR or "
                            f"URL#MODEL, or set synth.{role}.endpoint")  # fmt: skip
        endpoints[role] = parse_endpoint(role, spec)
    return endpoints


def synthesize(inputs: list[str], output: str, endpoints: dict[str, Endpoint], config: DeepmoneyConfig,
               options: SynthOptions | None = None, *, quiet: bool = False, storage: Storage | None = None,
               overwrite: bool = False) -> SynthResult:  # fmt: skip
    """Synthesize the sft dataset from `inputs` into `output`."""
    options = options or SynthOptions()
    storage = storage or Storage(config.storage)
    output = str(output)
    storage.check_writable(output)
    check_roles(endpoints, options)
    if options.shard is not None and not (0 <= options.shard[0] < options.shard[1]):
        raise UserError(f"--shard {options.shard[0]}/{options.shard[1]}: expected K/N with 0 <= K < N")
    work, rejected, files = _chapters(inputs, storage, config, options)
    if not work and (options.shard is None or not files):  # a shard may be empty; a corpus with no file may not
        raise UserError(
            f"no chapters to ask about in {', '.join(inputs)} ({len(rejected)} inputs rejected or too short); "
            "check the paths and formats"
        )
    settings = _settings(files, endpoints, options, config)
    fp = fingerprint(KIND, settings)
    claim = claim_output(storage, output, KIND, fp, settings, overwrite=overwrite)
    if claim.reuse is not None:
        log.info("%s is up to date; reusing it", output)
        return SynthResult(output, claim.reuse, reused=True)
    with storage.staging_dir(output, key=fp, keep_on_error=True) as staging:
        cache = RequestCache(staging / "state" / "requests.sqlite")
        started = _run_started(staging / "state" / "started_at")
        resumed = len(cache)
        if resumed:
            log.info("resuming: %d answers are already in the request cache and will not be asked again", resumed)
        backends = {role: make_backend(endpoints[role], cache, options.roles[role].concurrency,
                                       options.roles[role].timeout, options.roles[role].attempts)
                    for role in ROLES}  # fmt: skip
        try:
            fit_chapters(work, backends, options)
            synthesizer = Synthesizer(backends, options, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)))
            outcomes = asyncio.run(_run_all(synthesizer, work, quiet))
        finally:
            cache.close()
        records = [r for o in outcomes for r in o.records]
        rejected += [r for o in outcomes for r in o.rejected]
        manifest = _manifest(fp, settings, work, records, rejected, backends, options, started, resumed)
        _check_produced(manifest, work, sharded=options.shard is not None)
        out = staging / "out"
        out.mkdir(exist_ok=True)
        train = [r for r in records if r["meta"]["split"] == "train"]
        export.write_jsonl(out / export.ALPACA_FILE, map(export.alpaca, train))
        export.write_jsonl(out / export.SHAREGPT_FILE, map(export.sharegpt, train))
        export.write_jsonl(
            out / export.HELDOUT_FILE, (export.alpaca(r) for r in records if r["meta"]["split"] == "heldout")
        )
        export.write_jsonl(out / "rejected.jsonl", rejected)
        (out / "dataset_info.json").write_text(json.dumps(export.DATASET_INFO, indent=2), encoding="utf-8")
        write_manifest(out / "manifest.json", manifest)
        storage.publish_tree(out, output)
    return SynthResult(output, manifest.model_dump(mode="json"))


def _check_produced(manifest: SftDatasetManifest, work: list[_Work], sharded: bool = False) -> None:
    """A run that produced no record, or in which every request failed, is a failure: nothing is published.

    A shard whose roles answered but whose pairs the filters all rejected is one share of a run (published
    with its rejections, and warned about); the merge fails when no shard kept a pair.
    """
    if not work:
        return  # a shard that holds no chapter: an empty share of a sharded run
    extra = manifest.model_extra or {}
    stats = extra["requests"].values()
    failed = sum(r["failed"] for r in stats)
    # attempts = successes + retries + failures (ClientStats); answers from the cache succeeded earlier
    succeeded = sum(r["requests"] - r["retries"] - r["failed"] + r["cached"] for r in stats)
    reasons = extra.get("rejected_by_reason", {})
    top = ", ".join(f"{k} ({v})" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:3]) or "none recorded"
    if manifest.records + manifest.heldout_records and succeeded:
        return
    if sharded and succeeded:
        log.warning("this shard kept no question-answer pair: the filters rejected them all (main reasons: %s)", top)
        return
    what = "no question-answer pair passed the filters"
    if not succeeded:
        down = [f"the {role} endpoint {manifest.roles[role]}" for role, r in extra["requests"].items() if r["failed"]]
        what = f"every request failed ({', '.join(down)} never answered)" if down else "every request failed"
    raise UserError(f"synthesis produced no dataset: {what} ({failed} of {succeeded + failed} requests failed; "
                    f"main reasons: {top}); nothing was written")  # fmt: skip


async def _run_all(synth: Synthesizer, work: list[_Work], quiet: bool) -> list[_Outcome]:
    """Documents in parallel; within a document, chapters in order (questions are deduplicated
    against the report's earlier ones); within a chapter, answers in parallel."""
    by_doc: dict[str, list[int]] = {}
    for i, item in enumerate(work):
        by_doc.setdefault(item.doc.doc_id, []).append(i)
    outcomes: list[_Outcome | None] = [None] * len(work)
    limit = asyncio.Semaphore(max(4, *(r.concurrency for r in synth.options.roles.values())))
    started = time.monotonic()
    rejections = [0]
    try:
        with tqdm(total=len(work), unit="chapter", desc="synth", disable=quiet, dynamic_ncols=True) as bar, \
                logging_redirect_tqdm():  # fmt: skip

            async def document(indices: list[int]) -> None:
                async with limit:
                    first = work[indices[0]]
                    assets, problem = await synth.assets(first.doc, first.text)
                    earlier: list[str] = []
                    for i in indices:
                        outcome = await synth.chapter(work[i], assets, earlier)
                        if problem and i == indices[0]:
                            outcome.rejected.insert(0, {**problem, "order": work[i].order})
                        outcomes[i] = outcome
                        rejections[0] += len(outcome.rejected)
                        bar.update(1)
                        bar.set_postfix({**_rates(synth, started), "rejected": rejections[0]}, refresh=False)

            await asyncio.gather(*(document(indices) for indices in by_doc.values()))
    finally:
        for backend in synth.backends.values():
            await backend.aclose()
    return [o for o in outcomes if o is not None]


def _rates(synth: Synthesizer, started: float) -> dict[str, Any]:
    elapsed = max(time.monotonic() - started, 1e-6)
    stats = [b.stats for b in synth.backends.values()]
    return {
        "req/s": f"{sum(s.requests for s in stats) / elapsed:.1f}",
        "tok/s": f"{sum(s.completion_tokens for s in stats) / elapsed:.0f}",
        "retries": sum(s.retries for s in stats),
        "cached": sum(s.cached for s in stats),
    }


def _run_started(path: Path) -> float:
    """When this run began; a resumed run is the same run, so it keeps the first start time."""
    if path.exists():
        return float(path.read_text())
    now = time.time()
    path.write_text(repr(now))
    return now


def _manifest(
    fingerprint: str,
    settings: dict[str, Any],
    work: list[_Work],
    records: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
    backends: dict[str, ChatBackend],
    options: SynthOptions,
    started: float,
    resumed: int,
) -> SftDatasetManifest:
    reasons: dict[str, int] = {}
    for r in rejected:
        key = f"{r['kind']}: {r['reason'].split(' (')[0].split(':')[0]}"
        reasons[key] = reasons.get(key, 0) + 1
    covered = {r["meta"]["chapter_id"] for r in records}  # a chapter counts as covered when it gave a record
    return SftDatasetManifest(
        fingerprint=fingerprint,
        settings=settings,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        documents=len({w.doc.doc_id for w in work}),
        chapters=len(work),
        chapters_covered=sum(w.chapter_id in covered for w in work),
        chapters_truncated=sum(w.truncated for w in work),
        records=sum(r["meta"]["split"] == "train" for r in records),
        heldout_records=sum(r["meta"]["split"] == "heldout" for r in records),
        rejected=len(rejected),
        rejected_by_reason=dict(sorted(reasons.items())),
        roles={role: b.endpoint.label for role, b in backends.items()},
        requests={role: asdict(b.stats) for role, b in backends.items()},
        answers_from_cache_at_start=resumed,
        prompt_version=PROMPT_VERSION,
        prompt_digest=options.prompt_digest(),
        options=json.loads(json.dumps(asdict(options), default=str)),
        files=export.FILES,
    )
