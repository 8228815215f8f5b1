"""The news intake: the subjective/objective classifier trained on the shipped set, and a resumable stream.

The classifier is trained once per session (conftest `intake_classifier`) and scored on its held-out
split; `deepmoney intake train --register` logs and registers a run in a real MLflow server; `intake run`
labels real Wikinews stories with planted rewrites, and a run killed with SIGKILL resumes to exactly
the verdicts of an uninterrupted run.
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

from deepmoney.config import load_config
from deepmoney.errors import UserError
from deepmoney.intake.classifier import SPECIAL_TOKENS, Classifier
from deepmoney.intake.labelled import LABELS, SHIPPED, read_labelled, split
from deepmoney.intake.stream import FORWARD, VERDICTS, run_intake
from tests.conftest import ROOT, SHARED_DATA, assert_clean_error, run_cli

WIKINEWS = SHARED_DATA / "wikinews_economy" / "wikinews_economy.jsonl"
TINY = {"DEEPMONEY_INTAKE__CLASSIFIER__EPOCHS": "1", "DEEPMONEY_INTAKE__CLASSIFIER__HIDDEN_SIZE": "32",
        "DEEPMONEY_INTAKE__CLASSIFIER__HEADS": "2", "DEEPMONEY_INTAKE__CLASSIFIER__VOCAB_SIZE": "1000"}  # fmt: skip


def test_the_shipped_set_is_balanced_and_bilingual() -> None:
    examples = read_labelled()
    assert len(examples) >= 400
    counts = {(lang, label): sum(e.language == lang and e.label == label for e in examples)
              for lang in ("en", "zh") for label in LABELS}  # fmt: skip
    assert min(counts.values()) == max(counts.values()), counts
    train, heldout = split(examples, 0.2, 0)
    assert not {e.text for e in train} & {e.text for e in heldout}
    assert len(train) + len(heldout) == len(examples)


def test_the_classifier_reaches_its_accuracy_on_held_out_sentences(intake_classifier: tuple[Path, object]) -> None:
    directory, manifest = intake_classifier
    # the bar: trained on CPU in under a minute, at least 0.85 accuracy on the held-out split
    assert manifest.train_seconds < 60, manifest.train_seconds
    rows = [json.loads(line) for line in (directory / "heldout.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == manifest.heldout_examples >= 100
    accuracy = sum(r["label"] == r["predicted"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(manifest.metrics["accuracy"]) and accuracy >= 0.85, manifest.metrics
    for language in ("en", "zh"):
        mine = [r for r in rows if r["language"] == language]
        assert sum(r["label"] == r["predicted"] for r in mine) / len(mine) == pytest.approx(
            manifest.metrics[f"accuracy_{language}"])  # fmt: skip
    assert manifest.metrics["f1_macro"] >= 0.85
    # the directory is a Hugging Face sequence classifier any tool can load, labelling fresh sentences
    verdicts = Classifier.load(directory).predict([
        "The central bank cut its one-year lending rate by 10 basis points to 3.35% on Monday.",
        "Only a fool would keep buying these bonds; the government has clearly lost its mind.",
    ])  # fmt: skip
    assert [v.label for v in verdicts] == ["objective", "subjective"]
    assert all(0.5 < v.score <= 1.0 for v in verdicts)


def test_intake_train_logs_and_registers_in_mlflow(mlflow_server: str, tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": mlflow_server, **TINY}
    result = run_cli("intake", "train", "--output", str(tmp_path / "clf"), "--register", env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["registered"]["version"] == 1 and summary["mlflow_run_id"]
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.metrics["accuracy"] == pytest.approx(summary["metrics"]["accuracy"])
    assert {"f1_macro", "accuracy_en", "accuracy_zh"} <= set(run.data.metrics)
    version = client.get_model_version(load_config().intake.registered_name, "1")
    assert version.run_id == summary["mlflow_run_id"]
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/config.json", "model/model.safetensors", "model/tokenizer.json"} <= logged
    again = run_cli("intake", "train", "--output", str(tmp_path / "clf"), env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["reused"] is True


def test_the_vocabulary_is_the_same_in_every_process(tmp_path: Path) -> None:
    # the tokenizers trainer orders its pieces by a per-process hash seed (docs/intake.md); fitted in two
    # processes, the vocabulary and the five special tokens must come out the same
    script = ("import json, sys; from deepmoney.config import load_config; from deepmoney.intake.labelled import "
              "read_labelled; from deepmoney.intake.classifier import _tokenizer; "
              "tok = _tokenizer([e.text for e in read_labelled()], load_config().intake.classifier); "
              "json.dump([tok.get_vocab(), tok.all_special_tokens], open(sys.argv[1], 'w'))")  # fmt: skip
    fitted = []
    for i in range(2):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{i}.json")], check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONHASHSEED": str(i)}, capture_output=True)  # fmt: skip
        fitted.append(json.loads((tmp_path / f"{i}.json").read_text()))
    assert fitted[0] == fitted[1]
    vocabulary, special = fitted[0]
    assert sorted(special) == sorted(SPECIAL_TOKENS)
    assert len(vocabulary) > 1000 and any(token.startswith("##") for token in vocabulary)


def _stream(path: Path, count: int) -> list[dict]:
    """Real dated Wikinews stories, each followed now and then by a wire rewrite of an earlier one."""
    if not WIKINEWS.is_file():
        pytest.skip(f"{WIKINEWS} not present")
    stories = [json.loads(line) for line in WIKINEWS.open(encoding="utf-8")]
    stories = [s for s in stories if len(s["text"].split()) > 120][:count]
    items = []
    for i, story in enumerate(stories):
        items.append({"id": story["id"], "text": story["text"], "date": story["date"]})
        if i % 10 == 9:
            earlier = stories[i - 5]
            items.append({"id": f"{earlier['id']}-rewrite", "text": "UPDATE: " + earlier["text"] + " More later.",
                          "date": story["date"]})  # fmt: skip
    items.append({"id": "opinion", "text": "Frankly this whole rally is a bubble, and anyone buying now deserves "
                  "the losses that are surely coming."})  # fmt: skip
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return items


def test_intake_run_labels_dedups_and_forwards(intake_classifier: tuple[Path, object], tmp_path: Path) -> None:
    items = _stream(tmp_path / "news.jsonl", 60)
    result = run_cli("intake", "run", "--model", str(intake_classifier[0]), "--input", str(tmp_path / "news.jsonl"),
                     "--output", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    verdicts = [json.loads(line) for line in (tmp_path / "out" / VERDICTS).read_text().splitlines()]
    assert [v["id"] for v in verdicts] == [item["id"] for item in items] and summary["items"] == len(items)
    by_id = {v["id"]: v for v in verdicts}
    for item in items:
        if item["id"].endswith("-rewrite"):
            assert by_id[item["id"]]["duplicate_of"] == item["id"].removesuffix("-rewrite")
            assert not by_id[item["id"]]["forward"]
    assert by_id["opinion"]["label"] == "subjective" and not by_id["opinion"]["forward"]
    objective = sum(v["label"] == "objective" for v in verdicts)
    # Wikinews is news reporting: the (reproducible) default training labels 56 of these 60 stories objective
    assert objective >= 0.75 * len(items)
    forwarded = [json.loads(line) for line in (tmp_path / "out" / FORWARD).read_text().splitlines()]
    expected = [v["id"] for v in verdicts if v["label"] == "objective" and v["duplicate_of"] is None]
    assert [f["id"] for f in forwarded] == expected and summary["forwarded"] == len(expected)
    assert all(f["intake"]["forward"] and f["text"] for f in forwarded)


def test_a_killed_intake_run_resumes_to_the_same_verdicts(intake_classifier: tuple[Path, object],
                                                          tmp_path: Path) -> None:  # fmt: skip
    items = _stream(tmp_path / "news.jsonl", 600)
    model = str(intake_classifier[0])
    env = {**os.environ, "DEEPMONEY_INTAKE__BATCH_SIZE": "2"}
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "deepmoney", "-q", "intake", "run", "--model", model, "--input",
               str(tmp_path / "news.jsonl"), "--output", str(out)]  # fmt: skip
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / VERDICTS).is_file() and (out / VERDICTS).read_bytes().count(b"\n") >= 40:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    written = (out / VERDICTS).read_bytes()
    assert 40 <= written.count(b"\n") < len(items) and not (out / "manifest.json").exists()
    with (out / VERDICTS).open("ab") as handle:  # and a torn last line, as a kill in mid-write leaves one
        handle.write(b'{"id": "half-writ')
    config = load_config()
    config.intake.batch_size = 7  # operational: a different batch size resumes the same run
    resumed = run_intake(model, tmp_path / "news.jsonl", str(out), config, quiet=True)
    assert resumed.resumed and resumed.items == len(items)
    reference = run_intake(model, tmp_path / "news.jsonl", str(tmp_path / "whole"), load_config(), quiet=True)
    assert not reference.resumed
    assert (out / VERDICTS).read_text() == (tmp_path / "whole" / VERDICTS).read_text()
    assert (out / FORWARD).read_text() == (tmp_path / "whole" / FORWARD).read_text()
    assert resumed.duplicates == reference.duplicates >= len(items) // 11


def test_intake_refuses_bad_input_in_one_line(intake_classifier: tuple[Path, object], tmp_path: Path) -> None:
    model = str(intake_classifier[0])
    config = load_config()
    cases = {
        '{"id": 1, "text": "   "}\n{"id": 2, "text": 42}': "no item has a text to label",
        '{"text": "Oil rose."}': "needs an 'id'",
        '{"id": 1, "text": "Oil rose."}\n{"id": 1, "text": "Gold fell."}': "duplicate id '1'",
        "not json": "not valid JSON",
    }
    for i, (content, needle) in enumerate(cases.items()):
        news = tmp_path / f"bad{i}.jsonl"
        news.write_text(content + "\n", encoding="utf-8")
        with pytest.raises(UserError, match=needle):
            run_intake(model, news, str(tmp_path / f"out{i}"), config, quiet=True)
        assert not (tmp_path / f"out{i}").exists()  # nothing half-written
    # an item without a usable text is written as rejected, with its reason; the others are labelled
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"id": "e", "text": ""}\n{"id": "n", "text": 42}\n{"id": "a", "text": "Gold rose 2%."}\n')
    manifest = run_intake(model, mixed, str(tmp_path / "mixed"), config, quiet=True)
    verdicts = [json.loads(line) for line in (tmp_path / "mixed" / VERDICTS).read_text().splitlines()]
    assert [v["id"] for v in verdicts] == ["e", "n", "a"] and manifest.rejected == 2 and manifest.items == 3
    assert all("'text' must be a non-empty string" in v["rejected"] and v["label"] is None for v in verdicts[:2])
    assert verdicts[2]["rejected"] is None and verdicts[2]["label"] in LABELS
    assert [list(v) for v in verdicts[:1]] == [list(verdicts[2])]  # one shape for every line
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "a", "text": "The index rose 2% on Friday."}\n', encoding="utf-8")
    causal = tmp_path / "causal"
    causal.mkdir()
    (causal / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(UserError, match="is not a sequence classifier"):
        run_intake(str(causal), good, str(tmp_path / "o"), config)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"],
                                                    "id2label": {"0": "NEGATIVE", "1": "POSITIVE"}}))  # fmt: skip
    with pytest.raises(UserError, match="must include objective and subjective"):
        run_intake(str(labels), good, str(tmp_path / "o"), config)
    # the same output from another input is refused, not overwritten
    run_intake(model, good, str(tmp_path / "done"), config, quiet=True)
    other = tmp_path / "other.jsonl"
    other.write_text('{"id": "b", "text": "Gold fell 1% on Monday."}\n', encoding="utf-8")
    with pytest.raises(UserError, match="--overwrite"):
        run_intake(model, other, str(tmp_path / "done"), config, quiet=True)
    # through the CLI: exit 2, one line, no traceback
    unknown = tmp_path / "unknown-labels.jsonl"
    unknown.write_text('{"text": "Stocks rose.", "label": "neutral"}\n', encoding="utf-8")
    result = run_cli("intake", "train", "--output", str(tmp_path / "t"), "--data", str(unknown))
    assert result.returncode == 2
    assert_clean_error(result, "unknown label 'neutral'", "objective, subjective")
    assert not (tmp_path / "t").exists()
    result = run_cli("intake", "run", "--model", str(causal), "--input", str(good), "--output", str(tmp_path / "c"))
    assert result.returncode == 2
    assert_clean_error(result, "is not a sequence classifier")
    assert SHIPPED.is_file()
