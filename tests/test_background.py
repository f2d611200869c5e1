"""The anatomy check of a single-region volume runs beside the networks, at the lowest CPU
priority, and gives exactly the report of running it before them."""
from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest

from legseg_tf import anatomy, array_threads, background, segmenter
from legseg_tf.masking import apply_mask, body_mask
from legseg_tf.segmenter import QMRIToolsSegmenter, RegionNetwork
from tests.helpers import phantom


def _worker_identity():
    return (threading.current_thread().name,
            os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))


def test_the_worker_is_one_thread_at_the_lowest_priority_and_the_caller_keeps_its_own():
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    name, nice = background.submit(_worker_identity).result(timeout=30)
    again, _ = background.submit(_worker_identity).result(timeout=30)
    assert name.startswith("legseg-background") and again == name
    if sys.platform.startswith("linux"):
        assert nice == background.NICE
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_an_error_in_background_work_reaches_the_caller():
    def fails(value):
        raise ArithmeticError(f"bad {value}")

    with pytest.raises(ArithmeticError, match="bad 3"):
        background.submit(fails, 3).result(timeout=30)
    assert background.submit(divmod, 7, 2).result(timeout=30) == (3, 1)


@pytest.fixture
def one_array_thread():
    """The caller alone finishes a shared map (no array pool thread joins it)."""
    array_threads.set_threads(1)
    yield
    array_threads.set_threads(None)


def test_a_shared_map_is_finished_by_the_caller_each_item_once_in_order(one_array_thread):
    threads, started, release = [], threading.Event(), threading.Event()

    def function(item):
        threads.append((item, threading.current_thread().name))
        if threading.current_thread() is threading.main_thread():
            release.set()
        else:                    # the worker holds its first item until the caller took one
            started.set()
            release.wait(timeout=30)
        return item * item

    shared = background.SharedMap(function, range(12))
    assert started.wait(timeout=30)
    assert shared.finish() == [i * i for i in range(12)]
    assert sorted(item for item, _ in threads) == list(range(12))   # each item exactly once
    names = {name for _, name in threads}
    assert threading.main_thread().name in names
    assert any(name.startswith("legseg-background") for name in names)


def test_a_busy_worker_does_not_hold_the_caller_up(one_array_thread):
    """Work queued behind a blocked worker: the caller reads every item itself and the
    worker's share is withdrawn (a starved low-priority thread delays nothing)."""
    blocker = threading.Event()
    busy = background.submit(blocker.wait, 30)
    try:
        threads = []
        shared = background.SharedMap(
            lambda item: threads.append(threading.current_thread().name) or item + 1, range(5))
        assert shared.finish() == [1, 2, 3, 4, 5]
        assert set(threads) == {threading.current_thread().name}
    finally:
        blocker.set()
        busy.result(timeout=30)


def test_the_items_left_are_shared_out_over_the_array_threads():
    """With the worker blocked, the caller and an array pool thread read the items (each
    waits until the other has taken one), each item once, results in order."""
    array_threads.set_threads(2)
    blocker, both = threading.Event(), threading.Barrier(2, timeout=30)
    busy = background.submit(blocker.wait, 30)
    try:
        threads = []

        def function(item):
            threads.append(threading.current_thread().name)
            if len(set(threads)) < 2 or item < 2:
                both.wait()
            return item * 3

        assert background.SharedMap(function, range(8)).finish() == [i * 3 for i in range(8)]
        assert len(threads) == 8
        assert set(threads) == {threading.current_thread().name,
                                next(t for t in threads if t.startswith("legseg-array"))}
    finally:
        blocker.set()
        busy.result(timeout=30)
        array_threads.set_threads(None)


def test_shared_map_errors_and_cancel(one_array_thread):
    def odd_fails(item):
        if item % 2:
            raise ValueError(f"item {item}")
        return item

    with pytest.raises(ValueError, match="item 1"):
        background.SharedMap(odd_fails, range(4), beside=False).finish()
    with pytest.raises(ValueError, match="item"):
        background.SharedMap(odd_fails, range(4)).finish()
    blocker = threading.Event()
    busy = background.submit(blocker.wait, 30)
    try:
        seen = []
        shared = background.SharedMap(seen.append, range(4))
        shared.cancel()                                           # nothing handed out after
        assert shared.finish() == [None] * 4 and seen == []
    finally:
        blocker.set()
        busy.result(timeout=30)


