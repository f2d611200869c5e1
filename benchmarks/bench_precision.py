"""bfloat16 against float32 with the shipped networks: per-tile speed and label-map agreement.

Usage (from the repository root, with the project's environment):

    python benchmarks/bench_precision.py [--volume PATH] [--repeats N] [--threads N]

1. **Per tile**: the shipped upper-leg network (``models/``) on one 32 x 160 x 160 tile of
   normalised gamma noise (the tile a leg part of a 320 x 320 thigh uses), traced and warmed
   up first, then ``--repeats`` alternating calls per precision; median seconds.
2. **Label maps**: the participant level in this process (shipped models, default region
   ``legs``, everything as the app runs it) once per precision on the real thigh ``--volume``
   and on the demo dataset (two phantoms); voxel-wise agreement of the label maps over the
   whole image and over the voxels either precision labels as muscle.

bfloat16 runs Keras' ``mixed_bfloat16`` copy of each network with a float32 output layer
(:func:`legseg_tf.inference.bfloat16_copy`); whether it is faster depends on the CPU
(AVX-512 BF16 / AMX) and on oneDNN using them for 3-D convolutions.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_VOLUME = REPO.parent / "shared" / "data" / "qmritools" / "scripts_test_data" / "test.nii.gz"
PRECISIONS = ("float32", "bfloat16")


def per_tile(repeats: int) -> dict:
    from legseg_tf import inference, model_store
    from legseg_tf.normalization import uniform_normalise

    manifest = model_store.load_manifest(REPO / "models")
    model = model_store.load_model(manifest.get("upper_leg"))
    rng = np.random.default_rng(0)
    tile = uniform_normalise(rng.gamma(4.0, 50.0, (32, 160, 160)).astype(np.float32))
    batch = tile[None, ..., None].astype(np.float32)
    forward = {p: inference.forward_function(model, p) for p in PRECISIONS}
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    outputs = {p: forward[p](batch) for p in PRECISIONS}     # trace and warm up
    for _ in range(repeats):
        for precision in PRECISIONS:
            started = time.perf_counter()
            outputs[precision] = forward[precision](batch)
            times[precision].append(time.perf_counter() - started)
    agree = float((outputs["float32"].argmax(-1) == outputs["bfloat16"].argmax(-1)).mean())
    return {"median_s": {p: statistics.median(t) for p, t in times.items()},
            "tile_argmax_agreement": agree}


def _thigh_dataset(root: Path, volume: Path) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "thigh", "BIDSVersion": "1.10.0"}))
    anat = root / "sub-thigh" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-thigh_acq-outphase_T1w.nii.gz").symlink_to(volume.resolve())
    (anat / "sub-thigh_acq-outphase_T1w.json").write_text(json.dumps({"EchoTime": 0.00345}))
    return root


def label_maps(bids: Path, out_root: Path, threads: int | None) -> dict:
    """Run the participant level once per precision; compare the label maps voxel-wise."""
    import nibabel as nib

    from legseg_tf import pipeline
    from legseg_tf.config import InferenceConfig, RunConfig

    walls, maps = {}, {}
    for precision in PRECISIONS:
        out = out_root / precision
        config = RunConfig(bids_dir=bids, output_dir=out, analysis_level="participant",
                           skip_bids_validator=True,
                           inference=InferenceConfig(device="cpu", models_dir=REPO / "models",
                                                     nprocs=threads, precision=precision))
        started = time.perf_counter()
        code = pipeline.run(config)
        walls[precision] = time.perf_counter() - started
        if code != 0:
            raise RuntimeError(f"{precision}: the participant level exited {code}")
        maps[precision] = {p.relative_to(out): np.asarray(nib.load(str(p)).dataobj)
                           for p in sorted(out.glob("sub-*/**/*_dseg.nii.gz"))}
    rows = []
    for name, single in maps["float32"].items():
        half = maps["bfloat16"][name]
        muscle = (single > 0) | (half > 0)
        rows.append({"image": str(name.name), "voxels": int(single.size),
                     "agreement": float((single == half).mean()),
                     "muscle_voxels": int(muscle.sum()),
                     "muscle_agreement": float((single[muscle] == half[muscle]).mean())
                     if muscle.any() else 1.0})
    return {"wall_s": walls, "images": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", type=Path, default=DEFAULT_VOLUME)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.volume.exists():
        print(f"volume not found: {args.volume} (pass --volume)", file=sys.stderr)
        return 66
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    from legseg_tf import demo
    from legseg_tf.device import configure_device

    print(f"load average before: {os.getloadavg()}")
    configure_device("cpu", args.threads)
    tile = per_tile(args.repeats)
    single, half = (tile["median_s"][p] for p in PRECISIONS)
    print(f"\n1. one 32x160x160 tile, shipped upper-leg network, median of {args.repeats}: "
          f"float32 {single:.3f} s, bfloat16 {half:.3f} s (bfloat16/float32 {half / single:.2f});"
          f" arg-max agreement {tile['tile_argmax_agreement']:.4%}")
    print("\n2. label maps of the participant level, bfloat16 against float32")
    print(f"{'image':<44} {'voxels':>9} {'agreement':>10} {'muscle voxels':>13} "
          f"{'muscle agreement':>16}")
    with tempfile.TemporaryDirectory(prefix="legseg-precision-") as tmp:
        datasets = {"thigh": _thigh_dataset(Path(tmp) / "thigh", args.volume)}
        demo.write_demo(Path(tmp) / "demo")
        datasets["demo"] = Path(tmp) / "demo"
        for name, bids in datasets.items():
            result = label_maps(bids, Path(tmp) / f"out-{name}", args.threads)
            for row in result["images"]:
                print(f"{row['image']:<44} {row['voxels']:>9d} {row['agreement']:>10.4%} "
                      f"{row['muscle_voxels']:>13d} {row['muscle_agreement']:>16.4%}")
            walls = result["wall_s"]
            print(f"  {name}: participant level {walls['float32']:.1f} s (float32), "
                  f"{walls['bfloat16']:.1f} s (bfloat16)")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
