"""An order-preserving, bounded process pool: the main process keeps the order, workers do the work.

`multiprocessing.Pool.imap` reads its whole input ahead, which for a stream of JSONL chunks from a
300 GB corpus means unbounded memory; here at most `window` tasks are in flight.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from deepmoney import env

_state: Any = None


def _init_worker(factory: Callable[[], Any]) -> None:
    global _state
    # The parent decides when to stop: Ctrl-C reaches the whole process group, but only the parent
    # should react (it then terminates the pool).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ[env.TOKENIZERS_PARALLELISM] = "false"  # the pool is the parallelism; Rust threads would only contend
    _state = factory()
    # Workers allocate many short-lived lists and strings; collecting cycles less often saves
    # several percent of their time (documents are freed by reference counting anyway).
    gc.set_threshold(50_000, 20, 20)


def _call(task: Any) -> Any:
    return _state(task)


def worker_count(requested: int) -> int:
    """`requested`, or one per available CPU core when it is 0."""
    if requested > 0:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def ordered_map(
    factory: Callable[[], Callable[[Any], Any]], tasks: Iterable[Any], workers: int, window: int | None = None
) -> Iterator[Any]:
    """Yield `factory()(task)` for each task, in order, computed by `workers` processes.

    `factory` runs once in each worker (it builds tokenizers and the like); with one worker,
    everything runs in this process, which keeps debugging and profiling simple.
    """
    if workers <= 1:
        function = factory()
        for task in tasks:
            yield function(task)
        return
    window = window or 4 * workers
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    # Objects that exist now are shared with the forked workers; keeping the garbage collector off
    # them avoids copying every page it would touch (copy-on-write) in each worker.
    gc.freeze()
    pool = multiprocessing.get_context(method).Pool(workers, initializer=_init_worker, initargs=(factory,))
    pending: deque = deque()
    finished = False
    try:
        for task in tasks:
            pending.append(pool.apply_async(_call, (task,)))
            if len(pending) >= window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        finished = True
    finally:
        if finished:
            pool.close()
        else:
            pool.terminate()
        pool.join()
        gc.unfreeze()
