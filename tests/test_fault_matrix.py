"""Fault matrix: bad images, datasets, outputs, models, signals and hostile strings.

Each case builds one faulty situation in a temporary folder, runs the BIDS App in-process
(the placeholder segmenter stands in for the networks wherever they are irrelevant) and states
what must happen: the exit code, a piece of the one-line message, and what is left on disk.
Every case also checks that no temporary file is left in OUTPUT_DIR and that no traceback
reaches the console. The last test prints "N cases, K held".
"""
from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from legseg_tf import cli, derivatives, nifti_io, pipeline
from tests.conftest import REPO_ROOT, make_dataset, two_leg_volume, write_nifti
from tests.fakes import ThresholdPlaceholderSegmenter
from tests.helpers import patch_header

T1W = "sub-01/anat/sub-01_acq-outphase_T1w.nii.gz"
T1W_2 = "sub-02/anat/sub-02_acq-outphase_T1w.nii.gz"
DSEG = "sub-01/anat/sub-01_acq-outphase_desc-muscles_dseg.nii.gz"
AFFINE = np.diag([2.0, 2.0, 6.0, 1.0])
SHAPE = (48, 32, 8)


@dataclass
class Setup:
    """What a case's build step hands to the runner."""

    bids: Path
    out: Path
    args: list = field(default_factory=list)
    level: str = "participant"
    real_models: bool = False
    before: Callable | None = None      # run before the CLI (e.g. monkeypatching)
    runs: int = 1                      # the CLI is run this many times; the last code counts


@dataclass
class Case:
    id: str
    build: Callable[[Path, pytest.MonkeyPatch], Setup]
    code: int
    message: str = ""                  # must appear in the log output
    leftovers: str = ""                # what is left, in words (checked by ``check``)
    check: Callable[[Setup], None] | None = None


RESULTS: dict[str, bool] = {}


# ---------------------------------------------------------------------------- builders

def dataset(tmp: Path, layout=None) -> Path:
    return make_dataset(tmp / "bids", layout or {T1W: {"EchoTime": 0.00345}}, shape=SHAPE)


def with_image(writer: Callable[[Path], None], *args, **kwargs):
    """A one-image dataset whose image is then rewritten by ``writer(path)``."""
    def build(tmp, mp):
        bids = dataset(tmp)
        writer(bids / T1W)
        return Setup(bids, tmp / "out", ["--skip_bids_validator", *args], **kwargs)
    return build


def plain(*args, layout=None, out_of=lambda tmp, bids: tmp / "out", **kwargs):
    def build(tmp, mp):
        bids = dataset(tmp, layout)
        return Setup(bids, out_of(tmp, bids), list(args), **kwargs)
    return build


def save(data, affine=AFFINE, dtype=None):
    def writer(path):
        array = np.asarray(data() if callable(data) else data)
        exact = {"dtype": array.dtype} if array.dtype.fields is None and array.dtype.kind in "iu" else {}
        image = nib.Nifti1Image(array, affine, **exact)
        if dtype is not None:
            image.set_data_dtype(dtype)
        image.set_sform(affine, code=1)
        image.set_qform(affine, code=1)
        nib.save(image, str(path))
    return writer


def phantom(dtype=np.float32, scale=1.0):
    return lambda: (two_leg_volume(SHAPE) * scale).astype(dtype)


def reoriented(codes: str, oblique_deg: float = 0.0):
    """The phantom written in another voxel order (same world positions)."""
    def writer(path):
        ras = two_leg_volume(SHAPE)
        target = nib.orientations.axcodes2ornt(tuple(codes))
        transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), target)
        data = nib.orientations.apply_orientation(ras, transform)
        affine = AFFINE @ nib.orientations.inv_ornt_aff(transform, ras.shape)
        if oblique_deg:
            angle = np.deg2rad(oblique_deg)
            rotation = np.eye(4)
            rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
            affine = rotation @ affine
        write_nifti(path, data, affine)
    return writer


