"""Effective (non-padding) training tokens/s of `deepmoney train` against LLaMA-Factory 0.9.5, same run.

Same tiny model, same data, same sequence length and micro-batch, one CPU process each, fp32, full
parameters, one epoch:

* pt: our packed corpus (blocks with per-document positions and masks) against LLaMA-Factory's pt
  stage reading the same text (it concatenates and cuts blocks; no padding either).
* sft: the same alpaca file; ours packs examples into full blocks, LLaMA-Factory pads each batch
  to its longest example (its default, `packing: false`).

Effective tokens are the non-padding tokens trained on; each side's are divided by its own
training-loop time (model loading, tokenization and the final save excluded on both sides).
LLaMA-Factory runs in its own virtual environment (`benchmarks/llamafactory_runner.py`).

    .venv/bin/python benchmarks/train_throughput.py [--seq 512] [--micro-batch 4] [--data ../shared/data]
    .venv/bin/python benchmarks/train_throughput.py --grid [--grid-micro-batch 4 8] [--grid-seq 512 1024 2048]
        [--stages pt sft] [--attention segment_sdpa sdpa] [--sft-examples 2000]

`--grid` runs every micro-batch x block size cell (default 4, 8 x 512, 1024, 2048; the tiny model has 2048
positions) for each stage. Within a cell both sides get the same data: the pt corpus is built at that
block size and LLaMA-Factory reads its documents; the sft file is the same in every cell. `--attention`
runs ours once per `train.attention` value (unset: the config default) against one LLaMA-Factory run.

Prints both sides' tokens/s and the ratios deepmoney / LLaMA-Factory (goals: pt >= 1.0, sft >= 1.5), one row
per stage and cell.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.llamafactory_runner import DEFAULT_VENV, ensure_venv, run_llamafactory  # noqa: E402

log = logging.getLogger("train_throughput")
EXTRA_TEXT = ["fomc_statements"]  # more pt text when ../shared/data is present
GOALS = {"pt": 1.0, "sft": 1.5}  # deepmoney / LLaMA-Factory effective tokens/s


def make_model_and_corpus(work: Path, data: Path | None, seq: int) -> tuple[Path, Path]:
    """The tiny model (tokenizer trained on the sample corpus) and our pt corpus at block size `seq`."""
    from deepmoney.config import load_config
    from deepmoney.data.pt import build_pt
    from deepmoney.model_init import init_model

    inputs = [str(ROOT / "examples" / "corpus")]
    if data is not None:
        inputs += [str(data / name) for name in EXTRA_TEXT if (data / name).exists()]
    config = load_config(overrides={"data": {"block_size": seq, "heldout_fraction": 0.0}})  # train on all of it
    init_model(inputs[:1], str(work / "model"), config)  # the same model for every seq (reused when it exists)
    build_pt(inputs, str(work / "model"), str(work / f"pt-{seq}"), config, quiet=True)
    return work / "model", work / f"pt-{seq}"


def segment_texts(pt_dir: Path, model_dir: Path) -> list[str]:
    """The documents (pieces) in our pt blocks as text: what LLaMA-Factory's pt stage reads."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    texts = []
    for shard in sorted((pt_dir / "data").glob("*.parquet")):
        table = pq.read_table(shard, columns=["input_ids", "segment_starts"]).to_pylist()
        for row in table:
            ids, starts = row["input_ids"], row["segment_starts"]
            for left, right in zip(starts, [*starts[1:], len(ids)], strict=True):
                texts.append(tokenizer.decode(ids[left:right], skip_special_tokens=True))
    return [t for t in texts if t.strip()]


def sft_rows(texts: list[str], count: int, seed: int = 0) -> list[dict[str, str]]:
    """Question/answer pairs of varied length from the corpus sentences (the length spread is what
    padding costs LLaMA-Factory and packing saves us)."""
    rng = random.Random(seed)
    sentences = [s.strip() for t in texts for s in re.findall(r"[^。！？.!?\n]{20,240}[。！？.!?]", t)]
    rows = []
    for i in range(count):
        start = rng.randrange(len(sentences) - 8)
        topic = sentences[start][:60]
        answer = " ".join(sentences[start + 1 : start + 1 + rng.choice([1, 1, 2, 2, 3, 4, 6, 8])])
        rows.append({"instruction": f"What does the report say about: {topic}?", "input": "", "output": answer,
                     "system": "You are a financial analyst." if i % 2 else ""})  # fmt: skip
    return rows


