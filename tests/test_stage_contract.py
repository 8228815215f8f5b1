"""The output contract of every stage (`deepmoney.stage`), through the real CLI.

For `model init`, `data build-pt`, `synth`, `train` and `evaluate` alike: the same command again
reuses the output; other settings are refused with one line naming the settings that differ and
`--overwrite`, leaving the output untouched; `--overwrite` replaces it; a non-empty directory that
is not an output of that stage is never written into, whatever the flags; published files follow
the umask and no lock file is left in an output.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deepmoney.llm.scripted_server import ScriptedOpenAIServer
from tests.conftest import SAMPLE_CORPUS, CliResult, assert_clean_error, run_cli
from tests.test_synth import MODELS, ROLE_ARGS, scripted_analyst

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SAMPLE_CORPUS.is_dir(), reason="sample corpus not present")]
QUIET = {"MLFLOW_TRACKING_URI": "", "DEEPMONEY_DATA__WORKERS": "1"}


@pytest.fixture(scope="module")
def analyst() -> Iterator[str]:
    with ScriptedOpenAIServer(responder=scripted_analyst, models=MODELS) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def pt_corpus(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    out = tmp_path_factory.mktemp("contract") / "pt"
    result = run_cli(
        "data",
        "build-pt",
        "--input",
        str(SAMPLE_CORPUS),
        "--tokenizer",
        str(tiny_model),
        "--output",
        str(out),
        "--block-size",
        "128",
        "-q",
        env={**QUIET, "DEEPMONEY_DATA__HELDOUT_FRACTION": "0.3"},
    )
    assert result.returncode == 0, result.stderr
    return out


Stage = Callable[[Path, str], CliResult]  # (output, variant "a" or "b", extra flags...) -> the command's result


def _stages(tiny_model: Path, tokenizer_corpus: Path, pt_corpus: Path, analyst: str) -> dict[str, tuple]:
    """Each stage: how to run it with variant a or b of one setting, and the setting's name in the refusal."""
    roles = [a.format(url=analyst) for a in ROLE_ARGS]

    def model_init(out: Path, variant: str, *extra: str) -> CliResult:
        return run_cli("model", "init", "--tokenizer-corpus", str(tokenizer_corpus), "--output", str(out),
                       "--seed", "0" if variant == "a" else "1", *extra, env=QUIET)  # fmt: skip

    def build_pt(out: Path, variant: str, *extra: str) -> CliResult:
        return run_cli("data", "build-pt", "--input", str(tokenizer_corpus), "--tokenizer", str(tiny_model),
                       "--output", str(out), "--block-size", "64" if variant == "a" else "32", "-q", *extra,
                       env={**QUIET, "DEEPMONEY_DATA__MIN_CHARS": "10"})  # fmt: skip

    def synth(out: Path, variant: str, *extra: str) -> CliResult:
        return run_cli("synth", "--input", str(SAMPLE_CORPUS), "--output", str(out), *roles, "--max-chapters", "4",
                       "--questions-per-chapter", "1" if variant == "a" else "2", "-q", *extra, env=QUIET)  # fmt: skip

    def train(out: Path, variant: str, *extra: str) -> CliResult:
        return run_cli("-q", "train", "--stage", "pt", "--model", str(tiny_model), "--data", str(pt_corpus),
                       "--output", str(out), "--launcher", "local", "--nproc", "1", "--zero", "0", "--micro-batch",
                       "2", "--max-steps", "2" if variant == "a" else "3", *extra, env=QUIET)  # fmt: skip

    def evaluate(out: Path, variant: str, *extra: str) -> CliResult:
        return run_cli("-q", "evaluate", "--model", str(tiny_model), "--data", str(pt_corpus), "--output", str(out),
                       "--no-chain", "--batch-size", "4", "--max-new-tokens", "4" if variant == "a" else "8", *extra,
                       env=QUIET)  # fmt: skip

    return {
        "model init": (model_init, "model.seed (0 -> 1)", "base-model"),
        "data build-pt": (build_pt, "data.block_size (64 -> 32)", "pt-corpus"),
        "synth": (synth, "synth.questions_per_chapter (1 -> 2)", "sft-dataset"),
        "train": (train, "train.max_steps (2 -> 3)", "model"),
        "evaluate": (evaluate, "evaluate.max_new_tokens (4 -> 8)", "evaluation"),
    }


@pytest.mark.parametrize("stage", ["model init", "data build-pt", "synth", "train", "evaluate"])
def test_reuse_refuse_overwrite_and_foreign_directories(
    stage: str, tmp_path: Path, tiny_model: Path, tokenizer_corpus: Path, pt_corpus: Path, analyst: str
) -> None:
    run, setting, kind = _stages(tiny_model, tokenizer_corpus, pt_corpus, analyst)[stage]
    out = tmp_path / "out"
    first = run(out, "a")
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == kind and manifest["settings"] and manifest["fingerprint"]

    again = run(out, "a")  # the same inputs and settings: reused, nothing rewritten
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "manifest.json").read_text()) == manifest

    other = run(out, "b")  # other settings: refused in one line naming what differs, output untouched
    assert_clean_error(other, "other inputs or settings", setting, "--overwrite")
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1, other.stderr
    assert json.loads((out / "manifest.json").read_text()) == manifest

    replaced = run(out, "b", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    new = json.loads((out / "manifest.json").read_text())
    assert new["fingerprint"] != manifest["fingerprint"] and setting.split(" ")[0] in new["settings"]

    _check_published_files(out)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not ours")
    for extra in ((), ("--overwrite",)):
        refused = run(foreign, "a", *extra)
        assert_clean_error(refused, "is not empty", "not a deepmoney output")
        assert refused.returncode == 2
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def _check_published_files(out: Path) -> None:
    """Files follow the umask (the test process's 022: 0644), and the output holds no lock file."""
    umask = os.umask(0)
    os.umask(umask)
    wanted = 0o666 & ~umask
    files = [p for p in out.rglob("*") if p.is_file() and ".cache" not in p.parts]
    assert files
    for path in files:
        if path.name in ("manifest.json", "model.safetensors", "config.json") or path.suffix in (".parquet", ".jsonl"):
            assert stat.S_IMODE(path.stat().st_mode) == wanted, (path, oct(path.stat().st_mode))
    assert not [p for p in out.rglob("*.lock")] and not [p for p in out.rglob(".lock")]


def test_another_stages_output_is_never_taken(tmp_path: Path, pt_corpus: Path, tiny_model: Path) -> None:
    """A pt corpus given as the output of model init is refused as what it is, even with --overwrite."""
    result = run_cli("model", "init", "--tokenizer-corpus", str(SAMPLE_CORPUS), "--output", str(pt_corpus),
                     "--overwrite", env=QUIET)  # fmt: skip
    assert_clean_error(result, "holds a pt-corpus rather than a base-model")
    assert json.loads((pt_corpus / "manifest.json").read_text())["kind"] == "pt-corpus"


def test_model_init_refuses_a_corpus_without_usable_text(tmp_path: Path) -> None:
    corpus = tmp_path / "binary"
    corpus.mkdir()
    (corpus / "a.pdf").write_bytes(b"\x00\x01\x02 not a pdf")
    (corpus / "b.txt").write_bytes(bytes(range(256)) * 4)
    result = run_cli("model", "init", "--tokenizer-corpus", str(corpus), "--output", str(tmp_path / "m"), env=QUIET)
    assert_clean_error(result, "no usable text", "nothing was written")
    assert not (tmp_path / "m").exists()
