"""The harness the sandbox's child process runs: `python -I sandbox_child.py SCRATCH REPORT_FD`, the program on stdin.

It imports nothing from deepmoney (it runs in an isolated interpreter) and only the standard library at import
time, so the parent can share `check_program` and the file names with it. The order of `main` is the point:

1. resource limits first, before anything can allocate or spin;
2. numpy and pandas imported and the data loaded, while every file can still be opened;
3. the kernel layers (Landlock, seccomp) and the audit hook, after which the harness needs no new file, process
   or socket: it reports on the inherited pipe REPORT_FD and lets the program print to the inherited stdout;
4. the program, with restricted builtins; its outcome is one JSON line on REPORT_FD, then `os._exit`.

The in-interpreter layers (audit hook, restricted builtins) stop the plain routes with a clear message; they are
not a security boundary against code that corrupts memory (numpy's strides can), which is why the kernel layers
exist. Landlock and seccomp are applied where the kernel allows them and reported when they applied.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import json
import math
import os
import resource
import sys
from collections.abc import Callable, Sequence
from typing import Any

PROGRAM_NAME = "<program>"
CONFIG_NAME = "config.json"
DATA_NAME = "data.json"
# RLIMIT_CPU counts from the start of the process; the clock is restarted (the limit moved) once the imports are
# done, so the program gets its full allowance. The imports take about 1 s; this bounds a harness that hangs there.
STARTUP_CPU_SECONDS = 30
OPEN_FILES = 64
# Attribute names of the dunder form a program may use (everything else of that form starts an escape route:
# __class__, __subclasses__, __globals__, __builtins__, __dict__, ...).
_ALLOWED_DUNDER_ATTRIBUTES = frozenset({"__init__", "__name__", "__qualname__", "__doc__", "__version__"})
_ALLOWED_DUNDER_NAMES = frozenset({"__name__", "__import__"})  # __import__ is the guarded one
_REMOVED_BUILTINS = ("breakpoint", "input", "help", "exit", "quit", "copyright", "credits", "license", "vars")

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_DEVICES = ("/dev/null", "/dev/urandom")
_OUTSIDE = "outside the sandbox's scratch directory"
# Audit events refused whatever their arguments, by prefix, with the reason the program is told.
_REFUSED_EVENTS = (
    (("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "subprocess.", "pty.", "os.startfile"),
     "starting processes or commands is not allowed"),
    (("os.kill", "signal.pthread_kill"), "sending signals is not allowed"),
    (("socket.", "urllib.", "http.client.", "ftplib.", "smtplib.", "poplib.", "imaplib.", "nntplib.", "telnetlib.",
      "webbrowser."), "network access is not allowed"),
    (("ctypes.",), "ctypes is not allowed"),
    (("resource.setrlimit", "resource.prlimit"), "changing resource limits is not allowed"),
    (("gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames", "sys._current_exceptions"),
     "inspecting the interpreter's objects is not allowed"),
    (("cpython.PyInterpreterState_New",), "starting a sub-interpreter (which has no audit hook) is not allowed"),
)  # fmt: skip
# C functions that act on other processes without raising an audit event, replaced before the program runs; and the
# modules that may not be created afresh (a new module object would bring the originals back).
_UNAUDITED = {
    "_posixsubprocess": ("fork_exec",), "subprocess": ("_fork_exec",),
    "posix": ("pidfd_open", "setpriority", "sched_setaffinity", "sched_setscheduler", "sched_setparam"),
    "os": ("pidfd_open", "setpriority", "sched_setaffinity", "sched_setscheduler", "sched_setparam"),
    "_signal": ("pidfd_send_signal",), "signal": ("pidfd_send_signal",),
}  # fmt: skip
_NO_FRESH_IMPORT = frozenset(
    {"_posixsubprocess", "posix", "_signal", "_imp", "_xxsubinterpreters", "_xxinterpchannels"}
)
# Path-taking audit events: (argument positions read, positions written, positions that are dir_fd arguments).
# shutil's and tempfile's own events are left out: the os-level and open events they cause are checked one by one.
_PATH_EVENTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    "os.listdir": ((0,), (), ()), "os.scandir": ((0,), (), ()), "os.listxattr": ((0,), (), ()),
    "os.getxattr": ((0,), (), ()), "os.chdir": ((), (0,), ()), "os.chmod": ((), (0,), (2,)),
    "os.chown": ((), (0,), (3,)), "os.chflags": ((), (0,), ()), "os.lchflags": ((), (0,), ()),
    "os.link": ((), (0, 1), (2, 3)), "os.mkdir": ((), (0,), (2,)), "os.remove": ((), (0,), (1,)),
    "os.removexattr": ((), (0,), ()), "os.rename": ((), (0, 1), (2, 3)), "os.rmdir": ((), (0,), (1,)),
    "os.setxattr": ((), (0,), ()), "os.symlink": ((), (1,), (2,)), "os.truncate": ((), (0,), ()),
    "os.utime": ((), (0,), (3,)),
}  # fmt: skip


class Blocked(PermissionError):
    """An operation the sandbox refuses; its message starts with "blocked:"."""


class BlockedImport(ImportError):
    """An import the sandbox refuses (an ImportError, so `try: import x except ImportError` still works)."""


def check_program(code: str, modules: Sequence[str]) -> str | None:
    """None when `code` may run, else the one-line reason: a syntax error, a refused import or dunder name.

    The parent runs it before starting a process; the harness runs it again (it trusts nothing it is sent).
    """
    try:
        tree = ast.parse(code, PROGRAM_NAME)
    except SyntaxError as exc:
        return f"SyntaxError: {exc.msg} (line {exc.lineno})"
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        return f"SyntaxError: {exc}"
    problems: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.ImportFrom) and node.level:
            problems.append((line, "blocked: relative imports are not allowed"))
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            if name.partition(".")[0] not in modules:
                problems.append((line, _import_refusal(name, modules)))
        if isinstance(node, ast.Attribute) and _is_dunder(node.attr) and node.attr not in _ALLOWED_DUNDER_ATTRIBUTES:
            problems.append((line, f"blocked: access to '{node.attr}' is not allowed"))
        if isinstance(node, ast.Name) and _is_dunder(node.id) and node.id not in _ALLOWED_DUNDER_NAMES:
            problems.append((line, f"blocked: the name '{node.id}' is not allowed"))
    if not problems:
        return None
    line, message = min(problems)
    return f"{message} (line {line})"


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _import_refusal(name: str, modules: Sequence[str]) -> str:
    return f"blocked: import of '{name.partition('.')[0]}' is not allowed (allowed: {', '.join(modules)})"


def main(argv: Sequence[str]) -> None:
    """Run the program read from stdin in the scratch directory argv[1]; report on the file descriptor argv[2]."""
    scratch, report_fd = os.path.realpath(argv[1]), int(argv[2])
    with open(os.path.join(scratch, CONFIG_NAME), encoding="utf-8") as file:
        config = json.load(file)
    _limit_resources(config)
    sys.dont_write_bytecode = True  # the libraries' directories are read-only to the program
    code = sys.stdin.buffer.read().decode("utf-8")
    in_process = bool(config["in_process_layers"])
    modules = tuple(config["modules"])
    problem = check_program(code, modules) if in_process else None
    if problem:
        _finish(report_fd, {"status": "error", "kind": "exception", "error": problem})
    try:
        namespace = _load_namespace(scratch)
    except MemoryError:
        _finish(report_fd, {"status": "error", "kind": "memory", "line": None})
    except Exception as exc:  # a harness failure is reported like any other outcome
        error = f"the sandbox could not load numpy, pandas and the data: {_one_line(exc)}"
        _finish(report_fd, {"status": "error", "kind": "harness", "error": error})
    cpu_start = _restart_cpu_clock(int(config["cpu_seconds"]))
    read_roots = _library_roots()
    layers = ["rlimits", *_kernel_layers(scratch, read_roots)]
    stdout = _BoundedStdout(int(config["max_output_bytes"]))
    sys.stdout = stdout
    if in_process:
        _disarm_unaudited()
        sys.addaudithook(_make_audit_hook(scratch, read_roots, _guard_module_creation()))
        namespace["__builtins__"] = _restricted_builtins(modules, scratch)
        layers += ["audit-hook", "restricted-builtins"]
    _report(report_fd, {"layers": layers, "cpu_start": cpu_start})
    outcome = _run(code, namespace)
    outcome["truncated"] = stdout.truncated
    _finish(report_fd, outcome)


def _report(fd: int, message: dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode("utf-8")
    while data:
        data = data[os.write(fd, data) :]


def _finish(fd: int, message: dict[str, Any]) -> None:
    """Report the outcome and end the process at once (threads the program left running do not keep it alive)."""
    _report(fd, message)
    with contextlib.suppress(OSError):  # the parent stops reading a flooded stderr
        sys.stderr.flush()
    os._exit(0)


def _set_limit(kind: int, soft: int, hard: int) -> None:
    _, current_hard = resource.getrlimit(kind)
    if current_hard != resource.RLIM_INFINITY:  # a limit can be lowered, never raised
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(kind, (soft, hard))


def _limit_resources(config: dict[str, Any]) -> None:
    cpu = int(config["cpu_seconds"]) + STARTUP_CPU_SECONDS
    _set_limit(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU at the soft limit, SIGKILL a second later
    _set_limit(resource.RLIMIT_AS, int(config["memory_bytes"]), int(config["memory_bytes"]))
    _set_limit(resource.RLIMIT_FSIZE, int(config["max_file_bytes"]), int(config["max_file_bytes"]))
    _set_limit(resource.RLIMIT_NOFILE, OPEN_FILES, OPEN_FILES)
    _set_limit(resource.RLIMIT_CORE, 0, 0)


def _restart_cpu_clock(cpu_seconds: int) -> int:
    """Move the CPU limit so the program gets `cpu_seconds` from now; returns the whole seconds already used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = math.ceil(usage.ru_utime + usage.ru_stime)
    _set_limit(resource.RLIMIT_CPU, used + cpu_seconds, used + cpu_seconds + 1)
    return used


