"""The training loop that every launcher runs: torchrun here, a PyTorchJob pod or a TrainJob node there.

One process per rank. It reads the distributed environment, checks the data against the model,
builds the DeepSpeed engine from the typed config, resumes from the newest complete checkpoint,
trains pt (packed corpus blocks) or sft (packed chat examples) with per-segment positions and
masks, checkpoints every `save_every` steps, and ends with a Hugging Face model directory and
`manifest.json` (steps, effective tokens/s, MLflow run id). Rank 0 alone logs and writes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from deepmoney import __version__
from deepmoney import env as env_vars
from deepmoney.config import DeepmoneyConfig, hide_passwords
from deepmoney.errors import UserError
from deepmoney.models.resolve import resolve_model
from deepmoney.models.shape import model_shape
from deepmoney.stage import TrainManifest, write_manifest
from deepmoney.storage import Storage, atomic_write_bytes, is_s3
from deepmoney.tracking import tags
from deepmoney.tracking.training import Tracker
from deepmoney.train import checkpoint, fused_loss
from deepmoney.train.datasets import StepBatches, TrainData, steps_for
from deepmoney.train.distributed import DistEnv, dist_env, process_group
from deepmoney.train.ds_config import Batching, batching, deepspeed_config, resolve_precision
from deepmoney.train.model import (
    build_model,
    export_final,
    flops_per_token,
    out_of_memory_advice,
    peak_flops,
    warmup_steps,
)
from deepmoney.train.packed import training_collate
from deepmoney.train.plan import (
    RunPlan,
    check_run,
    default_learning_rate,
    finished_run,
    load_data,
    plan_run,
    prepare_output,
)

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"


def git_revision() -> str:
    """The commit of the deepmoney source this process runs, when it runs from a git checkout."""
    import subprocess

    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def lr_lambda(total: int, warmup: int, schedule: str, min_ratio: float):
    """Multiplier of the peak learning rate at each step: linear warmup, then cosine/linear decay."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * decay

    return factor


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8"))


@dataclass
class _Progress:
    """Where the run stands; saved in every checkpoint so a resumed run continues the counts."""

    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    first_loss: float | None = None
    last_loss: float | None = None
    resumes: list[dict[str, int]] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        return {"step": self.step, "tokens": self.tokens, "seconds": self.seconds, "first_loss": self.first_loss,
                "last_loss": self.last_loss, "resumes": self.resumes}  # fmt: skip


