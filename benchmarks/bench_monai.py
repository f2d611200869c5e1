"""legseg's sliding-window merger against MONAI's ``sliding_window_inference``: same network,
same tiles, same weights, one process.

Usage (from the repository root, in an environment with legseg, TensorFlow and the ``bench``
extra, i.e. MONAI and a CPU PyTorch; see benchmarks/README.md):

    python benchmarks/bench_monai.py [--volume PATH] [--repeats N] [--patch ZxYxX]
                                     [--overlap F] [--threads N] [--skip-default]

The network is QMRITools-sized (features 32-64-128-192-320, 22 classes, random weights: speed
does not depend on the weights), run through legseg's ``make_predict`` (per-tile Uniform
normalisation, the traced-once forward pass). MONAI gets that same callable behind an adapter
(torch (b, 1, z, y, x) -> NumPy (b, z, y, x, 1) -> ``predict`` -> torch (b, C, z, y, x)). The
inputs are the leg parts of the real thigh (what the segmenter hands to the upper-leg network),
cropped to their bounding box as ``apply_segmentation_network`` does. Two configurations:

* ``fixed``: a forced ``--patch`` (default 32 x 96 x 96, several tiles per part) with
  ``--overlap``. legseg spaces its tiles evenly (nnU-Net's rule); MONAI steps by
  ``int(roi * (1 - overlap))`` and clamps the last tile to the border. Per axis, MONAI gets the
  overlap whose step reproduces legseg's tile starts (checked against MONAI's own
  ``dense_patch_slices``; the run stops when no step can).
* ``default``: legseg's own patch from the memory budget in this process, MONAI with the same
  ``roi_size``. PyTorch and MONAI make this process 0.25 GB larger than the app's, so its
  budget may give smaller tiles than the app's (32 x 144 x 160, two tiles per part of the
  thigh, instead of one);
* ``one-tile``: the part rounded up to the network's stride, one tile per part (the app's own
  choice for the thigh under its default budget; legseg's single-tile path).

Methods (all with ``sw_batch_size`` / ``batch_size`` 1):

* ``legseg``: ``sliding_window.blend_tiles``, labels and the winner's probability (what
  ``apply_segmentation_network`` uses);
* ``legseg+p``: the same, also keeping every class's blended probabilities;
* ``monai``: ``sliding_window_inference`` on the part padded at the end to the patch (the
  tiles legseg runs; MONAI itself pads both sides) with ``roi_weight_map`` = legseg's Gaussian
  importance map, then an arg-max over the classes (torch) for the labels;
* ``monai-own``: MONAI as shipped: its own padding, tile layout (the same overlap) and
  ``mode="gaussian"``, ``sigma_scale=0.125`` (legseg's sigma, but MONAI neither scales the
  map to peak 1 nor clamps it as legseg does), for the agreement a plain MONAI user would get.

Two networks, each with the same table: (1) a stand-in that returns a precomputed softmax per
tile shape (``--stand-in-repeats`` rounds), so that a method's time is nearly all its merger's
(``monai-own``'s agreement means nothing there: every tile gets the same random output), and (2) the
QMRITools-sized network (``--repeats`` rounds; ``--skip-network`` leaves it out). Printed per
part and method: medians over the rounds (methods alternate, their order rotating each round)
of the wall time, the time inside the network, the rest of the predictor callable
(normalisation, and for MONAI the torch/NumPy adapter with its channels-last to channels-first
copy), the merger (wall less the callable: tiling, weighting, accumulation, division, arg-max),
the peak resident-set growth over the call (sampled every 5 ms), and against ``legseg+p``
(first run of each method): the fraction of identical arg-max labels and the maximum absolute
difference of the blended probabilities; whether ``legseg+p`` run twice gives identical
outputs (the network's own determinism); the load average before and after; the versions.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_VOLUME = REPO.parent / "shared" / "data" / "qmritools" / "scripts_test_data" / "test.nii.gz"
FEATURES = (32, 64, 128, 192, 320)
N_CLASSES = 22  # N5_UpperLeg: 21 structures + background
METHODS = ("legseg", "legseg+p", "monai", "monai-own")


def monai_starts(size: int, patch: int, interval: int) -> list[int]:
    """Tile starts along one axis as MONAI 1.5's ``dense_patch_slices`` places them (an image
    at least ``patch`` long): steps of ``interval``, as many as needed to reach the end, the
    last one clamped to ``size - patch``."""
    if size <= patch:
        return [0]
    steps = -(-(size - patch) // interval)
    return [min(i * interval, size - patch) for i in range(steps + 1)]


def matching_overlap(size: int, patch: int, starts: list[int]) -> float | None:
    """MONAI ``overlap`` along one axis that reproduces legseg's tile ``starts`` on an axis of
    ``size`` voxels padded to at least ``patch``; None when no MONAI step can (uneven steps).

    MONAI's step is ``int(patch * (1 - overlap))``; the overlap returned puts that product half
    a voxel above the wanted step, so rounding cannot drop it below.
    """
    if len(starts) == 1:
        return 0.0 if max(size, patch) == patch else None
    step = starts[1]
    if step < 1 or monai_starts(max(size, patch), patch, step) != list(starts):
        return None
    return 1.0 - (step + 0.5) / patch


def pad_end(volume: np.ndarray, patch: tuple[int, ...]) -> np.ndarray:
    """(z, y, x) volume zero-padded at the end of each axis to at least ``patch`` (as legseg's
    merger pads; MONAI pads both sides)."""
    pad = [(0, max(p - s, 0)) for s, p in zip(volume.shape, patch)]
    return np.pad(volume, pad) if any(after for _, after in pad) else volume


def channels_first_predictor(predict: Callable[[np.ndarray], np.ndarray]):
    """``predict`` (NumPy (b, z, y, x, 1) -> (b, z, y, x, C)) as a channels-first NumPy
    callable: (b, 1, z, y, x) -> contiguous (b, C, z, y, x) float32."""

    def call(batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.ndim != 5 or batch.shape[1] != 1:
            raise ValueError(f"expected (b, 1, z, y, x) tiles, got shape {batch.shape}")
        output = np.asarray(predict(np.moveaxis(batch, 1, -1)), dtype=np.float32)
        return np.ascontiguousarray(np.moveaxis(output, -1, 1))

    return call


class PeakRSS:
    """Peak resident-set growth over a ``with`` block, sampled from /proc/self/statm (bytes)."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0

    def _rss(self) -> int:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * self.page

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.growth = self.peak - self.start


