"""`deepmoney launch --backend local`: the torchrun launcher (`launch.local`) behind the launcher interface.

A local run's "job" is its output directory:

- `launcher.lock` is held by the process running it (`local.run_lock`), so launching the same run
  again attaches to that process instead of training beside it;
- `launcher.log` has the ranks' output (and, for a detached run, the launcher's own messages);
- `manifest.json` marks success; `launcher-exit.json` records how a detached run ended.

`submit(wait=True)` trains in this process (or waits for the process already running it);
`submit(wait=False)` checks everything here first, prepares the output, then leaves the training to a
detached process (`python -m deepmoney.launch.detached`, its own session) and returns once that
process holds the lock. `cancel` sends the running process SIGTERM: it stops torchrun and its ranks,
and the checkpoints stay, so the same launch resumes the run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from deepmoney import env
from deepmoney.config import DeepmoneyConfig
from deepmoney.errors import EXIT_USER, UserError
from deepmoney.launch.jobs import FAILED, SUCCEEDED, JobStillRunning
from deepmoney.launch.local import (
    CONFIG_FILE,
    EXIT_FILE,
    LOCK_FILE,
    LOG_FILE,
    RunInProgress,
    launch_local,
    run_lock,
    running_pid,
    torchrun_command,
)
from deepmoney.stage import MANIFEST, RUN_MARKER, utc_now
from deepmoney.storage import atomic_write_bytes

log = logging.getLogger(__name__)

RUNNING, STOPPED, NOT_STARTED = "Running", "Stopped", "NotStarted"
START_TIMEOUT_S = 300.0  # the detached process re-checks the run (data, model) before it takes the lock
CANCEL_GRACE_S = 90.0  # the launcher gives torchrun 30 s to stop its ranks, then kills them
SUMMARY_KEYS = ("stage", "steps", "tokens", "final_loss", "final", "mlflow_run_id")


class LocalRunFailed(UserError):
    """A detached local run ended in failure; the message is its own, the exit code its own (2 for user errors)."""

    def __init__(self, message: str, exit_code: int = EXIT_USER) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def read_exit(output: Path) -> dict[str, Any] | None:
    """How a detached run of `output` ended, or None when none has."""
    try:
        return json.loads((output / EXIT_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def write_exit(output: Path, exit_code: int, error: str | None) -> None:
    """Record how this detached run ended (exit code, error, pid, time; read by `state`)."""
    record = {"exit_code": exit_code, "error": error, "pid": os.getpid(), "finished_at": utc_now()}
    atomic_write_bytes(output / EXIT_FILE, json.dumps(record).encode("utf-8"))


class LocalLauncher:
    """A run on this machine: torchrun with `train.nproc` ranks, in this process or a detached one."""

    backend = "local"

    def __init__(self, config: DeepmoneyConfig, *, nodes: int = 1, name: str | None = None, quiet: bool = False,
                 overwrite: bool = False) -> None:  # fmt: skip
        if nodes != 1:
            raise UserError(f"--nodes {nodes}: --backend local trains on this machine alone; use pytorchjob or "
                            "trainjob for more nodes")  # fmt: skip
        if name is not None:
            raise UserError("--name names a cluster job; a local run is known by its --output directory")
        if config.train.output is None:
            raise UserError("--backend local needs --output (or train.output): the directory the run writes")
        self.config, self.quiet, self.overwrite = config, quiet, overwrite
        self.output = Path(config.train.output)

    # --- the interface --------------------------------------------------------------------------

    def render(self) -> list[dict[str, Any]]:
        """The torchrun command that would start the ranks, with the config they would read."""
        train = self.config.train
        command = torchrun_command(self.output / CONFIG_FILE, train.nproc)
        return [{"kind": "LocalRun", "output": str(self.output), "nproc": train.nproc, "command": command,
                 "config": self.config.model_dump(mode="json")}]  # fmt: skip

    def submit(self, *, wait: bool, timeout: float | None) -> dict[str, Any]:
        """Train (or attach to the process training this output); detached when `wait` is False."""
        pid = running_pid(self.output)
        if pid is not None:
            self._check_same_run(pid)
            log.info("attached to process %s, which is training %s", pid, self.output)
            if wait:
                self._wait_for(pid, timeout)
                return self._result(attached=True)
            return {**self._base(), "attached": True, "pid": pid, "phase": RUNNING}
        if wait:
            return {**self._base(), "attached": False, "pid": os.getpid(), **self._summary(self._train_here())}
        return self._detach()

    def state(self) -> str:
        """Running, Succeeded, Failed (a detached run's recorded failure), Stopped (resumable) or NotStarted."""
        if running_pid(self.output) is not None:
            return RUNNING
        if (self.output / MANIFEST).is_file():
            return SUCCEEDED
        ended = read_exit(self.output)
        if ended is not None and ended.get("exit_code"):
            return FAILED
        return STOPPED if (self.output / RUN_MARKER).is_file() else NOT_STARTED

    def logs(self) -> dict[str, str]:
        """The launcher's log of this output (every attempt of the ranks, appended)."""
        path = self.output / LOG_FILE
        if not path.is_file():
            raise UserError(f"{self.output} has no {LOG_FILE}: no local run has started there yet")
        return {LOG_FILE: path.read_text(encoding="utf-8", errors="replace")}

    def follow(self) -> Iterator[str]:
        """launcher.log's lines as they are written, until no process is running the output (a bar: its last state)."""
        path = self.output / LOG_FILE
        if not path.is_file() and running_pid(self.output) is None:
            raise UserError(f"{self.output} has no {LOG_FILE}: no local run has started there yet")
        pending = ""
        with open(path, "a+", encoding="utf-8", errors="replace") as handle:
            handle.seek(0)
            while True:
                chunk = handle.read()
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split("\n")
                    for line in lines:
                        yield line.rstrip("\r").rsplit("\r", 1)[-1]
                elif running_pid(self.output) is None:
                    if pending:
                        yield pending.rsplit("\r", 1)[-1]
                    return
                else:
                    time.sleep(0.2)

    def cancel(self) -> dict[str, Any]:
        """SIGTERM to the process training the output, then wait for it to stop its ranks (SIGKILL past a grace)."""
        pid = running_pid(self.output)
        if pid is None or pid < 0:
            raise UserError(f"no local run of {self.output} is running; nothing to cancel")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + CANCEL_GRACE_S
        while running_pid(self.output) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if running_pid(self.output) is not None:
            log.warning("process %d did not stop within %.0f s of SIGTERM; killing it", pid, CANCEL_GRACE_S)
            os.kill(pid, signal.SIGKILL)
        return {**self._base(), "pid": pid, "cancelled": True}

    # --- helpers --------------------------------------------------------------------------------

    def _base(self) -> dict[str, Any]:
        return {"kind": "local", "output": str(self.output)}

    def _summary(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return {"phase": SUCCEEDED, **{key: manifest.get(key) for key in SUMMARY_KEYS}}

    def _check_same_run(self, pid: int) -> None:
        """Attach only to this very run: another config on the same output is refused, as `train` would."""
        from deepmoney.train.plan import plan_run

        if self.overwrite:
            raise RunInProgress(f"--overwrite {self.output}: process {pid} is training it; stop it first with "
                                "--cancel")  # fmt: skip
        plan_run(self.config)  # a UserError naming the settings that differ

    def _train_here(self) -> dict[str, Any]:
        from deepmoney.launch.runner import require_train_extra

        require_train_extra()
        return launch_local(self.config, quiet=self.quiet, overwrite=self.overwrite)

    def _result(self, *, attached: bool) -> dict[str, Any]:
        """What the run that just ended left: its manifest's summary, or its failure raised."""
        phase = self.state()
        if phase == SUCCEEDED:
            manifest = json.loads((self.output / MANIFEST).read_text(encoding="utf-8"))
            return {**self._base(), "attached": attached, **self._summary(manifest)}
        ended = read_exit(self.output) or {}
        code = int(ended.get("exit_code") or 0)
        why = ended.get("error") or f"it stopped without a manifest ({LOG_FILE} says why)"
        raise LocalRunFailed(f"the local run of {self.output} failed: {why} (log: {self.output / LOG_FILE})",
                             code if code >= 128 else EXIT_USER)  # fmt: skip

    def _wait_for(self, pid: int, timeout: float | None) -> None:
        started = time.monotonic()
        while running_pid(self.output) is not None:
            if timeout is not None and time.monotonic() - started > timeout:
                raise JobStillRunning(
                    f"the local run of {self.output} (process {pid}) is still running after "
                    f"{timeout:.0f} s; it goes on: launch again to attach, or --cancel it"
                )
            time.sleep(min(1.0, self.config.launch.poll_seconds))

    def _detach(self) -> dict[str, Any]:
        """Check and prepare the run here, then start it in a detached process; returns once that holds the lock."""
        from deepmoney.launch.runner import require_train_extra
        from deepmoney.train.plan import finished_run, preflight, prepare_output

        require_train_extra()
        plan = preflight(self.config, self.config.train.nproc, self.overwrite)
        if plan.finished is not None:
            return {**self._base(), "attached": False, **self._summary(finished_run(plan, self.config))}
        with run_lock(self.output):
            prepare_output(plan, keep=(LOCK_FILE,))
            (self.output / EXIT_FILE).unlink(missing_ok=True)  # before the child takes the lock: no stale state
        config = yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
        with open(self.output / LOG_FILE, "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "deepmoney.launch.detached", *(["--quiet"] if self.quiet else [])],
                stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, env.PYTHONUNBUFFERED: "1"},
            )  # fmt: skip
        assert process.stdin is not None
        process.stdin.write(config.encode("utf-8"))
        process.stdin.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while running_pid(self.output) != process.pid:
            if process.poll() is not None:
                return self._result(attached=False)  # it ended at once: finished, or failed (raised)
            if time.monotonic() > deadline:
                raise JobStillRunning(f"process {process.pid} has not taken up {self.output} within "
                                      f"{START_TIMEOUT_S:.0f} s; see {self.output / LOG_FILE}")  # fmt: skip
            time.sleep(0.1)
        log.info("process %d is training %s; deepmoney launch --backend local ... --logs --follow shows it",
                 process.pid, self.output)  # fmt: skip
        return {**self._base(), "attached": False, "pid": process.pid, "phase": RUNNING}
