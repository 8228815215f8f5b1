"""Run an untrusted analysis program (numpy, pandas, statsmodels) in a sandboxed child process; return what it prints.

An LLM may write a short program that computes figures on market data series. Nothing that program does may reach
the caller: it runs in its own process (`sandbox_child.py`), and every outcome — an exception, a timeout, a kill by
a limit, a blocked operation — becomes a `SandboxResult` with a one-line error, never an exception here, never a
retry. The layers, each named in `SandboxResult.isolation` when it applied:

- process: a separate interpreter (`python -I`) in its own session (the whole group is killed at the wall-clock
  limit), cwd a fresh scratch directory removed afterwards, a minimal environment (no inherited secrets);
- rlimits: CPU time, address space, file size, open files, no core dumps (set by the child first thing);
- network-namespace: `unshare -rn` where the machine allows unprivileged user namespaces (an empty network);
- landlock: the kernel limits the file system to reading the libraries and reading and writing scratch (and, with
  a recent kernel, refuses TCP and signals to processes outside the sandbox);
- seccomp: the kernel refuses new processes, exec, sockets, signals to other processes, namespaces, mounts;
- audit-hook: `sys.addaudithook` refuses the same operations inside the interpreter, with a "blocked:" message
  (and the harness replaces the few C functions that act on processes without an audit event: subprocess's
  fork_exec, pidfd signals, setpriority);
- restricted-builtins: the program's `__import__` admits only `SandboxLimits.modules` and its `open` only scratch,
  and a check of its syntax tree refuses other imports and dunder names before any process starts.

The last two are not a security boundary on their own (PEP 578 says so of audit hooks: code that corrupts memory,
which numpy's strides make possible, gets past them); the first five are enforced by the kernel.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from deepmoney import env
from deepmoney.quant import sandbox_child

logger = logging.getLogger(__name__)

CHILD_PATH = Path(sandbox_child.__file__).resolve()
# The program goes to the child's stdin in one write; below the 64 KiB pipe buffer that write never blocks.
MAX_PROGRAM_BYTES = 60_000
_REPORT_BYTES = 1 << 16
_STDERR_TAIL_BYTES = 8192
_READ_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxLimits:
    """What one run of a program may use."""

    cpu_seconds: int = 10
    """CPU time of the program (RLIMIT_CPU), counted from when the harness has imported numpy and pandas."""
    wall_seconds: float = 20.0
    """Wall-clock time of the whole run, interpreter start included; then the process group is killed."""
    # Importing numpy, pandas, scipy and statsmodels and fitting an OLS and an ARIMA peaks at about 590 MiB of
    # address space (215 MiB resident) with single-threaded BLAS (measured: numpy 2.4, pandas 2.3, statsmodels 0.15;
    # 512 MiB is too little: OpenBLAS fails to allocate its buffers). 1 GiB leaves about 400 MiB for the program's
    # own arrays, plenty for series of market data, and bounds what one run takes from the server.
    memory_bytes: int = 1 << 30
    """Address space of the child (RLIMIT_AS); below about 600 MiB the libraries themselves do not load."""
    max_output_bytes: int = 65536
    """Bytes of stdout kept; the rest is dropped and the result marked truncated."""
    max_file_bytes: int = 16 << 20
    """Largest file the program may write in its scratch directory (RLIMIT_FSIZE)."""
    modules: tuple[str, ...] = (
        "numpy", "pandas", "statsmodels", "scipy", "math", "statistics", "json", "datetime", "itertools",
        "functools", "collections",
    )  # fmt: skip
    """Top-level modules the program may import (library-internal imports are not restricted)."""

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "wall_seconds", "memory_bytes", "max_output_bytes", "max_file_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"SandboxLimits.{name} must be a number, got {value!r}")
            if value <= 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, got {value!r}")
        for name in ("cpu_seconds", "memory_bytes", "max_output_bytes", "max_file_bytes"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"SandboxLimits.{name} must be a whole number, got {getattr(self, name)!r}")
        names = self.modules if isinstance(self.modules, tuple) else None
        if names is None or not all(isinstance(name, str) and name.isidentifier() for name in names):
            raise ValueError(f"SandboxLimits.modules must be a tuple of module names, got {self.modules!r}")


@dataclass(frozen=True, slots=True)
class SandboxResult:
    """The outcome of one run: what the program printed, or the one line saying why it did not succeed."""

    ok: bool
    stdout: str
    error: str | None
    truncated: bool
    seconds: float
    isolation: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (isolation as a list, seconds rounded to milliseconds)."""
        result = asdict(self)
        result["isolation"] = list(self.isolation)
        result["seconds"] = round(self.seconds, 3)
        return result