class Timed:
    """A callable wrapped to add its seconds to ``seconds``."""

    def __init__(self, function):
        self.function, self.seconds = function, 0.0

    def __call__(self, *args):
        started = time.perf_counter()
        try:
            return self.function(*args)
        finally:
            self.seconds += time.perf_counter() - started


def _trim() -> None:
    """Hand freed heap memory back to the system, so that each call's RSS growth is its own."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def leg_parts(volume_path: Path) -> list[np.ndarray]:
    """The upper-leg network's inputs for the real thigh, cropped to their bounding boxes."""
    from legseg_tf import nifti_io
    from legseg_tf.masking import bounding_box
    from legseg_tf.segmenter import QMRIToolsSegmenter, RegionNetwork

    ras, geometry = nifti_io.load_canonical(volume_path)
    volume, spacing = nifti_io.ras_to_qmri(ras), nifti_io.qmri_spacing(geometry)
    parts = []

    def record(part):
        part = np.asarray(part, dtype=np.float32)
        parts.append(np.ascontiguousarray(part[bounding_box(part)]))
        return np.zeros(part.shape, np.int16)

    network = RegionNetwork("upper_leg", "record", "0" * 64, "N5_UpperLeg", record)
    QMRIToolsSegmenter("upper", {"upper_leg": network}).segment(volume, spacing)
    return parts


