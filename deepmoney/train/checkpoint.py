"""Checkpoints that a resumed run can trust: complete, verified, the newest K kept.

A checkpoint is `checkpoints/step-NNNNNNNN/`: DeepSpeed's model, optimizer and scheduler states
(ZeRO shards, one set per rank), each rank's RNG state, and — written last, by rank 0, once every
rank has finished — `complete.json` listing every file with its size. A directory without that
marker, or whose files no longer match it, is skipped with a warning in favour of the one before;
so is one that DeepSpeed fails to load. Checkpoints must be on storage that all nodes share
(a ReadWriteMany volume on a cluster). With `train.checkpoint_uri` every sealed checkpoint is also
copied to an S3 prefix (marker last, newest K kept there too), and a run that finds no usable
checkpoint locally — a new pod, a wiped volume — fetches the newest complete one from there.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepmoney.errors import UserError
from deepmoney.storage import Storage, StorageError, atomic_write_bytes, join
from deepmoney.train.distributed import DistEnv

log = logging.getLogger(__name__)

MARKER = "complete.json"
_TAG = re.compile(r"^step-(\d{8,})$")


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory on disk."""

    step: int
    path: Path

    @property
    def tag(self) -> str:
        return self.path.name


def all_checkpoints(root: Path) -> list[Checkpoint]:
    """Every step directory under `root`, newest first (complete or not)."""
    if not root.is_dir():
        return []
    found = [Checkpoint(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _TAG.match(p.name))]
    return sorted(found, key=lambda c: c.step, reverse=True)


def problem(checkpoint: Checkpoint, world_size: int) -> str | None:
    """Why this checkpoint cannot be resumed from, or None when it is complete and intact."""
    marker = checkpoint.path / MARKER
    if not marker.is_file():
        return "incomplete (no complete.json: the run stopped while writing it)"
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except ValueError:
        return "damaged complete.json"
    for name, size in meta["files"].items():
        path = checkpoint.path / name
        if not path.is_file():
            return f"missing file {name}"
        if path.stat().st_size != size:
            return f"file {name} is {path.stat().st_size} bytes, {size} were written"
    if meta["world_size"] != world_size:
        raise UserError(
            f"checkpoint {checkpoint.path} was written by {meta['world_size']} ranks and this run has {world_size}; "
            "resume with the same number of processes, or set train.resume=false (or a new --output) to start over"
        )
    return None


def resumable(root: Path, world_size: int) -> list[Checkpoint]:
    """Complete, intact checkpoints, newest first; the others are reported and passed over."""
    good = []
    for checkpoint in all_checkpoints(root):
        reason = problem(checkpoint, world_size)
        if reason is None:
            good.append(checkpoint)
        else:
            log.warning("skipping checkpoint %s: %s", checkpoint.path, reason)
    return good


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _barrier(env: DistEnv) -> None:
    if env.distributed:
        import torch.distributed as dist

        dist.barrier()


def save(engine: Any, root: Path, step: int, client_state: dict[str, Any], env: DistEnv, keep_last: int) -> Path:
    """Write checkpoint `step` on every rank; rank 0 seals it with the marker and prunes old ones."""
    path = root / tag_for(step)
    if env.is_main and path.exists():
        shutil.rmtree(path)  # a leftover of a run killed while writing this very step
    _barrier(env)
    engine.save_checkpoint(str(root), tag=path.name, client_state=client_state, save_latest=False)
    rng_file = path / f"rng-rank{env.rank}.pt"
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    atomic_write_bytes(rng_file, buffer.getvalue())
    _barrier(env)
    if env.is_main:
        files = {p.relative_to(path).as_posix(): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}
        expected = {f"rng-rank{r}.pt" for r in range(env.world_size)}
        if not expected <= files.keys():
            raise RuntimeError(
                f"checkpoint {path} lacks the files of ranks {sorted(expected - files.keys())}: "
                "checkpoints must be on storage that every node shares"
            )
        meta = {"step": step, "world_size": env.world_size, "files": files, **client_state.get("summary", {})}
        atomic_write_bytes(path / MARKER, json.dumps(meta, indent=2).encode("utf-8"))
        _prune(root, keep_last)
    _barrier(env)
    return path


