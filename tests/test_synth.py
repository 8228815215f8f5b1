"""`deepmoney synth` end to end against a scripted OpenAI-compatible server on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepmoney.errors import EXIT_TRANSIENT
from deepmoney.llm.scripted_server import Faults, ScriptedOpenAIServer
from tests.conftest import ROOT, SAMPLE_CORPUS, assert_clean_error, refused_url, run_cli

pytestmark = pytest.mark.skipif(not SAMPLE_CORPUS.is_dir(), reason="sample corpus not present")
MODELS = ("questioner-34b", "answerer-67b", "extractor-7b")
# 30% of attempts fail; an injected timeout sleeps past the client's --request-timeout of 2 s, which
# is generous enough that a loaded CI machine does not time out on ordinary requests.
FAULTY = Faults(rate=0.3, timeout_sleep=3.0)


def _excerpt(prompt: str) -> str:
    parts = prompt.split('"""')
    return parts[1].strip() if len(parts) >= 3 else prompt


def _sentences(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith(("#", "|", "-"))]
    found = re.findall(r"[^。！？.!?]{25,300}[。！？.!?]", " ".join(lines))
    return [s.strip() for s in found] or [text[:200]]


def scripted_analyst(model: str, messages: list[dict[str, str]]) -> str:
    """Plays the three roles deterministically, in the formats real models use (and misuse)."""
    prompt = messages[-1]["content"]
    digest = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
    if "could not be read as a JSON array" in prompt or "无法解析为字符串" in prompt:
        return json.dumps([f"What does the report conclude about item {digest % 97}?"])
    if "underlying assets" in prompt or "标的资产" in prompt:
        return '```json\n["Copper", "Banks",]\n```' if digest % 2 else '["Semiconductors"]'
    if "distinct questions" in prompt or "个不同的问题" in prompt:
        zh = "个不同的问题" in prompt
        topics = [s[:40] for s in _sentences(_excerpt(prompt))[:4]]
        questions = [f"关于“{t}”，报告给出了哪些数据和理由？" if zh else f"What does the report say about: {t}?"
                     for t in topics]  # fmt: skip
        style = digest % 4
        if style == 0:
            return json.dumps(questions, ensure_ascii=False)
        if style == 1:
            return "Here you go:\n" + "\n".join(f"{i}. {q}" for i, q in enumerate(questions, 1))
        if style == 2:
            return "```json\n" + json.dumps(questions, ensure_ascii=False)[:-1] + ",]\n```"
        return "These would be good questions to ask about the chapter."  # needs the repair prompt
    excerpt = _excerpt(prompt)
    question = prompt.rsplit("Question:", 1)[-1] if "Question:" in prompt else prompt.rsplit("问题：", 1)[-1]
    best = max(_sentences(excerpt), key=lambda s: len(set(s.split()) & set(question.split())) + s.count("%"))
    return best if "问题：" in prompt else f"According to the excerpt, {best}"


ROLE_ARGS = ("--questioner", "{url}#questioner-34b", "--answerer", "{url}#answerer-67b", "--extractor",
             "{url}#extractor-7b")  # fmt: skip


def _without_run_time(path: Path) -> list[dict]:
    """The lines of an output file, less the one field that differs between two separate runs."""
    rows = [json.loads(line) for line in path.open()] if path.suffix == ".jsonl" else [json.loads(path.read_text())]
    for row in rows:
        row.get("meta", {}).pop("synthesized_at", None)
    return rows


def _synth_args(url: str, out: Path, *extra: str) -> list[str]:
    roles = [a.format(url=url) for a in ROLE_ARGS]
    return ["synth", "--input", str(SAMPLE_CORPUS), "--output", str(out), *roles, "--questions-per-chapter", "2",
            "--max-chapters", "24", "--request-timeout", "2", "--quiet", *extra]  # fmt: skip