def _load_namespace(scratch: str) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    with open(os.path.join(scratch, DATA_NAME), encoding="utf-8") as file:
        payload = json.load(file)
    data = {}
    for name, pairs in payload.items():
        # Dates become naive UTC timestamps, so dates with and without offsets mix into one index.
        index = pd.to_datetime([date for date, _ in pairs], format="ISO8601", utc=True).tz_localize(None)
        series = pd.Series([float(value) for _, value in pairs], index=index, dtype=float, name=name)
        data[name] = series.sort_index()
    return {"__name__": "__main__", "data": data, "np": np, "pd": pd}


def _library_roots() -> tuple[str, ...]:
    """The directories the program's libraries may read from: the interpreter's and numpy's and pandas' own."""
    import sysconfig

    import numpy
    import pandas

    paths = [sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    paths += [os.path.dirname(str(module.__file__)) for module in (numpy, pandas)]
    paths.append("/usr/share/zoneinfo")  # zoneinfo's system time zones
    roots = {os.path.realpath(path) for path in paths if os.path.isdir(path)}
    return tuple(sorted(roots))


def _run(code: str, namespace: dict[str, Any]) -> dict[str, Any]:
    try:
        exec(compile(code, PROGRAM_NAME, "exec"), namespace)
    except SystemExit as exc:
        if exc.code in (None, 0):
            return {"status": "ok"}
        return _failure(exc)
    except MemoryError as exc:
        line = _program_line(exc)
        namespace.clear()  # frees what the program holds, so there is room to report
        return {"status": "error", "kind": "memory", "line": line}
    except BaseException as exc:  # whatever the program raises is its result
        return _failure(exc)
    return {"status": "ok"}


def _failure(exc: BaseException) -> dict[str, Any]:
    line = _program_line(exc)
    text = _blocked_cause(exc) or f"{type(exc).__name__}: {_one_line(exc)}"
    if isinstance(exc, SyntaxError) and exc.filename == PROGRAM_NAME:
        text = f"SyntaxError: {exc.msg}"
    return {"status": "error", "kind": "exception", "error": text + (f" (line {line})" if line else "")}


def _program_line(exc: BaseException) -> int | None:
    """The line of the program where `exc` was raised (the innermost frame of the program)."""
    if isinstance(exc, SyntaxError) and exc.filename == PROGRAM_NAME:
        return exc.lineno
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == PROGRAM_NAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _one_line(exc: BaseException, limit: int = 300) -> str:
    try:
        text = " ".join(str(exc).split())
    except Exception:  # an exception whose __str__ fails
        text = "<unprintable message>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _blocked_cause(exc: BaseException) -> str | None:
    """The "blocked: ..." message of `exc` or of an exception it was raised from (urllib wraps them, for one)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = _one_line(current)
        if text.startswith("blocked:"):
            return text
        current = current.__cause__ or current.__context__
    return None


class _BoundedStdout(io.TextIOBase):
    """sys.stdout for the program: straight to fd 1 (nothing is lost when the process is killed), capped in bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._left = limit
        self.truncated = False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self._left <= 0:
            self.truncated = self.truncated or bool(text)
            return len(text)
        data = text.encode("utf-8", "replace")
        if len(data) > self._left:
            data = data[: self._left].decode("utf-8", "ignore").encode("utf-8")  # never half a character
            self.truncated = True
        self._left -= len(data)
        while data:
            data = data[os.write(1, data) :]
        return len(text)


def _disarm_unaudited() -> None:
    """Replace `_UNAUDITED`: subprocess's fork_exec starts a process, pidfd_send_signal kills one, setpriority and
    the scheduler calls slow one down, all without an audit event (seccomp refuses them too, where it applies)."""
    import subprocess  # noqa: F401 - loaded now (pandas usually has), so that no later import needs _posixsubprocess

    def refused(*args: object, **kwargs: object) -> None:
        raise Blocked("blocked: this call acts on other processes, which is not allowed")

    for module_name, attributes in _UNAUDITED.items():
        module = sys.modules.get(module_name)
        for attribute in attributes:
            if module is not None and hasattr(module, attribute):
                setattr(module, attribute, refused)


def _guard_module_creation() -> Callable[[Any], Any]:
    """Wrap `_imp.create_builtin`, which makes a fresh built-in module (a fresh posix would bring back what
    `_disarm_unaudited` replaced) without an audit event. The original lives only in the wrapper's defaults, and
    the audit hook refuses every attribute access to the wrapper (reading __defaults__, setting __code__)."""
    import _imp
    from importlib.machinery import BuiltinImporter, ModuleSpec

    def create_builtin(  # everything it uses is a default: a closure cell or a global could be replaced
        spec: Any,
        _real: Any = _imp.create_builtin,
        _refused: frozenset[str] = _NO_FRESH_IMPORT,
        _blocked: Any = Blocked,
        _spec: Any = ModuleSpec,
        _loader: Any = BuiltinImporter,
        _type: Any = type,
        _str: Any = str,
    ) -> Any:
        name = spec.name
        if _type(name) is not _str or name in _refused:
            raise _blocked("blocked: this built-in module may not be created afresh: it would undo the sandbox")
        # A spec of its own: the program's could answer differently when the original asks for the name again.
        return _real(_spec(name, _loader, origin="built-in"))

    _imp.create_builtin = create_builtin
    return create_builtin


def _make_resolver() -> Callable[[Any], str]:
    """A realpath built only from C functions captured now, so a program that patches os.path cannot fool it.

    It accepts str and bytes (a subclass is copied to a plain one: its methods could lie) and pathlib's own classes;
    any other path-like object could answer differently when the kernel's open asks again, so it is refused.
    """
    import pathlib
    import posix
    import stat

    lstat, readlink, getcwd, fspath, is_link = posix.lstat, posix.readlink, posix.getcwd, posix.fspath, stat.S_ISLNK
    _str, _bytes, _type, _list, _reversed, _error, _isinstance = str, bytes, type, list, reversed, OSError, isinstance
    path_types = (_str, _bytes, pathlib.PosixPath, pathlib.PurePosixPath)

    def resolve(path: Any) -> str:
        if _type(path) not in path_types and not _isinstance(path, (_str, _bytes)):
            raise TypeError("not a plain path")
        path = fspath(path)
        if _isinstance(path, _bytes):
            path = b"".join((path,)).decode("utf-8", "surrogateescape")
        path = "".join((path,))  # a plain str, whatever subclass came in
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        pending = _list(_reversed(path.split("/")))
        resolved, links = "", 0
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                resolved = resolved[: resolved.rfind("/")] if resolved else ""
                continue
            candidate = resolved + "/" + name
            try:
                mode = lstat(candidate).st_mode
            except _error:  # not there (yet): a file about to be created
                resolved = candidate
                continue
            if not is_link(mode):
                resolved = candidate
                continue
            links += 1
            if links > 40:
                raise _error("too many levels of symbolic links")
            target = readlink(candidate)
            if target.startswith("/"):
                resolved = ""
            pending.extend(_reversed(target.split("/")))
        return resolved or "/"

    return resolve


def _make_audit_hook(
    scratch: str, read_roots: Sequence[str], guarded: object
) -> Callable[[str, tuple[Any, ...]], None]:
    """The audit hook: refuses processes, signals, network, ctypes, and files outside scratch (or, for reading, the
    library roots). Every name it uses is captured in its closure, out of reach of a program that patches modules or
    builtins; anything that goes wrong inside it raises, which refuses the operation.
    """
    resolve, _repr, _isinstance, _int, _str, _tuple, _len = _make_resolver(), repr, isinstance, int, str, tuple, len
    writable = (scratch, "/dev/null")
    readable = (scratch, *read_roots, *_DEVICES)
    refused, path_events, write_flags = _REFUSED_EVENTS, dict(_PATH_EVENTS), _WRITE_FLAGS
    blocked, outside, no_fresh_import = Blocked, _OUTSIDE, _NO_FRESH_IMPORT
    object_events = ("object.__getattr__", "object.__setattr__", "object.__delattr__")

    def under(path: str, roots: tuple[str, ...]) -> bool:
        for root in roots:  # noqa: SIM110 - not any(): a program may have replaced builtins.any
            if path == root or path.startswith(root + "/"):
                return True
        return False

    def check(event: str, path: Any, roots: tuple[str, ...]) -> None:
        if path is None:
            path = "."
        if _isinstance(path, _int):
            raise blocked(f"blocked: {event}({path}): a file descriptor is not allowed here")
        try:
            resolved = resolve(path)
        except Exception:
            raise blocked(f"blocked: {event}({_repr(path)[:120]}): the path cannot be resolved") from None
        if not under(resolved, roots):
            raise blocked(f"blocked: {event}({_repr(path)[:120]}): {outside}")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "import":
            # A plain copy of the name: a str subclass could hash and compare as some other name.
            if args and _isinstance(args[0], _str) and "".join((args[0],)) in no_fresh_import:
                raise blocked(f"blocked: import of {_repr(args[0])} afresh: it would undo the sandbox")
            return
        if event in object_events and args and args[0] is guarded:
            raise blocked(f"blocked: {event} on the sandbox's own import guard")
        if event == "open":
            path, mode, flags = (*_tuple(args), None, None, 0)[:3]
            if _isinstance(path, _int):  # an already open descriptor: its opening was checked
                return
            writing = (flags or 0) & write_flags != 0
            if _isinstance(mode, _str):
                for letter in "wax+":
                    writing = writing or letter in mode
            check("open", path, writable if writing else readable)
            return
        spec = path_events.get(event)
        if spec is not None:
            reads, writes, dir_fds = spec
            for position in dir_fds:
                if position < _len(args) and args[position] not in (None, -1):
                    raise blocked(f"blocked: {event}: paths relative to a directory descriptor are not allowed")
            for position in reads:
                if position < _len(args) and not _isinstance(args[position], _int):
                    check(event, args[position], readable)
            for position in writes:
                if position < _len(args):
                    check(event, args[position], writable)
            return
        for prefixes, reason in refused:
            if event.startswith(prefixes):
                shown = f"({_repr(args[0])[:120]})" if args and event in ("os.system", "subprocess.Popen") else ""
                raise blocked(f"blocked: {event}{shown}: {reason}")

    return hook


def _restricted_builtins(modules: Sequence[str], scratch: str) -> dict[str, Any]:
    """A copy of the builtins whose import admits only `modules` and whose open admits only the scratch directory.

    Library code keeps the real builtins (its own module globals), so a library's internal imports still work.
    """
    table = dict(builtins.__dict__)
    for name in _REMOVED_BUILTINS:
        table.pop(name, None)
    real_import, real_open, real_getattr = builtins.__import__, builtins.open, builtins.getattr
    real_setattr, real_delattr, resolve, allowed = builtins.setattr, builtins.delattr, _make_resolver(), tuple(modules)

    def guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if not isinstance(name, str):
            raise TypeError(f"module name must be str, not {type(name).__name__}")
        name = "".join((name,))  # a plain str: a subclass could compare as an allowed name
        if level:
            raise BlockedImport("blocked: relative imports are not allowed")
        if name.partition(".")[0] not in allowed:
            raise BlockedImport(_import_refusal(name, allowed))
        module = real_import(name, globals, locals, fromlist, level)
        for item in fromlist or ():
            value = real_getattr(module, item, None)
            if type(value) is type(sys) and value.__name__.partition(".")[0] not in allowed:
                raise BlockedImport(_import_refusal(value.__name__, allowed))
        return module

    def guarded_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, int):
            raise Blocked(f"blocked: open({file}): file descriptors are not allowed")
        try:
            resolved = resolve(file)
        except (OSError, TypeError, ValueError):
            raise Blocked(f"blocked: open({file!r}): the path cannot be resolved") from None
        if resolved != scratch and not resolved.startswith(scratch + "/"):
            raise Blocked(f"blocked: open({file!r}): {_OUTSIDE}")
        return real_open(file, *args, **kwargs)

    def refuse_dunder(name: Any) -> None:
        if isinstance(name, str) and _is_dunder(name) and name not in _ALLOWED_DUNDER_ATTRIBUTES:
            raise Blocked(f"blocked: access to '{name}' is not allowed")

    def guarded_getattr(obj: Any, name: str, *default: Any) -> Any:
        refuse_dunder(name)
        return real_getattr(obj, name, *default)

    def guarded_setattr(obj: Any, name: str, value: Any) -> None:
        refuse_dunder(name)
        real_setattr(obj, name, value)

    def guarded_delattr(obj: Any, name: str) -> None:
        refuse_dunder(name)
        real_delattr(obj, name)

    table.update(__import__=guarded_import, open=guarded_open, getattr=guarded_getattr)
    table.update(setattr=guarded_setattr, delattr=guarded_delattr)
    return table


