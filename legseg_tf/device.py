"""What the machine lets this process use (CPUs, memory), where TensorFlow runs and how many
threads it uses."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
from functools import lru_cache
from pathlib import Path

from legseg_tf.errors import NoModelError

logger = logging.getLogger(__name__)

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
#: Default whole-process memory budget when none is given: the memory in use plus this share
#: of the memory still available, at most DEFAULT_BUDGET_GB (or the memory in use plus
#: DEFAULT_ROOM_GB, when a process already holds more, e.g. a notebook with data loaded).
AVAILABLE_FRACTION = 0.75
DEFAULT_BUDGET_GB = 2.5
DEFAULT_ROOM_GB = 0.75
#: GB (1e9 bytes: budgets, ``--mem-gb``) in one GiB (2**30 bytes: the memory readings).
GB_PER_GIB = 1024**3 / 1e9
#: How to install TensorFlow: the ``cpu``/``gpu`` extras of pyproject.toml.
TENSORFLOW_INSTALL = 'pip install "legseg[cpu]" (or "legseg[gpu]" for NVIDIA GPUs)'


class MissingTensorFlowError(NoModelError):
    """TensorFlow or Keras cannot be imported, so no network can run (exit 3, one line)."""


def import_tensorflow():
    """Import TensorFlow (and Keras, which runs on it) where the app first needs them.

    Returns:
        The ``tensorflow`` module.

    Raises:
        MissingTensorFlowError: one line that names the pip extra to install, instead of the
            ImportError's traceback (TensorFlow is an extra: ``legseg[cpu]`` or ``legseg[gpu]``).
    """
    try:
        import tensorflow as tf
        import keras  # noqa: F401 - its backend is TensorFlow; fails here, not mid-run
    except ImportError as error:
        missing = getattr(error, "name", None)
        if isinstance(error, ModuleNotFoundError) and missing in ("tensorflow", "keras"):
            message = (f"{'TensorFlow' if missing == 'tensorflow' else 'Keras'} is not installed, "
                       f"and legseg needs it to run its networks; install it with: {TENSORFLOW_INSTALL}")
        else:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            message = (f"TensorFlow cannot be imported ({first}); reinstall it with: "
                       f"{TENSORFLOW_INSTALL}")
        raise MissingTensorFlowError(message) from error
    return tf


def available_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: its affinity set (SLURM, ``--cpuset-cpus``), capped by a
    cgroup v2 CPU quota (``docker run --cpus``) when one is set; at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _levels(base: Path, own: str) -> list[Path]:
    """``base/own`` and each of its parents up to ``base``."""
    group = base.joinpath(*[p for p in own.split("/") if p not in ("", ".", "..")])
    levels = [group]
    while levels[-1] != base:
        levels.append(levels[-1].parent)
    return levels


def cgroup_memory_left(root: Path = Path("/sys/fs/cgroup"),
                       proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes left under the tightest cgroup memory limit of this process, or None (no limit).

    Every level from the process's own group (``/proc/self/cgroup``: a SLURM job step, or
    ``/`` inside a container's namespace) up to the hierarchy's root counts: cgroup v2
    ``memory.max`` - ``memory.current``; cgroup v1 ``memory.limit_in_bytes`` -
    ``memory.usage_in_bytes`` under ``root/memory``.
    """
    own_v2, own_v1 = "/", "/"
    try:
        for line in proc_cgroup.read_text().splitlines():
            number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
            if number == "0" and controllers == "":
                own_v2 = path
            elif "memory" in controllers.split(","):
                own_v1 = path
    except OSError:
        pass
    left: list[int] = []
    for base, own, limit_name, used_name in (
        (root, own_v2, "memory.max", "memory.current"),
        (root / "memory", own_v1, "memory.limit_in_bytes", "memory.usage_in_bytes"),
    ):
        for level in _levels(base, own):
            limit, used = _read_int(level / limit_name), _read_int(level / used_name)
            if limit is not None and used is not None and limit < 2**60:
                left.append(limit - used)
    return max(0, min(left)) if left else None