def test_faulty_server_every_chapter_covered_and_formats(tmp_path: Path) -> None:
    with ScriptedOpenAIServer(responder=scripted_analyst, models=MODELS, faults=FAULTY) as server:
        result = run_cli(*_synth_args(server.base_url, tmp_path / "sft"))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "sft"
    manifest = json.loads((out / "manifest.json").read_text())
    records = [json.loads(line) for name in ("alpaca.jsonl", "heldout_alpaca.jsonl") for line in (out / name).open()]
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").open()]
    # Every chapter was asked about; "covered" counts the chapters that gave at least one record.
    assert manifest["chapters"] == 24
    assert manifest["chapters_covered"] == len({r["meta"]["chapter_id"] for r in records}) >= 20
    assert {r["meta"]["chapter_id"] for r in records} | {r.get("chapter_id") for r in rejected} >= {
        r["meta"]["chapter_id"] for r in records
    }
    assert manifest["records"] >= 24
    assert sum(s["retries"] for s in manifest["requests"].values()) > 0
    assert set(server.outcomes()) >= {"429", "500", "timeout", "malformed", "empty", "ok"}
    assert max(server.completed().values()) == 1  # no completed request was sent twice
    alpaca = [json.loads(line) for line in (out / "alpaca.jsonl").open()]
    sharegpt = [json.loads(line) for line in (out / "sharegpt.jsonl").open()]
    assert len(alpaca) == len(sharegpt) == manifest["records"]
    for row in alpaca:
        meta = row["meta"]
        assert row["instruction"].endswith(meta["question"]) and row["output"] and row["input"] == ""
        assert meta["assets"] and meta["assets"][0] in row["instruction"]
        assert meta["roles"]["answerer"].endswith("#answerer-67b") and meta["prompt_version"]
    assert {r["meta"]["language"] for r in alpaca} >= {"en"}
    assert all(r["reason"] for r in rejected)


def test_dataset_loads_the_way_llama_factory_reads_it(tmp_path: Path) -> None:
    from datasets import load_dataset

    with ScriptedOpenAIServer(responder=scripted_analyst, models=MODELS) as server:
        heldout = {"DEEPMONEY_DATA__HELDOUT_FRACTION": "0.4"}  # holds out eastgate_fx_monthly (5 chapters)
        result = run_cli(*_synth_args(server.base_url, tmp_path / "sft"), env=heldout)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "sft"
    info = json.loads((out / "dataset_info.json").read_text())
    # Questions on held-out documents are in their own file only, and whole documents are on one side.
    manifest = json.loads((out / "manifest.json").read_text())
    train = [json.loads(line)["meta"] for line in (out / "alpaca.jsonl").open()]
    heldout = [json.loads(line)["meta"] for line in (out / info["deepmoney_heldout"]["file_name"]).open()]
    assert manifest["heldout_records"] == len(heldout) >= 1 and manifest["records"] == len(train) >= 1
    assert {m["split"] for m in train} == {"train"} and {m["split"] for m in heldout} == {"heldout"}
    assert not {m["doc_id"] for m in train} & {m["doc_id"] for m in heldout}
    alpaca, sharegpt = info["deepmoney_alpaca"], info["deepmoney_sharegpt"]
    # LLaMA-Factory's data/README: alpaca maps prompt/query/response/system to columns; sharegpt names
    # the messages column, the role/content tags and the user/assistant tag values.
    assert alpaca["columns"] == {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}
    assert sharegpt["formatting"] == "sharegpt" and sharegpt["columns"]["messages"] == "conversations"
    assert sharegpt["tags"] == {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                                "assistant_tag": "gpt"}  # fmt: skip
    for entry in (alpaca, sharegpt, info["deepmoney_heldout"]):
        dataset = load_dataset("json", data_files=str(out / entry["file_name"]), split="train",
                               cache_dir=str(tmp_path / "hf"))  # fmt: skip
        assert set(entry["columns"].values()) <= set(dataset.column_names)
    rows = [json.loads(line) for line in (out / sharegpt["file_name"]).open()]
    assert all([m["from"] for m in r["conversations"]] == ["human", "gpt"] for r in rows)