def _kernel_layers(scratch: str, read_roots: Sequence[str]) -> list[str]:
    """Apply Landlock and seccomp where the kernel offers them; the names of those that applied."""
    layers = []
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, which both need unprivileged
            return layers
    except (OSError, AttributeError):
        return layers
    if _landlock(libc, scratch, read_roots):
        layers.append("landlock")
    if _seccomp(libc):
        layers.append("seccomp")
    return layers


# Landlock (Linux >= 5.13): the same syscall numbers on every architecture.
_LANDLOCK_CREATE, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT = 444, 445, 446
_FS_EXECUTE, _FS_WRITE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_MAKE_CHAR, _FS_MAKE_BLOCK, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 6, 1 << 11, 1 << 14, 1 << 15
_FS_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV  # valid on a file rule


def _landlock_handled(abi: int) -> int:
    handled = (1 << 13) - 1  # ABI 1: execute ... make_sym
    handled |= (1 << 13) if abi >= 2 else 0  # refer
    handled |= _FS_TRUNCATE if abi >= 3 else 0
    handled |= _FS_IOCTL_DEV if abi >= 5 else 0
    return handled


def _mapped_library_dirs() -> set[str]:
    """The directories of the shared libraries mapped now (the dynamic loader reopens there for lazy imports)."""
    dirs = {"/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", os.path.join(sys.base_prefix, "lib")}
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if path.startswith("/") and ".so" in path:
                    dirs.add(os.path.dirname(path))
    except OSError:
        pass
    return dirs


