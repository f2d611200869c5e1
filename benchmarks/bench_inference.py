"""Inference benchmark: whole SegmentData run on the real thigh volume, three merge strategies.

Usage (from the repository root, with the project's environment):

    python benchmarks/bench_inference.py [--volume PATH] [--threads N] [--skip-large] [--repeats N]

Each measurement runs in its own Python process (so that peak RSS belongs to that mode alone)
with TensorFlow already imported and the network already built before the clock starts. The
network is QMRITools-sized (generation B, features 32-64-128-192-320, 22 classes, random
weights: speed does not depend on the weights). Modes:

* ``gaussian``: legseg's default (tiles chosen from the memory budget, Gaussian blending);
* ``warm``: the same, timed on a second segmentation of the volume in the same process (the
  network already traced and run once: what every image after the first of a run costs);
* ``trained``: ``warm`` with a trained network's labels: the QMRITools-sized network still
  runs on every part (and is timed), but the labels handed on are those of the shipped
  trained upper-leg network (its own label table) on that part, computed during the warm-up
  segmentation and not timed. A random network's speckle makes the per-label clean-up label
  hundreds of components; a trained network's labels have few, as QMRITools' would;
* ``qmritools``: the original hard-label union on QMRITools' patch layout;
* ``naive``: fixed 32x112x112 tiles without overlap (a straightforward tiler, for reference);
* ``large``: a synthetic 512x512x120 volume with ``--mem-gb 2`` (memory-bounded tiling).

Printed per mode: wall time of the segmentation (mask, split, networks, merge), time inside
network forward passes, overhead ratio (1 - forward / wall), tiles run and peak RSS. The warm
modes time ``--repeats`` segmentations after the warm-up and print the one with the median
wall time, with the overheads of all of them beside it (the background anatomy check finishes
beside the networks in most runs, not in all; the machine's speed drifts between runs).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VOLUME = REPO.parent / "shared" / "data" / "qmritools" / "scripts_test_data" / "test.nii.gz"
FEATURES = (32, 64, 128, 192, 320)
N_CLASSES = 22  # N5_UpperLeg: 21 structures + background


class Tally:
    """Seconds in the network and tiles run, summed over the parts."""

    def __init__(self):
        self.forward_s = 0.0
        self.tiles = 0

    def add(self, output):
        self.forward_s += output.forward_s
        self.tiles += output.n_tiles
        return output


def _worker(mode: str, volume_path: Path, threads: int | None, repeats: int = 1) -> dict:
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from legseg_tf import array_threads, nifti_io
    from legseg_tf.config import InferenceConfig
    from legseg_tf.device import configure_device
    from legseg_tf.inference import NetworkOutput, apply_segmentation_network
    from legseg_tf.networks.config import UNetConfig, total_stride
    from legseg_tf.networks.unet import build_unet
    from legseg_tf.segmenter import QMRIToolsSegmenter, RegionNetwork

    configure_device("cpu", threads)
    array_threads.set_threads(threads)
    config_net = UNetConfig(n_classes=N_CLASSES, features=FEATURES)
    stride = total_stride(config_net)
    model = build_unet(config_net)
    tally = Tally()
    if mode == "large":
        rng = np.random.default_rng(0)
        volume = np.zeros((120, 512, 512), dtype=np.float32)
        yy, xx = np.mgrid[:512, :512]
        for cx in (150, 362):
            volume[:, ((yy - 256) ** 2 + (xx - cx) ** 2) < 110**2] = 1.0
        volume *= rng.gamma(4.0, 50.0, volume.shape).astype(np.float32)
        spacing = (5.0, 0.8, 0.8)
        inference = InferenceConfig(region="upper", mem_gb=2.0, device="cpu")
    else:
        ras, geometry = nifti_io.load_canonical(volume_path)
        volume = nifti_io.ras_to_qmri(ras)
        spacing = nifti_io.qmri_spacing(geometry)
        merge = "qmritools" if mode == "qmritools" else "gaussian"
        inference = InferenceConfig(region="upper", merge=merge, device="cpu")

    label_table, trained_labels = "N5_UpperLeg", _TrainedLabels(inference, mode == "trained")
    if trained_labels.network is not None:
        label_table = trained_labels.network.label_table

    def predict(part):
        if mode == "naive":
            return tally.add(_naive(part, model, stride))
        output = tally.add(apply_segmentation_network(part, model, N_CLASSES, inference, stride,
                                                      largest_component=False))
        labels = trained_labels(part)
        if labels is None:
            return output
        return NetworkOutput(labels, None, output.patch, output.n_tiles, output.forward_s)

    network = RegionNetwork("upper_leg", "benchmark-random", "0" * 64, label_table, predict)
    segmenter = QMRIToolsSegmenter("upper", {"upper_leg": network}, device="cpu")
    # Not warmed up (but in "warm" mode): tracing the network (once per process) is part of a
    # real run.
    runs = []
    if mode in ("warm", "trained"):
        segmenter.segment(volume, spacing)
        trained_labels.frozen = True
    for _ in range(repeats if mode in ("warm", "trained") else 1):
        tally = Tally()
        started = time.perf_counter()
        result = segmenter.segment(volume, spacing)
        wall = time.perf_counter() - started
        runs.append((wall, tally.forward_s, tally.tiles, result))
    # the run with the median wall time; the overheads of all runs beside it
    wall, forward_s, tiles, result = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
    overheads = [1.0 - f / w for w, f, _, _ in runs]
    return {
        "mode": mode,
        "volume": list(volume.shape),
        "wall_s": round(wall, 2),
        "forward_s": round(forward_s, 2),
        "overhead": round(1.0 - forward_s / wall, 3),
        "overhead_range": [round(min(overheads), 3), round(max(overheads), 3)],
        "runs": len(runs),
        "tiles": tiles,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2),
        "labels": int(len(np.unique(result.labels)) - 1),
        "mem_gb": inference.mem_gb,
        "stages_s": dict(result.report.timings_s),
    }


class _TrainedLabels:
    """The shipped trained upper-leg network's labels of a part (``trained`` mode), computed
    on the part's first sight (the warm-up segmentation) and looked up afterwards; None in
    the other modes."""

    def __init__(self, inference, enabled: bool):
        self.network, self.cache, self.frozen = None, {}, False
        if enabled:
            from legseg_tf import model_store
            from legseg_tf.model_adapters import region_network

            manifest = model_store.load_manifest(model_store.resolve_models_dir(None))
            self.network = region_network(manifest.get("upper_leg"), inference)

    def __call__(self, part: np.ndarray) -> np.ndarray | None:
        if self.network is None:
            return None
        # shape and a fingerprint of every 8th row and column: no full-part hash in the timing
        key = (part.shape, hashlib.sha256(np.ascontiguousarray(part[:, ::8, ::8])).hexdigest())
        if key not in self.cache:
            if self.frozen:
                raise RuntimeError("the timed segmentation cut a part the warm-up did not")
            self.cache[key] = self.network.predict(part).labels
        return self.cache[key]


def _naive(part, model, stride, patch=(32, 112, 112)):
    """Fixed tiles from 0 in steps of the patch, last tile zero-padded, no blending."""
    from legseg_tf.inference import NetworkOutput, forward_function
    from legseg_tf.normalization import uniform_normalise

    forward = forward_function(model)
    shape = part.shape
    padded_shape = [int(np.ceil(s / p) * p) for s, p in zip(shape, patch)]
    padded = np.zeros(padded_shape, dtype=np.float32)
    padded[: shape[0], : shape[1], : shape[2]] = part
    labels = np.zeros(padded_shape, dtype=np.int16)
    forward_s, tiles = 0.0, 0
    for z in range(0, padded_shape[0], patch[0]):
        for y in range(0, padded_shape[1], patch[1]):
            for x in range(0, padded_shape[2], patch[2]):
                tile = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                batch = uniform_normalise(padded[tile])[None, ..., None].astype(np.float32)
                started = time.perf_counter()
                out = forward(batch)
                forward_s += time.perf_counter() - started
                tiles += 1
                labels[tile] = np.argmax(out[0], axis=-1)
    return NetworkOutput(labels[: shape[0], : shape[1], : shape[2]], n_tiles=tiles,
                         forward_s=forward_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", type=Path, default=DEFAULT_VOLUME)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-large", action="store_true", help="skip the 512x512x120 case")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed segmentations in the warm modes (the median is reported)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.volume, args.threads, args.repeats)))
        return 0
    if not args.volume.exists():
        print(f"volume not found: {args.volume} (pass --volume)", file=sys.stderr)
        return 66
    modes = ["gaussian", "warm", "trained", "qmritools", "naive"] + ([] if args.skip_large else ["large"])
    print(f"load average before: {os.getloadavg()}")
    rows = []
    for mode in modes:
        command = [sys.executable, __file__, "--worker", mode, "--volume", str(args.volume),
                   "--repeats", str(args.repeats)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{mode}: FAILED\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    header = (f"{'mode':<10} {'volume (z,y,x)':<16} {'wall s':>7} {'forward s':>9} {'overhead':>8} "
              f"{'(all runs)':>13} {'tiles':>5} {'peak RSS GB':>11} {'labels':>6}")
    print(header)
    for row in rows:
        shape = "x".join(str(s) for s in row["volume"])
        low, high = row["overhead_range"]
        spread = f"{low:.1%}-{high:.1%}" if row["runs"] > 1 else "1 run"
        print(f"{row['mode']:<10} {shape:<16} {row['wall_s']:>7.2f} {row['forward_s']:>9.2f} "
              f"{row['overhead']:>8.1%} {spread:>13} {row['tiles']:>5d} {row['peak_rss_gb']:>11.2f} "
              f"{row['labels']:>6d}")
    for row in rows:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in row["stages_s"].items())
        print(f"  {row['mode']} stages s: {stages}")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
