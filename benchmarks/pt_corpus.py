"""Throughput of `build-pt` against a LLaMA-Factory-style baseline, measured in the same run.

The baseline is what LLaMA-Factory does for a pre-training dataset: load the raw files with
`datasets` (one row per document), then `Dataset.map(batched=True)` that tokenizes a batch,
appends EOS, concatenates the batch and cuts it into `block_size` blocks, dropping each batch's
remainder. build-pt does strictly more work per document (parse formats, clean, dedup, chapters,
context header, manifest) and drops only the final partial block.

    .venv/bin/python benchmarks/pt_corpus.py [--data ../shared/data] [--block-size 1024] [--repeat 3]

Prints documents/s and tokens/s of both, their ratios (build-pt / baseline) and tokens dropped.
tokens/s counts each pipeline's own output tokens; "raw corpus tokens/s" divides the same number,
the raw files' tokens as the baseline counts them, by each pipeline's time.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBSETS = [
    "fomc_minutes",
    "fomc_statements",
    "openstax_principles_finance_1e/modules",
    "cn_financial_laws",
    "wikinews_economy/wikinews_economy.jsonl",
]


def _inputs(data: Path) -> list[Path]:
    inputs = [data / s for s in SUBSETS if (data / s).exists()]
    if not inputs:
        sys.exit(f"error: none of {', '.join(SUBSETS)} found under {data}; pass --data")
    return inputs


def _files(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in inputs:
        files += (
            [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in {".txt", ".md", ".cnxml"})
        )
    return files


def run_build_pt(inputs: list[Path], tokenizer: Path, block_size: int, work: Path) -> dict:
    """Our pipeline, in-process, into a fresh directory."""
    from deepmoney.config import load_config, overrides_from_flags
    from deepmoney.data.pt import build_pt

    config = load_config(overrides=overrides_from_flags(**{"data.block_size": block_size}))
    out = Path(tempfile.mkdtemp(dir=work)) / "pt"
    start = time.perf_counter()
    result = build_pt([str(p) for p in inputs], str(tokenizer), str(out), config, quiet=True)
    seconds = time.perf_counter() - start
    m = result.manifest
    return {
        "seconds": seconds,
        "documents": m["documents_read"],
        "tokens": m["tokens"],
        "tokens_dropped": m["tokens_dropped"],
        "blocks": m["blocks"],
    }


def run_baseline(inputs: list[Path], tokenizer_dir: Path, block_size: int, work: Path) -> dict:
    """LLaMA-Factory's pre-training preprocessing (`preprocess_pretrain_dataset`), batch size 1000."""
    from datasets import concatenate_datasets, load_dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    cache = Path(tempfile.mkdtemp(dir=work))
    start = time.perf_counter()
    files = _files(inputs)
    text_files = [str(p) for p in files if p.suffix != ".jsonl"]
    json_files = [str(p) for p in files if p.suffix == ".jsonl"]
    parts = []
    if text_files:
        parts.append(
            load_dataset("text", data_files=text_files, sample_by="document", split="train", cache_dir=str(cache))
        )
    if json_files:
        parts.append(
            load_dataset("json", data_files=json_files, split="train", cache_dir=str(cache)).select_columns(["text"])
        )
    dataset = concatenate_datasets(parts)
    dropped = 0
    total = 0

    def preprocess(examples: dict) -> dict:
        nonlocal dropped, total
        texts = [t + tokenizer.eos_token for t in examples["text"]]
        tokenized = tokenizer(texts, add_special_tokens=False)
        concatenated = {k: list(chain(*tokenized[k])) for k in tokenized}
        length = len(concatenated["input_ids"])
        kept = (length // block_size) * block_size
        total += length
        dropped += length - kept
        result = {k: [t[i : i + block_size] for i in range(0, kept, block_size)] for k, t in concatenated.items()}
        if getattr(tokenizer, "add_bos_token", False):
            for ids in result["input_ids"]:
                ids[0] = tokenizer.bos_token_id
        return result

    blocks = dataset.map(preprocess, batched=True, batch_size=1000, remove_columns=dataset.column_names)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "documents": len(dataset),
        "tokens": total,
        "tokens_dropped": dropped,
        "blocks": len(blocks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the median is reported")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    inputs = _inputs(args.data)
    with tempfile.TemporaryDirectory(prefix="pt-bench-") as tmp:
        work = Path(tmp)
        from deepmoney.config import load_config
        from deepmoney.model_init import init_model

        tokenizer = work / "model"
        corpus = [
            str(ROOT / "examples" / "corpus"),
            str(args.data / "cn_financial_laws"),
            str(args.data / "fomc_minutes"),
        ]
        init_model([c for c in corpus if Path(c).exists()], str(tokenizer), load_config(), quiet=True)
        ours, base = [], []
        for _ in range(args.repeat):  # interleaved, so drift in machine load hits both alike
            base.append(run_baseline(inputs, tokenizer, args.block_size, work))
            ours.append(run_build_pt(inputs, tokenizer, args.block_size, work))

    def summary(runs: list[dict]) -> dict:
        return {
            "documents_per_s": statistics.median(r["documents"] / r["seconds"] for r in runs),
            "tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in runs),
            "tokens_dropped": runs[0]["tokens_dropped"],
            "documents": runs[0]["documents"],
            "tokens": runs[0]["tokens"],
            "seconds": statistics.median(r["seconds"] for r in runs),
        }

    report = {
        "block_size": args.block_size,
        "inputs": [str(p) for p in inputs],
        "build_pt": summary(ours),
        "baseline": summary(base),
    }
    report["ratio_documents_per_s"] = report["build_pt"]["documents_per_s"] / report["baseline"]["documents_per_s"]
    report["ratio_tokens_per_s"] = report["build_pt"]["tokens_per_s"] / report["baseline"]["tokens_per_s"]
    # The two pipelines emit different token counts from the same files (build-pt converts markup
    # and cleans); the raw corpus, tokenized as the baseline does, is a numerator common to both.
    corpus_tokens = report["baseline"]["tokens"]
    for side in ("build_pt", "baseline"):
        report[side]["corpus_tokens_per_s"] = corpus_tokens / report[side]["seconds"]
    report["ratio_corpus_tokens_per_s"] = report["baseline"]["seconds"] / report["build_pt"]["seconds"]
    b, o = report["baseline"], report["build_pt"]
    print(f"inputs: {', '.join(SUBSETS)} under {args.data}; block size {args.block_size}; median of {args.repeat}")
    print(f"{'':22}{'build-pt':>14}{'baseline':>14}{'ratio':>8}")
    print(
        f"{'documents/s':22}{o['documents_per_s']:14.1f}{b['documents_per_s']:14.1f}"
        f"{report['ratio_documents_per_s']:8.2f}"
    )
    print(f"{'tokens/s':22}{o['tokens_per_s']:14.0f}{b['tokens_per_s']:14.0f}{report['ratio_tokens_per_s']:8.2f}")
    print(
        f"{'raw corpus tokens/s':22}{o['corpus_tokens_per_s']:14.0f}{b['corpus_tokens_per_s']:14.0f}"
        f"{report['ratio_corpus_tokens_per_s']:8.2f}"
    )
    print(f"{'tokens dropped':22}{o['tokens_dropped']:14d}{b['tokens_dropped']:14d}")
    print(f"{'documents, tokens':22}{o['documents']:>7d},{o['tokens']:>7d}{b['documents']:>6d},{b['tokens']:>8d}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