class StandIn:
    """Stand-in network: one precomputed softmax per tile shape, returned as a fresh copy, so
    that nearly all of a method's time is its merger's."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.outputs: dict = {}

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape not in self.outputs:
            raw = self.rng.random((*batch.shape[:-1], N_CLASSES), dtype=np.float32)
            self.outputs[batch.shape] = raw / raw.sum(-1, keepdims=True)
        return self.outputs[batch.shape].copy()


class Bench:
    """One network, one part, one patch: the four methods and their measurements."""

    def __init__(self, config, model, stride, part, patch, overlap):
        import torch

        from legseg_tf.sliding_window import gaussian_importance_map, tile_starts

        self.config = config
        self.model, self.stride, self.part = model, stride, part
        self.patch, self.overlap = tuple(patch), overlap
        self.padded = pad_end(part, self.patch)
        starts = [tile_starts(s, p, overlap) for s, p in zip(self.padded.shape, self.patch)]
        overlaps = [matching_overlap(s, p, st) for s, p, st in zip(part.shape, self.patch, starts)]
        if any(o is None for o in overlaps):
            raise SystemExit(f"part {part.shape}, patch {self.patch}: legseg's tile starts "
                             f"{starts} have uneven steps that MONAI cannot reproduce; pick "
                             "another --patch")
        self.monai_overlap = tuple(overlaps)
        self.n_tiles = int(np.prod([len(s) for s in starts]))
        self._check_layout(starts)
        self.weights = torch.from_numpy(np.array(gaussian_importance_map(self.patch)))
        self.rows = {m: [] for m in METHODS}
        self.outputs = {}

    def _check_layout(self, starts) -> None:
        """MONAI's own slices for this input equal legseg's tiles."""
        from monai.data.utils import dense_patch_slices
        from monai.inferers.utils import _get_scan_interval

        shape = self.padded.shape
        interval = _get_scan_interval(shape, self.patch, 3, self.monai_overlap)
        theirs = sorted(tuple(s.start for s in tile)
                        for tile in dense_patch_slices(shape, self.patch, interval))
        ours = sorted(tuple(c) for c in np.array(np.meshgrid(*starts, indexing="ij"))
                      .reshape(3, -1).T.tolist())
        if theirs != ours:
            raise SystemExit(f"MONAI's tiles {theirs} differ from legseg's {ours}")

    def run(self, method: str, keep: str | None = None) -> dict:
        """Run ``method`` once, add its measurements to ``rows``; ``keep``: also store its
        labels and probabilities under that key."""
        import torch
        from monai.inferers import sliding_window_inference

        from legseg_tf.inference import make_predict
        from legseg_tf.sliding_window import blend_tiles

        timer = [0.0]
        predict = make_predict(self.model, timer)
        _trim()
        with PeakRSS() as memory:
            started = time.perf_counter()
            if method.startswith("legseg"):
                callable_ = Timed(predict)
                blended = blend_tiles(self.part, callable_, self.patch, overlap=self.overlap,
                                      stride=self.stride,
                                      keep_probabilities=method == "legseg+p")
                labels, probabilities = blended.labels, blended.probabilities
            else:
                numpy_call = channels_first_predictor(predict)
                callable_ = Timed(lambda batch: torch.from_numpy(numpy_call(batch.numpy())))
                own = method == "monai-own"
                inputs = torch.from_numpy((self.part if own else self.padded)[None, None])
                output = sliding_window_inference(
                    inputs, self.patch, 1, callable_,
                    overlap=self.overlap if own else self.monai_overlap, mode="gaussian",
                    sigma_scale=0.125, roi_weight_map=None if own else self.weights)
                crop = (0, slice(None), *(slice(0, n) for n in self.part.shape))
                output = output[crop]
                labels = torch.argmax(output, dim=0).to(torch.int16).numpy()
                probabilities = output
            wall = time.perf_counter() - started
        row = {"wall": wall, "network": timer[0], "callable": callable_.seconds,
               "rss": memory.growth}
        self.rows[method].append(row)
        if keep:
            if method.startswith("monai"):
                probabilities = np.moveaxis(probabilities.numpy(), 0, -1)
            self.outputs[keep] = (labels, probabilities)
        return row

    def agreement(self, key: str) -> tuple[float, float | None]:
        """(fraction of labels equal to legseg+p's, max |probability difference| or None) of
        the outputs kept under ``key``."""
        labels, probabilities = self.outputs[key]
        ref_labels, ref_probabilities = self.outputs["legseg+p"]
        same = float(np.mean(labels == ref_labels))
        if probabilities is None:
            return same, None
        return same, float(np.max(np.abs(probabilities - ref_probabilities)))


def _median(rows, key):
    return statistics.median(r[key] for r in rows)


def measure(title: str, model, stride, parts, patches, overlap: float, repeats: int) -> None:
    """Warm up, run ``repeats`` alternating rounds and print the table of one network."""
    benches = [Bench(name, model, stride, part, patch, overlap)
               for name, per_part in patches for part, patch in zip(parts, per_part)]
    for bench in benches:  # warm-up: every method once, outputs kept for the agreement
        for method in METHODS:
            bench.run(method, keep=method)
        bench.run("legseg+p", keep="legseg+p again")  # is the network itself deterministic?
        bench.rows = {m: [] for m in METHODS}
    for round_ in range(repeats):
        order = METHODS[round_ % len(METHODS):] + METHODS[:round_ % len(METHODS)]
        for bench in benches:
            for method in order:
                bench.run(method)
    print(f"\n{title}: medians of {repeats} rounds; merger = wall - predictor callable; "
          "agreement with legseg+p (labels identical, max |probability difference|)")
    print(f"{'config':<9} {'part (z,y,x)':<13} {'patch':<10} {'tiles':>5} {'method':<9} "
          f"{'wall s':>7} {'network s':>9} {'norm+adapt s':>12} {'merger s':>8} "
          f"{'peak dRSS MB':>12} {'labels same':>11} {'max |dp|':>9}")
    for bench in benches:
        for method in METHODS:
            rows = bench.rows[method]
            wall, network, callable_ = (_median(rows, k) for k in ("wall", "network", "callable"))
            merger = statistics.median(r["wall"] - r["callable"] for r in rows)
            same, diff = bench.agreement(method)
            print(f"{bench.config:<9} {'x'.join(map(str, bench.part.shape)):<13} "
                  f"{'x'.join(map(str, bench.patch)):<10} {bench.n_tiles:>5d} {method:<9} "
                  f"{wall:>7.3f} {network:>9.3f} {callable_ - network:>12.3f} {merger:>8.3f} "
                  f"{_median(rows, 'rss') / 1e6:>12.0f} {same:>11.6%} "
                  f"{'-' if diff is None else f'{diff:.2e}':>9}")
    for bench in benches:
        same, diff = bench.agreement("legseg+p again")
        print(f"  {bench.config} {bench.part.shape}: legseg+p run twice: labels same {same:.6%}, "
              f"max |dp| {diff:.2e}; MONAI overlap per axis "
              f"{tuple(round(o, 4) for o in bench.monai_overlap)} for legseg's {overlap}")
    print(f"load average: {os.getloadavg()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", type=Path, default=DEFAULT_VOLUME)
    parser.add_argument("--repeats", type=int, default=5,
                        help="rounds of all methods with the network")
    parser.add_argument("--stand-in-repeats", type=int, default=9,
                        help="rounds of all methods with the stand-in network")
    parser.add_argument("--patch", default="32x96x96", help="patch of the fixed configuration")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow and torch threads")
    parser.add_argument("--skip-default", action="store_true",
                        help="leave out legseg's default patch and the one-tile patch")
    parser.add_argument("--skip-network", action="store_true",
                        help="only the stand-in network (the merger's own cost)")
    args = parser.parse_args(argv)
    if not args.volume.exists():
        print(f"volume not found: {args.volume} (pass --volume)", file=sys.stderr)
        return 66
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # MONAI 1.5.1 indexes tensors with lists, which torch 2.13 warns about on every tile
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
    print(f"load average before: {os.getloadavg()}", flush=True)
    import keras
    import monai
    import tensorflow as tf
    import torch

    from legseg_tf.config import InferenceConfig
    from legseg_tf.device import configure_device
    from legseg_tf.inference import apply_segmentation_network
    from legseg_tf.networks.config import UNetConfig, total_stride
    from legseg_tf.networks.unet import build_unet

    device = configure_device("cpu", args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"tensorflow {tf.__version__} ({device['intra_op_threads']} threads), keras "
          f"{keras.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"monai {monai.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs")
    keras.utils.set_random_seed(0)
    net = UNetConfig(n_classes=N_CLASSES, features=FEATURES)
    stride, model = total_stride(net), build_unet(net)
    parts = leg_parts(args.volume)
    fixed = tuple(int(n) for n in args.patch.lower().split("x"))
    patches = [("fixed", [fixed] * len(parts))]
    if not args.skip_default:
        # legseg's own choice from the memory budget (this also traces the network)
        config = InferenceConfig(region="upper", device="cpu")
        patches.append(("default", [
            apply_segmentation_network(part, model, N_CLASSES, config, stride,
                                       largest_component=False).patch for part in parts]))
        print(f"legseg's default patches (memory budget, this process): {patches[-1][1]}")
        # one tile per part (the part rounded up to the stride): what the budget gives in the
        # app's own process, which has not imported PyTorch and MONAI (0.25 GB less resident)
        patches.append(("one-tile", [tuple(-(-n // t) * t for n, t in zip(part.shape, stride))
                                     for part in parts]))
    measure("1. merger only (stand-in network: a precomputed softmax per tile shape)",
            StandIn(), stride, parts, patches, args.overlap, args.stand_in_repeats)
    if not args.skip_network:
        measure(f"2. QMRITools-sized network (features {FEATURES}, {N_CLASSES} classes, "
                "random weights)", model, stride, parts, patches, args.overlap, args.repeats)
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