def raw_bytes(transform: Callable[[bytes], bytes], name: str | None = None):
    def writer(path):
        write_nifti(path, two_leg_volume(SHAPE), AFFINE)
        data = transform(path.read_bytes())
        if name is not None:
            path.unlink()
            path = path.with_name(path.name.replace(".nii.gz", name))
        path.write_bytes(data)
    return writer


def uncompressed(transform: Callable[[bytes], bytes] = lambda b: b):
    return raw_bytes(lambda b: transform(gzip.decompress(b)), name=".nii")


def header(**fields):
    def writer(path):
        write_nifti(path, two_leg_volume(SHAPE), AFFINE)
        patch_header(path, **fields)
    return writer


def side_check(setup: Setup):
    """Left labels (odd) on the patient's left: lower world x than the right ones."""
    dseg = next(setup.out.rglob("*_dseg.nii.gz"))
    image = nib.load(str(dseg))
    data = np.asarray(image.dataobj)
    def world(value):
        return nib.affines.apply_affine(image.affine, np.argwhere(data == value))[:, 0]

    assert world(55).max() < world(56).min()
    assert data.shape == nib.load(str(setup.bids / T1W)).shape[:3]


def outputs(setup: Setup) -> list[str]:
    return sorted(p.relative_to(setup.out).as_posix() for p in setup.out.rglob("*_dseg.nii.gz"))


def n_outputs(n: int):
    def check(setup):
        assert len(outputs(setup)) == n, outputs(setup)
    return check


def no_outputs(setup: Setup):
    assert not outputs(setup)


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# ---------------------------------------------------------------------------- images

IMAGE_CASES = [
    Case("image/corrupt-gzip", with_image(raw_bytes(lambda b: b"\x1f\x8b" + os.urandom(400))), 1,
         "cannot read", "no label map", no_outputs),
    Case("image/random-bytes", with_image(raw_bytes(lambda b: os.urandom(2000))), 1,
         "cannot read", "no label map", no_outputs),
    Case("image/empty-file", with_image(raw_bytes(lambda b: b"")), 1, "cannot read", "no label map", no_outputs),
    Case("image/truncated-gzip", with_image(raw_bytes(lambda b: b[: len(b) // 2])), 1,
         "cannot read", "no label map", no_outputs),
    Case("image/truncated-nii", with_image(uncompressed(lambda b: b[: len(b) // 2]), "--bids-filter-file",
                                           "FILTER"), 1, "truncated", "no label map", no_outputs),
    Case("image/header-only", with_image(uncompressed(lambda b: b[:352]), "--bids-filter-file", "FILTER"), 1,
         "truncated", "no label map", no_outputs),
    Case("image/2d", with_image(save(np.ones((48, 32), np.float32))), 1, "3-D or 4-D", "no label map",
         no_outputs),
    Case("image/5d", with_image(save(np.ones((8, 8, 4, 2, 2), np.float32))), 1, "3-D or 4-D",
         "no label map", no_outputs),
    Case("image/4d-first-volume", with_image(save(lambda: np.stack([two_leg_volume(SHAPE)] * 3, -1))), 0,
         "", "a 3-D label map", side_check),
    Case("image/one-slice", with_image(save(lambda: two_leg_volume((48, 32, 1)))), 0, "",
         "a one-slice label map", n_outputs(1)),
    Case("image/some-nan", with_image(save(lambda: np.where(np.arange(np.prod(SHAPE)).reshape(SHAPE) % 97 == 0,
                                                            np.nan, two_leg_volume(SHAPE)).astype(np.float32))),
         0, "NaN/Inf voxel", "label map, NaN voxels read as 0", n_outputs(1)),
    Case("image/some-inf", with_image(save(lambda: np.where(np.arange(np.prod(SHAPE)).reshape(SHAPE) % 89 == 0,
                                                            np.inf, two_leg_volume(SHAPE)).astype(np.float32))),
         0, "NaN/Inf voxel", "label map", n_outputs(1)),
    Case("image/all-nan", with_image(save(np.full(SHAPE, np.nan, np.float32))), 1, "no finite voxel",
         "no label map", no_outputs),
    Case("image/constant-zero", with_image(save(np.zeros(SHAPE, np.float32))), 1, "constant",
         "no label map", no_outputs),
    Case("image/constant-value", with_image(save(np.full(SHAPE, 7, np.int16))), 1, "constant",
         "no label map", no_outputs),
    Case("image/uniform-noise", with_image(save(lambda: np.random.default_rng(0).uniform(0, 100, SHAPE)
                                                .astype(np.float32))), 1, "uncorrelated", "no label map",
         no_outputs),
    Case("image/gaussian-noise", with_image(save(lambda: np.abs(np.random.default_rng(1).normal(50, 20, SHAPE))
                                                 .astype(np.float32))), 1, "uncorrelated", "no label map",
         no_outputs),
    *[Case(f"image/dtype-{np.dtype(t).name}", with_image(save(phantom(t, s))), 0, "", "label map",
           side_check)
      for t, s in ((np.uint8, 1), (np.int8, 1), (np.int16, 10), (np.uint16, 10), (np.int32, 10),
                   (np.int64, 10), (np.uint64, 10), (np.float64, 1))],
    Case("image/complex64", with_image(save(lambda: two_leg_volume(SHAPE).astype(np.complex64) * 1j)), 0,
         "magnitude", "label map of the magnitude", side_check),
    Case("image/complex128", with_image(save(lambda: two_leg_volume(SHAPE).astype(np.complex128) * -1)), 0,
         "magnitude", "label map of the magnitude", side_check),
    Case("image/rgb", with_image(save(np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]))), 1,
         "RGB", "no label map", no_outputs),
    *[Case(f"image/orientation-{codes}", with_image(reoriented(codes)), 0, "", "sides from geometry",
           side_check) for codes in ("LPS", "LAS", "PIR", "SRA")],
    Case("image/oblique-20deg", with_image(reoriented("RAS", 20.0)), 0, "", "sides from geometry",
         side_check),
    Case("image/no-orientation", with_image(header(sform_code=0, qform_code=0)), 1,
         "sform_code = 0 and qform_code = 0", "no label map", no_outputs),
    Case("image/no-orientation-assumed", with_image(header(sform_code=0, qform_code=0),
                                                    "--assume-orientation", "RAS"), 0,
         "assuming RAS", "label map, sidecar orientation_assumed", side_check),
    Case("image/bad-assume-option", with_image(header(sform_code=0, qform_code=0),
                                               "--assume-orientation", "up"), 64, "invalid orientation",
         "nothing written", no_outputs),
    Case("image/qform-only", with_image(header(sform_code=0)), 0, "", "label map", side_check),
    Case("image/singular-sform", with_image(header(srow_z=[0.0, 0.0, 0.0, 0.0])), 1, "singular",
         "no label map", no_outputs),
    Case("image/nan-sform", with_image(header(srow_x=[np.nan, 0.0, 0.0, 0.0])), 1, "non-finite",
         "no label map", no_outputs),
    Case("image/zero-pixdim-qform", with_image(header(sform_code=0, pixdim=[1, 2, 2, 0, 1, 1, 1, 1])), 1,
         "pixdim[1:4]", "no label map", no_outputs),
    Case("image/huge-declared-dims", with_image(header(dim=[3, 30000, 30000, 30000, 1, 1, 1, 1])), 1,
         "voxels per", "no label map", no_outputs),
    Case("image/dims-beyond-data", with_image(header(dim=[3, 480, 320, 80, 1, 1, 1, 1])), 1,
         "cannot read", "no label map", no_outputs),
]


# ---------------------------------------------------------------------------- datasets

def json_case(rel, skip: bool, **kwargs):
    def build(tmp, mp):
        bids = dataset(tmp, {T1W: None, T1W_2: None})
        (bids / rel).write_text("{not json")
        if not skip:
            mp.setattr(pipeline, "find_validator", lambda: None)
        return Setup(bids, tmp / "out", ["--skip_bids_validator"] if skip else [], **kwargs)
    return build


def link_case(*links, layout=None):
    def build(tmp, mp):
        bids = dataset(tmp, layout)
        for name, target in links:
            os.symlink(target, bids / name)
        return Setup(bids, tmp / "out", ["--skip_bids_validator"])
    return build


def filter_case(content):
    def build(tmp, mp):
        bids = dataset(tmp, {T1W: None, T1W_2: None})
        (tmp / "filter.json").write_text(content if isinstance(content, str) else json.dumps(content))
        return Setup(bids, tmp / "out", ["--skip_bids_validator", "--bids-filter-file", tmp / "filter.json"])
    return build


def folder_like_image(tmp, mp):
    bids = dataset(tmp)
    (bids / "sub-01/anat/sub-01_acq-outphaseC_T1w.nii.gz").mkdir()
    return Setup(bids, tmp / "out", ["--skip_bids_validator"])


def sessions_case(tmp, mp):
    bids = dataset(tmp, {T1W: None, "sub-02/ses-a/anat/sub-02_ses-a_acq-outphase_T1w.nii.gz": None,
                         "sub-02/ses-b/anat/sub-02_ses-b_acq-outphase_T1w.nii.gz": None})
    return Setup(bids, tmp / "out", ["--skip_bids_validator", "--session_label", "a"])


def empty_dataset(tmp, mp):
    bids = dataset(tmp)
    (bids / T1W).unlink()
    return Setup(bids, tmp / "out", ["--skip_bids_validator"])


def duplicate_content(tmp, mp):
    bids = dataset(tmp, {T1W: None})
    (bids / "sub-02/anat").mkdir(parents=True)
    os.symlink(bids / T1W, bids / T1W_2)      # as git-annex does for identical files
    return Setup(bids, tmp / "out", ["--skip_bids_validator"])


DATASET_CASES = [
    Case("dataset/invalid-sidecar-skipped", json_case("sub-02/anat/sub-02_acq-outphase_T1w.json", True), 0,
         "not valid JSON", "both label maps", n_outputs(2)),
    Case("dataset/invalid-sidecar-refused", json_case("sub-02/anat/sub-02_acq-outphase_T1w.json", False), 16,
         "is not valid JSON", "nothing segmented", no_outputs),
    Case("dataset/invalid-top-level-json", json_case("task-x_bold.json", False), 16, "task-x_bold.json",
         "nothing segmented", no_outputs),
    Case("dataset/invalid-description-skipped", json_case("dataset_description.json", True), 0,
         "not valid JSON", "both label maps", n_outputs(2)),
    Case("dataset/binary-json-skipped", json_case("sub-01/anat/sub-01_acq-outphase_T1w.json", True), 0,
         "not valid JSON", "both label maps", n_outputs(2)),
    Case("dataset/one-loop", link_case(("sub-01/anat/loop", "..")), 0, "not followed", "one label map",
         n_outputs(1)),
    Case("dataset/two-loops", link_case(("sub-01/anat/loop", ".."), ("sub-01/anat/loop2", "../..")), 0,
         "not followed", "one label map", n_outputs(1)),
    Case("dataset/root-loop", link_case(("sub-01/up", "..")), 0, "not followed", "one label map",
         n_outputs(1)),
    Case("dataset/self-link", link_case(("sub-01/anat/self", "self")), 0, "", "one label map", n_outputs(1)),
    Case("dataset/dangling-image-link", link_case(("sub-01/anat/sub-01_acq-outphaseB_T1w.nii.gz",
                                                   "/nonexistent.nii.gz")), 1, "cannot read",
         "the good image's label map", n_outputs(1)),
    Case("dataset/identical-files-by-link", duplicate_content, 0, "", "two label maps (two names)",
         n_outputs(2)),
    Case("dataset/folder-named-like-image", folder_like_image, 0, "", "one label map", n_outputs(1)),
    Case("dataset/unknown-participant", plain("--skip_bids_validator", "--participant_label", "09"), 18,
         "not found", "nothing written", no_outputs),
    Case("dataset/label-traversal", plain("--participant_label", "../x"), 64, "", "nothing written",
         no_outputs),
    Case("dataset/session-filter", sessions_case, 0, "", "sessionless + ses-a", n_outputs(2)),
    Case("dataset/filter-matches-nothing", filter_case({"suffix": "FLAIR"}), 18, "matched",
         "nothing written", no_outputs),
    Case("dataset/filter-broken-json", filter_case("{x"), 64, "", "nothing written", no_outputs),
    Case("dataset/filter-not-object", filter_case([1, 2]), 64, "", "nothing written", no_outputs),
    Case("dataset/filter-unknown-entity", filter_case({"colour": "red"}), 64, "not a recognized entity",
         "nothing written", no_outputs),
    Case("dataset/no-images", empty_dataset, 18, "no input images", "nothing written", no_outputs),
    Case("dataset/missing-bids-dir", lambda tmp, mp: Setup(tmp / "nope", tmp / "out", []), 66, "",
         "nothing written", lambda s: not s.out.exists()),
    Case("dataset/bids-dir-is-file", lambda tmp, mp: Setup((tmp / "f").resolve(), tmp / "out", [],
                                                           before=lambda: (tmp / "f").write_text("x")),
         66, "", "nothing written", None),
]


# ---------------------------------------------------------------------------- outputs

def inside(sub):
    return lambda tmp, bids: bids / sub


def rerun_inside(tmp, mp):
    bids = dataset(tmp)
    return Setup(bids, bids / "legseg_out", ["--skip_bids_validator", "--overwrite"], runs=2)


def no_double_desc(setup):
    assert outputs(setup) == [DSEG]


def prepared_out(prepare: Callable[[Path, Path], None], *args, runs=1):
    def build(tmp, mp):
        bids = dataset(tmp)
        out = tmp / "out"
        out.mkdir()
        prepare(tmp, out)
        return Setup(bids, out, ["--skip_bids_validator", *args], runs=runs)
    return build


def regular(*names):
    def check(setup):
        for name in names:
            path = setup.out / name
            assert path.is_file() and not path.is_symlink(), name
        assert (setup.out / "dseg.tsv").read_text().startswith("index")
    return check


def full_disk(tmp, mp):
    """OUTPUT_DIR on a full file system: a 300 kB tmpfs when this runs as root, else every
    write raises ENOSPC."""
    bids = dataset(tmp)
    out = tmp / "mnt"
    out.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(out)], capture_output=True).returncode == 0
    if mounted:
        MOUNTS.append(out)
        fd = os.open(out / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
    else:
        mp.setattr(derivatives, "_create_once", enospc)
    return Setup(bids, out / "out" if not mounted else out, ["--skip_bids_validator"])


MOUNTS: list[Path] = []


def enospc_at(target: str):
    def build(tmp, mp):
        bids = dataset(tmp)
        if target == "label map":
            mp.setattr(nifti_io.nib, "save", enospc)
        elif target == "sidecar":
            mp.setattr(derivatives, "write_json", enospc)
        elif target == "dataset files":
            mp.setattr(derivatives, "_create_once", enospc)
        return Setup(bids, tmp / "out", ["--skip_bids_validator"])
    return build


def no_partial_dseg(setup):
    assert not outputs(setup)


def stale_temporaries(tmp, out):
    (out / "sub-01/anat").mkdir(parents=True)
    (out / "sub-01/anat/.sub-01_acq-outphase_desc-muscles_dseg.nii.gz.999999.tmp.nii.gz").write_bytes(b"x")
    (out / ".dseg.tsv.abcd.tmp").write_text("half")


def dseg_without_sidecar(tmp, out):
    (out / "sub-01/anat").mkdir(parents=True)
    (out / DSEG).write_bytes(b"partial")


def link_output_outside(tmp, out):
    (tmp / "victim.nii.gz").write_bytes(b"precious")
    (out / "sub-01/anat").mkdir(parents=True)
    os.symlink(tmp / "victim.nii.gz", out / DSEG)


def victim_kept(setup):
    assert (setup.out.parent / "victim.nii.gz").read_bytes() == b"precious"
    assert not (setup.out / DSEG).is_symlink()


def work_dir_case(tmp, mp):
    bids = dataset(tmp)
    (tmp / "file").write_text("x")
    return Setup(bids, tmp / "out", ["--skip_bids_validator", "-w", tmp / "file" / "w"])


OUTPUT_CASES = [
    Case("output/inside-bids-dir-rerun", rerun_inside, 0, "left out of the inputs",
         "one label map, no desc-muscles_desc-muscles", no_double_desc),
    Case("output/under-derivatives", plain("--skip_bids_validator", out_of=inside("derivatives/legseg")), 0,
         "", "one label map", n_outputs(1)),
    Case("output/equals-bids-dir", plain(out_of=lambda tmp, bids: bids), 64, "", "nothing written", None),
    Case("output/is-a-file", plain("--skip_bids_validator",
                                   out_of=lambda tmp, bids: (tmp / "f", (tmp / "f").write_text("x"))[0]),
         73, "", "nothing written", None),
    Case("output/parent-is-a-file", plain("--skip_bids_validator",
                                          out_of=lambda tmp, bids: (tmp / "f", (tmp / "f").write_text("x"))[0] / "o"),
         73, "", "nothing written", None),
    Case("output/work-dir-unusable", work_dir_case, 73, "", "nothing written", None),
    Case("output/disk-full-tmpfs", full_disk, 73, "No space left on device", "no partial file",
         no_partial_dseg),
    Case("output/enospc-label-map", enospc_at("label map"), 73, "No space left on device",
         "no label map", no_partial_dseg),
    Case("output/enospc-sidecar", enospc_at("sidecar"), 73, "No space left on device",
         "label map removed with its missing sidecar", no_partial_dseg),
    Case("output/enospc-dataset-files", enospc_at("dataset files"), 73, "No space left on device",
         "nothing segmented", no_partial_dseg),
    Case("output/dangling-dseg-tsv-link", prepared_out(lambda tmp, out: os.symlink(tmp / "gone", out / "dseg.tsv")),
         0, "is a symbolic link", "dseg.tsv a regular file", regular("dseg.tsv")),
    Case("output/description-link-outside", prepared_out(
        lambda tmp, out: ((tmp / "desc.json").write_text("{}"),
                          os.symlink(tmp / "desc.json", out / "dataset_description.json"))),
         0, "is a symbolic link", "regular file; the link target untouched",
         lambda s: (regular("dataset_description.json")(s), (s.out.parent / "desc.json").read_text() == "{}")),
    Case("output/dseg-link-outside-overwrite", prepared_out(link_output_outside, "--overwrite"), 0,
         "is a symbolic link", "link replaced, its target untouched", victim_kept),
    Case("output/stale-temporaries", prepared_out(stale_temporaries), 0, "", "label map; old temporaries ignored",
         n_outputs(1)),
    Case("output/dseg-without-sidecar", prepared_out(dseg_without_sidecar), 0, "",
         "the partial label map redone", lambda s: nib.load(str(s.out / DSEG))),
    Case("output/rerun-skips", prepared_out(lambda tmp, out: None, runs=2), 0, "use --overwrite",
         "the first run's outputs", n_outputs(1)),
    Case("output/rerun-overwrite", prepared_out(lambda tmp, out: None, "--overwrite", runs=2), 0, "",
         "the second run's outputs", n_outputs(1)),
]


# ---------------------------------------------------------------------------- models, signals

def models_case(change: Callable[[Path], None], *args):
    def build(tmp, mp):
        bids = dataset(tmp)
        models = tmp / "models"
        if change is not None:
            shutil.copytree(REPO_ROOT / "models", models)
            change(models)
        return Setup(bids, tmp / "out", ["--skip_bids_validator", "--models", models, *args],
                     real_models=True)
    return build


def corrupt_weights(models):
    with open(models / "upperleg.weights.h5", "r+b") as handle:
        handle.seek(4000)
        handle.write(b"flip")


def stop_second(sig):
    def build(tmp, mp):
        bids = dataset(tmp, {T1W: None, T1W_2: None})

        class Stop(ThresholdPlaceholderSegmenter):
            def segment(self, volume, spacing, **kwargs):
                if self.calls == 1 and not STOPPED:
                    STOPPED.append(sig)
                    if sig == signal.SIGINT:
                        raise KeyboardInterrupt
                    os.kill(os.getpid(), sig)
                return super().segment(volume, spacing, **kwargs)

        STOPPED.clear()
        mp.setattr(pipeline, "load_segmenter", lambda config, models_dir: Stop())
        return Setup(bids, tmp / "out", ["--skip_bids_validator"], runs=2)
    return build


STOPPED: list = []


MODEL_SIGNAL_CASES = [
    Case("model/missing-folder", models_case(None), 3, "manifest", "nothing segmented", no_outputs),
    Case("model/corrupt-manifest", models_case(lambda m: (m / "manifest.json").write_text("{x")), 3,
         "not valid JSON", "nothing segmented", no_outputs),
    Case("model/wrong-checksum", models_case(corrupt_weights, "--region", "upper"), 3, "sha256",
         "nothing segmented", no_outputs),
    Case("model/missing-weights", models_case(lambda m: (m / "upperleg.weights.h5").unlink(),
                                              "--region", "upper"), 3, "not found", "nothing segmented",
         no_outputs),
    Case("signal/sigterm-then-rerun", stop_second(signal.SIGTERM), 0, "terminated (SIGTERM)",
         "both label maps after the rerun", n_outputs(2)),
    Case("signal/sigint-then-rerun", stop_second(signal.SIGINT), 0, "interrupted",
         "both label maps after the rerun", n_outputs(2)),
]


# ---------------------------------------------------------------------------- group, security

def group_case(prepare: Callable[[Path], None], *args):
    def build(tmp, mp):
        bids = dataset(tmp, {T1W: None, T1W_2: None})
        out = tmp / "out"

        def before():
            assert cli.main([str(bids), str(out), "participant", "--skip_bids_validator"]) == 0
            prepare(out)
        return Setup(bids, out, list(args), level="group", before=before)
    return build


def break_map(name):
    def prepare(out):
        dseg = next(out.rglob("sub-02*_dseg.nii.gz"))
        bad = dseg.with_name(name) if name else dseg
        if name:
            dseg.rename(bad)
            dseg.with_name(dseg.name.replace(".nii.gz", ".json")).rename(
                bad.with_name(bad.name.replace(".nii.gz", ".json")))
        bad.write_bytes(b"<not a nifti>")
        for table in out.rglob("sub-02*_morph.tsv"):
            table.unlink()
    return prepare


def flag_fail(out):
    sidecar = next(out.rglob("sub-02*_dseg.json"))
    meta = json.loads(sidecar.read_text())
    meta["legseg"]["qc"] = {"flags": [{"code": "not_anatomy", "severity": "fail",
                                       "message": "<script>alert(1)</script>", "structures": []}]}
    sidecar.write_text(json.dumps(meta))


def page_names(*words, absent=()):
    def check(setup):
        page = (setup.out / "group.html").read_text()
        for word in words:
            assert word in page, word
        for word in absent:
            assert word not in page, word
    return check


def group_tables_without(word):
    def check(setup):
        assert word not in (setup.out / "group_muscles.tsv").read_text()
        assert "<script>" not in (setup.out / "group.html").read_text()
    return check


def offline(tmp, mp):
    """The whole participant level (validator included) in a process without a network."""
    bids = dataset(tmp)
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"]).returncode != 0:
        mp.setenv("LEGSEG_FAULT_OFFLINE", "unavailable")
    return Setup(bids, tmp / "out", [], level="offline")


GROUP_SECURITY_CASES = [
    Case("group/unreadable-label-map", group_case(break_map(None)), 1, "cannot read",
         "group tables of sub-01; sub-02 named on the page",
         page_names("sub-02/anat/sub-02_acq-outphase_desc-muscles_dseg.nii.gz")),
    Case("group/html-in-file-name", group_case(break_map("sub-02_acq-x<b>y_desc-muscles_dseg.nii.gz")), 1,
         "cannot read", "the name escaped on the page", page_names("x&lt;b&gt;y", absent=("x<b>y",))),
    Case("group/qc-fail-left-out", group_case(flag_fail), 0, "left out of the group statistics",
         "sub-02 only in group_qc_flags.tsv; message escaped", group_tables_without("sub-02")),
    Case("group/qc-fail-included", group_case(flag_fail, "--include-failed-qc"), 0, "",
         "sub-02 in the tables", lambda s: "sub-02" in (s.out / "group_muscles.tsv").read_text()),
    Case("group/no-outputs", lambda tmp, mp: Setup(dataset(tmp), tmp / "out", [], level="group"), 0,
         "nothing to do", "logs only", no_outputs),
    Case("security/no-network", offline, 0, "", "label map written offline", n_outputs(1)),
]

CASES = IMAGE_CASES + DATASET_CASES + OUTPUT_CASES + MODEL_SIGNAL_CASES + GROUP_SECURITY_CASES

OFFLINE_SCRIPT = """
import sys
from legseg_tf import cli, pipeline
from tests.fakes import ThresholdPlaceholderSegmenter
pipeline.load_segmenter = lambda config, models_dir: ThresholdPlaceholderSegmenter()
pipeline._participant_reports = lambda results, config: None
sys.exit(cli.main(sys.argv[1:]))
"""


def _run_offline(setup: Setup, tmp: Path) -> tuple[int, str]:
    if os.environ.get("LEGSEG_FAULT_OFFLINE") == "unavailable":
        pytest.skip("unshare -n is not available here (needs root or user namespaces)")
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", OFFLINE_SCRIPT, str(setup.bids), str(setup.out),
         "participant", "-w", str(tmp / "work")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "HOME": str(tmp / "home")},
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case: Case, tmp_path, monkeypatch, caplog, capsys):
    RESULTS[case.id] = False
    monkeypatch.setattr(pipeline, "load_segmenter", lambda config, models_dir: ThresholdPlaceholderSegmenter())
    monkeypatch.setattr(pipeline, "_participant_reports", lambda results, config: None)
    (tmp_path / "filter.json").write_text(json.dumps({"datatype": "anat", "extension": [".nii", ".nii.gz"]}))
    try:
        setup = case.build(tmp_path, monkeypatch)
        if setup.real_models:
            monkeypatch.undo()
        setup.args = [str(tmp_path / "filter.json") if a == "FILTER" else str(a) for a in setup.args]
        if setup.before is not None:
            setup.before()
        caplog.clear()
        capsys.readouterr()
        if setup.level == "offline":
            code, text = _run_offline(setup, tmp_path)
            console = text
        else:
            for _ in range(setup.runs):
                code = cli.main([str(setup.bids), str(setup.out), setup.level, *setup.args])
            captured = capsys.readouterr()
            console = captured.err + captured.out
            text = caplog.text + console
        assert code == case.code, f"exit {code}, expected {case.code}\n{text[-3000:]}"
        assert case.message in text, f"{case.message!r} not in:\n{text[-3000:]}"
        assert "Traceback" not in console
        if setup.out.exists():
            assert not [p for p in setup.out.rglob("*") if ".tmp" in p.name
                        and "999999" not in p.name and ".abcd." not in p.name]
        if case.check is not None:
            case.check(setup)
        RESULTS[case.id] = True
    finally:
        while MOUNTS:
            subprocess.run(["umount", str(MOUNTS.pop())], check=False)


def test_zz_summary(capsys):
    """Print "N cases, K held" for the cases that ran in this session."""
    held = sum(RESULTS.values())
    with capsys.disabled():
        print(f"\nfault matrix: {len(RESULTS)} cases, {held} held")
    failed = sorted(k for k, v in RESULTS.items() if not v)
    assert not failed, f"cases that did not hold: {failed}"