def test_reading_through_the_mask_equals_reading_the_masked_copy():
    volume, spacing = phantom(1.5, nz=4, right="thigh", left="thigh")
    volume[:, :, ::37] += 60.0                        # bright lines the mask partly removes
    mask = body_mask(volume)
    masked = apply_mask(volume, mask)
    expected = anatomy.anatomy_levels(masked, spacing)
    threshold = anatomy.tissue_threshold(masked)
    assert threshold == anatomy.tissue_threshold(volume, mask=mask)
    through = anatomy.anatomy_levels(volume, spacing, mask=mask)
    given = anatomy.anatomy_levels(volume, spacing, cut=expected.cut, mask=mask,
                                   threshold=threshold)
    assert repr(through) == repr(expected) == repr(given)
    assert any(level is not None for level in expected.levels)
    with pytest.raises(ValueError, match="mask shape"):
        anatomy.anatomy_levels(volume, spacing, mask=mask[1:])


def _network(calls):
    def predict(part):
        calls.append(threading.current_thread().name)
        return np.where(part > 0, 1, 0).astype(np.int32)

    return RegionNetwork("upper_leg", "fake-upper", "0" * 64, "N5_UpperLeg", predict)


@pytest.mark.parametrize("kind", ["calf", "thigh"])
def test_beside_the_networks_gives_the_report_of_before_them(monkeypatch, kind):
    """A calf segmented as ``--region upper`` warns (from the anatomy check); a thigh does
    not. Labels, report and the warnings' order are those of the serial run; every slice is
    read once, by the background worker or by the caller after the networks."""
    volume, spacing = phantom(1.5, nz=5, right=kind, left=kind)
    reads = []
    reader = segmenter.slice_reader

    def recording(*args, **kwargs):
        read = reader(*args, **kwargs)

        def recorded(z):
            reads[-1].append((z, threading.current_thread().name))
            return read(z)
        return recorded

    monkeypatch.setattr(segmenter, "slice_reader", recording)
    results, network_threads = {}, []
    for beside in (False, True):
        reads.append([])
        seg = QMRIToolsSegmenter("upper", {"upper_leg": _network(network_threads)},
                                 background_checks=beside)
        # a midline outside the image adds a warning after the check's (order kept)
        results[beside] = seg.segment(volume, spacing, body_part="THIGH",
                                      midline_column=-500.0)
    assert [z for z, _ in reads[0]] == list(range(5))
    assert {name for _, name in reads[0]} == {threading.current_thread().name}
    assert sorted(z for z, _ in reads[1]) == list(range(5))
    assert set(network_threads) == {threading.current_thread().name}
    serial, beside = (results[False].report.to_dict(), results[True].report.to_dict())
    assert "anatomy_wait" in serial.pop("timings_s") and "anatomy_wait" in beside.pop("timings_s")
    assert beside == serial
    np.testing.assert_array_equal(results[True].labels, results[False].labels)
    warned = [w for w in serial["warnings"] if "check the --region" in w]
    assert bool(warned) == (kind == "calf")
    assert "outside the image" in serial["warnings"][-1]
    assert serial["warnings"][:-1] == warned
    # the anatomy entry is that of the masked volume, as before the check moved
    masked = apply_mask(volume, body_mask(volume))
    expected = anatomy.anatomy_levels(masked, spacing, cut=serial["split"]["cut_column"])
    assert serial["anatomy"] == {**expected.to_report(), "body_part_examined": "THIGH"}


def test_an_error_in_the_check_fails_the_image(monkeypatch):
    volume, spacing = phantom(1.5, nz=3, right="thigh", left="thigh")

    def broken(*args, **kwargs):
        def read(z):
            raise RuntimeError("anatomy check failed")
        return read

    monkeypatch.setattr(segmenter, "slice_reader", broken)
    seg = QMRIToolsSegmenter("upper", {"upper_leg": _network([])})
    with pytest.raises(RuntimeError, match="anatomy check failed"):
        seg.segment(volume, spacing)
