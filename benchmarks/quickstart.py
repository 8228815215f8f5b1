"""How long the quickstart takes, first run and rerun, against its budgets, on more than one workload.

Each workload runs `deepmoney quickstart` twice in a fresh work directory, as a user would (its own process,
no MLFLOW_TRACKING_URI: the quickstart starts its own MLflow server, then reuses it on the rerun):

    first run     seconds, and as a share of the 600 s budget (README command 1 on 2 CPU cores)
    rerun         seconds, as a share of the 60 s budget, and as a ratio to the first run (what reuse saves)

Workloads: the quickstart as shipped (build-pt and synthesis in 2 shards each), and the same pipeline without
the fan-outs (1 shard each: what the sharding costs on one machine). `--cores 2` pins each run to two CPU cores
(taskset), as the budget is stated for. The MLflow server of each work directory is stopped at the end.

    .venv/bin/python benchmarks/quickstart.py [--cores 2] [--workloads shipped,unsharded]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_BUDGET, RERUN_BUDGET = 600.0, 60.0
WORKLOADS = {"shipped": [], "unsharded": ["-p", "pt_shards=1", "-p", "sft_shards=1"]}


def _run(args: list[str], cores: int | None) -> float:
    command = [sys.executable, "-m", "deepmoney", "--quiet", "quickstart", *args]
    if cores:
        command = ["taskset", "-c", ",".join(str(c) for c in range(cores)), *command]
    environment = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"quickstart {' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}")
    if "step 3" not in result.stdout:
        raise SystemExit(f"quickstart {' '.join(args)} printed no step 3: {result.stdout[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2, help="CPU cores each run may use (0: all)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    options = parser.parse_args()
    cores = options.cores if options.cores and shutil.which("taskset") else None
    print(f"cores per run: {cores or os.cpu_count()}")
    print(f"{'workload':<12} {'first s':>8} {'of 600 s':>9} {'rerun s':>8} {'of 60 s':>8} {'rerun/first':>12}")
    for name in options.workloads.split(","):
        workdir = Path(tempfile.mkdtemp(prefix=f"deepmoney-qs-{name}-"))
        args = ["--workdir", str(workdir), *WORKLOADS[name]]
        try:
            first = _run(args, cores)
            rerun = _run(args, cores)
        finally:
            subprocess.run([sys.executable, "-m", "deepmoney", "quickstart", "--workdir", str(workdir), "--stop"],
                           cwd=ROOT, capture_output=True)  # fmt: skip
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"{name:<12} {first:>8.1f} {first / FIRST_BUDGET:>9.2f} {rerun:>8.1f} {rerun / RERUN_BUDGET:>8.2f} "
              f"{rerun / first:>12.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
