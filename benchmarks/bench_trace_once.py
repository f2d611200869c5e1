"""Trace-once and single-tile benchmark: the merger as it was before these changes against now.

Usage (from the repository root, with the project's environment):

    python benchmarks/bench_trace_once.py [--volume PATH] [--threads N] [--small] [--repeats N]

Two measurements, both printed as before/after ratios of one run:

1. **Per-part merge cost** (no network: a stand-in returns a precomputed softmax, so only the
   merger is timed). For each leg part of the real thigh volume: ``apply_segmentation_network``
   (Uniform normalisation, tiles, merge, arg-max, confidence) as it was (the single tile
   blended with its Gaussian weights into a full-size accumulator, confidence from a maximum
   over the classes) and now (only the cropped tile weighted and divided by the same weights,
   which keeps the result bit-identical; the winner's probability gathered).
   Median of ``--repeats`` alternating runs; labels and confidence compared.
2. **Traces and per-volume wall** with a random-weight network (QMRITools-sized: features
   32-64-128-192-320, 22 classes; ``--small``: the shipped nets' 8-16-32-48-64): each mode in
   its own process, not warmed up, segments two volumes of different shapes (the thigh and a
   cropped copy of it), as a participant run with two images does. ``before``: Keras'
   ``predict_on_batch`` (a retrace for every new tile shape) and the accumulator for single
   tiles; ``after``: the traced-once forward pass and the single-tile path. Printed per volume:
   wall, time in the network, overhead, traces so far; and whether both modes gave the same
   label maps.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_VOLUME = REPO.parent / "shared" / "data" / "qmritools" / "scripts_test_data" / "test.nii.gz"
N_CLASSES = 22  # N5_UpperLeg: 21 structures + background
FEATURES = {"qmritools": (32, 64, 128, 192, 320), "small": (8, 16, 32, 48, 64)}
STRIDE = (4, 16, 16)

from tests.reference_merge import old_predict_probabilities  # noqa: E402


def old_apply_segmentation_network(volume, model, n_classes, config, stride, *,
                                   largest_component=False, patch=None):
    """``inference.apply_segmentation_network`` as it was (Gaussian merge, raw labels):
    Keras' ``predict_on_batch``, every part blended, confidence from a maximum over classes."""
    from legseg_tf import inference
    from legseg_tf.normalization import uniform_normalise

    assert not largest_component and config.merge == "gaussian"
    volume = np.asarray(volume, dtype=np.float32)
    labels = np.zeros(volume.shape, dtype=np.int16)
    nonzero = np.nonzero(volume)
    if nonzero[0].size == 0:
        return inference.NetworkOutput(labels)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in nonzero)
    crop = volume[box]
    if patch is None:  # the default budget of then: one tile per leg part of this volume
        patch = tuple(-(-n // t) * t for n, t in zip(crop.shape, stride))
    timer = [0.0]

    def predict(tiles):
        normalised = np.stack([uniform_normalise(tile) for tile in tiles]).astype(np.float32)
        started = time.perf_counter()
        output = np.asarray(model.predict_on_batch(normalised), dtype=np.float32)
        timer[0] += time.perf_counter() - started
        return output

    probabilities, n_tiles = old_predict_probabilities(
        crop, predict, patch, overlap=config.overlap, batch_size=config.batch_size, stride=stride)
    crop_labels = np.argmax(probabilities, axis=-1).astype(np.int16)
    confidence = None
    if (crop_labels > 0).any():
        top = probabilities.max(axis=-1)[crop_labels > 0]
        confidence = {"mean_max_probability": round(float(top.mean()), 4), "voxels": int(top.size)}
    labels[box] = crop_labels
    return inference.NetworkOutput(labels, None, tuple(patch), n_tiles, timer[0], confidence)


def load_volume(path: Path):
    from legseg_tf import nifti_io

    ras, geometry = nifti_io.load_canonical(path)
    return nifti_io.ras_to_qmri(ras), nifti_io.qmri_spacing(geometry)


def two_volumes(path: Path):
    """The thigh and a cropped copy (other shape, so other part shapes)."""
    volume, spacing = load_volume(path)
    nz, ny, nx = volume.shape
    cropped = np.ascontiguousarray(volume[2:nz - 3, ny // 16: ny - ny // 20, nx // 24: nx - nx // 14])
    return [volume, cropped], spacing


def leg_parts(volume, spacing):
    """The parts (leg crops) the segmenter hands to the upper-leg network."""
    from legseg_tf.segmenter import QMRIToolsSegmenter, RegionNetwork

    parts = []

    def record(part):
        parts.append(np.array(part))
        return np.zeros(part.shape, np.int16)

    network = RegionNetwork("upper_leg", "record", "0" * 64, "N5_UpperLeg", record)
    QMRIToolsSegmenter("upper", {"upper_leg": network}).segment(volume, spacing)
    return parts


class PrecomputedSoftmax:
    """Stand-in network: returns one precomputed softmax (per tile shape), in no time."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.outputs = {}

    def predict_on_batch(self, batch):
        key = batch.shape
        if key not in self.outputs:
            raw = self.rng.random((*batch.shape[:-1], N_CLASSES), dtype=np.float32)
            self.outputs[key] = raw / raw.sum(-1, keepdims=True)
        return self.outputs[key]


def merge_cost(volume_path: Path, repeats: int) -> list[dict]:
    """Per-part merger time before/after (no network), medians of alternating runs."""
    from legseg_tf import inference
    from legseg_tf.config import InferenceConfig

    volume, spacing = load_volume(volume_path)
    config = InferenceConfig(region="upper")
    rows = []
    for part in leg_parts(volume, spacing):
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(part))
        crop = part[box].shape
        patch = tuple(-(-s // t) * t for s, t in zip(crop, STRIDE))
        model = PrecomputedSoftmax()
        times = {"before": [], "after": []}
        outputs = {}
        for _ in range(repeats):
            for mode, apply in (("before", old_apply_segmentation_network),
                                ("after", inference.apply_segmentation_network)):
                started = time.perf_counter()
                outputs[mode] = apply(part, model, N_CLASSES, config, STRIDE, patch=patch,
                                      largest_component=False)
                times[mode].append(time.perf_counter() - started)
        before, after = (statistics.median(times[m]) for m in ("before", "after"))
        rows.append({"part": "x".join(map(str, part.shape)), "crop": "x".join(map(str, crop)),
                     "before_s": before, "after_s": after, "ratio": after / before,
                     "same_labels": bool(np.array_equal(outputs["before"].labels,
                                                        outputs["after"].labels)),
                     "same_confidence": outputs["before"].confidence == outputs["after"].confidence})
    return rows


def _worker(mode: str, volume_path: Path, threads: int | None, net: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from legseg_tf import inference
    from legseg_tf.config import InferenceConfig
    from legseg_tf.device import configure_device
    from legseg_tf.networks.config import UNetConfig
    from legseg_tf.networks.unet import build_unet
    from legseg_tf.segmenter import QMRIToolsSegmenter, RegionNetwork

    volumes, spacing = two_volumes(volume_path)
    configure_device("cpu", threads)
    import keras

    keras.utils.set_random_seed(0)
    model = build_unet(UNetConfig(n_classes=N_CLASSES, features=FEATURES[net]))
    apply = (old_apply_segmentation_network if mode == "before"
             else inference.apply_segmentation_network)
    config = InferenceConfig(region="upper", device="cpu")
    forward, applied = [0.0], [0.0]

    def predict(part):
        started = time.perf_counter()
        out = apply(part, model, N_CLASSES, config, STRIDE, largest_component=False)
        applied[0] += time.perf_counter() - started
        forward[0] += out.forward_s
        return out

    def traces() -> int:
        if mode == "before":
            function = getattr(model, "predict_function", None)
            return int(function.experimental_get_tracing_count()) if function else 0
        return inference.tracing_count(model)

    network = RegionNetwork("upper_leg", "benchmark-random", "0" * 64, "N5_UpperLeg", predict)
    segmenter = QMRIToolsSegmenter("upper", {"upper_leg": network}, device="cpu")
    rows = []
    for volume in volumes:
        forward[0] = applied[0] = 0.0
        started = time.perf_counter()
        result = segmenter.segment(volume, spacing)
        wall = time.perf_counter() - started
        stages = dict(result.report.timings_s)
        # the networks stage = the parts through the merger + each part's label clean-up
        stages["merger"] = applied[0] - forward[0]
        stages["part_cleanup"] = stages.get("networks", 0.0) - applied[0]
        stages.pop("networks", None)
        rows.append({
            "volume": "x".join(map(str, volume.shape)), "wall_s": wall, "forward_s": forward[0],
            "overhead": 1.0 - forward[0] / wall, "traces": traces(),
            "parts": len(result.report.parts or []), "stages": stages,
            "labels_sha1": hashlib.sha1(np.ascontiguousarray(result.labels).tobytes()).hexdigest(),
        })
    return {"mode": mode, "rows": rows,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", type=Path, default=DEFAULT_VOLUME)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--small", action="store_true",
                        help="the shipped nets' size (8-16-32-48-64) instead of QMRITools' size")
    parser.add_argument("--repeats", type=int, default=5, help="runs per mode for the merge cost")
    parser.add_argument("--skip-network", action="store_true", help="only the merge cost")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    net = "small" if args.small else "qmritools"
    if args.worker:
        print(json.dumps(_worker(args.worker, args.volume, args.threads, net)))
        return 0
    if not args.volume.exists():
        print(f"volume not found: {args.volume} (pass --volume)", file=sys.stderr)
        return 66
    print(f"load average before: {os.getloadavg()}")
    print(f"\n1. merge cost per part, no network (median of {args.repeats} alternating runs)")
    print(f"{'part (z,y,x)':<14} {'crop':<12} {'before ms':>9} {'after ms':>9} {'after/before':>12}"
          f" {'same labels':>11} {'same confidence':>15}")
    for row in merge_cost(args.volume, args.repeats):
        print(f"{row['part']:<14} {row['crop']:<12} {1e3 * row['before_s']:>9.1f} "
              f"{1e3 * row['after_s']:>9.1f} {row['ratio']:>12.2f} {str(row['same_labels']):>11} "
              f"{str(row['same_confidence']):>15}")
    if args.skip_network:
        print(f"load average after: {os.getloadavg()}")
        return 0
    print(f"\n2. two volumes in one process, {net} network (features {FEATURES[net]}), "
          "random weights, not warmed up")
    results = {}
    for mode in ("before", "after"):
        command = [sys.executable, __file__, "--worker", mode, "--volume", str(args.volume)]
        command += ["--threads", str(args.threads)] if args.threads else []
        command += ["--small"] if args.small else []
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{mode}: FAILED\n{done.stderr[-3000:]}", file=sys.stderr)
            return 1
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{'mode':<7} {'volume':<12} {'parts':>5} {'wall s':>7} {'network s':>9} "
          f"{'overhead':>8} {'traces':>6} {'peak RSS GB':>11}")
    for mode, result in results.items():
        for row in result["rows"]:
            print(f"{mode:<7} {row['volume']:<12} {row['parts']:>5d} {row['wall_s']:>7.2f} "
                  f"{row['forward_s']:>9.2f} {row['overhead']:>8.1%} {row['traces']:>6d} "
                  f"{result['peak_rss_gb']:>11.2f}")
    print("outside the network, s per stage (merger = tiles, normalisation, merge, arg-max; "
          "part_cleanup = own-side components and renaming per part):")
    for mode, result in results.items():
        for row in result["rows"]:
            stages = ", ".join(f"{k} {v:.2f}" for k, v in row["stages"].items())
            print(f"  {mode:<7} {row['volume']:<12} {stages}")
    before, after = results["before"]["rows"], results["after"]["rows"]
    total = [sum(r["wall_s"] for r in rows) for rows in (before, after)]
    print(f"wall of both volumes after/before: {total[1] / total[0]:.2f} "
          f"({total[0]:.2f} s -> {total[1]:.2f} s)")
    print(f"traces after both volumes: before {before[-1]['traces']}, after {after[-1]['traces']}")
    same = all(b["labels_sha1"] == a["labels_sha1"] for b, a in zip(before, after))
    print(f"label maps identical before/after: {same}")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