def _landlock(libc: Any, scratch: str, read_roots: Sequence[str]) -> bool:
    """Restrict the file system: read the libraries, read and write scratch, nothing else (and no TCP, no signals
    to processes outside the sandbox where the ABI has those). False when Landlock is unavailable."""
    import ctypes

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    long = ctypes.c_long
    abi = libc.syscall(long(_LANDLOCK_CREATE), None, long(0), long(1))  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return False
    handled = _landlock_handled(abi)
    attr = RulesetAttr(handled, 0b11 if abi >= 4 else 0, 0b11 if abi >= 6 else 0)  # TCP bind+connect; scopes
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(long(_LANDLOCK_CREATE), ctypes.byref(attr), long(size), long(0))
    if ruleset < 0:
        return False
    read = _FS_READ_FILE | _FS_READ_DIR
    scratch_rights = handled & ~(_FS_EXECUTE | _FS_MAKE_CHAR | _FS_MAKE_BLOCK | _FS_IOCTL_DEV)
    rules = [(scratch, scratch_rights), ("/dev/null", _FS_READ_FILE | _FS_WRITE | _FS_TRUNCATE | _FS_IOCTL_DEV)]
    rules += [(path, read) for path in (*read_roots, *_mapped_library_dirs(), "/etc/ld.so.cache", "/dev/urandom")]
    try:
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                allowed = rights & handled & (_FS_FILE_RIGHTS if not os.path.isdir(path) else ~0)
                rule = PathBeneath(allowed, fd)
                if libc.syscall(long(_LANDLOCK_ADD_RULE), long(ruleset), long(1), ctypes.byref(rule), long(0)):
                    return False
            finally:
                os.close(fd)
        return libc.syscall(long(_LANDLOCK_RESTRICT), long(ruleset), long(0)) == 0
    finally:
        os.close(ruleset)


