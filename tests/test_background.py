"""The anatomy check of a single-region volume runs beside the networks, at the lowest CPU
priority, and gives exactly the report of running it before them."""
from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest

from legseg_tf import anatomy, background, segmenter
from legseg_tf.masking import apply_mask, body_mask
from legseg_tf.segmenter import QMRIToolsSegmenter, RegionNetwork
from tests.test_anatomy import phantom


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


@pytest.mark.parametrize("run", [background.submit, background.run_now],
                         ids=["submit", "run_now"])
def test_an_error_in_background_work_reaches_the_caller(run):
    def fails(value):
        raise ArithmeticError(f"bad {value}")

    with pytest.raises(ArithmeticError, match="bad 3"):
        run(fails, 3).result(timeout=30)
    assert run(divmod, 7, value := 2).result(timeout=30) == (3, 1) and value == 2


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
    not. Labels, report and the warnings' order are those of the serial run, and the check
    ran on the background worker while the networks ran on the caller's thread."""
    volume, spacing = phantom(1.5, nz=5, right=kind, left=kind)
    ran_on = []
    levels = segmenter.anatomy_levels

    def recorded(*args, **kwargs):
        ran_on.append(threading.current_thread().name)
        return levels(*args, **kwargs)

    monkeypatch.setattr(segmenter, "anatomy_levels", recorded)
    results, network_threads = {}, []
    for beside in (False, True):
        seg = QMRIToolsSegmenter("upper", {"upper_leg": _network(network_threads)},
                                 background_checks=beside)
        # a midline outside the image adds a warning after the check's (order kept)
        results[beside] = seg.segment(volume, spacing, body_part="THIGH",
                                      midline_column=-500.0)
    assert ran_on[0] == threading.current_thread().name
    assert ran_on[1].startswith("legseg-background")
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
    expected = levels(masked, spacing, cut=serial["split"]["cut_column"])
    assert serial["anatomy"] == {**expected.to_report(), "body_part_examined": "THIGH"}


def test_an_error_in_the_check_fails_the_image(monkeypatch):
    volume, spacing = phantom(1.5, nz=3, right="thigh", left="thigh")

    def broken(*args, **kwargs):
        raise RuntimeError("anatomy check failed")

    monkeypatch.setattr(segmenter, "anatomy_levels", broken)
    seg = QMRIToolsSegmenter("upper", {"upper_leg": _network([])})
    with pytest.raises(RuntimeError, match="anatomy check failed"):
        seg.segment(volume, spacing)
