"""Networks are traced once per process, single-tile parts need no accumulator, and the label
maps and probabilities stay bit-identical to those of the merger as it was before (issue 15).

The reference below is the merger as it stood before these changes: Keras'
``predict_on_batch`` (which retraces for every new tile shape) and Gaussian blending of every
part, a single tile included.
"""
from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest

from legseg_tf import inference
from legseg_tf import sliding_window as sw
from legseg_tf.config import InferenceConfig
from legseg_tf.normalization import uniform_normalise
from tests.reference_merge import old_predict_probabilities

N_CLASSES = 4


def old_predict(model):
    """``inference.make_predict`` before: Keras' ``predict_on_batch``."""
    def predict(tiles):
        normalised = np.stack([uniform_normalise(tile) for tile in tiles]).astype(np.float32)
        return np.asarray(model.predict_on_batch(normalised), dtype=np.float32)
    return predict


@pytest.fixture(scope="module")
def tiny_unet():
    from legseg_tf.networks.config import UNetConfig, total_stride
    from legseg_tf.networks.unet import build_unet

    import keras

    keras.utils.set_random_seed(7)
    config = UNetConfig(n_classes=N_CLASSES, features=(4, 8, 8, 8, 8), dropout_rate=0.0)
    return build_unet(config), tuple(total_stride(config))


