"""Per-network inference: patch choice, normalisation, merge modes, crop/un-crop."""
from __future__ import annotations

import numpy as np
import pytest

from legseg_tf import inference
from legseg_tf.config import InferenceConfig


class FakeModel:
    """Softmax-like output: class 1 where the input is bright (> 300), else background."""

    layers = []

    def __init__(self):
        self.shapes = []

    def predict_on_batch(self, batch):
        self.shapes.append(batch.shape)
        bright = batch[..., 0] > 300
        return np.stack([~bright, bright, np.zeros_like(bright)], axis=-1).astype(np.float32)


@pytest.fixture(autouse=True)
def raw_tiles(monkeypatch):
    """Tiles reach the fake models un-normalised (normalisation is tested on its own below)."""
    monkeypatch.setattr(inference, "uniform_normalise", lambda tile: np.asarray(tile, np.float32))


def test_every_tile_is_uniform_normalised_before_the_network(monkeypatch):
    from legseg_tf.normalization import uniform_normalise

    monkeypatch.setattr(inference, "uniform_normalise", uniform_normalise)
    seen = []

    class Recorder:
        def predict_on_batch(self, batch):
            seen.append(batch.copy())
            return np.ones((*batch.shape[:-1], 2), np.float32)

    rng = np.random.default_rng(0)
    tiles = rng.gamma(2.0, 50.0, (2, 4, 16, 16, 1)).astype(np.float32)
    timer = [0.0]
    inference.make_predict(Recorder(), timer)(tiles)
    for tile, fed in zip(tiles, seen[0]):
        np.testing.assert_array_equal(fed, uniform_normalise(tile))
    assert timer[0] > 0


def test_choose_patch_size_prefers_one_patch_and_respects_the_budget():
    stride = (4, 16, 16)
    assert inference.choose_patch_size((31, 118, 125), stride, 100.0, 1e12) == (32, 128, 128)
    patch = inference.choose_patch_size((120, 512, 512), stride, 1000.0, 2e9)
    assert all(p % s == 0 for p, s in zip(patch, stride))
    assert 1000.0 * np.prod(patch) <= 2e9
    assert patch[0] <= 120 and patch[1] <= 512
    assert inference.choose_patch_size((3, 5, 7), stride, 1.0, 1e9) == stride


@pytest.mark.parametrize("merge", ["gaussian", "qmritools"])
def test_apply_network_crops_and_restores_the_grid(merge):
    volume = np.zeros((9, 40, 50), dtype=np.float32)
    volume[2:8, 5:30, 10:45] = 100.0
    volume[3:6, 10:20, 20:30] = 500.0
    model = FakeModel()
    config = InferenceConfig(merge=merge, mem_gb=1e-4, save_probabilities=True)
    out = inference.apply_segmentation_network(
        volume, model, 3, config, (4, 16, 16), patch=(4, 16, 16))
    assert out.labels.shape == volume.shape
    np.testing.assert_array_equal(out.labels == 1, volume == 500.0)
    assert out.n_tiles > 1 and all(s[1:] == (4, 16, 16, 1) for s in model.shapes)
    if merge == "gaussian":
        assert out.probabilities.shape == (*volume.shape, 3)
        np.testing.assert_allclose(out.probabilities.sum(-1), 1.0, atol=1e-5)
    else:
        assert out.probabilities is None


def test_largest_component_per_label_is_optional():
    volume = np.zeros((4, 16, 48), dtype=np.float32)
    volume[:, 2:6, 2:6] = 500.0
    volume[:, 2:10, 30:40] = 500.0
    volume[:, 12:14, :] = 100.0
    config = InferenceConfig()
    kept = inference.apply_segmentation_network(volume, FakeModel(), 3, config, (4, 16, 16))
    raw = inference.apply_segmentation_network(
        volume, FakeModel(), 3, config, (4, 16, 16), largest_component=False)
    assert (raw.labels == 1).sum() == 4 * (16 + 80)
    assert (kept.labels == 1).sum() == 4 * 80


def test_empty_part_gives_background():
    out = inference.apply_segmentation_network(
        np.zeros((4, 16, 16), np.float32), FakeModel(), 3, InferenceConfig(save_probabilities=True), (4, 16, 16))
    assert not out.labels.any() and np.all(out.probabilities[..., 0] == 1)


def test_memory_estimate_from_a_keras_unet():
    from legseg_tf.networks.config import UNetConfig, total_stride
    from legseg_tf.networks.unet import build_unet

    small = UNetConfig(n_classes=3, features=(4, 8, 8, 8, 8))
    large = UNetConfig(n_classes=3, features=(8, 16, 16, 16, 16))
    per_voxel_small = inference.activation_bytes_per_voxel(build_unet(small), total_stride(small))
    per_voxel_large = inference.activation_bytes_per_voxel(build_unet(large), total_stride(large))
    assert 0 < per_voxel_small < per_voxel_large < 4 * per_voxel_small
    from legseg_tf.device import default_budget_gb

    assert 0 < default_budget_gb() <= 2.5
