"""`data build-pt --shard K/N` + `data merge-pt`: the same bytes as one unsharded build, for 1, 2 and 3 shards.

Built through the real CLI on the mixed test corpus (every format, a duplicate, rejected files, a JSONL
file split into chunks that land in different shards, small Parquet shards), on the bundled sample
corpus, and on ../shared/data when present; then the shard merge's refusals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLE_CORPUS, assert_clean_error, build_pt_cli, run_cli
from tests.test_pt import _filler, make_corpus

# JSONL in chunks of 2 records (tasks of one file in different shards); Parquet shards of 40 rows.
SMALL_TASKS = {"DEEPMONEY_DATA__RECORDS_PER_TASK": "2", "DEEPMONEY_DATA__SHARD_ROWS": "40"}
VOLATILE = ("seconds", "created_at")  # differ between any two builds, sharded or not


def _files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _manifest(directory: Path) -> dict:
    manifest = json.loads((directory / "manifest.json").read_text())
    return {k: v for k, v in manifest.items() if k not in VOLATILE}


def _sharded(inputs: list[Path], tokenizer: Path, root: Path, n: int, *flags: str,
             env: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Build the N shards and merge them; the merged output."""
    shards = []
    for k in range(n):
        shard = root / f"shard-{k}-of-{n}"
        built = build_pt_cli(inputs, tokenizer, shard, "--shard", f"{k}/{n}", *flags, env=env)
        assert built.returncode == 0, built.stderr[-3000:]
        assert f"pt shard {k}/{n} written" in built.stdout
        shards.append(str(shard))
    merged = root / f"merged-{n}"
    result = run_cli("data", "merge-pt", "--input", *reversed(shards), "--output", str(merged), *flags, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pt corpus written" in result.stdout
    return merged


def _assert_same_build(reference: Path, merged: Path) -> None:
    expected, got = _files(reference), _files(merged)
    assert sorted(got) == sorted(expected)
    for name in expected:
        if name != "manifest.json":
            assert got[name] == expected[name], f"{name} differs"
    assert _manifest(merged) == _manifest(reference)


@pytest.mark.parametrize("corpus", ["mixed", "sample"])
def test_sharded_builds_write_the_unsharded_bytes(tiny_model: Path, tmp_path: Path, corpus: str) -> None:
    if corpus == "sample" and not SAMPLE_CORPUS.is_dir():
        pytest.skip("sample corpus not present")
    inputs = [make_corpus(tmp_path / "corpus")] if corpus == "mixed" else [SAMPLE_CORPUS]
    flags = ("--block-size", "64", "--quiet")
    reference = tmp_path / "unsharded"
    built = build_pt_cli(inputs, tiny_model, reference, *flags, env=SMALL_TASKS)
    assert built.returncode == 0, built.stderr[-3000:]
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["documents"] > 0 and len([f for f in manifest["files"] if f["path"].startswith("data/")]) > 1
    if corpus == "mixed":
        assert manifest["rejected"] > 0 and manifest["dedup_removed"] > 0
    for n in (1, 2, 3):
        _assert_same_build(reference, _sharded(inputs, tiny_model, tmp_path, n, *flags, env=SMALL_TASKS))


@pytest.mark.realdata
def test_sharded_build_of_the_shared_documents_is_the_unsharded_one(
    tiny_model: Path, tmp_path: Path, shared_data: Path
) -> None:
    inputs = [shared_data / name for name in ("fomc_minutes", "fomc_statements", "wikinews_economy",
                                              "cn_financial_laws")]  # fmt: skip
    flags = ("--block-size", "128", "--quiet")
    reference = tmp_path / "unsharded"
    built = build_pt_cli(inputs, tiny_model, reference, *flags)
    assert built.returncode == 0, built.stderr[-3000:]
    for n in (2, 3):
        _assert_same_build(reference, _sharded(inputs, tiny_model, tmp_path, n, *flags))


def test_a_shard_and_a_merge_are_reused_and_mismatched_shards_refused(tiny_model: Path, tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus")
    flags = ("--block-size", "64", "--quiet")
    merged = _sharded([corpus], tiny_model, tmp_path, 2, *flags, env=SMALL_TASKS)
    shard0, shard1 = tmp_path / "shard-0-of-2", tmp_path / "shard-1-of-2"
    again = build_pt_cli([corpus], tiny_model, shard0, "--shard", "0/2", *flags, env=SMALL_TASKS)
    assert again.returncode == 0 and "pt shard 0/2 reused" in again.stdout
    remerged = run_cli("data", "merge-pt", "--input", str(shard0), str(shard1), "--output", str(merged), *flags,
                       env=SMALL_TASKS)  # fmt: skip
    assert remerged.returncode == 0 and "reused (up to date)" in remerged.stdout

    other = tmp_path / "other-shard-1"  # shard 1 of a build with another block size
    assert build_pt_cli([corpus], tiny_model, other, "--shard", "1/2", "--block-size", "32", "--quiet",
                        env=SMALL_TASKS).returncode == 0  # fmt: skip
    out = tmp_path / "refused"
    cases = [
        (["--input", str(shard0)], "shards 1 of 2 are missing"),
        (["--input", str(shard0), str(shard0), str(shard1)], "are both shard 0/2"),
        (["--input", str(shard0), str(other)], "is a shard of another build"),
        (["--input", str(shard0), str(shard1), "--block-size", "32"], "other data settings", "data.block_size"),
        (["--input", str(corpus)], "no manifest.json there"),
        (["--input", str(merged)], "holds a pt-corpus, not a pt-shard"),
    ]
    for args, *needles in cases:
        result = run_cli("data", "merge-pt", *args, "--output", str(out), "--quiet", env=SMALL_TASKS)
        assert_clean_error(result, *needles)
        assert result.returncode == 2 and not out.exists()
    missing = build_pt_cli([tmp_path / "no-such-dir"], tiny_model, tmp_path / "empty", "--shard", "0/2", "--quiet")
    assert_clean_error(missing, "no usable input files", "no-such-dir")
    assert not (tmp_path / "empty").exists()
    for bad in ("2/2", "1-2", "a/b"):
        refused = build_pt_cli([corpus], tiny_model, tmp_path / "bad", "--shard", bad, "--quiet")
        assert_clean_error(refused, f"--shard {bad}: expected K/N")
        assert not (tmp_path / "bad").exists()


def test_an_interrupted_shard_resumes_with_the_tasks_it_had_prepared(tiny_model: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "many"
    corpus.mkdir()
    for i in range(800):
        (corpus / f"doc{i:04d}.md").write_text(f"# Note {i}\n\n{_filler(3000 + i, 300)}\n", encoding="utf-8")
    flags = ("--block-size", "64", "--quiet")
    env = {"DEEPMONEY_DATA__WORKERS": "1"}  # one task at a time, so that the kill lands between tasks
    reference = tmp_path / "unsharded"
    assert build_pt_cli([corpus], tiny_model, reference, *flags, env=env).returncode == 0
    shard0 = tmp_path / "shard-0"
    args = [sys.executable, "-m", "deepmoney", "data", "build-pt", "--input", str(corpus), "--tokenizer",
            str(tiny_model), "--output", str(shard0), "--shard", "0/2", *flags]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob(".shard-0.staging-*/out/tasks/task-*.npz"))) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not shard0.exists(), "a partial shard was published"
    resumed = build_pt_cli([corpus], tiny_model, shard0, "--shard", "0/2", *flags, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming shard 0/2" in resumed.stderr
    shard1 = tmp_path / "shard-1"
    assert build_pt_cli([corpus], tiny_model, shard1, "--shard", "1/2", *flags, env=env).returncode == 0
    merged = tmp_path / "merged"
    result = run_cli("data", "merge-pt", "--input", str(shard0), str(shard1), "--output", str(merged), *flags, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_build(reference, merged)
