"""The local launcher: the training entrypoint under torchrun, N processes on this machine.

torchrun (standalone rendezvous) starts N ranks — CPU processes with gloo, or one per GPU with
NCCL — through `deepmoney.train.torchrun`, which exits with the code of the rank that failed
first. The launcher decides on that code alone (`deepmoney.errors`): 2 is a user error, reported
once and never retried; 128 and above (a lost peer, a signal such as SIGKILL) is retried — a fresh
torchrun, up to `max_restarts` times, the ranks resuming from the newest complete checkpoint;
anything else is a crash, reported with the failing rank's exception. (It restarts torchrun as a
whole rather than using torchrun's own `--max-restarts`: with torch 2.13 a group restarted inside
one torchrun often fails to reconnect — gloo "connectFullMesh … Connection refused",
pytorch/pytorch#167288 — while a fresh rendezvous always starts clean.)

Every check that does not need the ranks runs before any is started (`train.plan.preflight`), so
a mistake is printed once and nothing is written. The ranks' output is passed through unchanged
(progress bars keep updating in place) and kept in `launcher.log`. One process at a time runs an
output: it holds an exclusive lock on `launcher.lock` (which names its pid) from before the output
is prepared until the ranks end, so a second launch of the same run is refused (`RunInProgress`)
instead of training beside it — `deepmoney launch --backend local` attaches to it instead.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import yaml

from deepmoney import env
from deepmoney.config import DeepmoneyConfig
from deepmoney.errors import EXIT_TRANSIENT, EXIT_USER, UserError, is_retryable
from deepmoney.stage import MANIFEST, utc_now
from deepmoney.storage import atomic_write_bytes

if TYPE_CHECKING:
    from deepmoney.train.plan import RunPlan

log = logging.getLogger(__name__)

CONFIG_FILE = "train-config.yaml"
LOG_FILE = "launcher.log"
LOCK_FILE = "launcher.lock"  # held (flock) by the process running the output; JSON: its pid and start
EXIT_FILE = "launcher-exit.json"  # how a detached run ended (`local_backend`); cleared when a run starts
_USER_ERROR = re.compile(r"^(error: |config error )")
_EXCEPTION = re.compile(r"^(\[rank(?P<rank>\d+)\]: )?(?P<text>(\w+\.)*\w+(Error|Exception)\b: .*)")
_FIELD = re.compile(r"^\s*(\w+)\s*: (.*)$")
_LINE_END = re.compile(rb"[\r\n]")


class TrainingFailed(UserError):
    """The ranks failed for good (a crash, or retryable failures beyond max_restarts); the message says why."""


class RunInProgress(UserError):
    """Another process is running this output; wait for it (or attach, or cancel it) rather than run it twice."""

    exit_code = EXIT_TRANSIENT


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def running_pid(output: Path) -> int | None:
    """The pid of the process running `output` now (it holds launcher.lock), or None when none does."""
    try:
        with open(output / LOCK_FILE, encoding="utf-8") as handle:
            if _try_lock(handle):
                return None
            text = handle.read()
    except FileNotFoundError:
        return None
    try:
        return int(json.loads(text)["pid"])
    except (ValueError, KeyError, TypeError):
        return -1  # locked, but its owner has not written its pid yet


@contextlib.contextmanager
def run_lock(output: Path) -> Iterator[None]:
    """Hold `output`'s launcher lock while the body runs; `RunInProgress` when another process holds it."""
    output.mkdir(parents=True, exist_ok=True)
    with open(output / LOCK_FILE, "a+", encoding="utf-8") as handle:
        if not _try_lock(handle):
            handle.seek(0)
            owner = handle.read().strip() or "{}"
            pid = json.loads(owner).get("pid", "?") if owner.startswith("{") else "?"
            raise RunInProgress(f"{output} is being trained by process {pid}; wait for it (deepmoney launch "
                                "--backend local with the same flags attaches), or stop it with --cancel")  # fmt: skip
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "started_at": utc_now()}))
        handle.flush()
        try:
            yield
        finally:
            if (output / MANIFEST).is_file():  # a finished output is published without the lock file
                (output / LOCK_FILE).unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


