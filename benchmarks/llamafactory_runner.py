"""Run LLaMA-Factory 0.9.5 training on CPU as a throughput baseline (benchmark-only helper).

Importable, standard library only: LLaMA-Factory lives in its own virtual environment (default
``.bench/llamafactory-venv``, made by :func:`ensure_venv`) and :func:`run_llamafactory` runs
``python -m llamafactory.cli train cfg.yaml`` with that venv's python as a subprocess, fully offline.

    from benchmarks.llamafactory_runner import DEFAULT_VENV, ensure_venv, run_llamafactory
    python = ensure_venv(DEFAULT_VENV)
    metrics = run_llamafactory(python, stage="sft", model_dir=model, data_file=alpaca_jsonl, cutoff_len=512,
                               micro_batch=4, grad_accum=1, epochs=1, workdir=work / "lf-sft")

The venv
    ``torch==2.13.0`` is installed first, the way ``scripts/install.sh`` does it (the CPU build where there is
    no NVIDIA GPU: pip's configured wheel directory holds ``2.13.0+cpu``), then ``llamafactory==0.9.5`` with the
    installed torch pinned in a constraints file so that pip cannot replace it. LLaMA-Factory pulls in
    torchvision and torchaudio built against a different torch; they do not load beside CPU torch 2.13.0, so
    both are uninstalled and an empty ``torchaudio`` package is left in site-packages (LLaMA-Factory imports it
    at start-up; a text-only run never uses it). The resolver picks transformers 5.6.0 (the top of its pin
    ``>=4.55,<=5.6``), datasets 4.0.0, accelerate 1.11.0, peft 0.18.1, trl 0.24.0.

What LLaMA-Factory trains on (read from its 0.9.5 source)
    * ``pt`` (``data/processor/pretrain.py``; ``packing`` defaults to true for pt): each document becomes
      ``text + eos_token``; a ``Dataset.map`` batch (1000 documents) is tokenized without special tokens,
      concatenated and cut into ``cutoff_len`` blocks; each map batch's remainder (< cutoff_len tokens) is
      dropped. No BOS (the tokenizer's ``add_bos_token`` is false here; if true, position 0 of each block is
      overwritten by BOS). Labels = input_ids (``DataCollatorForLanguageModeling``), so every block is full:
      no padding at all.
    * ``sft`` with template ``deepseek`` (``data/template.py``, ``data/processor/supervised.py``):
      ``<bos>`` + [``{system}\\n\\n``] + ``User: {instruction}\\n{input}\\n\\nAssistant:`` is the prompt and
      ``{output}<eos>`` the response (the response text is tokenized on its own, right after ``Assistant:``,
      with no space). Prompt tokens, BOS included, are masked (-100) unless ``train_on_prompt``; the response
      and its EOS are the labels. Over-long pairs are cut by ``infer_seqlen`` to at most ``cutoff_len``.
      ``packing: false`` keeps one example per row; the collator pads each batch to its longest row rounded up
      to a multiple of 8 (``pad_to_multiple_of=8``), labels padded with -100.

Effective tokens
    LLaMA-Factory's ``include_effective_tokens_per_second`` (``extras/misc.py::calculate_tps``, sft/rm/dpo
    only, *not* pt) is ``sum(len(input_ids) over the tokenized train dataset) * metrics["epoch"] /
    train_runtime``, divided by the world size when ``torch.distributed`` is initialised (a per-process number).
    ``len(input_ids)`` is the unpadded row length, prompt tokens included, so it counts non-padding tokens.
    This module counts the same thing itself for both stages: LLaMA-Factory is told to save its tokenized
    dataset (``tokenized_path``, written before training starts), which is read back afterwards with the
    venv's python. ``effective_tokens = sum(len(input_ids)) * epoch`` (for pt: blocks * cutoff_len * epoch)
    and ``effective_tokens_per_sec = effective_tokens / train_runtime``, totals over all processes.
    LLaMA-Factory's own number (sft only) is returned as ``lf_effective_tokens_per_sec``.
    ``train_runtime`` is the HF Trainer's, timed inside ``Trainer.train`` (data loading, forward, backward,
    optimizer, logging; not model loading, tokenization or the final save).

YAML keys written (``extra`` adds or overrides any of them)::

    model_name_or_path, trust_remote_code: false, stage, do_train: true, finetuning_type: full,
    dataset: bench, dataset_dir, template, cutoff_len, overwrite_cache: true, preprocessing_num_workers: 1,
    dataloader_num_workers: 0, tokenized_path, [packing: false (sft)], output_dir, overwrite_output_dir: true,
    logging_steps, save_strategy: "no", report_to: none, plot_loss: false, per_device_train_batch_size,
    gradient_accumulation_steps, learning_rate: 1.0e-4, num_train_epochs, lr_scheduler_type: cosine,
    warmup_ratio: 0.0, bf16: false, fp16: false, seed: 42, include_effective_tokens_per_second: true,
    disable_gradient_checkpointing: true (LLaMA-Factory's default is false), include_num_input_tokens_seen: all,
    [ddp_backend: gloo, ddp_find_unused_parameters: false (nproc > 1)]

    python benchmarks/llamafactory_runner.py --stage sft --model M --data D.jsonl --workdir W [--venv V]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = ROOT / ".bench" / "llamafactory-venv"
LLAMAFACTORY_VERSION = "0.9.5"
TORCH_VERSION = "2.13.0"
DATASET_NAME = "bench"
_MARKER = "llamafactory-bench.json"

# Everything that could reach a hub, check versions or phone home is switched off.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "DISABLE_VERSION_CHECK": "1",
    "DO_NOT_TRACK": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "USE_MODELSCOPE_HUB": "0",
    "USE_OPENMIND_HUB": "0",
    "CUDA_VISIBLE_DEVICES": "",
    "LLAMAFACTORY_VERBOSITY": "INFO",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}

_PROBE = """
import json, torch, transformers, datasets, llamafactory
print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__,
                  "datasets": datasets.__version__, "llamafactory": llamafactory.__version__}))
