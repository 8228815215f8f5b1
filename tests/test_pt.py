"""`deepmoney data build-pt` end to end, through the real CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from deepmoney.errors import EXIT_SIGTERM
from tests.conftest import ROOT, SAMPLE_CORPUS, assert_clean_error, build_pt_cli, run_cli
from tests.test_readers import make_pdf

UNIQUE = {
    "chips.md": "Northwind wafer starts climbed 14% quarter on quarter.",
    "bank_gbk.txt": "青禾银行净息差收窄12个基点至1.58%。",
    "oil.html": "Brent averaged 82 dollars in the quarter.",
    "copper.pdf": "Mine supply grew 2.1 percent in the first half.",
}


def _filler(seed: int, words: int = 260) -> str:
    import random

    rng = random.Random(seed)
    vocab = "demand supply margin credit yield spread inventory capacity exports tariff policy growth".split()
    return " ".join(rng.choice(vocab) + str(rng.randint(0, 99)) for _ in range(words)) + "."


def make_corpus(directory: Path) -> Path:
    """A small mixed corpus with every format, a duplicate and some bad files."""
    directory.mkdir(parents=True, exist_ok=True)
    chips = (
        "---\ntitle: Chips Quarterly\npublisher: Harborline Research\ndate: 2026-03-14\nsubject: semiconductors\n---\n"
        f"# Chips Quarterly\n\n## Demand\n{UNIQUE['chips.md']} {_filler(1)}\n\n## Supply\n{_filler(2)}\n"
    )
    (directory / "chips.md").write_text(chips, encoding="utf-8")
    (directory / "chips_reissued.md").write_text(chips.replace("14%", "15%"), encoding="utf-8")
    zh = "标题：银行业点评\n发布机构：青禾资本研究所\n日期：2026年1月5日\n\n一、息差\n" + UNIQUE["bank_gbk.txt"]
    zh += (
        "存款成本下降，贷款定价承压。" * 20 + "\n二、资产质量\n" + "不良率稳定在1.6%左右，拨备覆盖率充足。" * 20 + "\n"
    )
    (directory / "bank_gbk.txt").write_bytes(zh.encode("gb18030"))
    (directory / "oil.html").write_text(
        "<html><head><title>Oil Monthly</title><meta name='publisher' content='Lakeside'></head><body>"
        f"<nav>Home</nav><h1>Oil Monthly</h1><h2>Prices</h2><p>{UNIQUE['oil.html']} {_filler(3)}</p>"
        f"<h2>Outlook</h2><p>{_filler(4)}</p></body></html>",
        encoding="utf-8",
    )
    make_pdf(
        directory / "copper.pdf",
        [
            [
                "Publisher: Harborline Research",
                "Date: 2026-04-02",
                "1. Supply",
                UNIQUE["copper.pdf"],
                *_filler(5, 120).split(". "),
            ]
        ],
    )
    records = [
        {"id": f"n{i}", "title": f"News {i}", "date": "2026-05-0" + str(i + 1), "text": _filler(10 + i)}
        for i in range(3)
    ]
    (directory / "news.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{broken\n")
    (directory / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    (directory / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200))
    (directory / "sheet.xlsx").write_bytes(b"PK\x03\x04")
    (directory / "empty.md").write_bytes(b"")
    return directory


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("pt")
    corpus = make_corpus(base / "corpus")
    output = base / "out"
    result = build_pt_cli([str(corpus)], str(tiny_model), str(output), "--block-size", "64", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "pt corpus written" in result.stdout
    return corpus, output


def test_manifest_counts(built: tuple[Path, Path]) -> None:
    _, output = built
    manifest = json.loads((output / "manifest.json").read_text())
    for key in ("documents", "tokens", "blocks", "tokens_dropped", "rejected"):
        assert isinstance(manifest[key], int), key
    assert manifest["documents"] == 7  # chips, gbk, oil, pdf, 3 news; the reissue is a duplicate
    assert manifest["dropped"]["near_duplicate"] == 1
    assert manifest["rejected"] == 5  # broken pdf, png-as-txt, xlsx, empty, bad JSONL line
    assert manifest["tokens"] == manifest["blocks"] * 64 + manifest["tokens_dropped"]
    assert 0 <= manifest["tokens_dropped"] < 64
    assert all(len(entry["sha256"]) == 64 for entry in manifest["inputs"])
    listed = {f["path"] for f in manifest["files"]}
    assert {"documents.jsonl", "rejected.jsonl", "dropped.jsonl"} <= listed


def test_rejected_report(built: tuple[Path, Path]) -> None:
    _, output = built
    lines = [json.loads(line) for line in (output / "rejected.jsonl").read_text().splitlines()]
    reasons = {Path(r["path"].split("#")[0]).name: r["reason"] for r in lines}
    assert set(reasons) == {"broken.pdf", "image.txt", "sheet.xlsx", "empty.md", "news.jsonl"}
    assert "binary content" in reasons["image.txt"] and "empty file" in reasons["empty.md"]
    dropped = [json.loads(line) for line in (output / "dropped.jsonl").read_text().splitlines()]
    assert len(dropped) == 1 and "near duplicate" in dropped[0]["reason"]


def test_blocks_decode_back_to_the_sources(built: tuple[Path, Path], tiny_model: Path) -> None:
    _, output = built
    tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    table = pq.read_table(sorted((output / "data").glob("*.parquet")))
    manifest = json.loads((output / "manifest.json").read_text())
    assert table.num_rows == manifest["blocks"]
    rows = table.to_pylist()
    assert all(len(r["input_ids"]) == 64 for r in rows)
    stream = [t for r in rows for t in r["input_ids"]]
    indexed = [json.loads(line) for line in (output / "documents.jsonl").read_text().splitlines()]
    documents = [d for d in indexed if d["split"] == "train"]
    assert sum(d["tokens"] for d in documents) == manifest["tokens"]  # no token lost on the way
    # Cut the stream at the recorded boundaries and check each document against its source.
    starts = [sum(d["tokens"] for d in documents[:i]) for i in range(len(documents))]
    for doc, start in zip(documents, starts, strict=True):
        ids = stream[start : start + doc["tokens"]]
        if start + doc["tokens"] > len(stream):
            continue  # the tail of the last document sits in the dropped partial block
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        text = tokenizer.decode(ids, skip_special_tokens=True)
        name = Path(doc["source"].split("#")[0]).name
        if name in UNIQUE:
            assert UNIQUE[name] in text, name
        assert text.startswith(("Title: ", "标题：")) and doc["title"] in text.split("\n", 1)[0]
    # Segment metadata agrees with the documents index.
    for row in rows:
        for start, doc_index, offset in zip(
            row["segment_starts"], row["segment_docs"], row["segment_offsets"], strict=True
        ):
            if offset == 0:
                assert row["input_ids"][start] == tokenizer.bos_token_id
            assert indexed[doc_index]["split"] == "train" and offset < indexed[doc_index]["tokens"]


def test_heldout_documents_are_whole_and_never_in_training_blocks(built: tuple[Path, Path], tiny_model: Path) -> None:
    from deepmoney.config import load_config
    from deepmoney.data.document import Document
    from deepmoney.data.ingest import read_documents, resolve_inputs
    from deepmoney.data.split import is_heldout
    from deepmoney.storage import Storage

    corpus, output = built
    manifest = json.loads((output / "manifest.json").read_text())
    indexed = [json.loads(line) for line in (output / "documents.jsonl").read_text().splitlines()]
    heldout = [d for d in indexed if d["split"] == "heldout"]
    rows = pq.read_table(sorted((output / "heldout").glob("validation-*.parquet"))).to_pylist()
    assert manifest["heldout"]["documents"] == len(heldout) == len(rows) >= 1
    assert manifest["heldout"]["tokens"] == sum(d["tokens"] for d in heldout) == sum(len(r["input_ids"]) for r in rows)
    for row in rows:  # one whole document per row
        doc = indexed[row["segment_docs"][0]]
        assert doc["split"] == "heldout" and len(row["input_ids"]) == doc["tokens"]
    trained = {
        d for r in pq.read_table(sorted((output / "data").glob("*.parquet"))).to_pylist() for d in r["segment_docs"]
    }
    assert not trained & {d["index"] for d in heldout}
    # The side is a function of the cleaned text alone, so synth and build-pt agree on every document.
    storage, config = Storage(), load_config()
    files = resolve_inputs([str(corpus)], storage).files
    texts = {doc.source: doc.text for ref in files for doc in read_documents(ref, storage, config.data, {})
             if isinstance(doc, Document)}  # fmt: skip
    assert sum(d["source"] in texts for d in indexed) == len(indexed)
    for doc in indexed:
        if doc["source"] in texts:
            assert is_heldout(texts[doc["source"]], manifest["heldout"]["fraction"]) == (doc["split"] == "heldout")


def test_loadable_with_datasets(built: tuple[Path, Path], tmp_path: Path) -> None:
    from datasets import load_dataset

    _, output = built
    dataset = load_dataset("parquet", data_dir=str(output / "data"), split="train", cache_dir=str(tmp_path))
    manifest = json.loads((output / "manifest.json").read_text())
    assert len(dataset) == manifest["blocks"]
    assert dataset.features["input_ids"].feature.dtype == "int32"


def test_rerun_reuses_and_config_change_rebuilds(built: tuple[Path, Path], tiny_model: Path, tmp_path: Path) -> None:
    corpus, output = built
    before = json.loads((output / "manifest.json").read_text())
    again = build_pt_cli([str(corpus)], str(tiny_model), str(output), "--block-size", "64", "--quiet")
    assert again.returncode == 0 and "reused" in again.stdout
    assert json.loads((output / "manifest.json").read_text())["created_at"] == before["created_at"]
    copy = tmp_path / "copy"
    build_pt_cli([str(corpus)], str(tiny_model), str(copy), "--block-size", "16", "--quiet")
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  shard_rows: 50\n")
    rebuilt = run_cli(
        "--config",
        str(config),
        "data",
        "build-pt",
        "--input",
        str(corpus),
        "--tokenizer",
        str(tiny_model),
        "--block-size",
        "32",
        "--output",
        str(copy),
        "--quiet",
    )
    # Other settings on an existing corpus: refused, naming what differs, until --overwrite asks for it.
    assert_clean_error(
        rebuilt, "other inputs or settings", "data.block_size (16 -> 32)", "data.shard_rows", "--overwrite"
    )
    assert rebuilt.returncode == 2 and len(rebuilt.stderr.strip().splitlines()) == 1
    assert json.loads((copy / "manifest.json").read_text())["block_size"] == 16  # untouched
    flags = ("--block-size", "32", "--output", str(copy), "--quiet", "--overwrite")
    rebuilt = run_cli("--config", str(config), "data", "build-pt", "--input", str(corpus), "--tokenizer",
                      str(tiny_model), *flags)  # fmt: skip
    assert rebuilt.returncode == 0 and "written" in rebuilt.stdout
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["block_size"] == 32
    shards = sorted((copy / "data").iterdir())
    # The old, more numerous shards are gone: every name counts the same total.
    assert all(p.name.endswith(f"-of-{len(shards):05d}.parquet") for p in shards)
    rows = [pq.read_metadata(p).num_rows for p in shards]
    assert sum(rows) == manifest["blocks"]
    assert all(r >= 50 for r in rows[:-1])  # a shard closes at the first task boundary past shard_rows


def test_strict_stops_at_the_first_bad_input(built: tuple[Path, Path], tiny_model: Path, tmp_path: Path) -> None:
    corpus, _ = built
    result = build_pt_cli([str(corpus)], str(tiny_model), str(tmp_path / "strict"), "--strict", "--quiet")
    assert_clean_error(result, "broken.pdf", "--strict")
    assert not (tmp_path / "strict").exists()
    assert not list(tmp_path.glob(".strict.staging-*"))


def test_missing_and_oversized_inputs_are_recorded(tiny_model: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.md"
    good.write_text("# Good\n\n" + _filler(7), encoding="utf-8")
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as handle:  # a 50 MB file on a single line
        handle.write(b"rates " * (50_000_000 // 6))
    out = tmp_path / "out"
    result = build_pt_cli(
        [str(good), str(huge), str(tmp_path / "missing.md")], str(tiny_model), str(out), "--block-size", "32", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    rejected = {Path(r["path"]).name: r["reason"] for r in map(json.loads, (out / "rejected.jsonl").open())}
    assert "no such file or directory" in rejected["missing.md"]
    assert "50.0 MB" in rejected["huge.txt"] and "max_document_mb" in rejected["huge.txt"]
    assert json.loads((out / "manifest.json").read_text())["documents"] == 1


def test_a_large_single_line_document_is_tokenized_in_pieces(tiny_model: Path, tmp_path: Path) -> None:
    line = tmp_path / "one_line.txt"
    line.write_text(" ".join(_filler(i, 50) for i in range(600)), encoding="utf-8")  # ≈ 1.3 MB, no newline
    out = tmp_path / "out"
    result = build_pt_cli(
        [str(line)],
        str(tiny_model),
        str(out),
        "--block-size",
        "512",
        "--quiet",
        env={"DEEPMONEY_DATA__SUMMARY__ENABLED": "false"},
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    expected = len(tokenizer.encode(line.read_text(), add_special_tokens=False)) + 2  # BOS + EOS
    assert abs(manifest["tokens"] - expected) <= expected * 0.001  # piece cuts fall on spaces


def test_no_usable_documents_is_an_error_that_writes_nothing(tiny_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.bin").write_bytes(b"\x00\x01")
    (bad / "tiny.md").write_text("too short")
    result = build_pt_cli([str(bad)], str(tiny_model), str(tmp_path / "out"), "--quiet")
    assert_clean_error(result, "no usable documents", "1 inputs rejected", "1 documents dropped", "nothing was written")
    assert "x.bin: unsupported file type" in result.stderr  # each reason is on stderr
    assert not (tmp_path / "out").exists()  # a run that produced nothing publishes nothing
    assert not list(tmp_path.glob(".out.staging-*"))


def _summary_responder(model: str, messages: list[dict[str, str]]) -> str:
    title = re.search(r"(?:Title|标题)[:：]\s*(.+)", messages[-1]["content"]).group(1)
    return f"SUMMARY OF {title.strip()} by the scripted summarizer."


def test_llm_summarizer_writes_the_headers_and_resumes_from_its_cache(
    built: tuple[Path, Path], tiny_model: Path, tmp_path: Path
) -> None:
    from deepmoney.llm.scripted_server import Faults, ScriptedOpenAIServer

    corpus, _ = built
    with ScriptedOpenAIServer(responder=_summary_responder, models=("summarizer-7b",),
                              faults=Faults(rate=0.3, timeout_sleep=3.0)) as server:  # fmt: skip
        env = {"DEEPMONEY_SUMMARIZER__ENDPOINT": f"{server.base_url}#summarizer-7b",
               "DEEPMONEY_SUMMARIZER__TIMEOUT": "2"}  # fmt: skip
        result = build_pt_cli([corpus], tiny_model, tmp_path / "out", "--block-size", "64", "--quiet", env=env)
        assert result.returncode == 0, result.stderr
        asked = len(server.completed())
        again = build_pt_cli([corpus], tiny_model, tmp_path / "out", "--block-size", "64", "--quiet", env=env)
        assert again.returncode == 0 and "reused" in again.stdout and len(server.completed()) == asked
        bad = {**env, "DEEPMONEY_SUMMARIZER__ENDPOINT": f"{server.base_url}#no-such-model"}
        assert_clean_error(build_pt_cli([corpus], tiny_model, tmp_path / "bad", env=bad), "no-such-model", "404")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["summarizer"] == f"llm:{server.base_url}#summarizer-7b"
    documents = [json.loads(line) for line in (tmp_path / "out" / "documents.jsonl").open()]
    assert {d["summary"] for d in documents} == {"llm"} and asked >= len(documents)
    assert max(server.completed().values()) == 1
    tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    blocks = pq.read_table(sorted((tmp_path / "out" / "data").glob("*.parquet"))).column("input_ids").to_pylist()
    stream = [t for block in blocks for t in block]
    header = tokenizer.decode(stream[: documents[0]["tokens"]], skip_special_tokens=True)
    assert f"SUMMARY OF {documents[0]['title']}" in header


@pytest.fixture(scope="module")
def many_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = tmp_path_factory.mktemp("many")
    for i in range(1500):
        (corpus / f"doc{i:04d}.md").write_text(f"# Note {i}\n\n{_filler(1000 + i, 400)}\n", encoding="utf-8")
    (corpus / f"doc{1500:04d}.md").write_text((corpus / "doc0042.md").read_text(), encoding="utf-8")  # a duplicate
    return corpus


def _build_args(corpus: Path, model: Path, out: Path) -> list[str]:
    """The build-pt command line, for tests that run it as a process they can signal."""
    return [sys.executable, "-m", "deepmoney", "data", "build-pt", "--input", str(corpus), "--tokenizer", str(model),
            "--block-size", "64", "--output", str(out), "--quiet"]  # fmt: skip


# Small shards, so that the build checkpoints often (at every shard boundary).
CHECKPOINT_OFTEN = {"DEEPMONEY_DATA__SHARD_ROWS": "400"}


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_run_resumes_to_the_same_result(
    tiny_model: Path, many_docs: Path, tmp_path: Path, how: signal.Signals
) -> None:
    reference = tmp_path / "reference"
    ref = build_pt_cli([many_docs], tiny_model, reference, "--block-size", "64", "--quiet", env=CHECKPOINT_OFTEN)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "out"
    args = _build_args(many_docs, tiny_model, out)
    env = {**os.environ, **CHECKPOINT_OFTEN}
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.staging-*/state/checkpoint.json")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(how)
    _, stderr = proc.communicate(timeout=60)
    assert not out.exists(), "a partial output was published"
    if how == signal.SIGTERM:
        assert proc.returncode == EXIT_SIGTERM and "resume" in stderr and "Traceback" not in stderr
    assert list(tmp_path.glob(".out.staging-*/state/checkpoint.json")), "the work directory was kept for a resume"

    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr
    assert "resuming from a checkpoint" in again.stderr
    assert not list(tmp_path.glob(".out.staging-*"))
    resumed = json.loads((out / "manifest.json").read_text())
    expected = json.loads((reference / "manifest.json").read_text())
    for key in ("documents", "documents_read", "chapters", "tokens", "blocks", "tokens_dropped", "dropped"):
        assert resumed[key] == expected[key], key
    assert resumed["dropped"]["exact_duplicate"] == 1
    # Byte for byte the same shards and reports as the uninterrupted build.
    assert resumed["files"] == expected["files"]


def test_a_second_build_of_the_same_output_is_refused_while_one_runs(
    tiny_model: Path, many_docs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = _build_args(many_docs, tiny_model, out)
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".out.staging-*/out")) and time.monotonic() < deadline:
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)  # holds its lock, however slow the second one starts
        second = build_pt_cli([many_docs], tiny_model, out, "--block-size", "64", "--quiet")
        assert_clean_error(second, "another process is building")
    finally:
        first.send_signal(signal.SIGCONT)
        first.communicate(timeout=300)
    assert first.returncode == 0
    assert json.loads((out / "manifest.json").read_text())["documents"] == 1500


@pytest.mark.skipif(not SAMPLE_CORPUS.is_dir(), reason="sample corpus not present")
def test_sample_corpus_builds_cleanly(tiny_model: Path, tmp_path: Path) -> None:
    result = build_pt_cli(
        [str(SAMPLE_CORPUS)], str(tiny_model), str(tmp_path / "out"), "--block-size", "128", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["rejected"] == 0, (tmp_path / "out" / "rejected.jsonl").read_text()
    assert manifest["documents"] >= 20 and manifest["dedup_removed"] >= 1
    languages = {json.loads(line)["language"] for line in (tmp_path / "out" / "documents.jsonl").open()}
    assert languages == {"en", "zh"}
