"""Model FLOPs utilisation of `deepmoney train`: a ~1.1B LLaMA-architecture model, ZeRO-3, bf16, one GPU.

The model (TinyLlama's shape, random init, `model init --preset 1b`) trains on the pt corpus of
the sample reports (plus ../shared/data text when present) in blocks of `--seq` tokens. Model
FLOPs per token are 6 x parameters plus the attention products; MFU divides the achieved model
FLOP/s by the GPU's dense bf16 peak from its data sheet. The baseline measured in the same run is
this device's own bf16 matrix-multiply throughput (large square GEMMs), so the second ratio says
how close the training step gets to what the device actually delivers.

    .venv/bin/python benchmarks/train_mfu.py                 # on a GPU machine (goal: MFU >= 40%)
    .venv/bin/python benchmarks/train_mfu.py --smoke         # CPU plumbing check: tiny model, fp32, a few steps
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("train_mfu")
EXTRA_TEXT = ["fomc_minutes", "fomc_statements", "wikinews_economy"]


def gemm_flops(device: str, dtype_name: str, size: int, seconds: float = 3.0) -> float:
    """Achieved FLOP/s of repeated size x size matrix products on `device`."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
        if count % 10 == 0:
            sync()
    sync()
    return 2.0 * size**3 * count / (time.perf_counter() - started)


def prepare(work: Path, preset: str, seq: int, data: Path | None) -> tuple[Path, Path]:
    """The random-init model and the pt corpus (blocks of `seq` tokens, nothing held out)."""
    from deepmoney.config import load_config
    from deepmoney.data.pt import build_pt
    from deepmoney.model_init import init_model

    corpus = [str(ROOT / "examples" / "corpus")]
    if data is not None:
        corpus += [str(data / name) for name in EXTRA_TEXT if (data / name).exists()]
    config = load_config(overrides={"model": {"preset": preset}, "data": {"block_size": seq, "heldout_fraction": 0.0}})
    init_model(corpus[:1], str(work / "model"), config, quiet=True)
    build_pt(corpus, str(work / "model"), str(work / "pt"), config, quiet=True)
    return work / "model", work / "pt"


def train(work: Path, model: Path, pt: Path, steps: int, micro_batch: int, zero: int, checkpointing: bool) -> Path:
    """`deepmoney train` with one process, logging every step; returns its output directory."""
    out = work / "run"
    env = {**os.environ, "MLFLOW_TRACKING_URI": "", "DEEPMONEY_TRAIN__LOG_EVERY": "1",
           "DEEPMONEY_TRAIN__MLFLOW__LOG_MODEL": "none",
           "DEEPMONEY_TRAIN__GRADIENT_CHECKPOINTING": "true" if checkpointing else "false"}  # fmt: skip
    command = [sys.executable, "-m", "deepmoney", "--quiet", "train", "--stage", "pt", "--model", str(model),
               "--data", str(pt), "--output", str(out), "--launcher", "local", "--nproc", "1", "--zero", str(zero),
               "--max-steps", str(steps), "--micro-batch", str(micro_batch), "--save-every", str(steps)]  # fmt: skip
    log.info("training: %s", " ".join(command))
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"training failed:\n{result.stderr[-3000:]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU: checks the plumbing only")
    parser.add_argument("--preset", default=None, help="model preset (default: 1b, or tiny with --smoke)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per block (default 2048; 256 with --smoke)")
    parser.add_argument("--micro-batch", type=int, default=None, help="blocks per step (default 8; 2 with --smoke)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default 40; 6 with --smoke)")
    parser.add_argument("--warmup", type=int, default=None, help="first steps left out of the figure")
    parser.add_argument("--zero", type=int, default=3)
    parser.add_argument(
        "--checkpointing", action="store_true", help="gradient checkpointing (recompute is not counted)"
    )
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import torch

    from deepmoney.models.shape import model_shape
    from deepmoney.train.model import flops_per_token, peak_flops

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        raise SystemExit("no GPU here: this benchmark measures GPU MFU; run it on a GPU machine, or pass --smoke "
                         "to check the plumbing on CPU")  # fmt: skip
    preset = args.preset or ("tiny" if args.smoke else "1b")
    seq = args.seq or (256 if args.smoke else 2048)
    micro = args.micro_batch or (2 if args.smoke else 8)
    steps = args.steps or (6 if args.smoke else 40)
    warmup = args.warmup if args.warmup is not None else (2 if args.smoke else 5)
    precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    device = "cuda" if cuda else "cpu"
    baseline = gemm_flops(device, precision, 8192 if cuda else 1024)
    data = args.data if args.data.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="train-mfu-") as scratch:
        work = Path(scratch)
        model, pt = prepare(work, preset, seq, data)
        shape = model_shape(model)
        out = train(work, model, pt, steps, micro, args.zero, args.checkpointing)
        points = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        manifest = json.loads((out / "manifest.json").read_text())
    measured = [p["tokens_per_second"] for p in points if p["step"] > warmup]
    if not measured:
        raise SystemExit(f"no step after the {warmup} warm-up steps was logged; raise --steps")
    tokens_per_second = statistics.median(measured)
    model_flops = tokens_per_second * flops_per_token(shape, seq)
    peak = peak_flops(precision)
    device_name = torch.cuda.get_device_name() if cuda else "CPU"
    print(
        f"\ntraining MFU: {shape['parameters'] / 1e9:.2f}B-parameter LLaMA ({preset}), seq {seq}, micro-batch "
        f"{micro}, ZeRO-{args.zero}, {precision}, 1 process on {device_name}; median of steps {warmup + 1}-{steps}"
    )
    print(f"  tokens/s                  {tokens_per_second:,.0f}   (final loss {manifest['final_loss']:.3f})")
    print(f"  model FLOP/s              {model_flops / 1e12:,.2f} T")
    print(f"  measured GEMM FLOP/s      {baseline / 1e12:,.2f} T   (baseline, same run)")
    print(f"  ratio to measured GEMM    {model_flops / baseline:.3f}")
    if peak:
        print(f"  MFU (data-sheet peak {peak / 1e12:.0f} T)  {model_flops / peak:.1%}   (goal >= 40%)")
    else:
        print("  MFU                       (no data-sheet peak for this device/precision)")


if __name__ == "__main__":
    main()