def train(config: DeepmoneyConfig, env: DistEnv | None = None, quiet: bool = False,
          overwrite: bool = False) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) the configured training on this rank; returns the output manifest."""
    env = env or dist_env()
    plan = plan_run(config, overwrite, check_output=env.is_main or not overwrite)
    if plan.finished is not None:
        return finished_run(plan, config) if env.is_main else plan.finished
    if env.is_main:
        prepare_output(plan)
    else:
        logging.getLogger("deepmoney").setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading a few shards needs no bar on every rank
    with process_group(env):
        return _Run(config, env, plan, quiet).run()


class _Run:
    def __init__(self, config: DeepmoneyConfig, env: DistEnv, plan: RunPlan, quiet: bool) -> None:
        self.config, self.train, self.env, self.plan = config, config.train, env, plan
        self.model_uri, self.data_uri, self.output = plan.model_uri, plan.data_uri, plan.output
        self.fingerprint, self.quiet = plan.fingerprint, quiet
        self.storage = Storage(config.storage)
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", env.local_rank) if self.cuda else torch.device("cpu")

    def _barrier(self) -> None:
        if self.env.distributed:
            import torch.distributed as dist

            dist.barrier()

    def _on_each_node(self, fetch: Any) -> Any:
        """`fetch()` on each node's first rank (downloads happen once per node), then on the others (cache hits)."""
        result = fetch() if self.env.local_rank == 0 else None
        self._barrier()
        return result if result is not None else fetch()

    def _model_dir(self) -> Path:
        cache = self.output / ".cache"
        return self._on_each_node(lambda: resolve_model(self.model_uri, self.config, cache, "--model").path)

    def _load_data(self, model_dir: Path) -> TrainData:
        data = Path(self.data_uri)
        if is_s3(self.data_uri):
            data = self._on_each_node(lambda: self.storage.fetch_tree(self.data_uri, self.output / ".cache" / "data"))
        scratch = self.output / ".cache" / f"rank{self.env.rank}"
        scratch.mkdir(parents=True, exist_ok=True)
        loaded = load_data(self.config, data, model_dir, scratch)
        if is_s3(self.data_uri):
            loaded.info["uri"] = self.data_uri if self.train.stage == "pt" else self.data_uri + "/" + Path(
                loaded.info["uri"]).name  # fmt: skip
        return loaded

    def run(self) -> dict[str, Any]:
        train, env = self.train, self.env
        model_dir = self._model_dir()
        data = self._load_data(model_dir)
        check_run(self.config, data, model_dir, env.world_size, env.local_world_size)
        batch = batching(train, env.world_size)
        precision = resolve_precision(train, self.cuda, self.cuda and torch.cuda.is_bf16_supported())
        total = steps_for(train.max_steps, train.epochs, len(data), batch.global_batch)
        shape = model_shape(model_dir)
        lr = default_learning_rate(train)
        client_optimizer = not train.zero.offload_optimizer
        ds_config = deepspeed_config(train, batch, precision, lr, client_optimizer)
        if env.is_main:
            _atomic_json(self.output / "ds_config.json", ds_config)
        torch.manual_seed(train.seed)
        model, hf_ds = build_model(model_dir, train, precision, ds_config)
        if train.fused_loss and not fused_loss.install(model):
            log.info("fused loss not available for this architecture; logits are computed at trained positions only")
        engine = self._engine(model, ds_config, lr, total, client_optimizer)
        del hf_ds
        tracker = Tracker(train.mlflow, env.is_main, self.output)
        tracker.start(
            train.mlflow.run_name or f"{train.stage}-{self.output.name}",
            params={"train": train.model_dump(mode="json"), "model": self.model_uri, "data": data.info,
                    "world_size": env.world_size, "global_batch": batch.global_batch, "total_steps": total,
                    "precision": precision, "learning_rate": lr},
            run_tags={tags.STAGE: train.stage, tags.FINGERPRINT: self.fingerprint, tags.VERSION: __version__,
                      tags.GIT_REVISION: git_revision()},
        )  # fmt: skip
        progress = self._resume(engine)
        if progress.step == 0:
            tracker.log_dataset(data.info, context="training")
            tracker.log_dict(ds_config, "deepspeed_config.json")
        status = "FAILED"
        try:
            self._loop(engine, data, batch, total, progress, tracker, shape, precision)
            fused_loss.uninstall(engine.module)
            final = export_final(engine, train, model_dir, self.output, env, precision)
            manifest = self._manifest(progress, data, batch, total, precision)
            if env.is_main and final is not None:
                reference = {"uri": str(final.resolve()), "files": sorted(p.name for p in final.iterdir()),
                             "fingerprint": self.fingerprint}  # fmt: skip
                manifest.mlflow_model_uri = tracker.log_model(final, train.mlflow.log_model, reference)
                tracker.log_dict(manifest.model_dump(mode="json"), "deepmoney_manifest.json")
                tracker.end("FINISHED")
                manifest.mlflow_run_id = tracker.run_id
                manifest.mlflow_tracking_uri = tracker.shown_uri if tracker.run_id else None
                manifest.mlflow_pending = tracker.pending
                write_manifest(self.output / "manifest.json", manifest)
                log.info(
                    "trained %d steps, %d tokens at %.0f tokens/s; model in %s; MLflow run %s",
                    manifest.steps, manifest.tokens, manifest.tokens_per_second, final,
                    manifest.mlflow_run_id or ("(kept offline: deepmoney track sync)" if tracker.pending else "(none)"),
                )  # fmt: skip
            status = "FINISHED"
            self._barrier()
            return manifest.model_dump(mode="json")
        except torch.OutOfMemoryError:
            raise UserError(out_of_memory_advice(train, data.block_size, "the GPU ran out of memory")) from None
        finally:
            if env.is_main and status != "FINISHED":
                tracker.end("FAILED")

    def _engine(self, model: Any, ds_config: dict[str, Any], lr: float, total: int, client_optimizer: bool) -> Any:
        import deepspeed

        train = self.train
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = None
        if client_optimizer:
            fused = {"fused": True} if self.cuda else {}
            optimizer = torch.optim.AdamW(
                params, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=train.weight_decay, **fused
            )
        factor = lr_lambda(total, warmup_steps(total, train.warmup_ratio), train.schedule, train.min_lr_ratio)
        try:
            engine, _, _, _ = deepspeed.initialize(
                model=model,
                optimizer=optimizer,
                model_parameters=None if optimizer else params,
                lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor),
                config=ds_config,
            )
        except AssertionError as exc:  # DeepSpeed validates its config with asserts
            raise UserError(f"DeepSpeed rejected the generated config: {exc}".splitlines()[0]) from None
        return engine

    def _resume(self, engine: Any) -> _Progress:
        progress = _Progress()
        root = self.output / "checkpoints"
        if not self.train.resume:
            return progress
        remote = self.train.checkpoint_uri
        if remote and self.env.is_main and not checkpoint.resumable(root, self.env.world_size):
            root.mkdir(parents=True, exist_ok=True)
            checkpoint.restore(self.storage, remote, root)
        self._barrier()
        loaded = checkpoint.load_newest(engine, root, self.env)
        if loaded is None:
            return progress
        found, state = loaded
        saved = state.get("progress", {})
        progress = _Progress(**saved)
        reached = self._reached()
        attempt = int(env_vars.get(env_vars.LAUNCH_ATTEMPT) or env_vars.get(env_vars.TORCHELASTIC_RESTART_COUNT) or 0)
        progress.resumes.append({"from_step": found.step, "reached_step": max(reached, found.step),
                                 "lost_steps": max(0, reached - found.step), "attempt": attempt})  # fmt: skip
        log.info("resumed from %s (step %d; %d steps to redo)", found.path, found.step, max(0, reached - found.step))
        return progress

    def _reached(self) -> int:
        path = self.output / PROGRESS_FILE
        if not path.is_file():
            return 0
        try:
            return int(json.loads(path.read_text(encoding="utf-8"))["step"])
        except (ValueError, KeyError):
            return 0

    def _loop(
        self, engine: Any, data: TrainData, batch: Batching, total: int, progress: _Progress, tracker: Tracker,
        shape: dict[str, int], precision: str,
    ) -> None:  # fmt: skip
        import torch.distributed as dist
        from torch.utils.data import DataLoader
        from tqdm import tqdm

        train, env = self.train, self.env
        sampler = StepBatches(
            len(data), batch.micro_batch, batch.grad_accum, env.rank, env.world_size, train.seed,
            progress.step, total,
        )  # fmt: skip
        loader = DataLoader(
            data.items, batch_sampler=sampler, collate_fn=partial(training_collate, attention=train.attention),
            num_workers=train.loader_workers, pin_memory=self.cuda, persistent_workers=False,
        )  # fmt: skip
        peak = peak_flops(precision)
        flops = flops_per_token(shape, data.block_size)
        bar = tqdm(total=total, initial=progress.step, desc=f"train {train.stage}", unit="step",
                   disable=self.quiet or not env.is_main, dynamic_ncols=True)  # fmt: skip
        window = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, micro-batches, tokens
        window_start = time.perf_counter()
        micro = 0
        engine.train()
        for inputs in loader:
            tokens = inputs.pop("n_tokens")
            inputs = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
            loss = engine(**inputs).loss
            engine.backward(loss)
            engine.step()
            window += torch.tensor([loss.item(), 1.0, float(tokens)], dtype=torch.float64, device=self.device)
            micro += 1
            if micro % batch.grad_accum:
                continue
            progress.step += 1
            bar.update(1)
            last = progress.step == total
            if progress.step % train.log_every == 0 or last or progress.step == 1:
                if env.distributed:
                    dist.all_reduce(window)
                elapsed = time.perf_counter() - window_start
                progress.seconds += elapsed
                progress.tokens += int(window[2].item())
                mean_loss = window[0].item() / window[1].item()
                if not math.isfinite(mean_loss):
                    raise UserError(f"the loss became {mean_loss} at step {progress.step}; lower the learning rate "
                                    f"(now {default_learning_rate(train)}) or raise train.warmup_ratio")  # fmt: skip
                progress.first_loss = progress.first_loss if progress.first_loss is not None else mean_loss
                progress.last_loss = mean_loss
                tokens_per_second = window[2].item() / elapsed
                metrics = {"loss": mean_loss, "learning_rate": engine.get_lr()[0],
                           "tokens_per_second": tokens_per_second, "epoch": progress.step / max(1, len(data) //
                           batch.global_batch), "tokens": float(progress.tokens)}  # fmt: skip
                norm = engine.get_global_grad_norm()
                if norm is not None:
                    metrics["grad_norm"] = float(norm)
                if peak:
                    metrics["mfu"] = tokens_per_second * flops / (peak * env.world_size)
                tracker.log_metrics(metrics, progress.step)
                bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{tokens_per_second:.0f}")
                window.zero_()
                window_start = time.perf_counter()
            if env.is_main:
                _atomic_json(self.output / PROGRESS_FILE, {"step": progress.step})
            if progress.step % train.save_every == 0 or last:
                saved_at = time.perf_counter()
                state = {"progress": progress.state(),
                         "summary": {"loss": progress.last_loss, "tokens": progress.tokens}}  # fmt: skip
                sealed = checkpoint.save(
                    engine, self.output / "checkpoints", progress.step, state, env, train.keep_last
                )
                if train.checkpoint_uri and env.is_main:
                    checkpoint.mirror(self.storage, sealed, train.checkpoint_uri, train.keep_last)
                window_start += time.perf_counter() - saved_at  # checkpoint time is not training time
                if env.is_main:
                    where = str(self.output / "checkpoints" / checkpoint.tag_for(progress.step))
                    tracker.log_dict({"step": progress.step, "path": where}, f"checkpoints/{progress.step:08d}.json")
        bar.close()

    def _manifest(self, progress: _Progress, data: TrainData, batch: Batching, total: int, precision: str
                  ) -> TrainManifest:  # fmt: skip
        train = self.train
        return TrainManifest(
            fingerprint=self.fingerprint, settings=self.plan.settings, stage=train.stage, base_model=self.model_uri,
            final=str(self.output / "final"), steps=progress.step, tokens=progress.tokens,
            tokens_per_second=progress.tokens / progress.seconds if progress.seconds else 0.0,
            first_loss=progress.first_loss, final_loss=progress.last_loss, world_size=self.env.world_size,
            zero_stage=train.zero.stage, data=data.info,
            adapter=str(self.output / "adapter") if train.lora.enabled else None,
            lora=train.lora.model_dump(mode="json") if train.lora.enabled else None,
            planned_steps=total, train_seconds=round(progress.seconds, 3), resumes=progress.resumes,
            global_batch=batch.global_batch, micro_batch=batch.micro_batch, grad_accum=batch.grad_accum,
            precision=precision, config=hide_passwords(train.model_dump(mode="json")),
        )  # fmt: skip