def test_sigkill_then_resume_gives_the_same_dataset_without_repeating_requests(tmp_path: Path) -> None:
    with ScriptedOpenAIServer(responder=scripted_analyst, models=MODELS, faults=FAULTY) as server:
        reference = run_cli(*_synth_args(server.base_url, tmp_path / "reference"))
        assert reference.returncode == 0, reference.stderr
        before = len(server.log)
        args = [sys.executable, "-m", "deepmoney", *_synth_args(server.base_url, tmp_path / "sft")]
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while sum(r.outcome == "ok" for r in server.log[before:]) < 20 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert not (tmp_path / "sft").exists()
        first_run = {r.digest for r in server.log[before:] if r.outcome == "ok"}
        (cache,) = tmp_path.glob(".sft.staging-*/state/requests.sqlite")
        with sqlite3.connect(cache) as db:
            committed = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        time.sleep(1.1)  # so that a fresh start time would be visibly later
        resume_started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ)
        assert again.returncode == 0, again.stderr
        assert "resuming" in again.stderr
        completed: dict[str, int] = {}
        for record in server.log[before:]:
            if record.outcome == "ok":
                completed[record.digest] = completed.get(record.digest, 0) + 1
    # Answers the killed run had committed are never asked again; the only repeats are the few the
    # server had answered while the kill landed, before they reached the client.
    repeated = sum(n - 1 for n in completed.values())
    assert committed >= 20 - 16 and repeated == len(first_run) - committed
    assert sum(completed.values()) - len(first_run) == len(completed) - committed
    for name in ("alpaca.jsonl", "sharegpt.jsonl", "heldout_alpaca.jsonl", "rejected.jsonl", "dataset_info.json"):
        assert _without_run_time(tmp_path / "sft" / name) == _without_run_time(tmp_path / "reference" / name), name
    # The resumed run is the killed run carried on: it keeps that run's start time.
    resumed = [json.loads(line)["meta"]["synthesized_at"] for line in (tmp_path / "sft" / "alpaca.jsonl").open()]
    assert set(resumed) == {json.loads((tmp_path / "sft" / "manifest.json").read_text())["created_at"]}
    assert resumed[0] < resume_started


def test_same_model_for_questioner_and_answerer_is_refused(tmp_path: Path) -> None:
    url = refused_url() + "/v1#same-model"
    result = run_cli("synth", "--input", str(SAMPLE_CORPUS), "--output", str(tmp_path / "o"), "--questioner", url,
                     "--answerer", url, "--extractor", url)  # fmt: skip
    assert_clean_error(result, "same model", "--allow-same-model")


def test_wrong_api_key_stops_the_run_at_once(tmp_path: Path) -> None:
    with ScriptedOpenAIServer(responder=scripted_analyst, models=MODELS, api_key="sk-good") as server:
        result = run_cli(*_synth_args(server.base_url, tmp_path / "o"), env={"OPENAI_API_KEY": "sk-bad-1234"})
        seen = len(server.log)
    assert_clean_error(result, "rejected the API key", "HTTP 401")
    assert "sk-bad-1234" not in result.stderr and seen <= 3 * 16
    assert not (tmp_path / "o").exists()


def test_unknown_model_and_no_chapters(tmp_path: Path) -> None:
    with ScriptedOpenAIServer(responder=scripted_analyst, models=MODELS) as server:
        bad = _synth_args(server.base_url, tmp_path / "o")
        bad[bad.index("--answerer") + 1] = f"{server.base_url}#capybara-34b"
        assert_clean_error(run_cli(*bad), "capybara-34b", "404")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.md").write_text("tiny")
    args = _synth_args(refused_url() + "/v1", tmp_path / "o2")
    args[args.index("--input") + 1] = str(empty)
    assert_clean_error(run_cli(*args), "no chapters to ask about")


