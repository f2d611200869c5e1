"""Device selection (this machine has no GPU: CPU paths and the clear GPU error)."""
from __future__ import annotations

import os

import pytest

from legseg_tf import device


def test_cpu_and_auto_choose_cpu_without_a_gpu():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible; this test covers CPU-only machines")
    info = device.configure_device("auto")
    assert info["device"] == "cpu" and info["gpus"] == []
    assert info["tensorflow"] == tf.__version__
    assert device.configure_device("cpu")["device"] == "cpu"


def test_gpu_without_a_gpu_is_a_clear_error():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible")
    with pytest.raises(device.DeviceError, match="no GPU"):
        device.configure_device("gpu")


def test_bad_device_name():
    with pytest.raises(ValueError, match="auto, cpu or gpu"):
        device.configure_device("tpu")


def test_available_cpus_respects_affinity_and_cgroup_quota(tmp_path):
    from legseg_tf.device import available_cpus

    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path / "missing") == affinity
    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    assert available_cpus(quota) == affinity
    quota.write_text("50000 100000\n")          # docker run --cpus 0.5
    assert available_cpus(quota) == 1
    quota.write_text(f"{(affinity + 8) * 100000} 100000\n")   # a quota above the affinity set
    assert available_cpus(quota) == affinity
    quota.write_text("garbage")
    assert available_cpus(quota) == affinity
