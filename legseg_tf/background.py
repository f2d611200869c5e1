"""Work that the networks do not wait for, run beside them at the lowest CPU priority.

TensorFlow's forward pass keeps most but not all of the cores busy (about 1.85 of 2 on the
development machine). One worker thread, created on first use and kept for the process, runs
such work at nice 19, so it takes the cycles the network leaves and yields the rest. The
segmenter gives it the anatomy cross-check of single-region volumes, whose result only goes
into the report and its warnings, as a :class:`SharedMap` over the slices: when the caller
needs the result, the slices the worker has not reached are read at normal priority on the
array threads, so a worker starved by a busy machine delays an image by little more than
one slice.

On Linux the priority is set for the worker thread alone; elsewhere it would apply to the
whole process, so the worker keeps the normal priority there.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from legseg_tf import array_threads

logger = logging.getLogger(__name__)

#: nice value of the worker thread (19: the lowest priority).
NICE = 19

_LOCK = threading.Lock()
_EXECUTOR: ThreadPoolExecutor | None = None


def _forget_worker_in_child() -> None:
    """A forked child has none of the parent's threads: it starts its own worker when needed."""
    global _LOCK, _EXECUTOR
    _LOCK, _EXECUTOR = threading.Lock(), None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_worker_in_child)


def _lowest_priority() -> None:
    # its array stages stay on this thread: the array pool's threads run at normal priority
    array_threads.serial_here()
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
    except OSError as error:   # a sandbox may forbid it: run at the normal priority
        logger.debug("background worker keeps its priority: %s", error)


def submit(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
    """Run ``function(*args, **kwargs)`` on the low-priority worker; its :class:`Future`
    gives the result (or raises the function's exception) on ``result()``."""
    global _EXECUTOR
    with _LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="legseg-background",
                                           initializer=_lowest_priority)
        return _EXECUTOR.submit(function, *args, **kwargs)


class SharedMap:
    """``function`` over ``items`` on the worker, finished by the caller.

    The worker takes the items one at a time, in order; :meth:`finish` has the items not yet
    started taken by the array threads (the caller's among them), then waits for the one the
    worker is on. Each item is processed exactly once; results come in the order of ``items``.

    Args:
        function: one item -> its result.
        items: what to map over.
        beside: False = process every item here and now (the serial reference).
    """

    def __init__(self, function: Callable[[Any], Any], items: Iterable[Any], *,
                 beside: bool = True) -> None:
        self._function = function
        self._items = list(items)
        self._results: list[Any] = [None] * len(self._items)
        self._next = 0
        self._lock = threading.Lock()
        self._future: Future | None = None
        if beside:
            self._future = submit(self._work)
        else:
            self._work()

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= len(self._items):
                return None
            self._next += 1
            return self._next - 1

    def _work(self) -> None:
        try:
            while (index := self._take()) is not None:
                self._results[index] = self._function(self._items[index])
        except BaseException:
            self.cancel()   # the other takers stop after their current item
            raise

    def cancel(self) -> None:
        """Hand out no further item (the worker stops after the one it is on)."""
        with self._lock:
            self._next = len(self._items)

    def finish(self) -> list[Any]:
        """Every result, in order; an item's exception is raised here. The items the worker
        has not reached are shared out over the array threads (:mod:`legseg_tf.array_threads`;
        the caller's thread is one of them)."""
        array_threads.run_all(lambda _: self._work(), range(array_threads.threads()))
        if self._future is not None and not self._future.cancel():
            self._future.result()
        return list(self._results)