def _prune(root: Path, keep_last: int) -> None:
    complete = [c for c in all_checkpoints(root) if (c.path / MARKER).is_file()]
    keep = {c.path for c in complete[:keep_last]}
    newest = complete[0].step if complete else -1
    for checkpoint in all_checkpoints(root):
        stale_partial = checkpoint.step < newest and not (checkpoint.path / MARKER).is_file()
        if (checkpoint.path not in keep and (checkpoint.path / MARKER).is_file()) or stale_partial:
            shutil.rmtree(checkpoint.path, ignore_errors=True)
            log.info("removed old checkpoint %s", checkpoint.path)


def load_newest(engine: Any, root: Path, env: DistEnv) -> tuple[Checkpoint, dict[str, Any]] | None:
    """Load the newest checkpoint that every rank can load; None when there is none.

    Rank 0 chooses the candidates (so all ranks try the same ones in the same order); a load that
    fails on any rank moves everyone on to the next older checkpoint.
    """
    candidates: list[Checkpoint] = []
    refusal = ""
    if env.is_main:
        try:
            candidates = resumable(root, env.world_size)
        except UserError as exc:
            refusal = str(exc)
    if env.distributed:
        import torch.distributed as dist

        box = [(candidates, refusal)]
        dist.broadcast_object_list(box, src=0)
        candidates, refusal = box[0]
    if refusal:
        raise UserError(refusal)
    for checkpoint in candidates:
        ok, client_state, error = True, {}, ""
        try:
            _, client_state = engine.load_checkpoint(
                str(root), tag=checkpoint.tag, load_optimizer_states=True, load_lr_scheduler_states=True
            )
            if client_state is None:
                raise RuntimeError("DeepSpeed found no checkpoint there")
            set_rng_state(torch.load(checkpoint.path / f"rng-rank{env.rank}.pt", weights_only=False))
        except Exception as exc:  # any failure means: try the one before
            ok, error = False, f"{type(exc).__name__}: {exc}".splitlines()[0]
        if env.distributed:
            import torch.distributed as dist

            flag = torch.tensor([0 if ok else 1], device="cuda" if torch.cuda.is_available() else "cpu")
            dist.all_reduce(flag)
            ok = ok and int(flag.item()) == 0
        if ok:
            return checkpoint, client_state
        log.warning("skipping checkpoint %s: it failed to load (%s)", checkpoint.path, error or "on another rank")
    return None


def _remote_tags(storage: Storage, uri: str) -> dict[str, list[str]]:
    """Object URIs under the S3 prefix, grouped by checkpoint directory name."""
    base = uri.rstrip("/") + "/"
    tags: dict[str, list[str]] = {}
    try:
        refs = storage.list_files(uri)
    except StorageError as exc:
        if "no objects under" not in str(exc):
            raise
        return tags  # nothing copied there yet
    for ref in refs:
        tag = ref.uri[len(base) :].split("/", 1)[0]
        if _TAG.match(tag):
            tags.setdefault(tag, []).append(ref.uri)
    return tags


def mirror(storage: Storage, checkpoint: Path, uri: str, keep_last: int) -> None:
    """Copy a sealed checkpoint to the S3 prefix (its marker last) and prune older ones there."""
    storage.publish_tree(checkpoint, join(uri, checkpoint.name), last=MARKER)
    tags = _remote_tags(storage, uri)
    complete = sorted((t for t, objs in tags.items() if any(o.endswith("/" + MARKER) for o in objs)), reverse=True)
    for tag in complete[keep_last:]:
        for obj in tags[tag]:
            storage.delete(obj)
    log.info("checkpoint %s copied to %s", checkpoint.name, join(uri, checkpoint.name))


def restore(storage: Storage, uri: str, root: Path) -> Path | None:
    """Fetch the newest complete checkpoint from the S3 prefix into `root`; None when there is none."""
    tags = _remote_tags(storage, uri)
    for tag in sorted(tags, reverse=True):
        if not any(obj.endswith("/" + MARKER) for obj in tags[tag]):
            continue
        staging = root / f".{tag}.download"
        shutil.rmtree(staging, ignore_errors=True)
        storage.download_tree(join(uri, tag), staging)
        target = root / tag
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        log.info("fetched checkpoint %s from %s", tag, uri)
        return target
    return None
