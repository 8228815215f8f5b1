"""What sharding build-pt costs and gains: N `--shard K/N` builds plus `merge-pt` against one build, same run.

For each workload and shard count N, in this process and on this machine's process pool:

- baseline: `build_pt` of the whole corpus (one machine);
- shards: `build_pt_shard` for K = 0..N-1, one after another, each timed; then `merge_pt_shards`.

Figures (medians over --repeat runs):

    speedup with N machines = baseline / (slowest shard + merge)    (each machine like this one)
    total work              = (sum of shards + merge) / baseline    (the CPU time sharding adds)
    merge share             = merge / baseline                      (the part that does not fan out)

Every merged output is checked to be the unsharded build's bytes (the manifest aside) before its time
counts. Workloads: ../shared/data (FOMC, OpenStax CNXML, Chinese laws, Wikinews JSONL) and the bundled
sample corpus.

    .venv/bin/python benchmarks/pt_shards.py [--shards 2,4] [--repeat 3] [--block-size 1024]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.pt_corpus import _inputs  # noqa: E402  (the same ../shared/data subsets)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*")
            if p.is_file() and p.name != "manifest.json"}  # fmt: skip


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def measure(inputs: list[str], tokenizer: str, n: int, block_size: int, scratch: Path) -> dict[str, float]:
    """One run: the baseline build, then N shards and the merge; seconds of each part."""
    from deepmoney.config import load_config
    from deepmoney.data.pt import build_pt
    from deepmoney.data.pt_shards import build_pt_shard, merge_pt_shards

    config = load_config(overrides={"data": {"block_size": block_size}})
    whole, merged = scratch / "whole", scratch / "merged"
    baseline = _timed(lambda: build_pt(inputs, tokenizer, str(whole), config, quiet=True))
    shards, parts = [], []
    for k in range(n):
        out = scratch / f"shard-{k}"
        shards.append(_timed(lambda out=out, k=k: build_pt_shard(inputs, tokenizer, str(out), config, (k, n),
                                                                   quiet=True)))  # fmt: skip
        parts.append(str(out))
    merge = _timed(lambda: merge_pt_shards(parts, str(merged), config, quiet=True))
    if _files(whole) != _files(merged):
        raise SystemExit(f"the {n}-shard build differs from the unsharded one: not measured")
    return {"baseline": baseline, "slowest_shard": max(shards), "sum_shards": sum(shards), "merge": merge}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--shards", default="2,4")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=1024)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the rejected LICENSE files are expected
    from deepmoney.config import load_config
    from deepmoney.model_init import init_model

    workloads = {"sample corpus": [str(ROOT / "examples" / "corpus")]}
    if args.data.is_dir():
        workloads = {"../shared/data": [str(p) for p in _inputs(args.data)], **workloads}
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        tokenizer = Path(tmp) / "tokenizer"
        init_model([str(ROOT / "examples" / "corpus")], str(tokenizer), load_config(), quiet=True)
        print(f"{'workload':<16} {'N':>2} {'baseline s':>10} {'slowest shard s':>15} {'merge s':>8} "
              f"{'speedup (N machines)':>21} {'total work':>11} {'merge share':>12}")  # fmt: skip
        for name, inputs in workloads.items():
            for n in (int(x) for x in args.shards.split(",")):
                runs = []
                for i in range(args.repeat):
                    scratch = Path(tmp) / f"{name.replace('/', '_')}-{n}-{i}"
                    scratch.mkdir()
                    runs.append(measure(inputs, str(tokenizer), n, args.block_size, scratch))
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                speedup = med["baseline"] / (med["slowest_shard"] + med["merge"])
                work = (med["sum_shards"] + med["merge"]) / med["baseline"]
                print(f"{name:<16} {n:>2} {med['baseline']:>10.2f} {med['slowest_shard']:>15.2f} {med['merge']:>8.2f} "
                      f"{speedup:>20.2f}x {work:>10.2f}x {med['merge'] / med['baseline']:>12.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