def run_ours(stage: str, model: Path, data: Path, out: Path, seq: int, micro_batch: int, workers: int | None,
             attention: str | None = None) -> dict:  # fmt: skip
    """One `deepmoney train` run (1 process, fp32, one epoch); returns its manifest."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": "", "DEEPMONEY_TRAIN__SAVE_EVERY": "1000000",
           "DEEPMONEY_TRAIN__LOG_EVERY": "1000000", "DEEPMONEY_TRAIN__WARMUP_RATIO": "0"}  # fmt: skip
    if workers is not None:
        env["DEEPMONEY_TRAIN__LOADER_WORKERS"] = str(workers)
    if attention is not None:
        env["DEEPMONEY_TRAIN__ATTENTION"] = attention
    command = [sys.executable, "-m", "deepmoney", "--quiet", "train", "--stage", stage, "--model", str(model),
               "--data", str(data), "--output", str(out), "--launcher", "local", "--nproc", "1", "--zero", "0",
               "--epochs", "1", "--micro-batch", str(micro_batch), "--learning-rate", "1e-4"]  # fmt: skip
    if stage == "sft":
        command += ["--block-size", str(seq)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        sys.exit(f"deepmoney train failed:\n{result.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    log.info("deepmoney %s (attention %s): %.0f tokens/s (%d tokens, %d steps, %.1f s)", stage,
             manifest["config"]["attention"], manifest["tokens_per_second"], manifest["tokens"], manifest["steps"],
             manifest["train_seconds"])  # fmt: skip
    return manifest


def row(stage: str, micro_batch: int, seq: int, ours: dict, theirs: dict) -> str:
    """One table line: both sides' tokens/s, the ratio, whether it meets the goal, and the details.

    The load average is there because the figures are only comparable on an otherwise idle machine: with
    another process on one of the cores, each side's two compute threads wait for each other at every op.
    """
    ratio = ours["tokens_per_second"] / theirs["effective_tokens_per_sec"]
    padding = ours["data"].get("padding_share", 0)
    detail = (f"ours {ours['tokens']} tokens/{ours['steps']} steps, padding {padding:.1%}; "
              f"LF {theirs['effective_tokens']:.0f} tokens/{theirs['steps']} steps, "
              f"padding {theirs['padding_fraction'] or 0:.1%}; 1-min load {os.getloadavg()[0]:.1f}")  # fmt: skip
    goal = "ok" if ratio >= GOALS[stage] else f"< {GOALS[stage]}"
    return (f"{stage:5} {micro_batch:>3} {seq:>5} {ours['config']['attention']:>13} {ours['tokens_per_second']:10.0f} "
            f"{theirs['effective_tokens_per_sec']:10.0f} {ratio:6.2f} {goal:>6}   {detail}")  # fmt: skip


HEADER = f"{'stage':5} {'mb':>3} {'block':>5} {'attention':>13} {'deepmoney':>10} {'LF':>10} {'ratio':>6} {'goal':>6}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=512, help="pt block size = sft block size = LF cutoff_len")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--grid", action="store_true", help="every --grid-micro-batch x --grid-seq cell")
    parser.add_argument("--grid-micro-batch", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--grid-seq", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--stages", nargs="+", choices=["pt", "sft"], default=["pt", "sft"])
    parser.add_argument("--attention", nargs="+", default=[None], help="ours: train.attention values to run")
    parser.add_argument("--sft-examples", type=int, default=300)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--loader-workers", type=int, default=None, help="ours; unset = train.loader_workers")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cells = list(itertools.product(args.grid_micro_batch, args.grid_seq)) if args.grid else [(args.micro_batch,
                                                                                              args.seq)]  # fmt: skip
    data = args.data if args.data.is_dir() else None
    python = ensure_venv(args.venv)
    lines = []
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        work = Path(tmp)
        sft = work / "sft.jsonl"  # one file for every cell: made from the first corpus's documents
        for seq in dict.fromkeys(seq for _, seq in cells):
            model, pt = make_model_and_corpus(work, data, seq)
            texts = segment_texts(pt, model)
            pt_text = work / f"pt-{seq}.jsonl"
            pt_text.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
            if not sft.exists():
                rows = sft_rows(texts, args.sft_examples)
                sft.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            for micro_batch, stage in itertools.product(sorted({m for m, s in cells if s == seq}), args.stages):
                ours_data, lf_data = (pt, pt_text) if stage == "pt" else (sft, sft)
                name = f"{stage}-{micro_batch}x{seq}"
                theirs = run_llamafactory(python, stage=stage, model_dir=model, data_file=lf_data, cutoff_len=seq,
                                          micro_batch=micro_batch, grad_accum=1, epochs=1.0,
                                          workdir=work / f"lf-{name}")  # fmt: skip
                for i, attention in enumerate(args.attention):
                    ours = run_ours(stage, model, ours_data, work / f"ours-{name}-{i}", seq, micro_batch,
                                    args.loader_workers, attention)  # fmt: skip
                    lines.append(row(stage, micro_batch, seq, ours, theirs))
                    log.info("%s\n%s", HEADER, lines[-1])
    print(f"\ntraining throughput, effective (non-padding) tokens/s; tiny model, {args.sft_examples} sft examples, "
          "1 CPU process each, fp32, full parameters, 1 epoch; goals: pt >= 1.0, sft >= 1.5")  # fmt: skip
    print(HEADER + "   details")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
