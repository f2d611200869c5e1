"""The memory budget covers the whole process: memory in use, merge buffers, activations."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from legseg_tf import device, inference
from legseg_tf.config import InferenceConfig

STRIDE = (4, 16, 16)


def test_process_memory_is_read_from_proc_status(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t 2097152 kB\nVmRSS:\t 1048576 kB\nThreads:\t3\n")
    assert device.process_memory_gb(status) == (1.0, 2.0)
    assert device.process_memory_gb(tmp_path / "missing") == (0.0, 0.0)
    resident, peak = device.process_memory_gb()
    assert 0 < resident <= peak


def test_the_default_budget_is_capped_and_covers_the_memory_in_use(monkeypatch):
    monkeypatch.setattr(device, "available_memory_gb", lambda: 20.0)
    monkeypatch.setattr(device, "process_memory_gb", lambda: (0.8, 0.9))
    assert device.default_budget_gb() == device.DEFAULT_BUDGET_GB     # capped
    monkeypatch.setattr(device, "available_memory_gb", lambda: 1.0)
    # a small container; readings in GiB, the budget in GB (1e9 bytes)
    assert device.default_budget_gb() == pytest.approx((0.8 + 0.75) * 1024**3 / 1e9)
    monkeypatch.setattr(device, "available_memory_gb", lambda: 20.0)
    monkeypatch.setattr(device, "process_memory_gb", lambda: (6.0, 6.0))   # data loaded
    assert device.default_budget_gb() == pytest.approx(6.0 * 1024**3 / 1e9
                                                       + device.DEFAULT_ROOM_GB)


@pytest.fixture(scope="module")
def unet():
    from legseg_tf.networks.config import UNetConfig
    from legseg_tf.networks.unet import build_unet

    return build_unet(UNetConfig(n_classes=5, features=(4, 8, 8, 8, 8)))


def test_the_activation_estimate_counts_live_tensors_only(unet):
    import keras

    per_voxel = inference.activation_bytes_per_voxel(unet, STRIDE)
    probe = tuple(2 * s for s in STRIDE)
    layers = [la for la in unet.layers if not isinstance(la, keras.layers.InputLayer)]
    symbolic = keras.Model(unet.inputs, [la.output for la in layers])
    sizes = [4 * math.prod(spec.shape[1:]) / math.prod(probe)
             for spec in symbolic.compute_output_spec(keras.KerasTensor((1, *probe, 1)))]
    # more than the largest layer output, less than every output at once (QMRITools' model)
    assert max(sizes) < per_voxel < sum(sizes)


def test_merge_buffers_shrink_with_a_tiled_part_and_grow_with_probabilities():
    config = InferenceConfig()
    part = (120, 224, 224)
    whole = inference.merge_buffer_bytes(part, (120, 224, 224), 22, config)
    tiled = inference.merge_buffer_bytes(part, (16, 224, 224), 22, config)
    assert whole > 22 * 4 * math.prod(part)          # the single tile's weighted copy
    assert tiled < 0.3 * whole                       # accumulator one 16-slice tile deep
    saved = inference.merge_buffer_bytes(part, (16, 224, 224), 22,
                                         InferenceConfig(save_probabilities=True))
    assert saved - tiled == pytest.approx(2 * 22 * 4 * math.prod(part))
    hard = inference.merge_buffer_bytes(part, (16, 224, 224), 22,
                                        InferenceConfig(merge="qmritools"))
    assert hard < whole


def test_the_patch_leaves_room_for_the_memory_in_use(unet, caplog):
    shape = (40, 200, 200)
    fixed = inference.fixed_memory_gb()
    assert fixed > 0.05                              # this process already holds memory
    per_voxel = inference.activation_bytes_per_voxel(unet, STRIDE)

    def patch_for(mem_gb):
        config = InferenceConfig(mem_gb=mem_gb)
        return inference._patch_within_budget(shape, unet, 5, config, STRIDE)

    roomy = patch_for(fixed + 50.0)
    assert roomy == (40, 208, 208)                   # one patch for the part
    room_gb = 0.6 * per_voxel * math.prod(roomy) / 1e9
    tight = patch_for((fixed + room_gb) / inference.BUDGET_FRACTION)
    assert math.prod(tight) < math.prod(roomy)
    needed = (per_voxel * math.prod(tight)
              + inference.merge_buffer_bytes(shape, tight, 5, InferenceConfig()))
    assert fixed * 1024**3 + needed <= (fixed * 1024**3 + room_gb * 1e9) * 1.01
    with caplog.at_level(logging.WARNING, logger="legseg_tf.inference"):
        smallest = patch_for(0.5 * fixed)            # less than the process already holds
    # Never below the training patch (32 x 112 x 112, rounded up to the stride): smaller
    # tiles give a network too little context to segment anything.
    floor = tuple(-(-m // t) * t for m, t in zip(InferenceConfig().min_patch, STRIDE))
    assert smallest == floor
    assert any("smallest usable patch" in r.getMessage() for r in caplog.records)
    lower = inference._patch_within_budget(shape, unet, 5, InferenceConfig(
        mem_gb=0.5 * fixed, min_patch=STRIDE), STRIDE)
    assert lower == STRIDE


def test_the_smallest_tile_is_the_patch_the_networks_train_on():
    from legseg_tf.training.sampling import PatchConfig

    assert InferenceConfig().min_patch == PatchConfig().patch_size
    assert inference.choose_patch_size((20, 300, 90), (4, 16, 16), 1e6, 1.0,
                                       minimum=(32, 112, 112)) == (20, 112, 96)


def test_memory_a_part_leaves_for_reuse_is_not_counted_twice():
    retained = inference._RetainedMemory()
    before, _ = device.process_memory_gb()
    pool = np.ones(64 * 1024**2 // 8)                # 64 MiB kept for reuse (by a runtime)
    result = np.ones(16 * 1024**2 // 8)              # 16 MiB the part returns
    retained.add(before, result.nbytes)
    assert 0.05 < retained.gb < 0.08
    assert pool.size and inference.fixed_memory_gb() > 0


def test_a_thigh_leg_part_still_runs_as_one_tile_with_the_shipped_network():
    """The default budget keeps the usual case one tile per leg part (the labels and
    probabilities of the single-tile path are bit-identical to blending it)."""
    from legseg_tf import model_store
    from legseg_tf.model_adapters import network_stride
    from legseg_tf.model_store import resolve_models_dir

    entry = model_store.load_manifest(resolve_models_dir()).get("upper_leg")
    model = model_store.load_model(entry)
    stride = network_stride(entry.read_config())
    for part in ((31, 148, 160), (31, 147, 156), (20, 112, 80)):   # thigh legs, a demo leg
        patch = inference._patch_within_budget(part, model, 22, InferenceConfig(), stride)
        assert patch == tuple(-(-n // s) * s for n, s in zip(part, stride)), (part, patch)
