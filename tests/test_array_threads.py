"""Array stages shared out over threads give exactly the serial result, whatever the thread
count; the pool never runs nested work on itself, and the background worker keeps its work."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy import ndimage

from legseg_tf import array_threads, background, masking, postprocessing
from legseg_tf import sliding_window as sw
from legseg_tf.normalization import N_BINS, uniform_normalise
from tests.reference_merge import old_predict_probabilities


@pytest.fixture
def thread_counts(monkeypatch):
    """Thread counts to compare (1 = the serial reference), with pieces small enough that
    small test arrays are split; the count is reset afterwards."""
    monkeypatch.setattr(array_threads, "MIN_ELEMENTS", 64)
    yield (1, 2, 3)
    array_threads.set_threads(None)


def _under_each(counts, function):
    results = []
    for count in counts:
        array_threads.set_threads(count)
        results.append(function())
    return results


def _assert_all_equal(results):
    first = results[0]
    for other in results[1:]:
        if isinstance(first, tuple):
            for a, b in zip(first, other):
                np.testing.assert_array_equal(a, b)
                assert a.dtype == b.dtype
        else:
            np.testing.assert_array_equal(first, other)
            assert first.dtype == other.dtype


def test_run_all_keeps_the_order_and_spreads_items_over_threads(thread_counts):
    array_threads.set_threads(2)
    names = array_threads.run_all(lambda i: (i * i, threading.current_thread().name), range(7))
    assert [square for square, _ in names] == [i * i for i in range(7)]
    assert {name for _, name in names} == {threading.current_thread().name,
                                          next(n for _, n in names if n.startswith("legseg-array"))}
    array_threads.set_threads(1)
    assert {n for _, n in array_threads.run_all(
        lambda i: (i, threading.current_thread().name), range(5))} == {
        threading.current_thread().name}


def test_run_all_raises_a_share_s_error_after_every_share_finished(thread_counts):
    array_threads.set_threads(3)
    done = []

    def work(i):
        if i == 4:
            raise ArithmeticError("item 4")
        done.append(i)
        return i

    with pytest.raises(ArithmeticError, match="item 4"):
        array_threads.run_all(work, range(9))
    # item i is in share i % 3: share 1 stops at its error (7 is not run), the others finish
    assert sorted(done) == [0, 1, 2, 3, 5, 6, 8]


def test_nested_work_on_a_pool_thread_or_the_background_worker_stays_on_that_thread(
        thread_counts):
    array_threads.set_threads(2)
    inner = array_threads.run_all(lambda _: array_threads.threads(), range(4))
    # the caller's own share sees 2 threads, the pool thread's share 1 (no work handed to
    # a pool whose thread is waiting on it)
    assert sorted(inner) == [1, 1, 2, 2]
    assert background.submit(array_threads.threads).result(timeout=30) == 1


def test_pieces_cover_the_range_in_order_one_per_thread_and_none_too_small(monkeypatch):
    monkeypatch.setattr(array_threads, "MIN_ELEMENTS", 100)
    array_threads.set_threads(3)
    try:
        for length, per_index in ((10, 100), (7, 1000), (1, 10**6), (0, 5), (10, 5), (31, 60)):
            pieces = array_threads.pieces(length, per_index)
            covered = [i for piece in pieces for i in range(piece.start, piece.stop)]
            assert covered == list(range(length))
            assert 1 <= len(pieces) <= 3
            if len(pieces) > 1:
                assert all((p.stop - p.start) * per_index >= 100 // 2 for p in pieces)
        assert len(array_threads.pieces(10, 5)) == 1   # 50 elements: not worth a thread
        assert len(array_threads.pieces(30, 100)) == 3
    finally:
        array_threads.set_threads(None)
    with pytest.raises(ValueError, match=">= 1"):
        array_threads.set_threads(0)


def test_single_tile_and_streaming_merges_are_identical_for_every_thread_count(thread_counts):
    rng = np.random.default_rng(3)
    volume = rng.normal(size=(11, 30, 29)).astype(np.float32)
    raw = rng.dirichlet(np.ones(4), size=(8, 16, 16)).astype(np.float32)
    for patch, keep in (((12, 32, 32), False), ((12, 32, 32), True), ((8, 16, 16), True),
                        ((8, 16, 16), False)):
        tile = raw if patch == (8, 16, 16) else rng.dirichlet(np.ones(4), size=patch).astype(
            np.float32)

        def predict(batch, tile=tile):
            return np.repeat(tile[None], len(batch), axis=0)

        results = _under_each(thread_counts, lambda: sw.blend_tiles(
            volume, predict, patch, keep_probabilities=keep))
        _assert_all_equal([(r.labels, r.top) for r in results])
        reference, _ = old_predict_probabilities(volume, predict, patch)
        np.testing.assert_array_equal(results[1].labels, np.argmax(reference, axis=-1))
        if keep:
            for result in results:
                np.testing.assert_array_equal(result.probabilities, reference)


def test_a_single_tile_weighted_by_slabs_on_several_threads_keeps_its_labels(monkeypatch,
                                                                             thread_counts):
    rng = np.random.default_rng(4)
    output = rng.dirichlet(np.ones(6), size=(9, 20, 18)).astype(np.float32)
    weights = sw.gaussian_importance_map((9, 20, 18))
    expected = sw._slab_winners(sw._weigh(output, weights))
    for slab_bytes in (1, 2 * 20 * 18 * 6 * 4, 10**9):
        monkeypatch.setattr(sw, "SLAB_BYTES", slab_bytes)
        _assert_all_equal([expected] + _under_each(
            thread_counts, lambda: sw._weighted_winners(output, weights)))


def test_the_gaussian_passes_equal_scipy_s_for_every_thread_count(thread_counts):
    rng = np.random.default_rng(5)
    for shape in ((13, 21, 17), (3, 40, 9), (1, 5, 5)):
        image = (rng.random(shape) > 0.55).astype(np.float32)
        expected = ndimage.gaussian_filter(image, sigma=1.0, truncate=2.0, mode="nearest")
        _assert_all_equal([expected] + _under_each(
            thread_counts, lambda: masking.gaussian_filter(image, 1.0, 2.0)))


def test_the_histogram_and_percentile_shortcuts_equal_numpy_s(thread_counts):
    rng = np.random.default_rng(6)
    for size, zeros in ((1, 0.0), (2, 0.5), (57, 0.0), (500, 0.74), (4000, 0.99), (300, 1.0)):
        for dtype in (np.float32, np.float64):
            values = rng.gamma(2.0, 3.0, size).astype(dtype)
            values[rng.random(size) < zeros] = 0
            for q in (0, 1, 50, 99, 100):
                assert masking._percentile_of_nonnegative(values, q) == float(
                    np.percentile(values, q)), (size, zeros, dtype, q)
            lo, hi = float(values.min()), float(values.max())
            if hi <= lo:
                continue
            counts, edges = np.histogram(values.astype(np.float64), bins=256, range=(lo, hi))
            for result_counts, result_edges in _under_each(
                    thread_counts, lambda: masking._histogram(values, lo, hi, 256)):
                np.testing.assert_array_equal(result_counts, counts)
                np.testing.assert_array_equal(result_edges, edges)


def _uniform_reference(patch):
    """The Uniform normalisation as the module docstring states it, on every voxel in
    float64 (no shortcut for the background)."""
    values = np.asarray(patch, dtype=np.float64)
    lo, hi = values.min(), values.max()
    if lo == hi:
        return np.asarray(patch, dtype=np.float32)
    scaled = (values - lo) / (hi - lo)
    counts = np.bincount(np.minimum((scaled[scaled < 1] * N_BINS).astype(np.int64), N_BINS - 1),
                         minlength=N_BINS).astype(np.float64)
    counts[0] = 0
    if counts.sum() == 0:
        return np.asarray(patch, dtype=np.float32)
    cdf = np.cumsum(counts) / counts.sum()
    index = np.clip(np.floor((N_BINS - 1) * scaled + 1), 1, N_BINS).astype(np.int64) - 1
    return cdf[index].astype(np.float32)


def test_uniform_normalisation_equals_the_recipe_for_every_thread_count(thread_counts):
    rng = np.random.default_rng(7)
    for case in range(6):
        patch = rng.gamma(2.0, 3.0, (7, 13, 11))
        patch[rng.random(patch.shape) < 0.6] = 0
        if case == 1:
            patch = np.round(patch).astype(np.int16)
        if case == 2:
            patch = (patch - 4.0).astype(np.float32)
        if case == 3:
            patch[:] = 2.5
        if case == 4:
            patch = np.where(patch > 0, 7.0, 0.0)   # two values: only the top one is binned
        expected = _uniform_reference(patch)
        _assert_all_equal([expected] + _under_each(thread_counts,
                                                   lambda: uniform_normalise(patch)))


def test_component_clean_up_per_label_is_identical_for_every_thread_count(thread_counts):
    rng = np.random.default_rng(8)
    labels = ndimage.median_filter(rng.integers(0, 7, (10, 24, 22)), size=2).astype(np.int16)
    own = np.arange(22) < 13
    _assert_all_equal(_under_each(thread_counts, lambda: postprocessing.largest_component_per_label(
        labels)))
    _assert_all_equal(_under_each(
        thread_counts, lambda: postprocessing.largest_own_side_component_per_label(
            labels, own, sideless={3})))


def test_the_body_mask_is_identical_for_every_thread_count(thread_counts):
    rng = np.random.default_rng(9)
    zz, yy, xx = np.mgrid[:12, :48, :64]
    volume = np.zeros((12, 48, 64), dtype=np.float32)
    for cx in (18, 46):
        volume[((yy - 24) ** 2 + (xx - cx) ** 2) < 12**2] = 200.0
    volume *= rng.gamma(5.0, 0.2, volume.shape).astype(np.float32)
    volume[:, 20:23, 16:19] = 0   # a hole to fill
    _assert_all_equal(_under_each(thread_counts, lambda: masking.body_mask(volume)))
    _assert_all_equal(_under_each(thread_counts, lambda: masking.normalize_data(volume)))


def test_max_threads_bounds_the_threads_used(thread_counts):
    array_threads.set_threads(3)
    names = array_threads.run_all(lambda _: threading.current_thread().name, range(9),
                                  max_threads=1)
    assert set(names) == {threading.current_thread().name}
    names = array_threads.run_all(lambda _: threading.current_thread().name, range(9),
                                  max_threads=2)
    assert len(set(names)) == 2


def test_labels_too_large_to_clean_side_by_side_are_cleaned_one_at_a_time(monkeypatch,
                                                                         thread_counts):
    """The labels cleaned at once are bounded by their working memory: with room for one
    box, one thread cleans them all; the result is the same either way."""
    rng = np.random.default_rng(10)
    labels = ndimage.median_filter(rng.integers(0, 5, (8, 20, 20)), size=2).astype(np.int16)
    array_threads.set_threads(3)
    seen = []
    label = ndimage.label

    def recording_label(*args, **kwargs):
        seen.append(threading.current_thread().name)
        return label(*args, **kwargs)

    monkeypatch.setattr(postprocessing.ndimage, "label", recording_label)
    wide = postprocessing.largest_component_per_label(labels)
    assert len(set(seen)) > 1
    seen.clear()
    monkeypatch.setattr(postprocessing, "LABEL_WORK_BYTES", 1)   # not even one box fits
    narrow = postprocessing.largest_component_per_label(labels)
    assert set(seen) == {threading.current_thread().name}
    np.testing.assert_array_equal(wide, narrow)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_threads(thread_counts):
    """The parent's pool and background worker threads do not exist in a forked child: its
    array stages and background work must not wait on them forever."""
    import os
    import signal

    array_threads.set_threads(2)
    array_threads.run_all(abs, range(4))            # the parent's pool exists
    background.submit(abs, 1).result(timeout=30)   # and its background worker
    pid = os.fork()
    if pid == 0:   # the child: exit status 0 only if both kinds of work complete
        ok = False
        try:
            signal.alarm(20)   # a child waiting on threads it does not have dies here
            ok = array_threads.run_all(abs, range(-4, 0)) == [4, 3, 2, 1]
            ok = ok and background.submit(abs, -2).result(timeout=20) == 2
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_merging_parts_is_identical_for_every_thread_count(monkeypatch, thread_counts):
    """Overlapping parts whose labels meet: the lowest label still wins every overlap,
    whether the labels' components are found side by side or one at a time."""
    from legseg_tf.merge import merge_parts

    rng = np.random.default_rng(12)
    crops = []
    for start in ((0, 0, 0), (2, 5, 9), (1, 3, 4)):
        extent = (6, 14, 15)
        labels = ndimage.median_filter(rng.integers(0, 6, extent), size=2).astype(np.int16)
        crops.append((labels, tuple(slice(s, s + n) for s, n in zip(start, extent))))
    shape = (9, 20, 25)
    results = _under_each(thread_counts, lambda: merge_parts(crops, shape))
    _assert_all_equal(results)
    monkeypatch.setattr(postprocessing, "LABEL_WORK_BYTES", 1)
    _assert_all_equal([results[0]] + _under_each(thread_counts, lambda: merge_parts(crops, shape)))
    assert len(np.unique(results[0])) > 3
