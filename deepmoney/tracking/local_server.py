"""A local MLflow tracking server: its sqlite store and its (proxied) artifacts under one directory.

The quickstart tracks, registers and serves through a real server, as a cluster does, rather than a
file store. The server is left running after the run, so the UI address it prints stays open, and a
later run reuses it (no second start-up, no second database migration); `stop_server` ends it. What
runs where is recorded in HOME/server.json (pid, port); a recorded server that no longer answers is
started again, on the same port when that port is free.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from deepmoney.errors import UserError
from deepmoney.storage import atomic_write_bytes
from deepmoney.tracking.server import reachable

log = logging.getLogger(__name__)

STATE = "server.json"
LOG = "server.log"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class LocalServer:
    """A running local MLflow server."""

    url: str
    pid: int
    home: Path
    reused: bool  # an earlier run's server, still answering


def ensure_server(home: Path, port: int = 0, timeout: float = 120.0) -> LocalServer:
    """The MLflow server of `home` (sqlite `mlflow.db`, artifacts in `artifacts/`): the running one, or a new one.

    `port` 0: the recorded port if it is free, else any free one. A server that does not come up within
    `timeout` seconds is stopped and reported in one line with the end of its log.
    """
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    state = _read_state(home)
    if state is not None:
        url = f"http://{HOST}:{state['port']}"
        if _alive(state["pid"]) and reachable(url, timeout=2.0) is None:
            return LocalServer(url, state["pid"], home, reused=True)
        stop_server(home)
        port = port or (state["port"] if _free(state["port"]) else 0)
    port = port or _free_port()
    if not _free(port):
        raise UserError(f"port {port} is taken: stop what listens there or choose another port for MLflow")
    (home / "artifacts").mkdir(exist_ok=True)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
               "--artifacts-destination", (home / "artifacts").as_uri(), "--host", HOST, "--port", str(port),
               "--workers", "1"]  # fmt: skip
    with open(home / LOG, "ab") as server_log:
        # Its own session: Ctrl-C in the terminal that started it does not stop the UI it printed.
        process = subprocess.Popen(command, cwd=home, stdin=subprocess.DEVNULL, stdout=server_log,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://{HOST}:{port}"
    log.info("starting the MLflow server at %s (store %s)", url, home)
    deadline = time.monotonic() + timeout
    while reachable(url, timeout=2.0) is not None:
        if process.poll() is not None or time.monotonic() > deadline:
            _terminate(process.pid)
            tail = (home / LOG).read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or ["no log"]
            raise UserError(f"the local MLflow server did not start at {url}: {tail[0][:300]} (log: {home / LOG})")
        time.sleep(0.3)
    atomic_write_bytes(home / STATE, json.dumps({"pid": process.pid, "port": port, "url": url}).encode())
    return LocalServer(url, process.pid, home, reused=False)


def stop_server(home: Path) -> bool:
    """Stop the MLflow server recorded under `home`; whether one was running."""
    state = _read_state(home.resolve())
    (home / STATE).unlink(missing_ok=True)
    if state is None or not _alive(state["pid"]):
        return False
    _terminate(state["pid"])
    return True


def _read_state(home: Path) -> dict | None:
    try:
        state = json.loads((home / STATE).read_text(encoding="utf-8"))
        return state if isinstance(state.get("pid"), int) and isinstance(state.get("port"), int) else None
    except (OSError, ValueError, AttributeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now holds that pid
        return False
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that has exited (a zombie)
            return False
    return True


def _terminate(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the server's process group (uvicorn and its workers), SIGKILL what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if not _alive(pid):
            return


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]