def child_environment(nproc: int, cuda: bool) -> dict[str, str]:
    """Environment of the ranks: CPU accelerator without GPUs, a fair share of cores each."""
    child = dict(os.environ)
    child.setdefault(env.PYTHONUNBUFFERED, "1")
    child.setdefault(env.TOKENIZERS_PARALLELISM, "false")
    child[env.LAUNCHED] = "1"
    if not cuda:
        child.setdefault(env.DS_ACCELERATOR, "cpu")
        child.setdefault(env.OMP_NUM_THREADS, str(max(1, (os.cpu_count() or 1) // nproc)))
    return child


def torchrun_command(config_file: Path, nproc: int) -> list[str]:
    """The torchrun (through deepmoney.train.torchrun) that starts `nproc` ranks of the entrypoint."""
    return [
        sys.executable, "-m", "deepmoney.train.torchrun", "--standalone", "--nnodes=1",
        f"--nproc-per-node={nproc}", "--max-restarts=0", "--monitor-interval=1",
        "-m", "deepmoney.train", "--config", str(config_file), "--launcher", "none",
    ]  # fmt: skip


def launch_local(config: DeepmoneyConfig, quiet: bool = False, overwrite: bool = False,
                 echo: bool = True) -> dict[str, Any]:  # fmt: skip
    """Train under torchrun with `train.nproc` ranks; returns the output manifest.

    `echo`: pass the ranks' output through to stderr (a detached run has it in launcher.log only).
    """
    from deepmoney.train.plan import finished_run, preflight

    train = config.train
    plan = preflight(config, train.nproc, overwrite)
    if plan.finished is not None:
        return finished_run(plan, config)
    import torch  # after the output's checks: a reused or refused output answers without torch's 3 s import

    cuda = torch.cuda.is_available()
    if cuda and train.nproc > torch.cuda.device_count():
        raise UserError(f"--nproc {train.nproc} but this machine has {torch.cuda.device_count()} GPUs")
    with run_lock(plan.output):
        if not plan.replacing and (plan.output / MANIFEST).is_file():  # finished by another process meanwhile
            return json.loads((plan.output / MANIFEST).read_text(encoding="utf-8"))
        return _train(config, plan, cuda, quiet, echo)


def _train(config: DeepmoneyConfig, plan: RunPlan, cuda: bool, quiet: bool, echo: bool) -> dict[str, Any]:
    """Prepare the (locked) output and run torchrun until the manifest is written or the failure is final."""
    from deepmoney.train.plan import prepare_output

    train = config.train
    prepare_output(plan, keep=(LOCK_FILE,))
    output = plan.output
    (output / EXIT_FILE).unlink(missing_ok=True)
    config_file = output / CONFIG_FILE
    dumped = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    atomic_write_bytes(config_file, dumped.encode("utf-8"))
    command = torchrun_command(config_file, train.nproc)
    if quiet:
        command.append("--quiet")
    child = child_environment(train.nproc, cuda)
    manifest_path = output / "manifest.json"
    last_error = None
    for attempt in range(train.max_restarts + 1):
        if attempt:
            log.warning("restarting the ranks from the newest checkpoint (restart %d of %d) after: %s",
                        attempt, train.max_restarts, last_error)  # fmt: skip
        else:
            log.info("starting %d %s ranks under torchrun (up to %d restarts)", train.nproc,
                     "GPU" if cuda else "CPU", train.max_restarts)  # fmt: skip
        code, user_error, cause = _run(command, {**child, env.LAUNCH_ATTEMPT: str(attempt)}, output / LOG_FILE, echo)
        if code == 0 and manifest_path.is_file():
            return json.loads(manifest_path.read_text(encoding="utf-8"))
        if code == EXIT_USER:
            raise UserError((user_error or f"a rank refused its input ({cause})").removeprefix("error: "))
        last_error = cause or ("torchrun ended without writing manifest.json" if code == 0 else f"exit code {code}")
        if code != 0 and not is_retryable(code):
            raise TrainingFailed(f"training failed: {last_error} (not retried: exit code {code} is not a transient "
                                 f"failure; full log: {output / LOG_FILE})")  # fmt: skip
    raise TrainingFailed(
        f"training failed after {train.max_restarts} restart(s): {last_error} (full log: {output / LOG_FILE})"
    )


def _run(command: list[str], child_env: dict[str, str], log_path: Path,
         echo: bool = True) -> tuple[int, str | None, str | None]:  # fmt: skip
    """Run torchrun once, passing its output through; (exit code, the ranks' user error, the root cause)."""
    recent: collections.deque[str] = collections.deque(maxlen=400)
    user_error: str | None = None
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(command, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        try:
            assert process.stdout is not None
            pending = b""
            while chunk := os.read(process.stdout.fileno(), 1 << 16):
                log_file.write(chunk)
                log_file.flush()  # `deepmoney launch --logs --follow` reads it as it grows
                pending += chunk
                *pieces, pending = _split_keeping_ends(pending)
                for piece in pieces:
                    text = piece.decode("utf-8", "replace").strip()
                    recent.append(text)
                    if _USER_ERROR.match(text):
                        user_error = user_error or text  # every rank may say it: shown once, by the caller
                        continue
                    if echo:
                        sys.stderr.buffer.write(piece)  # \r kept: a progress bar redraws in place
                if echo:
                    sys.stderr.buffer.flush()
            if pending and echo:
                sys.stderr.buffer.write(pending)
            code = process.wait()
        finally:
            if process.poll() is None:
                _stop(process)
    cause = None if code == 0 else root_cause(list(recent))
    return code, user_error, cause


def _split_keeping_ends(data: bytes) -> list[bytes]:
    """`data` cut after every \\r or \\n; the last piece is what has no line end yet (maybe empty)."""
    pieces, start = [], 0
    for match in _LINE_END.finditer(data):
        pieces.append(data[start : match.end()])
        start = match.end()
    pieces.append(data[start:])
    return pieces


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
