"""The local launcher: the training entrypoint under torchrun, N processes on this machine.

torchrun (torch.distributed.run, standalone rendezvous) starts N ranks — CPU processes with gloo,
or one per GPU with NCCL. When a rank dies the launcher starts a fresh torchrun, up to
`max_restarts` times, and the ranks resume from the newest complete checkpoint. (It restarts
torchrun as a whole rather than using torchrun's own `--max-restarts`: with torch 2.13 a group
restarted inside one torchrun often fails to reconnect — gloo "connectFullMesh … Connection
refused", pytorch/pytorch#167288 — while a fresh rendezvous always starts clean.) The launcher
checks the inputs before starting anything (so a mistake is not retried), streams the ranks'
output, stops at once on a rank's one-line user error, and when restarts run out fails with the
last error it saw.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from deepmoney.config import DeepmoneyConfig
from deepmoney.errors import UserError
from deepmoney.storage import atomic_write_bytes

log = logging.getLogger(__name__)

CONFIG_FILE = "train-config.yaml"
LOG_FILE = "launcher.log"
ATTEMPT_ENV = "DEEPMONEY_LAUNCH_ATTEMPT"  # which start of the ranks this is (0 = the first)
_FATAL = re.compile(r"^(error: |config error )")
_EXCEPTION = re.compile(r"^(\[rank(?P<rank>\d+)\]: )?(?P<text>(\w+\.)*\w+(Error|Exception)\b: .*)")
_FIELD = re.compile(r"^\s*(\w+)\s*: (.*)$")


class TrainingFailed(UserError):
    """The group failed more often than max_restarts allowed; the message is the last error seen."""


def child_environment(nproc: int, cuda: bool) -> dict[str, str]:
    """Environment of the ranks: CPU accelerator without GPUs, a fair share of cores each."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["DEEPMONEY_LAUNCHED"] = "1"
    if not cuda:
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def torchrun_command(config_file: Path, nproc: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
        f"--nproc-per-node={nproc}", "--max-restarts=0", "--monitor-interval=1",
        "-m", "deepmoney.train", "--config", str(config_file), "--launcher", "none",
    ]  # fmt: skip


def launch_local(config: DeepmoneyConfig, quiet: bool = False) -> dict[str, Any]:
    """Train under torchrun with `train.nproc` ranks; returns the output manifest."""
    import torch

    from deepmoney.train.trainer import preflight

    train = config.train
    cuda = torch.cuda.is_available()
    if cuda and train.nproc > torch.cuda.device_count():
        raise UserError(f"--nproc {train.nproc} but this machine has {torch.cuda.device_count()} GPUs")
    output, finished = preflight(config, train.nproc)
    if finished is not None:
        log.info("%s already holds this finished run; nothing to do", output)
        return finished
    output.mkdir(parents=True, exist_ok=True)
    config_file = output / CONFIG_FILE
    dumped = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    atomic_write_bytes(config_file, dumped.encode("utf-8"))
    command = torchrun_command(config_file, train.nproc)
    if quiet:
        command.append("--quiet")
    env = child_environment(train.nproc, cuda)
    manifest_path = output / "manifest.json"
    last_error = None
    for attempt in range(train.max_restarts + 1):
        if attempt:
            log.warning("restarting the ranks from the newest checkpoint (restart %d of %d) after: %s",
                        attempt, train.max_restarts, last_error)  # fmt: skip
        else:
            log.info("starting %d %s ranks under torchrun (up to %d restarts)", train.nproc,
                     "GPU" if cuda else "CPU", train.max_restarts)  # fmt: skip
        last_error, fatal = _run(command, {**env, ATTEMPT_ENV: str(attempt)}, output / LOG_FILE)
        if fatal:
            raise UserError(fatal.removeprefix("error: "))
        if last_error is None and manifest_path.is_file():
            return json.loads(manifest_path.read_text(encoding="utf-8"))
        last_error = last_error or "torchrun ended without writing manifest.json"
    raise TrainingFailed(
        f"training failed after {train.max_restarts} restart(s): {last_error} (full log: {output / LOG_FILE})"
    )


def _run(command: list[str], env: dict[str, str], log_path: Path) -> tuple[str | None, str | None]:
    """Run torchrun once, echoing its output; returns (last error line on failure, fatal user error)."""
    recent: collections.deque[str] = collections.deque(maxlen=400)
    fatal: str | None = None
    with open(log_path, "a", encoding="utf-8") as log_file:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=True,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            for line in process.stdout:
                log_file.write(line)
                if fatal is None:  # after a user error, the rest is the group being stopped: log only
                    sys.stderr.write(line)
                text = line.strip()
                recent.append(text)
                if _FATAL.match(text) and fatal is None:
                    fatal = text
                    _stop(process)
            code = process.wait()
        finally:
            if process.poll() is None:
                _stop(process)
    if code == 0 or fatal:
        return None, fatal
    return root_cause(list(recent)) or f"torchrun exited with code {code}", None


def root_cause(lines: list[str]) -> str | None:
    """The failure torchrun names as root cause, with that rank's exception if it printed one."""
    fields: dict[str, str] = {}
    if any(line.startswith("Root Cause") for line in lines):
        start = max(i for i, line in enumerate(lines) if line.startswith("Root Cause"))
        for line in lines[start + 1 :]:
            if line.startswith("==="):
                break
            if match := _FIELD.match(line):
                fields[match.group(1)] = match.group(2).strip()
    rank = fields.get("rank", "").split(" ")[0]
    exceptions = [(m.group("rank"), m.group("text")) for line in lines if (m := _EXCEPTION.match(line))]
    own = [text for r, text in exceptions if r == rank]
    if own:
        return f"rank {rank}: {own[-1]}"
    if rank:
        how = fields.get("traceback", "")
        how = how if how.startswith("Signal") else f"exit code {fields.get('exitcode', '?')}"
        return f"rank {rank} died ({how})"
    return exceptions[-1][1] if exceptions else None


def _stop(process: subprocess.Popen) -> None:
    """End torchrun and its ranks (their own session), politely first."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass
