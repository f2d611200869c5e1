"""Whole-process benchmark: a participant run's time line, and time and memory vs volume size.

Usage (from the repository root, with the project's environment):

    python benchmarks/bench_process.py [--volume PATH] [--sizes ZxYxX,...] [--net small|qmritools]
                                       [--mem-gb G] [--skip-participant] [--skip-scaling]

1. **Participant process** (``--skip-participant`` to leave out): the app itself
   (``python -m legseg_tf BIDS OUT participant -v --skip_bids_validator``, shipped models,
   default region) on a dataset of one participant with two images, both the real thigh
   ``--volume`` (31 x 320 x 320, the size of a hold-out stack), in two sessions. Its log file's time stamps cut
   the wall time into start-up (interpreter and CLI imports, input query, TensorFlow import,
   classifier load), each image (the region networks load and trace on first use) and the
   reports; the last slice is the interpreter's exit. Printed with the traces and model loads
   the log names and the process's peak RSS (``wait4``).
2. **Scaling** (``--skip-scaling``): a synthetic two-leg volume of each ``--sizes`` (z x y x
   x) segmented (mask, split, network, merge; region ``upper``, no classifier) by a
   random-weight network (``--net``: the shipped nets' size 8-16-32-48-64, or QMRITools' size
   32-64-128-192-320; 22 classes), each size in its own process with the default memory
   budget (or ``--mem-gb``). Printed per size: Mvoxel, wall, time in the network, overhead,
   tiles, the memory in use before the first tile (TensorFlow, network, volume) and the
   process's peak RSS.

The load average is printed before and after; other work on the machine slows every figure.
MONAI's ``sliding_window_inference`` is compared with legseg's merger in
``benchmarks/bench_monai.py`` (same predictor, tiles and weights; the ``bench`` extra, with
PyTorch's CPU build), not here.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VOLUME = REPO.parent / "shared" / "data" / "qmritools" / "scripts_test_data" / "test.nii.gz"
FEATURES = {"small": (8, 16, 32, 48, 64), "qmritools": (32, 64, 128, 192, 320)}
N_CLASSES = 22  # N5_UpperLeg: 21 structures + background
GIB = 1024**3  # legseg_tf.device.process_memory_gb reads GiB; printed figures are GB (1e9)
DEFAULT_SIZES = "20x160x160,31x320x320,60x384x384,120x512x512"


def _run_timed(command: list[str], **kwargs) -> tuple[float, int, float]:
    """Run ``command``; (wall s, exit code, peak RSS of the child in GB (1e9 bytes) from
    ``wait4``, whose ``ru_maxrss`` is in KiB)."""
    started = time.time()
    process = subprocess.Popen(command, **kwargs)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return time.time() - started, process.returncode, usage.ru_maxrss * 1024 / 1e9


# --------------------------------------------------------------------- participant process ----

def _participant_dataset(root: Path, volume: Path, images: int) -> None:
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "bench", "BIDSVersion": "1.10.0"}))
    for index in range(1, images + 1):   # one session per image
        anat = root / "sub-01" / f"ses-{index}" / "anat"
        anat.mkdir(parents=True)
        name = f"sub-01_ses-{index}_acq-outphase_T1w"
        (anat / f"{name}.nii.gz").symlink_to(volume.resolve())
        (anat / f"{name}.json").write_text(json.dumps({"EchoTime": 0.00345}))


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+)\s+([\w.]+): (.*)$")


def _log_events(log_file: Path) -> list[tuple[float, str]]:
    events = []
    for line in log_file.read_text(encoding="utf-8").splitlines():
        match = _STAMP.match(line)
        if match:
            when = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.append((when, match.group(4)))
    return events


def participant_process(volume: Path, images: int, precision: str | None) -> dict:
    """Run the app on ``images`` copies of ``volume``; its time line from the log."""
    with tempfile.TemporaryDirectory(prefix="legseg-bench-") as tmp:
        bids, out = Path(tmp) / "bids", Path(tmp) / "out"
        bids.mkdir()
        _participant_dataset(bids, volume, images)
        command = [sys.executable, "-m", "legseg_tf", str(bids), str(out), "participant", "-v",
                   "--skip_bids_validator", "--device", "cpu"]
        command += ["--precision", precision] if precision else []
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        spawned = time.time()
        wall, code, peak = _run_timed(command, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, cwd=REPO)
        ended = spawned + wall
        logs = sorted((out / "logs").glob("legseg_participant_*.log"))
        if code != 0 or not logs:
            raise RuntimeError(f"the participant run failed (exit {code})")
        events = _log_events(logs[-1])
    marks = [(spawned, "spawn")]

    def first(prefix: str, after: float = 0.0):
        return next(((t, m) for t, m in events if m.startswith(prefix) and t >= after), None)

    stages = []
    for prefix, label in (("legseg ", "interpreter start and CLI imports"),
                          ("", "input query (pybids)"),
                          ("TensorFlow ", "TensorFlow import and set-up"),
                          ("segmenting ", "classifier load, dataset files")):
        if prefix == "":
            found = next(((t, m) for t, m in events if re.match(r"\d+ image\(s\) of", m)), None)
        else:
            found = first(prefix, marks[-1][0])
        if found is None:
            continue
        stages.append((label, found[0] - marks[-1][0]))
        marks.append(found)
    starts = [n for n, (_, m) in enumerate(events) if m.startswith("segmenting ")]
    for index, position in enumerate(starts):
        started, message = events[position]
        # the next "wrote" in log order: the previous image's can share this time stamp
        done = next(((t, m) for t, m in events[position + 1:] if m.startswith("wrote ")), None)
        if done is None:
            continue
        if index:
            stages.append(("between images", started - marks[-1][0]))
        label = f"image {index + 1} ({message.split()[-1].split('/')[-1]})"
        stages.append((label + (": region networks load and trace" if index == 0 else ""),
                       done[0] - started))
        marks.append(done)
    finished = first("finished:", marks[-1][0])
    if finished is not None:
        stages.append(("reports (per-image tables, QC report)", finished[0] - marks[-1][0]))
        marks.append(finished)
    stages.append(("interpreter exit", ended - marks[-1][0]))
    return {
        "wall_s": wall, "peak_rss_gb": peak, "stages": stages,
        "traces": [m for _, m in events if m.startswith("tracing network")],
        "loads": [m.split(" from ")[0] for _, m in events if m.startswith("loaded model")],
    }


# -------------------------------------------------------------------------------- scaling ----

def synthetic_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """(z, y, x) float32: two round 'legs' (radius 0.21 x the width) of gamma noise."""
    nz, ny, nx = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:ny, :nx]
    section = np.zeros((ny, nx), dtype=bool)
    for cx in (0.29 * nx, 0.71 * nx):
        section |= ((yy - ny / 2) ** 2 + (xx - cx) ** 2) < (0.21 * nx) ** 2
    volume = np.zeros(shape, dtype=np.float32)
    volume[:, section] = 1.0
    volume *= rng.gamma(4.0, 50.0, shape).astype(np.float32)
    return volume


def _scaling_worker(shape: tuple[int, int, int], net: str, mem_gb: float | None,
                    threads: int | None) -> dict:
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from legseg_tf.config import InferenceConfig
    from legseg_tf.device import configure_device, process_memory_gb
    from legseg_tf.inference import apply_segmentation_network, fixed_memory_gb
    from legseg_tf.networks.config import UNetConfig, total_stride
    from legseg_tf.networks.unet import build_unet
    from legseg_tf.segmenter import QMRIToolsSegmenter, RegionNetwork

    configure_device("cpu", threads)
    import keras

    keras.utils.set_random_seed(0)
    config_net = UNetConfig(n_classes=N_CLASSES, features=FEATURES[net])
    stride, model = total_stride(config_net), build_unet(config_net)
    volume = synthetic_volume(shape)
    inference = InferenceConfig(region="upper", device="cpu", mem_gb=mem_gb)
    tally = {"forward_s": 0.0, "tiles": 0, "patches": [], "in_use_gb": []}

    def predict(part):
        tally["in_use_gb"].append(fixed_memory_gb() * GIB / 1e9)
        out = apply_segmentation_network(part, model, N_CLASSES, inference, stride,
                                         largest_component=False)
        tally["forward_s"] += out.forward_s
        tally["tiles"] += out.n_tiles
        tally["patches"].append("x".join(map(str, out.patch)))
        return out

    network = RegionNetwork("upper_leg", "benchmark-random", "0" * 64, "N5_UpperLeg", predict)
    segmenter = QMRIToolsSegmenter("upper", {"upper_leg": network}, device="cpu")
    started = time.perf_counter()
    segmenter.segment(volume, (5.0, 0.8, 0.8))
    wall = time.perf_counter() - started
    return {"shape": list(shape), "wall_s": wall, "forward_s": tally["forward_s"],
            "tiles": tally["tiles"], "patches": tally["patches"],
            "in_use_gb": max(tally["in_use_gb"] or [0.0]),
            "peak_rss_gb": process_memory_gb()[1] * GIB / 1e9, "mem_gb": mem_gb}


def scaling(sizes, net: str, mem_gb: float | None, threads: int | None) -> list[dict]:
    rows = []
    for shape in sizes:
        command = [sys.executable, __file__, "--worker", "x".join(map(str, shape)),
                   "--net", net]
        command += ["--mem-gb", str(mem_gb)] if mem_gb else []
        command += ["--threads", str(threads)] if threads else []
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{shape}: worker failed\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def _shape(text: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in text.lower().split("x"))
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected ZxYxX, got {text!r}")
    return values  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", type=Path, default=DEFAULT_VOLUME)
    parser.add_argument("--images", type=int, default=2, help="images in the participant run")
    parser.add_argument("--precision", choices=("float32", "bfloat16"),
                        help="--precision of the participant run (default: the app's)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help=f"volume sizes ZxYxX, comma-separated (default {DEFAULT_SIZES})")
    parser.add_argument("--net", choices=sorted(FEATURES), default="small")
    parser.add_argument("--mem-gb", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-participant", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--worker", type=_shape, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_scaling_worker(args.worker, args.net, args.mem_gb, args.threads)))
        return 0
    print(f"load average before: {os.getloadavg()}")
    if not args.skip_participant:
        if not args.volume.exists():
            print(f"volume not found: {args.volume} (pass --volume)", file=sys.stderr)
            return 66
        result = participant_process(args.volume, args.images, args.precision)
        print(f"\n1. participant process: {args.images} image(s) of {args.volume.name}, shipped "
              f"models, default region: {result['wall_s']:.2f} s wall, peak RSS "
              f"{result['peak_rss_gb']:.2f} GB")
        for label, seconds in result["stages"]:
            print(f"   {seconds:6.2f} s  {seconds / result['wall_s']:5.1%}  {label}")
        print(f"   traces: {len(result['traces'])} ({'; '.join(result['traces'])})")
        print(f"   model loads: {len(result['loads'])} ({'; '.join(result['loads'])})")
    if not args.skip_scaling:
        sizes = [_shape(s) for s in args.sizes.split(",") if s]
        budget = f"--mem-gb {args.mem_gb}" if args.mem_gb else "the default memory budget"
        print(f"\n2. scaling: synthetic two-leg volumes, {args.net} network "
              f"{FEATURES[args.net]}, random weights, {budget}, one process per size")
        print(f"{'volume (z,y,x)':<16} {'Mvoxel':>7} {'wall s':>7} {'network s':>9} "
              f"{'overhead':>8} {'tiles':>5} {'in use GB':>9} {'peak RSS GB':>11}  patches")
        for row in scaling(sizes, args.net, args.mem_gb, args.threads):
            shape = "x".join(map(str, row["shape"]))
            overhead = 1.0 - row["forward_s"] / row["wall_s"]
            print(f"{shape:<16} {np.prod(row['shape']) / 1e6:>7.2f} {row['wall_s']:>7.2f} "
                  f"{row['forward_s']:>9.2f} {overhead:>8.1%} {row['tiles']:>5d} "
                  f"{row['in_use_gb']:>9.2f} {row['peak_rss_gb']:>11.2f}  "
                  f"{', '.join(row['patches'])}")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