def run_program(
    code: str, data: dict[str, list[tuple[str, float]]], limits: SandboxLimits | None = None
) -> SandboxResult:
    """Run `code` in the sandbox with `data` (series id -> (ISO date, value) pairs) bound as pandas Series.

    Inside the program `data[id]` is a float Series on a DatetimeIndex (sorted, naive UTC), `np` and `pd` are
    bound, and `print` is what comes back. Raises only for the caller's mistakes: TypeError or ValueError for
    `code`, `data` or `limits` of the wrong shape; whatever the program does is in the result.
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    if limits is None:
        limits = SandboxLimits()
    elif not isinstance(limits, SandboxLimits):
        raise TypeError(f"limits must be a SandboxLimits, got {type(limits).__name__}")
    series = _validated_data(data)
    return _execute(code, series, limits)


def child_environment(scratch: str | os.PathLike[str]) -> dict[str, str]:
    """The whole environment of the child: nothing inherited (the server's secrets stay out), BLAS single-threaded."""
    scratch = os.fspath(scratch)
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": scratch,
        "TMPDIR": scratch,
        "LANG": "C.UTF-8",
        # One thread each: less address space under RLIMIT_AS, and a program gets one core, not the server's.
        "OPENBLAS_NUM_THREADS": "1",
        env.OMP_NUM_THREADS: "1",
        "MKL_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }


@functools.cache
def _namespace_prefix() -> tuple[str, ...]:
    """`unshare -rn` when it works here (probed once), else nothing: in many Kubernetes pods seccomp forbids it."""
    unshare = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if unshare is None:
        return ()
    try:
        probe = subprocess.run(
            [unshare, "-rn", "true"], env={"PATH": "/usr/bin:/bin"}, capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ()
    return (unshare, "-rn") if probe.returncode == 0 else ()


def _validated_data(data: Any) -> dict[str, list[list[Any]]]:
    if not isinstance(data, dict):
        raise TypeError(f"data must be a dict of series id -> (date, value) pairs, got {type(data).__name__}")
    series: dict[str, list[list[Any]]] = {}
    for name, pairs in data.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"data keys must be non-empty series ids (str), got {name!r}")
        if not isinstance(pairs, list | tuple):
            raise TypeError(f"data[{name!r}] must be a list of (date, value) pairs, got {type(pairs).__name__}")
        rows = []
        for position, pair in enumerate(pairs):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise TypeError(f"data[{name!r}][{position}] must be a (date, value) pair, got {pair!r}")
            date, value = pair
            if not isinstance(date, str):
                raise TypeError(f"data[{name!r}][{position}]: the date must be an ISO string, got {date!r}")
            try:
                datetime.fromisoformat(date)
            except ValueError:
                raise ValueError(f"data[{name!r}][{position}]: {date!r} is not an ISO date") from None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"data[{name!r}][{position}]: the value must be a number, got {value!r}")
            rows.append([date, float(value)])
        series[name] = rows
    return series