"""

_COUNT = """
import json, sys
import pyarrow.compute as pc
from datasets import load_from_disk
ds = load_from_disk(sys.argv[1])["train"]
ids = ds.data.column("input_ids")
lengths = pc.list_value_length(ids)
out = {"rows": ds.num_rows, "tokens": int(pc.sum(lengths).as_py() or 0),
       "max_len": int(pc.max(lengths).as_py() or 0), "min_len": int(pc.min(lengths).as_py() or 0)}
if "labels" in ds.column_names:
    flat = pc.list_flatten(ds.data.column("labels"))
    out["label_tokens"] = int(pc.sum(pc.not_equal(flat, -100)).as_py() or 0)
print(json.dumps(out))
"""


def _venv_python(path: Path) -> Path:
    return path / "bin" / "python"


def _purelib(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def _offline_env(python: Path, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    env.update(OFFLINE_ENV)
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"  # torchrun for nproc > 1
    env.update(overrides or {})
    return env


def _probe(python: Path) -> dict[str, str] | None:
    """Versions seen by the venv's python, or None when it cannot import its stack."""
    if not python.exists():
        return None
    proc = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, env=_offline_env(python))
    if proc.returncode != 0:
        logger.debug("venv probe failed: %s", proc.stderr[-2000:])
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _pip(python: Path, args: list[str], log: Path) -> None:
    cmd = [str(python), "-m", "pip", *args, "--disable-pip-version-check", "--no-input"]
    logger.info("pip %s", " ".join(args))
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PIP_NO_INPUT": "1"})
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"pip {' '.join(args)} failed (exit {proc.returncode}); see {log}:\n{tail}")


