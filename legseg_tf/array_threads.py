"""Array stages split over the process's CPUs.

Outside the networks, a segmentation is NumPy and SciPy work on one thread while the other
cores idle. Their loops (ufuncs, arg-max, 1-D correlation, labelling) release the GIL, so
independent pieces of one stage run side by side on a small thread pool. Every use here
splits work whose pieces do not interact (slabs for element-wise or per-voxel operations,
lines along another axis for 1-D filters, one label per task), so results are identical to
the serial computation whatever the thread count (tests compare 1, 2 and 3 threads).

The thread count follows ``--nprocs`` (:func:`set_threads`, called where TensorFlow is
configured); unset, it is :func:`legseg_tf.device.available_cpus`.
"""
from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

from legseg_tf.device import available_cpus

T = TypeVar("T")

#: Smallest piece worth a thread, in array elements (below it the hand-over costs more than
#: the loop).
MIN_ELEMENTS = 2**18

_LOCK = threading.Lock()
_THREADS: int | None = None
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_LOCAL = threading.local()


def _forget_pool_in_child() -> None:
    """A forked child has none of the parent's threads: it starts its own pool when needed."""
    global _LOCK, _POOL, _POOL_SIZE
    _LOCK, _POOL, _POOL_SIZE = threading.Lock(), None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def set_threads(count: int | None) -> None:
    """Use ``count`` threads for array stages (None = :func:`available_cpus`)."""
    global _THREADS
    if count is not None and count < 1:
        raise ValueError(f"thread count must be >= 1, got {count}")
    with _LOCK:
        _THREADS = count


def threads() -> int:
    """Threads array stages started from this thread use now (1 on a pool thread, or on a
    thread marked by :func:`serial_here`)."""
    if getattr(_LOCAL, "serial", False):
        return 1
    return _THREADS if _THREADS is not None else available_cpus()


def serial_here() -> None:
    """Run array stages started from the calling thread on that thread alone (the pool's own
    threads, and the low-priority background worker, which must not hand work to
    normal-priority threads)."""
    _LOCAL.serial = True


def _pool(size: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    with _LOCK:
        if _POOL is None or _POOL_SIZE < size:
            old, _POOL, _POOL_SIZE = _POOL, ThreadPoolExecutor(
                max_workers=size, thread_name_prefix="legseg-array", initializer=serial_here), size
            if old is not None:
                old.shutdown(wait=False)
        return _POOL


def run_all(function: Callable[[T], Any], items: Iterable[T], *,
            max_threads: int | None = None) -> list[Any]:
    """``[function(item) for item in items]``, the items spread over :func:`threads` threads
    (at most ``max_threads``: work whose memory grows with the items run at once).

    Item ``i`` goes to share ``i % threads``; the calling thread takes the first share
    itself. Results come in the order of ``items``. A share stops at its first error, which
    is raised once every share has stopped (the caller's own share's first).
    """
    items = list(items)
    count = min(threads(), len(items), max_threads or len(items))
    if count <= 1:
        return [function(item) for item in items]
    # neighbours, often alike in cost, go to different shares
    shares = [items[start::count] for start in range(count)]

    def do(share: Sequence[T]) -> list[Any]:
        return [function(item) for item in share]

    futures = [_pool(count - 1).submit(do, share) for share in shares[1:]]
    try:
        done = [do(shares[0])]
    finally:
        wait(futures)
    done += [future.result() for future in futures]
    results: list[Any] = [None] * len(items)
    for start, share_results in enumerate(done):
        results[start::count] = share_results
    return results


def pieces(length: int, elements_per_index: int = 1) -> list[slice]:
    """Contiguous slices covering ``range(length)``, one per thread, fewer where a piece
    would hold under :data:`MIN_ELEMENTS` elements (``elements_per_index`` per index)."""
    worth = max(1, (length * max(1, elements_per_index)) // MIN_ELEMENTS)
    count = max(1, min(threads(), worth, length))
    step = max(1, math.ceil(length / count))
    return [slice(start, min(start + step, length)) for start in range(0, length, step)] or [
        slice(0, 0)]


def slabs(array) -> list[slice]:
    """:func:`pieces` of an array along its first axis (each index a slab of the others)."""
    return pieces(len(array), math.prod(array.shape[1:]))
