"""The local launcher: the training entrypoint under torchrun, N processes on this machine.

torchrun (torch.distributed.run, standalone rendezvous) starts N ranks — CPU processes with gloo,
or one per GPU with NCCL — and restarts the whole group when one dies, up to `max_restarts`
times; each restart resumes from the newest complete checkpoint. The launcher checks the inputs
before starting anything (so a mistake is not retried), streams the ranks' output, stops at once
on a rank's one-line user error, and when restarts run out fails with the last error it saw.
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

log = logging.getLogger(__name__)

CONFIG_FILE = "train-config.yaml"
LOG_FILE = "launcher.log"
_FATAL = re.compile(r"^(error: |config error )")
_ERROR = re.compile(r"^(\w+\.)*\w+(Error|Exception|Interrupt)\b: |exitcode\s*:\s*-?\d+|Signal \d+ \(\w+\)")


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


def torchrun_command(config_file: Path, nproc: int, max_restarts: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
        f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}", "--monitor-interval=1",
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
    tmp = config_file.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True), "utf-8")
    os.replace(tmp, config_file)
    command = torchrun_command(config_file, train.nproc, train.max_restarts)
    if quiet:
        command.append("--quiet")
    log.info("starting %d %s ranks under torchrun (max %d restarts)", train.nproc, "GPU" if cuda else "CPU",
             train.max_restarts)  # fmt: skip
    last_error, fatal, restarts = _run(command, child_environment(train.nproc, cuda), output / LOG_FILE)
    if fatal:
        raise UserError(fatal.removeprefix("error: "))
    manifest_path = output / "manifest.json"
    if last_error is not None or not manifest_path.is_file():
        raise TrainingFailed(
            f"training failed after {restarts} restart(s) of {train.max_restarts}: "
            f"{last_error or 'no error message was printed'} (full log: {output / LOG_FILE})"
        )
    return json.loads(manifest_path.read_text(encoding="utf-8"))


def _run(command: list[str], env: dict[str, str], log_path: Path) -> tuple[str | None, str | None, int]:
    """Run torchrun, echoing its output; returns (last error line on failure, fatal user error, restarts)."""
    recent: collections.deque[str] = collections.deque(maxlen=400)
    fatal: str | None = None
    restarts = 0
    with open(log_path, "a", encoding="utf-8") as log_file:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=True,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            for line in process.stdout:
                sys.stderr.write(line)
                log_file.write(line)
                text = line.strip()
                recent.append(text)
                if "Restarting" in text and "worker group" in text.lower():
                    restarts += 1
                if _FATAL.match(text) and fatal is None:
                    fatal = text
                    _stop(process)
            code = process.wait()
        finally:
            if process.poll() is None:
                _stop(process)
    if code == 0 or fatal:
        return None, fatal, restarts
    errors = [line for line in recent if _ERROR.search(line)]
    return (errors[-1] if errors else f"torchrun exited with code {code}"), None, restarts


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