LONG_CHAPTERS = {"DEEPMONEY_SYNTH__MAX_CHAPTER_CHARS": "20000", "DEEPMONEY_DATA__CHAPTERS__MAX_CHARS": "20000"}
SHORT_REPLIES = {
    f"DEEPMONEY_SYNTH__{role.upper()}__MAX_TOKENS": "48" for role in ("questioner", "answerer", "extractor")
}


def _long_report(directory: Path) -> Path:
    """One report whose single chapter is far longer than the tiny model's 2,048-token context."""
    directory.mkdir()
    sentences = [f"In quarter {i} the copper price rose {i % 7}.{i % 10}% while bank margins fell {i % 5} basis "
                 f"points, and the regional property index moved {i % 9} points." for i in range(400)]  # fmt: skip
    (directory / "long.md").write_text("# Long copper and banks review\n\n" + " ".join(sentences), encoding="utf-8")
    return directory


def test_in_process_backend_on_the_tiny_model(tmp_path: Path, tiny_model: Path) -> None:
    """The embedded default: a chapter longer than the tiny model's context is cut in its tokens, so no request
    fails for length; a random-init model writes noise, so no pair passes and the run fails loudly, writing nothing."""
    local = f"local:{tiny_model}"
    result = run_cli("synth", "--input", str(_long_report(tmp_path / "corpus")), "--output", str(tmp_path / "o"),
                     "--questioner", local, "--answerer", local, "--extractor", local, "--allow-same-model",
                     "--questions-per-chapter", "1", "--quiet", env={**LONG_CHAPTERS, **SHORT_REPLIES})  # fmt: skip
    assert_clean_error(result, "synthesis produced no dataset", "no question-answer pair passed the filters")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    failed, asked = map(int, re.search(r"\((\d+) of (\d+) requests failed", result.stderr).groups())
    assert failed == 0 and asked >= 2  # uncut, the chapter's prompt would be refused as longer than the context
    assert not (tmp_path / "o").exists()


def test_chapters_are_cut_to_fit_each_roles_context(tmp_path: Path, tiny_model: Path, monkeypatch) -> None:
    from deepmoney.config import load_config
    from deepmoney.llm.backends import make_backend
    from deepmoney.llm.roles import parse_endpoint
    from deepmoney.storage import Storage
    from deepmoney.synth.run import QUESTION_TOKENS, ROLES, SynthOptions, _chapters, fit_chapters, role_messages

    for name, value in LONG_CHAPTERS.items():
        monkeypatch.setenv(name, value)
    config = load_config()
    options = SynthOptions.from_config(config.synth)
    corpus = _long_report(tmp_path / "corpus")
    work, _, _ = _chapters([str(corpus), str(SAMPLE_CORPUS)], Storage(), config, options)
    backend = make_backend(parse_endpoint("questioner", f"local:{tiny_model}"), None, 1, 10.0)
    before = [w.text for w in work]
    fit_chapters(work, dict.fromkeys(ROLES, backend), options)
    cut = [w for w, b in zip(work, before, strict=True) if len(w.text) < len(b)]
    assert cut and all(w.truncated for w in cut)
    assert any(w.text == b for w, b in zip(work, before, strict=True))  # short chapters are left whole
    question = " ".join(["question"] * QUESTION_TOKENS)
    question = backend.fit(question, QUESTION_TOKENS)[0]
    for item in work:
        for role in ROLES:
            prompt = backend.prompt_tokens(role_messages(role, item.doc, item.text, options, question))
            assert prompt + options.roles[role].sampling.max_tokens <= backend.context_tokens, (role, item.chapter_id)