def _volume(shape, seed):
    """Positive everywhere, so the non-zero box is the whole volume."""
    rng = np.random.default_rng(seed)
    volume = rng.gamma(2.0, 60.0, shape).astype(np.float32) + 1.0
    volume[:, : shape[1] // 2] *= 3.0  # some structure for the random network
    return volume


# (shape, forced patch or None = from the memory budget, batch size): one part fits one tile,
# the others need several tiles (and a last, smaller batch).
CASES = [((8, 40, 56), None, 1), ((12, 30, 70), (8, 16, 32), 2), ((5, 20, 20), (4, 16, 16), 3)]


def test_each_network_is_traced_once_whatever_the_volume_shapes(tiny_unet, caplog):
    model, stride = tiny_unet
    assert inference.tracing_count(model) == 0
    patches = []
    with caplog.at_level(logging.DEBUG, logger="legseg_tf.inference"):
        for index, (shape, patch, batch) in enumerate(CASES):
            config = InferenceConfig(save_probabilities=True, batch_size=batch)
            out = inference.apply_segmentation_network(_volume(shape, index), model, N_CLASSES,
                                                       config, stride, patch=patch,
                                                       largest_component=False)
            patches.append(tuple(out.patch))
            assert inference.tracing_count(model) == 1, (shape, patch)
    assert len(set(patches)) == len(CASES)  # three tile shapes, several batch sizes: one trace
    traces = [r for r in caplog.records if r.getMessage().startswith("tracing network")]
    assert len(traces) == 1   # the one trace is logged (at -v)
    # the premise: Keras' predict_on_batch retraces for new tile shapes
    for patch in patches:
        model.predict_on_batch(np.zeros((1, *patch, 1), np.float32))
    assert model.predict_function.experimental_get_tracing_count() > 1
    assert inference.tracing_count(model) == 1


@pytest.mark.parametrize("case", range(len(CASES)))
def test_labels_and_probabilities_are_those_of_the_old_merger(tiny_unet, case):
    model, stride = tiny_unet
    shape, patch, batch = CASES[case]
    volume = _volume(shape, 10 + case)
    config = InferenceConfig(save_probabilities=True, batch_size=batch)
    new = inference.apply_segmentation_network(volume, model, N_CLASSES, config, stride,
                                               patch=patch, largest_component=False)
    old, n_tiles = old_predict_probabilities(volume, old_predict(model), tuple(new.patch),
                                             overlap=config.overlap, batch_size=batch)
    assert n_tiles == new.n_tiles and (n_tiles == 1) == (patch is None)
    np.testing.assert_array_equal(new.labels, np.argmax(old, axis=-1).astype(np.int16))
    np.testing.assert_array_equal(new.probabilities, old)
    assert len(np.unique(new.labels)) > 1  # the random network does not give one class only
    top = old.max(axis=-1)[new.labels > 0]
    assert new.confidence == {"mean_max_probability": round(float(top.mean()), 4),
                              "voxels": int(top.size)}


def test_the_traced_forward_pass_is_bit_identical_to_predict_on_batch(tiny_unet):
    model, _ = tiny_unet
    forward = inference.forward_function(model)
    assert inference.forward_function(model) is forward   # cached per model
    rng = np.random.default_rng(3)
    for shape in ((1, 4, 16, 16, 1), (3, 8, 32, 48, 1)):
        batch = rng.normal(size=shape).astype(np.float32)
        output = forward(batch)
        np.testing.assert_array_equal(output, model.predict_on_batch(batch))
        # the tensor's buffer itself, read-only: no second copy of every class's output
        assert not output.flags.owndata and not output.flags.writeable


def test_a_single_tile_part_needs_no_accumulator_and_blends_bit_identically():
    import tracemalloc

    rng = np.random.default_rng(1)
    volume = rng.normal(size=(7, 30, 29)).astype(np.float32)
    raw = rng.dirichlet(np.ones(5), size=(8, 32, 32)).astype(np.float32)
    calls = []

    def softmax(batch):
        calls.append(batch.shape)
        return raw[None]

    def labels_only(volume, predict, patch):
        blended = sw.blend_tiles(volume, predict, patch)
        return blended, blended.n_tiles

    def old_labels(volume, predict, patch):
        """The merger and label extraction as ``apply_segmentation_network`` had them."""
        probabilities, n_tiles = old_predict_probabilities(volume, predict, patch)
        winners = np.argmax(probabilities, axis=-1)
        np.take_along_axis(probabilities, winners[..., None], axis=-1)
        return probabilities, n_tiles

    peaks, results = {}, {}
    for name, merger in (("old", old_labels), ("new", sw.predict_probabilities),
                         ("labels", labels_only)):
        sw.gaussian_importance_map((8, 32, 32))  # cached: not counted
        tracemalloc.start()
        results[name], n_tiles = merger(volume, softmax, (8, 32, 32))
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert n_tiles == 1
    assert calls == [(1, 8, 32, 32, 1)] * 3
    expected = results["old"]
    np.testing.assert_array_equal(results["new"], expected)   # bit-identical probabilities
    assert results["new"].shape == (7, 30, 29, 5)
    np.testing.assert_array_equal(results["labels"].labels, np.argmax(expected, axis=-1))
    assert results["labels"].probabilities is None
    # before: accumulator + weighted tile + weight sum, then a full-size index per axis;
    # now: the cropped result and the winners only
    assert peaks["labels"] < 0.7 * peaks["old"], peaks


@pytest.mark.parametrize("shape,patch", list(itertools.product(
    [(4, 16, 16), (3, 10, 11), (8, 32, 32)], [(4, 16, 16), (8, 32, 32)])))
def test_one_tile_whenever_the_patch_covers_the_volume(shape, patch):
    volume = np.ones(shape, np.float32)
    blended, n_tiles = sw.predict_probabilities(volume, lambda b: b.astype(np.float32), patch)
    covered = all(s <= p for s, p in zip(shape, patch))
    assert (n_tiles == 1) == covered
    np.testing.assert_allclose(blended[..., 0], volume, rtol=1e-6)


def _random_softmax(seed, n_classes=6):
    """A position-dependent stand-in network: each tile's softmax depends on its inputs, so
    overlapping tiles disagree and the blend has to add them in the right order."""
    def predict(batch):
        rng = np.random.default_rng(seed + int(abs(batch).sum() * 1000) % 100_000)
        logits = rng.normal(size=(*batch.shape[:-1], n_classes)).astype(np.float32)
        logits[..., 1] += batch[..., 0]
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
    return predict


# (volume shape, patch, overlap, batch size): tiled along z (the streaming axis), along y only
# (z fits one tile), along x only, on every axis, and with batches that cross tile rows.
MULTI_TILE = [((21, 40, 36), (8, 16, 16), 0.5, 1), ((6, 70, 30), (8, 32, 32), 0.5, 3),
              ((4, 16, 90), (4, 16, 32), 0.25, 2), ((13, 47, 51), (4, 16, 16), 0.9, 5),
              ((9, 33, 17), (8, 16, 16), 0.0, 4)]


@pytest.mark.parametrize("shape,patch,overlap,batch", MULTI_TILE)
@pytest.mark.parametrize("gaussian", [True, False])
def test_multi_tile_blend_is_bit_identical_to_the_full_accumulator(shape, patch, overlap, batch,
                                                                    gaussian):
    volume = _volume(shape, sum(shape))
    reference, n_ref = old_predict_probabilities(volume, _random_softmax(1), patch,
                                                 overlap=overlap, batch_size=batch,
                                                 gaussian=gaussian)
    blended = sw.blend_tiles(volume, _random_softmax(1), patch, overlap=overlap,
                             batch_size=batch, gaussian=gaussian, keep_probabilities=True)
    assert blended.n_tiles == n_ref > 1
    np.testing.assert_array_equal(blended.probabilities, reference)
    np.testing.assert_array_equal(blended.labels, np.argmax(reference, axis=-1))
    np.testing.assert_array_equal(blended.top, reference.max(axis=-1))
    assert blended.labels.dtype == np.int16 and blended.n_classes == reference.shape[-1]
    lean = sw.blend_tiles(volume, _random_softmax(1), patch, overlap=overlap, batch_size=batch,
                          gaussian=gaussian)
    assert lean.probabilities is None
    np.testing.assert_array_equal(lean.labels, blended.labels)
    np.testing.assert_array_equal(lean.top, blended.top)


def _read_only(network, kept, dtype=np.float32):
    """``network`` returning read-only outputs (as TensorFlow's views are), each recorded in
    ``kept`` with a copy, to check that the merger leaves them as they were."""
    def predict(batch):
        output = network(batch).astype(dtype, copy=False)
        output.setflags(write=False)
        kept.append((output, output.copy()))
        return output
    return predict


def test_read_only_outputs_are_blended_bit_identically_and_left_unchanged():
    volume = _volume((21, 40, 36), 3)
    patch, kept = (8, 16, 16), []
    read_only = _read_only(_random_softmax(4), kept)

    reference, _ = old_predict_probabilities(volume, _random_softmax(4), patch)
    blended = sw.blend_tiles(volume, read_only, patch, keep_probabilities=True)
    np.testing.assert_array_equal(blended.probabilities, reference)
    assert len(kept) > 1 and all(np.array_equal(a, b) for a, b in kept)


@pytest.mark.parametrize("gaussian", [True, False])
def test_a_read_only_single_tile_gives_probabilities_the_caller_owns(gaussian):
    volume = _volume((7, 14, 15), 6)
    patch, kept = (8, 16, 16), []
    read_only = _read_only(_random_softmax(5), kept)

    reference, n_tiles = old_predict_probabilities(volume, _random_softmax(5), patch,
                                                   gaussian=gaussian)
    blended = sw.blend_tiles(volume, read_only, patch, gaussian=gaussian,
                             keep_probabilities=True)
    assert n_tiles == blended.n_tiles == 1
    np.testing.assert_array_equal(blended.probabilities, reference)
    np.testing.assert_array_equal(blended.labels, np.argmax(reference, axis=-1))
    assert blended.probabilities.flags.writeable
    blended.probabilities[...] = 0   # the network's output it came from stays as it was
    assert len(kept) == 1 and np.array_equal(*kept[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("slab_bytes", [1, 3 * 30 * 29 * 5 * 4, 2**30])
def test_a_single_tile_weighted_by_slabs_gives_the_whole_tiles_labels(monkeypatch, dtype,
                                                                       slab_bytes):
    """Labels and winner's values of the slab-wise weighting (one slice, three slices, the
    whole tile at a time) equal those of weighting the whole tile, and the network's output
    is left as it was."""
    volume = _volume((7, 30, 29), 8)
    outputs = []
    read_only = _read_only(_random_softmax(6, n_classes=5), outputs, dtype)

    whole = sw.blend_tiles(volume, read_only, (8, 32, 32), keep_probabilities=True)
    monkeypatch.setattr(sw, "SLAB_BYTES", slab_bytes)
    slabs = sw.blend_tiles(volume, read_only, (8, 32, 32))
    assert slabs.n_tiles == whole.n_tiles == 1 and slabs.probabilities is None
    np.testing.assert_array_equal(slabs.labels, whole.labels)
    np.testing.assert_array_equal(slabs.top, whole.top)
    assert slabs.labels.dtype == np.int16 and slabs.top.dtype == np.float32
    assert all(np.array_equal(a, b) for a, b in outputs)
    reference, _ = old_predict_probabilities(volume, _random_softmax(6, n_classes=5),
                                             (8, 32, 32))
    if dtype == np.float32:
        np.testing.assert_array_equal(slabs.labels, np.argmax(reference, axis=-1))


def test_a_part_tiled_along_z_accumulates_one_tile_deep():
    import hashlib
    import tracemalloc

    volume = _volume((128, 48, 48), 5)
    patch = (8, 48, 48)
    n_classes = 8
    network, outputs = _random_softmax(2, n_classes), {}

    def recorded(batch):   # the outputs made beforehand: only the merger's memory is traced
        key = hashlib.sha1(batch.tobytes()).hexdigest()
        if key not in outputs:
            outputs[key] = network(batch)
            outputs[key].setflags(write=False)   # reused: the merger must not weight it
        return outputs[key]

    sw.blend_tiles(volume, recorded, patch)
    peaks = {}
    for name in ("old", "new"):
        tracemalloc.start()
        if name == "old":
            probabilities, _ = old_predict_probabilities(volume, recorded, patch)
            np.argmax(probabilities, axis=-1)
        else:
            sw.blend_tiles(volume, recorded, patch)
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    full_accumulator = volume.size * n_classes * 4
    assert peaks["old"] > full_accumulator
    # an 8-slice window of the 128 slices, a tile, labels and the winner's probability
    assert peaks["new"] < 0.4 * full_accumulator, peaks


def test_multi_tile_parts_through_the_network_give_the_old_labels(tiny_unet):
    model, stride = tiny_unet
    volume = _volume((20, 48, 40), 21)
    config = InferenceConfig(batch_size=2)
    new = inference.apply_segmentation_network(volume, model, N_CLASSES, config, stride,
                                               patch=(8, 32, 16), largest_component=False)
    old, n_tiles = old_predict_probabilities(volume, old_predict(model), (8, 32, 16),
                                             overlap=config.overlap, batch_size=2)
    assert new.n_tiles == n_tiles > 1 and new.probabilities is None
    np.testing.assert_array_equal(new.labels, np.argmax(old, axis=-1).astype(np.int16))
    top = old.max(axis=-1)[new.labels > 0]
    assert new.confidence == {"mean_max_probability": round(float(top.mean()), 4),
                              "voxels": int(top.size)}


def test_the_forward_pass_is_traced_without_autograph(tiny_unet):
    """AutoGraph would convert the traced function and everything it calls, the logging
    module behind its debug line included (3-4 s per trace, measured); a Keras network has
    no Python control flow on tensors to convert."""
    model, _ = tiny_unet
    forward = inference.forward_function(model)
    assert forward.traced._autograph is False
    out = forward(np.zeros((1, 8, 32, 32, 1), np.float32))
    assert out.shape == (1, 8, 32, 32, N_CLASSES) and inference.tracing_count(model) >= 1