def available_memory_gb(meminfo: Path = Path("/proc/meminfo"),
                        cgroup: Path = Path("/sys/fs/cgroup"),
                        proc_cgroup: Path = Path("/proc/self/cgroup")) -> float:
    """Memory this process may still use, in GiB (2**30 bytes): MemAvailable of ``meminfo``,
    capped by the tightest cgroup limit (:func:`cgroup_memory_left`: a SLURM job, ``docker run
    --memory``); 8 GiB assumed where nothing can be read."""
    available = None
    try:
        with open(meminfo, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) / 1024**2
                    break
    except (OSError, ValueError):
        pass
    left = cgroup_memory_left(cgroup, proc_cgroup)
    if left is not None:
        available = left / 1024**3 if available is None else min(available, left / 1024**3)
    return 8.0 if available is None else available


def process_memory_gb(status: Path = Path("/proc/self/status")) -> tuple[float, float]:
    """``(resident, peak resident)`` memory of this process in GiB (2**30 bytes; VmRSS and
    VmHWM of ``/proc/self/status``); ``(0.0, 0.0)`` where they cannot be read."""
    values = {}
    try:
        with open(status, encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    values[key] = int(value.split()[0]) / 1024**2
    except (OSError, ValueError):
        pass
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


@lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the operating system (glibc ``malloc_trim``).

    Freed NumPy buffers below glibc's mmap threshold (up to 32 MB: tiles, part crops) stay in
    the heap and in the resident set; trimming after large frees keeps the memory in use that
    the budget reads (:func:`process_memory_gb`) to what is really held. No-op without glibc.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def default_budget_gb() -> float:
    """Whole-process memory budget when ``--mem-gb`` is not given: what this process holds
    now plus AVAILABLE_FRACTION of the memory still available (:func:`available_memory_gb`),
    at most DEFAULT_BUDGET_GB, or the memory held plus DEFAULT_ROOM_GB if that is more; in GB
    (1e9 bytes, as ``--mem-gb``), while the memory readings are in GiB."""
    resident = process_memory_gb()[0] * GB_PER_GIB
    cap = max(DEFAULT_BUDGET_GB, resident + DEFAULT_ROOM_GB)
    return min(resident + AVAILABLE_FRACTION * available_memory_gb() * GB_PER_GIB, cap)


class DeviceError(RuntimeError):
    """The requested device is not available."""


def configure_device(device: str = "auto", nprocs: int | None = None) -> dict:
    """Configure TensorFlow once, before any network is built.

    Args:
        device: "auto" (GPU when TensorFlow sees one, else CPU), "cpu" or "gpu".
        nprocs: CPU threads for TensorFlow's op pools (None = :func:`available_cpus`, so a
            SLURM allocation or a container CPU limit is respected).

    Returns:
        What was chosen: ``{"device", "gpus", "intra_op_threads", "inter_op_threads",
        "tensorflow"}`` for logging and provenance.

    Raises:
        DeviceError: "gpu" was requested but TensorFlow sees no GPU.
        MissingTensorFlowError: TensorFlow is not installed or cannot be imported.
    """
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be auto, cpu or gpu, got {device!r}")
    if nprocs is None:
        nprocs = available_cpus()
    os.environ["OMP_NUM_THREADS"] = str(nprocs)
    tf = import_tensorflow()

    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise DeviceError("--device gpu was requested but TensorFlow sees no GPU "
                          "(CUDA build of TensorFlow, driver, and --gpus all / --nv needed)")
    try:
        if device == "cpu" and gpus:
            tf.config.set_visible_devices([], "GPU")
        for gpu in gpus if device != "cpu" else []:
            tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.threading.set_intra_op_parallelism_threads(nprocs)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, nprocs))
    except RuntimeError as error:  # TensorFlow was already initialised in this process
        logger.debug("device settings unchanged: %s", error)
    chosen = "gpu" if gpus and device != "cpu" else "cpu"
    info = {
        "device": chosen,
        "gpus": [gpu.name for gpu in gpus] if chosen == "gpu" else [],
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or (os.cpu_count() or 1),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "tensorflow": tf.__version__,
    }
    logger.info("TensorFlow %s on %s (%s intra-op threads)", info["tensorflow"],
                chosen.upper() + (f" {info['gpus']}" if info["gpus"] else ""), info["intra_op_threads"])
    return info