def _execute(
    code: str, series: dict[str, list[list[Any]]], limits: SandboxLimits, *, in_process_layers: bool = True
) -> SandboxResult:
    """Check, run and report one program. `in_process_layers=False` (tests of the kernel layers only) leaves out the
    syntax check, the audit hook and the restricted builtins."""
    started = time.monotonic()
    refusal = None
    try:
        size = len(code.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates: text no interpreter reads
        size, refusal = 0, "the program is not valid UTF-8 text"
    if refusal is None and not code.strip():
        refusal = "the program is empty: write Python that prints the figures"
    elif refusal is None and size > MAX_PROGRAM_BYTES:
        refusal = f"the program is longer than {MAX_PROGRAM_BYTES} bytes: keep it short"
    elif refusal is None and in_process_layers:
        refusal = sandbox_child.check_program(code, limits.modules)
    if refusal is not None:
        result = SandboxResult(False, "", refusal, False, time.monotonic() - started, ())
    else:
        try:
            scratch = tempfile.mkdtemp(prefix="deepmoney-sandbox-")
        except OSError as exc:
            scratch, result = "", _not_started(exc, started)
        if scratch:
            try:
                result = _run_in(scratch, code, series, limits, in_process_layers, started)
            except OSError as exc:  # no disk, no memory, no interpreter: the run failed, the caller did not
                result = _not_started(exc, started)
            finally:
                _remove_tree(scratch)
    logger.info(
        "sandbox program %s in %.2f s (%s)", "ok" if result.ok else f"failed: {result.error}", result.seconds,
        ", ".join(result.isolation) or "not started",
    )  # fmt: skip
    return result


@dataclass(slots=True)
class _Capture:
    """Bytes read from a pipe, bounded: the first `head` bytes and (when `tail`) the last `tail` bytes are kept;
    after `budget` bytes the parent stops reading and closes the pipe, so the child's further writes fail."""

    head: int
    tail: int = 0
    budget: int = 1 << 20
    first: bytearray = field(default_factory=bytearray)
    last: bytearray = field(default_factory=bytearray)
    received: int = 0
    dropped: bool = False

    def add(self, chunk: bytes) -> None:
        self.received += len(chunk)
        room = max(self.head - len(self.first), 0)
        self.first += chunk[:room]
        rest = chunk[room:]
        if not rest:
            return
        self.dropped = True
        if self.tail:
            self.last += rest
            del self.last[: max(len(self.last) - self.tail, 0)]

    def text(self) -> str:
        return (bytes(self.first) + bytes(self.last)).decode("utf-8", "replace")


@dataclass(slots=True)
class _Exit:
    """What the parent saw of one child: its pipes, how it ended, and whether the parent killed it."""

    stdout: _Capture
    stderr: _Capture
    reports: _Capture
    returncode: int | None = None
    cpu_seconds: float = 0.0
    timed_out: bool = False


def _run_in(
    scratch: str, code: str, series: dict[str, Any], limits: SandboxLimits, in_process: bool, started: float
) -> SandboxResult:
    config = {
        "cpu_seconds": limits.cpu_seconds,
        "memory_bytes": limits.memory_bytes,
        "max_file_bytes": limits.max_file_bytes,
        "max_output_bytes": limits.max_output_bytes,
        "modules": list(limits.modules),
        "in_process_layers": in_process,
    }
    Path(scratch, sandbox_child.CONFIG_NAME).write_text(json.dumps(config), encoding="utf-8")
    Path(scratch, sandbox_child.DATA_NAME).write_text(json.dumps(series), encoding="utf-8")
    prefix = _namespace_prefix()
    outcome = _supervise([*prefix, sys.executable, "-I", str(CHILD_PATH), scratch], code, scratch, limits)
    return _interpret(outcome, limits, bool(prefix), time.monotonic() - started)


def _not_started(exc: OSError, started: float) -> SandboxResult:
    return SandboxResult(False, "", f"the sandbox could not start: {exc}", False, time.monotonic() - started, ())


def _supervise(command: list[str], code: str, scratch: str, limits: SandboxLimits) -> _Exit:
    """Start the child, feed it the program, read its pipes (bounded) until it ends or the wall clock runs out."""
    report_read, report_write = os.pipe()
    reports = os.fdopen(report_read, "rb", buffering=0)
    try:
        process = subprocess.Popen(
            [*command, str(report_write)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=scratch, env=child_environment(scratch), start_new_session=True, pass_fds=(report_write,),
        )  # fmt: skip
    except BaseException:
        reports.close()
        raise
    finally:
        os.close(report_write)
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    deadline = time.monotonic() + limits.wall_seconds
    # The child's own stdout never passes max_output_bytes: more means a program writing to fd 1 itself, which
    # would otherwise cost the parent a read for every chunk until the CPU limit.
    outcome = _Exit(
        _Capture(limits.max_output_bytes, budget=limits.max_output_bytes),
        _Capture(0, _STDERR_TAIL_BYTES),
        _Capture(_REPORT_BYTES, budget=_REPORT_BYTES),
    )
    try:
        with contextlib.suppress(OSError):  # the child died before reading its program; how it ended says why
            process.stdin.write(code.encode("utf-8"))
            process.stdin.close()
        pipes = [(process.stdout, outcome.stdout), (process.stderr, outcome.stderr), (reports, outcome.reports)]
        outcome.timed_out = not _drain(pipes, deadline)
        if outcome.timed_out:
            _kill_group(process.pid)
        outcome.returncode, outcome.cpu_seconds, killed = _reap(process.pid, deadline)
        outcome.timed_out = outcome.timed_out or killed
        process.returncode = outcome.returncode if outcome.returncode is not None else -signal.SIGKILL
    finally:
        if process.returncode is None:  # an exception while supervising: leave nothing running
            _kill_group(process.pid)
            process.wait()
        for stream in (process.stdin, process.stdout, process.stderr, reports):
            with contextlib.suppress(OSError):
                stream.close()
    return outcome


def _drain(pipes: list[tuple[IO[bytes], _Capture]], deadline: float) -> bool:
    """Read every pipe until all are closed or over budget (True) or the deadline passes (False)."""
    with selectors.DefaultSelector() as selector:
        for stream, capture in pipes:
            selector.register(stream, selectors.EVENT_READ, capture)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, _READ_CHUNK)
                key.data.add(chunk)
                if not chunk or key.data.received > key.data.budget:
                    selector.unregister(key.fileobj)
                    if chunk:  # over budget: closing makes the child's next write fail instead of block
                        key.fileobj.close()
    return True


def _reap(pid: int, deadline: float) -> tuple[int | None, float, bool]:
    """Wait for the child: (exit code as Popen gives it, CPU seconds it used, whether it had to be killed)."""
    killed = False
    while True:
        try:
            done, status, usage = os.wait4(pid, 0 if killed else os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored by the server): the reports must do
            return None, 0.0, killed
        if done:
            return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, killed
        if time.monotonic() >= deadline:
            _kill_group(pid)
            killed = True
        else:
            time.sleep(0.005)


def _kill_group(pid: int) -> None:
    # The child leads its own session (start_new_session), so its group id is its pid; it is not reaped yet, so the
    # id cannot have been reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _reports(capture: _Capture) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The child's layers report and its outcome report (None when it ended without one)."""
    layers: dict[str, Any] = {}
    outcome = None
    for line in capture.text().splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict):
            continue
        if "layers" in message and not layers:
            layers = message
        elif "status" in message:
            outcome = message
    return layers, outcome