def ensure_venv(path: Path = DEFAULT_VENV, *, base_python: str | None = None, torch_spec: str | None = None) -> Path:
    """Create (idempotently) a separate venv with llamafactory==0.9.5 for the benchmark only; return its python.

    A venv whose marker file is present and whose python imports torch 2.13.0 and llamafactory 0.9.5 is
    reused as it is. Otherwise the venv is (re)built in place: torch first (``torch_spec``, default
    ``torch==2.13.0``, as ``scripts/install.sh`` on a machine without a GPU), then llamafactory with the installed
    torch pinned, then torchvision/torchaudio removed and an empty ``torchaudio`` module put in their place.
    pip's output goes to ``PATH/install.log``. A fresh build took 72 s here (pip cache warm); a reuse about 3 s.
    """
    path = Path(path).resolve()
    python = _venv_python(path)
    marker = path / _MARKER
    if marker.exists():
        versions = _probe(python)
        ok = versions and versions["llamafactory"] == LLAMAFACTORY_VERSION
        if ok and versions["torch"].startswith(TORCH_VERSION):
            logger.info("LLaMA-Factory venv ready at %s (%s)", path, versions)
            return python
        logger.warning("LLaMA-Factory venv at %s is stale or broken (%s); rebuilding", path, versions)
        marker.unlink()

    start = time.perf_counter()
    if not python.exists():
        logger.info("creating venv %s", path)
        subprocess.run([base_python or sys.executable, "-m", "venv", str(path)], check=True)
    log = path / "install.log"

    versions = _probe(python) or {}
    if not versions.get("torch", "").startswith(TORCH_VERSION):
        _pip(python, ["install", torch_spec or f"torch=={TORCH_VERSION}"], log)
    torch_version = subprocess.run(
        [str(python), "-c", "import torch; print(torch.__version__)"], check=True, capture_output=True, text=True
    ).stdout.strip()
    if not torch_version.startswith(TORCH_VERSION):
        raise RuntimeError(f"venv {path} has torch {torch_version}, wanted {TORCH_VERSION}")

    constraints = path / "constraints.txt"
    constraints.write_text(f"torch=={torch_version}\n", encoding="utf-8")
    _pip(python, ["install", "-c", str(constraints), f"llamafactory=={LLAMAFACTORY_VERSION}"], log)
    # torchvision/torchaudio wheels pulled in by llamafactory are built for another torch and fail to load.
    _pip(python, ["uninstall", "-y", "torchvision", "torchaudio"], log)
    stub = _purelib(python) / "torchaudio"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text(
        "# Empty stand-in: llamafactory imports torchaudio at start-up; text-only training never uses it.\n",
        encoding="utf-8",
    )

    versions = _probe(python)
    if not versions:
        raise RuntimeError(f"venv {path}: importing llamafactory fails; see {log}")
    if versions["torch"] != torch_version:
        raise RuntimeError(f"venv {path}: pip replaced torch {torch_version} by {versions['torch']}")
    seconds = time.perf_counter() - start
    marker.write_text(json.dumps({**versions, "install_seconds": round(seconds, 1)}, indent=2) + "\n", encoding="utf-8")
    logger.info("LLaMA-Factory venv built at %s in %.0f s (%s)", path, seconds, versions)
    return python


def _jsonl_has_key(data_file: Path, key: str) -> bool:
    with data_file.open(encoding="utf-8") as fh:
        return any(key in json.loads(line) for line in fh if line.strip())


def _dataset_info(stage: str, data_file: Path) -> dict[str, Any]:
    if stage == "pt":
        columns = {"prompt": "text"}
    elif stage == "sft":
        columns = {"prompt": "instruction", "query": "input", "response": "output"}
        if _jsonl_has_key(data_file, "system"):
            columns["system"] = "system"
    else:
        raise ValueError(f"stage must be 'pt' or 'sft', not {stage!r}")
    return {DATASET_NAME: {"file_name": str(data_file), "formatting": "alpaca", "columns": columns}}