# seccomp: the system calls refused with EPERM, per architecture (numbers from the kernel's syscall tables).
_SECCOMP_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}  # AUDIT_ARCH_*
_SECCOMP_SYSCALL = {"x86_64": 317, "aarch64": 277}
_SYSCALLS = {  # name: (x86_64, aarch64); None where the architecture lacks the call
    "fork": (57, None), "vfork": (58, None), "execve": (59, 221), "execveat": (322, 281),
    "socket": (41, 198), "socketpair": (53, 199), "ptrace": (101, 117),
    "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "tkill": (200, 130),
    "pidfd_open": (434, 434), "pidfd_send_signal": (424, 424), "pidfd_getfd": (438, 438),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431),
    "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442),
    "unshare": (272, 97), "setns": (308, 268), "bpf": (321, 280), "perf_event_open": (298, 241),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218), "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "setrlimit": (160, 164), "name_to_handle_at": (303, 264), "open_by_handle_at": (304, 265),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "init_module": (175, 105),
    "finit_module": (313, 273), "delete_module": (176, 106), "reboot": (169, 142), "swapon": (167, 224),
    "swapoff": (168, 225), "acct": (163, 89), "quotactl": (179, 60), "syslog": (103, 116),
    "setpriority": (141, 140), "ioprio_set": (251, 30),
}  # fmt: skip
_OWN_PID_SYSCALLS = {  # allowed on itself only: the first argument is its pid, or 0
    "kill": (62, 129), "tgkill": (234, 131), "rt_sigqueueinfo": (129, 138), "rt_tgsigqueueinfo": (297, 240),
    "sched_setaffinity": (203, 122), "sched_setscheduler": (144, 119), "sched_setparam": (142, 118),
    "sched_setattr": (314, 274), "migrate_pages": (256, 238), "move_pages": (279, 239),
}  # fmt: skip
_CLONE, _CLONE3, _PRLIMIT64 = (56, 220), (435, 435), (302, 261)
_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|{JEQ,JGE,JSET}|K, BPF_RET|K
_ALLOW, _KILL, _EPERM, _ENOSYS = 0x7FFF0000, 0x80000000, 0x00050000 | 1, 0x00050000 | 38
_CLONE_THREAD = 0x00010000