def _interpret(run: _Exit, limits: SandboxLimits, namespaced: bool, seconds: float) -> SandboxResult:
    layers, outcome = _reports(run.reports)
    isolation = ("process", *(("network-namespace",) if namespaced else ()))
    isolation += tuple(str(layer) for layer in layers.get("layers", ()))
    order = ("process", "rlimits", "network-namespace", "landlock", "seccomp", "audit-hook", "restricted-builtins")
    isolation = tuple(sorted(set(isolation), key=lambda layer: order.index(layer) if layer in order else len(order)))
    stdout = run.stdout.text()
    truncated = run.stdout.dropped or bool(outcome and outcome.get("truncated"))
    error = _failure(run, limits, layers, outcome)
    if error is None and not stdout.strip():
        error = "the program printed nothing: print the figures"
    return SandboxResult(error is None, stdout, error, truncated, seconds, isolation)


def _failure(run: _Exit, limits: SandboxLimits, layers: dict[str, Any], outcome: dict[str, Any] | None) -> str | None:
    """The one-line error of a run, or None when the program ran to its end."""
    memory = f"exceeded the memory limit of {limits.memory_bytes / (1 << 20):.0f} MiB"
    cpu = f"exceeded the CPU-time limit of {limits.cpu_seconds} s"
    code = run.returncode
    if run.timed_out:
        return f"timed out after {limits.wall_seconds:g} s"
    if code is not None and code < 0:
        if -code == signal.SIGXCPU:
            return cpu
        if -code == signal.SIGKILL:  # not ours: the CPU hard limit, or the kernel's OOM killer
            used = run.cpu_seconds - float(layers.get("cpu_start", 0))
            return cpu if used >= limits.cpu_seconds else memory
        if -code == signal.SIGSYS:
            return "the program made a forbidden system call (killed by SIGSYS)"
        return f"the program's process was killed by {signal.Signals(-code).name}"
    if outcome is None:
        last = next((line for line in reversed(run.stderr.text().splitlines()) if line.strip()), "")
        return f"the sandbox's harness ended without a report (exit status {code}){': ' + last[:300] if last else ''}"
    if outcome.get("status") == "ok":
        return None
    if outcome.get("kind") == "memory":
        line = outcome.get("line")
        return memory + (f" (line {line})" if line else "")
    return str(outcome.get("error") or "the program failed")


def _remove_tree(path: str) -> None:
    """Remove the scratch directory, even where the program took its own permissions away."""

    def retry(function: Any, target: str, _: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
        with contextlib.suppress(OSError):
            function(target)

    shutil.rmtree(path, onerror=retry)
    if os.path.exists(path):
        logger.warning("could not remove the sandbox's scratch directory %s", path)
