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


def test_available_memory_is_capped_by_the_cgroup_limit(tmp_path):
    from legseg_tf.device import available_memory_gb

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 33554432 kB\nMemAvailable: 16777216 kB\n")   # 16 GiB
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    none = tmp_path / "no-proc-cgroup"
    assert available_memory_gb(meminfo, cgroup, none) == pytest.approx(16.0)
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text("0\n")
    assert available_memory_gb(meminfo, cgroup, none) == pytest.approx(16.0)
    (cgroup / "memory.max").write_text(f"{6 * 1024**3}\n")       # a 6 GiB container limit
    (cgroup / "memory.current").write_text(f"{1 * 1024**3}\n")   # 1 GiB already used
    assert available_memory_gb(meminfo, cgroup, none) == pytest.approx(5.0)
    assert available_memory_gb(tmp_path / "none", cgroup, none) == pytest.approx(5.0)
    assert available_memory_gb(tmp_path / "none", tmp_path / "none", none) == 8.0


def test_cgroup_memory_left_walks_up_from_the_own_group_and_reads_v1(tmp_path):
    from legseg_tf.device import cgroup_memory_left

    root = tmp_path / "cgroup"
    step = root / "system.slice" / "slurmstepd.scope" / "job_7" / "step_0"
    step.mkdir(parents=True)
    proc = tmp_path / "self-cgroup"
    proc.write_text("0::/system.slice/slurmstepd.scope/job_7/step_0\n")
    assert cgroup_memory_left(root, proc) is None
    (step / "memory.max").write_text("max\n")
    (step / "memory.current").write_text("100\n")
    job = step.parent                                   # SLURM sets the job's limit one level up
    (job / "memory.max").write_text(f"{4 * 1024**3}\n")
    (job / "memory.current").write_text(f"{1024**3}\n")
    assert cgroup_memory_left(root, proc) == 3 * 1024**3
    v1 = root / "memory" / "batch"
    v1.mkdir(parents=True)
    proc.write_text("4:memory:/batch\n0::/system.slice/slurmstepd.scope/job_7/step_0\n")
    (v1 / "memory.limit_in_bytes").write_text(f"{2 * 1024**3}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{1024**3}\n")
    assert cgroup_memory_left(root, proc) == 1024**3
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")   # v1 "no limit"
    assert cgroup_memory_left(root, proc) == 3 * 1024**3