def seccomp_filter(machine: str, pid: int) -> list[tuple[int, int, int, int]]:
    """The seccomp BPF program (code, jt, jf, k) for `machine`: refuse new processes, exec, sockets, signals to
    other processes, namespaces, mounts and the like; allow the rest. Empty for an architecture it does not know."""
    if machine not in _SECCOMP_ARCH:
        return []
    column = 0 if machine == "x86_64" else 1

    def arg(index: int, high: bool = False) -> tuple[int, int, int, int]:  # seccomp_data.args[index], a 32-bit half
        return (_LD, 0, 0, 16 + 8 * index + (4 if high else 0))

    program = [(_LD, 0, 0, 4), (_JEQ, 1, 0, _SECCOMP_ARCH[machine]), (_RET, 0, 0, _KILL), (_LD, 0, 0, 0)]
    if machine == "x86_64":  # the x32 ABI's numbers would slip past the checks below
        program += [(_JGE, 0, 1, 0x40000000), (_RET, 0, 0, _KILL)]
    for numbers in _SYSCALLS.values():
        if numbers[column] is not None:
            program += [(_JEQ, 0, 1, numbers[column]), (_RET, 0, 0, _EPERM)]
    for numbers in _OWN_PID_SYSCALLS.values():  # kill(0, ...) is its own group: it leads a session of one
        program += [(_JEQ, 0, 5, numbers[column]), arg(0), (_JEQ, 2, 0, pid), (_JEQ, 1, 0, 0), (_RET, 0, 0, _EPERM)]
        program += [(_RET, 0, 0, _ALLOW), (_LD, 0, 0, 0)]
    # clone: threads only; clone3 reports ENOSYS so that glibc falls back to clone, whose flags can be checked.
    program += [(_JEQ, 0, 4, _CLONE[column]), arg(0), (_JSET, 0, 1, _CLONE_THREAD), (_RET, 0, 0, _ALLOW)]
    program += [(_RET, 0, 0, _EPERM), (_LD, 0, 0, 0), (_JEQ, 0, 1, _CLONE3[column]), (_RET, 0, 0, _ENOSYS)]
    # prlimit64: reading limits (new_limit NULL, which glibc's getrlimit does) but never setting them.
    program += [(_JEQ, 0, 6, _PRLIMIT64[column]), arg(2), (_JEQ, 0, 3, 0), arg(2, high=True), (_JEQ, 0, 1, 0)]
    program += [(_RET, 0, 0, _ALLOW), (_RET, 0, 0, _EPERM), (_RET, 0, 0, _ALLOW)]
    return program


def _seccomp(libc: Any) -> bool:
    """Install `seccomp_filter` on every thread of this process; False when the kernel or architecture lacks it."""
    import ctypes

    machine = os.uname().machine
    program = seccomp_filter(machine, os.getpid())
    if not program:
        return False

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    instructions = (SockFilter * len(program))(*(SockFilter(*step) for step in program))
    fprog = SockFprog(len(program), instructions)
    long = ctypes.c_long
    # SECCOMP_SET_MODE_FILTER with SECCOMP_FILTER_FLAG_TSYNC: every thread, including BLAS's, gets the filter.
    return libc.syscall(long(_SECCOMP_SYSCALL[machine]), long(1), long(1), ctypes.byref(fprog)) == 0


if __name__ == "__main__":
    main(sys.argv)