def test_shards_merge_into_exactly_the_unsharded_dataset(tmp_path: Path) -> None:
    with ScriptedOpenAIServer(responder=scripted_analyst, models=MODELS, faults=FAULTY) as server:
        whole = run_cli(*_synth_args(server.base_url, tmp_path / "whole"))
        assert whole.returncode == 0, whole.stderr
        for k in range(3):
            part = run_cli(*_synth_args(server.base_url, tmp_path / f"shard{k}", "--shard", f"{k}/3"))
            assert part.returncode == 0, part.stderr
    shards = [str(tmp_path / f"shard{k}") for k in range(3)]
    counts = [json.loads(Path(s, "manifest.json").read_text())["records"] for s in shards]
    assert sum(c > 0 for c in counts) >= 2  # the documents really were split
    merged = run_cli("synth-merge", "--input", *shards, "--output", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    for name in ("alpaca.jsonl", "sharegpt.jsonl", "heldout_alpaca.jsonl", "rejected.jsonl", "dataset_info.json"):
        assert _without_run_time(tmp_path / "merged" / name) == _without_run_time(tmp_path / "whole" / name), name
    incomplete = run_cli("synth-merge", "--input", *shards[:2], "--output", str(tmp_path / "bad"))
    assert_clean_error(incomplete, "shards 0..N-1")
    bad_spec = run_cli(*_synth_args(refused_url() + "/v1", tmp_path / "x", "--shard", "3/3"))
    assert_clean_error(bad_spec, "expected K/N")


def test_roles_and_a_custom_prompt_from_the_config_file(tmp_path: Path) -> None:
    template = tmp_path / "questioner.txt"
    template.write_text(
        'Write {n} distinct questions about {title} ({publisher}, {date}):\n"""\n{chapter}\n"""\n', encoding="utf-8"
    )
    with ScriptedOpenAIServer(responder=scripted_analyst, models=MODELS) as server:
        config = tmp_path / "deepmoney.yaml"
        config.write_text(
            "synth:\n"
            f"  questioner: {{endpoint: '{server.base_url}#questioner-34b', prompt: '{template}', concurrency: 4}}\n"
            f"  answerer: {{endpoint: '{server.base_url}#answerer-67b', temperature: 0.0}}\n"
            f"  extractor: {{endpoint: '{server.base_url}#extractor-7b'}}\n"
            "  questions_per_chapter: 1\n",
            encoding="utf-8",
        )
        result = run_cli("--config", str(config), "synth", "--input", str(SAMPLE_CORPUS), "--output",
                         str(tmp_path / "o"), "--max-chapters", "4", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "o" / "alpaca.jsonl").open()]
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    from deepmoney.synth.prompts import templates_digest

    assert records and manifest["prompt_digest"] != templates_digest()
    assert {r["meta"]["prompt_digest"] for r in records} == {manifest["prompt_digest"]}
    assert len({r["meta"]["chapter_id"] for r in records}) == len(records)  # one question per chapter
    missing = run_cli("synth", "--input", str(SAMPLE_CORPUS), "--output", str(tmp_path / "x"))
    assert_clean_error(missing, "no questioner", "synth.questioner.endpoint")


def test_unreachable_endpoints_warn_at_once_and_fail_without_publishing(tmp_path: Path) -> None:
    """Every role at a closed port: a warning per role as soon as retries start, then a failed run, nothing written."""
    closed = f"{refused_url()}/v1"
    roles = ["--questioner", f"{closed}#q", "--answerer", f"{closed}#a", "--extractor", f"{closed}#e"]
    attempts = {f"DEEPMONEY_SYNTH__{r}__ATTEMPTS": "2" for r in ("QUESTIONER", "ANSWERER", "EXTRACTOR")}
    result = run_cli("synth", "--input", str(SAMPLE_CORPUS), "--output", str(tmp_path / "o"), *roles,
                     "--max-chapters", "2", "--quiet", env=attempts)  # fmt: skip
    assert_clean_error(result, "synthesis produced no dataset", "every request failed", "nothing was written")
    assert result.returncode == 2
    warned = [re.search(r"the (\w+) endpoint (\S+): ", line).groups()
              for line in result.stderr.splitlines() if "retrying (up to 2 attempts per request)" in line]  # fmt: skip
    roles_warned = [role for role, _ in warned]
    assert len(roles_warned) == len(set(roles_warned)) >= 2  # once per role that was asked (no question: no answer)
    assert set(roles_warned) <= {"questioner", "answerer", "extractor"}
    assert all(endpoint.startswith(closed) for _, endpoint in warned)
    assert not (tmp_path / "o").exists()


def test_a_dead_endpoint_stops_a_large_run_at_once_with_a_retryable_exit(tmp_path: Path) -> None:
    """All 141 chapters at a closed port: the run stops after a few given-up requests, not one per chapter."""
    closed = f"{refused_url()}/v1"
    roles = ["--questioner", f"{closed}#q", "--answerer", f"{closed}#a", "--extractor", f"{closed}#e"]
    attempts = {f"DEEPMONEY_SYNTH__{r}__ATTEMPTS": "1" for r in ("QUESTIONER", "ANSWERER", "EXTRACTOR")}
    result = run_cli("synth", "--input", str(SAMPLE_CORPUS), "--output", str(tmp_path / "o"), *roles, "--quiet",
                     env=attempts)  # fmt: skip
    assert_clean_error(result, "endpoint", "answered none of 4 requests", "run the same command again")
    assert result.returncode == EXIT_TRANSIENT  # retryable: the server may come up; the run resumes
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_merging_outputs_that_are_not_shards_says_so(tmp_path: Path) -> None:
    with ScriptedOpenAIServer(responder=scripted_analyst, models=MODELS) as server:
        for name in ("a", "b"):
            done = run_cli(*_synth_args(server.base_url, tmp_path / name))
            assert done.returncode == 0, done.stderr
    merged = run_cli("synth-merge", "--input", str(tmp_path / "a"), str(tmp_path / "b"), "--output",
                     str(tmp_path / "m"))  # fmt: skip
    assert_clean_error(merged, "is not the output of a sharded run", "synth --shard K/N")
    assert "()" not in merged.stderr and not (tmp_path / "m").exists()


def test_non_quiet_synth_keeps_http_requests_out_of_the_log(tmp_path: Path) -> None:
    with ScriptedOpenAIServer(responder=scripted_analyst, models=MODELS) as server:
        roles = [a.format(url=server.base_url) for a in ROLE_ARGS]
        result = run_cli("synth", "--input", str(SAMPLE_CORPUS), "--output", str(tmp_path / "o"), *roles,
                         "--max-chapters", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "HTTP Request" not in result.stderr and "POST http" not in result.stderr
    assert result.stdout.startswith("sft dataset written:") and len(result.stdout.strip().splitlines()) == 4


def test_one_directory_spelled_two_ways_is_the_same_model(tmp_path: Path, tiny_model: Path) -> None:
    relative = os.path.relpath(tiny_model, ROOT)
    result = run_cli(
        "synth",
        "--input",
        str(SAMPLE_CORPUS),
        "--output",
        str(tmp_path / "o"),
        "--questioner",
        f"local:{relative}",
        "--answerer",
        f"local:./{relative}/",
        "--extractor",
        f"local:{tiny_model}",
    )
    assert_clean_error(result, "the questioner and the answerer are the same model", "--allow-same-model")
    assert not (tmp_path / "o").exists()


def test_lists_are_asked_for_by_json_schema_unless_a_role_opts_out(tmp_path: Path) -> None:
    """Extractor and questioner send response_format with the list schema; the answerer writes prose."""
    from deepmoney.synth.run import list_schema

    opt_out = {"DEEPMONEY_SYNTH__EXTRACTOR__STRUCTURED": "false"}
    with ScriptedOpenAIServer(responder=scripted_analyst, models=MODELS) as server:
        args = _synth_args(server.base_url, tmp_path / "o")
        args[args.index("--max-chapters") + 1] = "4"
        result = run_cli(*args, env=opt_out)
        bodies = list(server.bodies)
    assert result.returncode == 0, result.stderr
    by_model: dict[str, list[dict]] = {}
    for body in bodies:
        by_model.setdefault(body["model"], []).append(body)
    questions = by_model["questioner-34b"]
    expected = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": json.loads(list_schema("questioner", 2))},
    }
    assert questions and all(body.get("response_format") == expected for body in questions)
    assert by_model["answerer-67b"] and not any("response_format" in body for body in by_model["answerer-67b"])
    assert by_model["extractor-7b"] and not any("response_format" in body for body in by_model["extractor-7b"])
    # the scripted server ignores response_format (as some endpoints do): its free-text lists still parse
    assert (tmp_path / "o" / "alpaca.jsonl").stat().st_size > 0