def _yaml(config: Mapping[str, Any]) -> str:
    """Flat mapping as YAML: every scalar as JSON, which YAML reads back unchanged."""
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in config.items())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def run_llamafactory(
    python: Path,
    *,
    stage: str,
    model_dir: Path,
    data_file: Path,
    cutoff_len: int,
    micro_batch: int,
    grad_accum: int,
    epochs: float,
    workdir: Path,
    template: str = "deepseek",
    nproc: int = 1,
    extra: dict | None = None,
    gradient_checkpointing: bool = False,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> dict:
    """Run one LLaMA-Factory training on CPU; return its metrics as a dict.

    ``{"train_runtime": s, "effective_tokens": n, "effective_tokens_per_sec": x, "steps": n, "train_loss": ...}``

    ``stage`` "pt": ``data_file`` is JSONL with a "text" field; "sft": alpaca JSONL (instruction, input, output,
    optional system). Full fine-tuning in fp32, no eval, no checkpoints (the final model is still written by
    LLaMA-Factory's ``trainer.save_model()`` after training, outside ``train_runtime``). ``workdir`` gets
    ``dataset_info.json``, ``cfg.yaml``, ``train.log``, ``tokenized/`` and ``output/``; it is cleared of earlier
    runs' outputs first. ``nproc`` > 1 launches torchrun (gloo) through LLaMA-Factory's launcher. ``extra``
    adds or overrides YAML keys; ``env`` adds environment variables (e.g. ``OMP_NUM_THREADS``).
    ``gradient_checkpointing`` defaults to False, like deepmoney's ``train.gradient_checkpointing``;
    LLaMA-Factory's own default is on (``disable_gradient_checkpointing: false``), about 30% slower here.

    Returned keys: train_runtime, effective_tokens, effective_tokens_per_sec (all processes together),
    lf_effective_tokens_per_sec (LLaMA-Factory's own, sft only, per process), steps, epoch, train_loss,
    train_samples_per_second, rows, dataset_tokens (sum of unpadded row lengths), label_tokens (sft),
    max_len, min_len, padded_tokens (input_ids elements the model was fed, padding included: HF Trainer's
    ``num_input_tokens_seen`` with ``include_num_input_tokens_seen: all``), padding_fraction, the run's
    settings, wall_time (whole subprocess), cpu_time (its user+sys seconds; well under cores x wall_time
    means the CPU was shared with something else), log (path).
    """
    if stage not in {"pt", "sft"}:
        raise ValueError(f"stage must be 'pt' or 'sft', not {stage!r}")
    python = Path(python)
    workdir = Path(workdir).resolve()
    model_dir = Path(model_dir).resolve()
    data_file = Path(data_file).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    output_dir, tokenized = workdir / "output", workdir / "tokenized"
    for stale in (output_dir, tokenized):  # an existing tokenized_path would be loaded instead of our data
        shutil.rmtree(stale, ignore_errors=True)

    (workdir / "dataset_info.json").write_text(json.dumps(_dataset_info(stage, data_file), indent=2), encoding="utf-8")
    config: dict[str, Any] = {
        "model_name_or_path": str(model_dir),
        "trust_remote_code": False,
        "stage": stage,
        "do_train": True,
        "finetuning_type": "full",
        "dataset": DATASET_NAME,
        "dataset_dir": str(workdir),
        "template": template,
        "cutoff_len": cutoff_len,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "dataloader_num_workers": 0,
        "tokenized_path": str(tokenized),
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "plot_loss": False,
        "per_device_train_batch_size": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "learning_rate": 1.0e-4,
        "num_train_epochs": float(epochs),
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.0,
        "bf16": False,
        "fp16": False,
        "seed": 42,
        "include_effective_tokens_per_second": True,
        "disable_gradient_checkpointing": not gradient_checkpointing,
        "include_num_input_tokens_seen": "all",  # padded tokens fed to the model -> padding fraction
    }
    if stage == "sft":
        config["packing"] = False
    if nproc > 1:
        config["ddp_backend"] = "gloo"
        config["ddp_find_unused_parameters"] = False
    config.update(extra or {})
    cfg = workdir / "cfg.yaml"
    cfg.write_text(_yaml(config), encoding="utf-8")

    run_env = _offline_env(python, {"HF_DATASETS_CACHE": str(workdir / "hf_datasets_cache")})
    if nproc > 1:
        port = str(_free_port())
        run_env.update(
            FORCE_TORCHRUN="1", NNODES="1", NPROC_PER_NODE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=port
        )
    run_env.update(env or {})
    log = workdir / "train.log"
    cmd = [str(python), "-m", "llamafactory.cli", "train", str(cfg)]
    logger.info("LLaMA-Factory %s: %s (log %s)", stage, " ".join(cmd), log)
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.run(
            cmd, cwd=workdir, env=run_env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, check=False
        )
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"LLaMA-Factory {stage} failed (exit {proc.returncode}); see {log}:\n{tail}")

    metrics = _read_json(output_dir / "train_results.json") or _read_json(output_dir / "all_results.json")
    state = _read_json(output_dir / "trainer_state.json")
    if "train_runtime" not in metrics:
        raise RuntimeError(f"no train_runtime in {output_dir}/train_results.json; see {log}")
    counted = subprocess.run(
        [str(python), "-c", _COUNT, str(tokenized)], capture_output=True, text=True, env=_offline_env(python)
    )
    if counted.returncode != 0:
        raise RuntimeError(f"counting tokens in {tokenized} failed:\n{counted.stderr[-2000:]}")
    counts = json.loads(counted.stdout.strip().splitlines()[-1])

    runtime, epoch = float(metrics["train_runtime"]), float(metrics.get("epoch", epochs))
    effective = counts["tokens"] * epoch
    padded = state.get("num_input_tokens_seen")
    result = {
        "stage": stage,
        "train_runtime": runtime,
        "effective_tokens": effective,
        "effective_tokens_per_sec": effective / runtime if runtime > 0 else float("nan"),
        "lf_effective_tokens_per_sec": metrics.get("effective_tokens_per_sec"),
        "steps": state.get("global_step"),
        "epoch": epoch,
        "train_loss": metrics.get("train_loss"),
        "train_samples_per_second": metrics.get("train_samples_per_second"),
        "padded_tokens": state.get("num_input_tokens_seen"),
        "padding_fraction": 1 - effective / padded if padded else None,
        "rows": counts["rows"],
        "dataset_tokens": counts["tokens"],
        "label_tokens": counts.get("label_tokens"),
        "max_len": counts["max_len"],
        "min_len": counts["min_len"],
        "cutoff_len": cutoff_len,
        "micro_batch": micro_batch,
        "grad_accum": grad_accum,
        "nproc": nproc,
        "wall_time": wall,
        "cpu_time": cpu,
        "gradient_checkpointing": not config.get("disable_gradient_checkpointing", False),
        "log": str(log),
    }
    logger.info(
        "LLaMA-Factory %s: %.0f effective tokens/s (%d tokens in %.1f s, %s steps, loss %s; wall %.1f s)",
        stage,
        result["effective_tokens_per_sec"],
        effective,
        runtime,
        result["steps"],
        result["train_loss"],
        wall,
    )
    return result


def main(argv: list[str] | None = None) -> None:
    """Command line: build the venv if needed and run one training, printing the metrics as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--stage", choices=["pt", "sft"], required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--cutoff-len", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--template", default="deepseek")
    parser.add_argument("--nproc", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    python = ensure_venv(args.venv)
    result = run_llamafactory(
        python,
        stage=args.stage,
        model_dir=args.model,
        data_file=args.data,
        cutoff_len=args.cutoff_len,
        micro_batch=args.micro_batch,
        grad_accum=args.grad_accum,
        epochs=args.epochs,
        workdir=args.workdir,
        template=args.template,
        nproc=args.nproc,
    )
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
