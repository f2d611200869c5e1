"""The MONAI-free helpers of benchmarks/bench_monai.py: the overlap that makes MONAI's tile
layout legseg's, the end padding and the channels-first adapter. MONAI is a benchmark-only
extra that CI does not install; the benchmark also checks its layout against MONAI's own
``dense_patch_slices`` when it runs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from legseg_tf.sliding_window import tile_starts

_SPEC = importlib.util.spec_from_file_location(
    "bench_monai", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_monai.py")
bench_monai = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench_monai)


def test_monai_starts_follow_monai_steps_and_clamp_the_last_tile():
    # MONAI 1.5.1: roi 96, overlap 0.5 -> step int(96 * 0.5) = 48 on a 148-voxel axis
    assert bench_monai.monai_starts(148, 96, 48) == [0, 48, 52]
    assert bench_monai.monai_starts(96, 96, 48) == [0]
    assert bench_monai.monai_starts(192, 96, 48) == [0, 48, 96]


@pytest.mark.parametrize("patch", [32, 96, 112, 160])
@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_matching_overlap_reproduces_legseg_starts_or_says_it_cannot(patch, overlap):
    matched = 0
    for size in range(patch - 5, 3 * patch + 40):
        starts = tile_starts(max(size, patch), patch, overlap)
        monai_overlap = bench_monai.matching_overlap(size, patch, starts)
        steps = np.diff(starts)
        even = len(starts) == 1 or bool(np.all(steps[:-1] == steps[0]) and steps[-1] <= steps[0])
        assert (monai_overlap is not None) == even, (size, starts)
        if monai_overlap is not None:
            matched += 1
            assert 0.0 <= monai_overlap < 1.0
            interval = int(patch * (1 - monai_overlap)) if size > patch else patch
            assert bench_monai.monai_starts(max(size, patch), patch, interval) == starts
    assert matched > 10


def test_matching_overlap_on_the_thigh_parts():
    starts = tile_starts(148, 96, 0.5)
    assert starts == [0, 26, 52]
    assert int(96 * (1 - bench_monai.matching_overlap(148, 96, starts))) == 26
    assert bench_monai.matching_overlap(200, 96, tile_starts(200, 96, 0.5)) is None  # 35, 34, 35


def test_pad_end_pads_only_at_the_end():
    volume = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) + 1
    padded = bench_monai.pad_end(volume, (4, 3, 2))
    assert padded.shape == (4, 3, 4)
    assert np.array_equal(padded[:2], volume) and not padded[2:].any()
    assert bench_monai.pad_end(volume, (2, 3, 4)) is volume


def test_channels_first_predictor_moves_the_class_axis():
    def predict(tiles):  # (b, z, y, x, 1) -> (b, z, y, x, 2)
        assert tiles.shape[-1] == 1
        return np.concatenate([tiles, 2 * tiles], axis=-1)

    call = bench_monai.channels_first_predictor(predict)
    batch = np.random.default_rng(0).random((2, 1, 3, 4, 5), dtype=np.float32)
    output = call(batch)
    assert output.shape == (2, 2, 3, 4, 5) and output.flags.c_contiguous
    assert output.dtype == np.float32
    assert np.array_equal(output[:, 0], batch[:, 0]) and np.array_equal(output[:, 1], 2 * batch[:, 0])
    with pytest.raises(ValueError, match="expected"):
        call(np.zeros((1, 2, 3, 4, 5), np.float32))