def test_local_roles_answer_lists_that_parse_even_from_random_models(tmp_path: Path, tiny_model: Path) -> None:
    """Constrained decoding: every extractor and questioner answer of a random model parses as a list.

    What may still be rejected is the noise in those lists (wrong language, ungrounded answers): the
    content filters, not the format, decide.
    """
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)  # another directory: a different model for the answerer
    roles = [
        "--questioner",
        f"local:{tiny_model}",
        "--answerer",
        f"local:{other}",
        "--extractor",
        f"local:{tiny_model}",
    ]
    limits = ["--max-chapters", "2", "--questions-per-chapter", "1", "--allow-same-model", "--quiet"]
    short = {"DEEPMONEY_SYNTH__ANSWERER__MAX_TOKENS": "48"}  # the answer is prose: its length is not under test
    result = run_cli("synth", "--input", str(SAMPLE_CORPUS), "--output", str(tmp_path / "o"), *roles, *limits,
                     env=short)  # fmt: skip
    if result.returncode == 0:
        reasons = json.loads((tmp_path / "o" / "manifest.json").read_text())["rejected_by_reason"]
        text = json.dumps(reasons)
    else:
        text = result.stderr
        failed, total = map(int, re.search(r"\((\d+) of (\d+) requests failed", text).groups())
        assert failed == 0 and total >= 2  # the roles were asked, and answered
    assert "not a list" not in text and "request failed" not in text, text


def _answerer_declines(model: str, messages: list[dict[str, str]]) -> str:
    if model == MODELS[1]:
        return "I cannot answer that from this excerpt; it does not provide the figures asked about."
    return scripted_analyst(model, messages)


def test_a_shard_that_kept_no_pair_is_published_and_a_merge_of_nothing_fails(tmp_path: Path) -> None:
    """A shard's roles answered but the filters rejected every pair: that is its share of the run (published, with
    its rejections, and warned about); the merge fails loudly when no shard kept anything."""
    with ScriptedOpenAIServer(responder=_answerer_declines, models=MODELS) as server:
        parts = [run_cli(*_synth_args(server.base_url, tmp_path / f"shard{k}", "--shard", f"{k}/2")) for k in range(2)]
    shards = [tmp_path / f"shard{k}" for k in range(2)]
    for part, shard in zip(parts, shards, strict=True):
        assert part.returncode == 0, part.stderr
        assert "kept no question-answer pair" in part.stderr and "refusal" in part.stderr
        manifest = json.loads((shard / "manifest.json").read_text())
        assert manifest["records"] == manifest["heldout_records"] == 0 and manifest["rejected"] > 0
    merged = run_cli("synth-merge", "--input", *map(str, shards), "--output", str(tmp_path / "merged"))
    assert_clean_error(merged, "synthesis produced no dataset", "in any of the 2 shards", "nothing was written")
    assert not (tmp_path / "merged").exists()
