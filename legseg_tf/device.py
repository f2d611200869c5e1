"""Choose where TensorFlow runs and how many threads it uses."""
from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


class DeviceError(RuntimeError):
    """The requested device is not available."""


def configure_device(device: str = "auto", nprocs: int | None = None) -> dict:
    """Configure TensorFlow once, before any network is built.

    Args:
        device: "auto" (GPU when TensorFlow sees one, else CPU), "cpu" or "gpu".
        nprocs: CPU threads for TensorFlow's op pools (None = TensorFlow's default, all cores).

    Returns:
        What was chosen: ``{"device", "gpus", "intra_op_threads", "inter_op_threads",
        "tensorflow"}`` for logging and provenance.

    Raises:
        DeviceError: "gpu" was requested but TensorFlow sees no GPU.
    """
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be auto, cpu or gpu, got {device!r}")
    if nprocs is not None:
        os.environ["OMP_NUM_THREADS"] = str(nprocs)
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise DeviceError("--device gpu was requested but TensorFlow sees no GPU "
                          "(CUDA build of TensorFlow, driver, and --gpus all / --nv needed)")
    try:
        if device == "cpu" and gpus:
            tf.config.set_visible_devices([], "GPU")
        for gpu in gpus if device != "cpu" else []:
            tf.config.experimental.set_memory_growth(gpu, True)
        if nprocs is not None:
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
