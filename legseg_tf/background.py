"""Work that the networks do not wait for, run beside them at the lowest CPU priority.

TensorFlow's forward pass keeps most but not all of the cores busy (about 1.85 of 2 on the
development machine). One worker thread, created on first use and kept for the process, runs
such work at nice 19, so it takes the cycles the network leaves and yields the rest. The
segmenter gives it the anatomy cross-check of single-region volumes, whose result only goes
into the report and its warnings.

On Linux the priority is set for the worker thread alone; elsewhere it would apply to the
whole process, so the worker keeps the normal priority there.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

logger = logging.getLogger(__name__)

#: nice value of the worker thread (19: the lowest priority).
NICE = 19

_LOCK = threading.Lock()
_EXECUTOR: ThreadPoolExecutor | None = None


def _lowest_priority() -> None:
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


def run_now(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
    """:func:`submit`'s signature, but run here and now (the serial reference)."""
    future: Future = Future()
    try:
        future.set_result(function(*args, **kwargs))
    except BaseException as error:  # noqa: BLE001 - handed to the caller as submit would
        future.set_exception(error)
    return future
