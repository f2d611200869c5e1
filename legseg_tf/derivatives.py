"""The BIDS-Derivatives dataset legseg writes: names, dataset_description, sidecars, lookup tables.

Layout of OUTPUT_DIR::

    dataset_description.json            written once (safe with concurrent participant jobs)
    README.md                           what the dataset holds and how it was made
    dseg.tsv                            label lookup table inherited by every *_dseg.nii.gz
    dseg.json                           its data dictionary (the side and region columns)
    legseg_labels.txt                   the same table as an ITK-SNAP label description file,
    legseg_labels.ctbl                  ... as a 3D Slicer colour table
    legseg_labels.lut                   ... and as an FSLeyes lookup table
    .bidsignore                         non-BIDS outputs (reports, logs, group tables)
    logs/                               one log file per run
    sub-<label>/[ses-<label>/]<datatype>/<source entities>_desc-muscles_dseg.nii.gz (+ .json)
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from legseg_tf import __version__
from legseg_tf.labels import dseg_json, dseg_tsv_text, fsleyes_lut_text, itksnap_text, slicer_ctbl_text
from legseg_tf.results import InputImage

logger = logging.getLogger(__name__)

PIPELINE_NAME = "legseg"
CODE_URL = "https://github.com/legseg/legseg"
BIDS_VERSION = "1.10.0"
DSEG_DESC = "muscles"
#: ``Description`` of every label map; also at the top of dseg.json, which every
#: ``*_dseg.nii.gz`` inherits (an equal value there is no override of the sidecars' one).
DSEG_DESCRIPTION = "Automated segmentation of leg muscles and bones (QMRITools Muscles_leg numbering)."
#: ``Authors`` of the derivative dataset: who made the method that produced it. BIDS asks for
#: one entry per contributor; whoever runs legseg may add themselves.
AUTHORS = ("legseg developers",
           "Martijn Froeling (QMRITools: pipeline design, label table and networks)")
#: BIDS URI name of the input dataset (``SourceDatasets``, ``DatasetLinks``, sidecar ``Sources``).
RAW_DATASET = "raw"
#: Colour tables for viewers, beside dseg.tsv: file name -> text (same labels and colours).
VIEWER_TABLES = {
    "legseg_labels.txt": itksnap_text,      # ITK-SNAP label description file
    "legseg_labels.ctbl": slicer_ctbl_text,  # 3D Slicer colour table
    "legseg_labels.lut": fsleyes_lut_text,   # FSLeyes lookup table
}
BIDSIGNORE_LINES = ("logs/", "*.html", "group_*.tsv", *VIEWER_TABLES, "*_morph.tsv", "*_morph.json")


@contextlib.contextmanager
def _filled_temporary(path: Path, fill: Callable[[Path], object], suffix: str,
                      fsync: bool) -> Iterator[Path]:
    """A temporary file beside ``path`` (``.<name>.<random><suffix>``), filled by ``fill`` and
    given the permissions the umask allows (as a file created in place would have); removed on
    leaving, whatever happened, unless it was moved away. The one primitive of every
    atomic write (:func:`atomic_write` and the create-once of the dataset files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        fill(tmp)
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs follow the umask
        yield tmp
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def atomic_write(path: Path, fill: Callable[[Path], object], suffix: str = ".tmp",
                 fsync: bool = False) -> Path:
    """Write ``path`` in one step: ``fill(tmp)`` writes a temporary file in the same folder,
    which then replaces ``path`` (``os.replace``). Readers see the old file or the new one,
    never a half-written one; on any failure ``path`` is unchanged and the temporary file gone.

    Args:
        path: the file to write (its folder is created when missing).
        fill: writes the whole content to the path it is given (an existing empty file).
        suffix: ending of the temporary file's name, for writers that choose the format by it
            (e.g. ``".tmp.nii.gz"`` for nibabel, ``".weights.h5"`` for Keras).
        fsync: flush the content to disk before the rename (files read by other processes
            after a crash, e.g. a models manifest).

    A symbolic link at ``path`` is replaced by a regular file (with a warning), never written
    through.
    """
    path = Path(path)
    with _filled_temporary(path, fill, suffix, fsync) as tmp:
        warn_if_symlink(path)
        os.replace(tmp, path)
    return path


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), fsync=fsync)


def atomic_write_text(path: Path, text: str, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def warn_if_symlink(path: Path) -> None:
    """Say so when an output about to be written is a symbolic link: outputs replace the link
    by a regular file (they are never written through it)."""
    if os.path.islink(path):
        logger.warning("%s is a symbolic link (to %s); replacing it by a regular file",
                       path, os.readlink(path))


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _json_default(value):
    """JSON form of numpy scalars/arrays and paths (everything else as text)."""
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_json(path: Path, payload: dict) -> Path:
    """Atomically write a JSON document (indented, keys in insertion order)."""
    return atomic_write_text(path, json.dumps(payload, indent=2, default=_json_default) + "\n")


#: Files that container engines create in every container: Docker (``/.dockerenv``), Podman
#: (``/run/.containerenv``), Apptainer/Singularity (``/.singularity.d``).
DOCKER_MARKERS = (".dockerenv", "run/.containerenv")
SINGULARITY_MARKERS = (".singularity.d",)
#: Where the markers are looked for (a test points it elsewhere).
FILESYSTEM_ROOT = Path("/")


def container_info(environ: dict | None = None, root: Path | None = None) -> dict | None:
    """The container this process runs in, or None when it does not run in one.

    Both must hold, so that neither a variable left in a host shell nor a marker file alone
    (a development machine that happens to be a Docker container) counts:

    * Apptainer/Singularity: ``APPTAINER_CONTAINER`` or ``SINGULARITY_CONTAINER`` (set by the
      runtime: the image path) and ``/.singularity.d``; the URI is the image.
    * Docker/Podman: ``LEGSEG_DOCKER_TAG`` (set by legseg's Dockerfile) and ``/.dockerenv`` or
      ``/run/.containerenv``; the tag is the image's.
    """
    environ = os.environ if environ is None else environ
    root = FILESYSTEM_ROOT if root is None else Path(root)

    def marked(markers: tuple[str, ...]) -> bool:
        return any(os.path.lexists(root / marker) for marker in markers)

    for variable in ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        if environ.get(variable) and marked(SINGULARITY_MARKERS):
            return {"Type": "singularity", "URI": environ[variable]}
    if environ.get("LEGSEG_DOCKER_TAG") and marked(DOCKER_MARKERS):
        return {"Type": "docker", "Tag": environ["LEGSEG_DOCKER_TAG"]}
    return None


def _doi_uri(doi: str) -> str:
    """A DOI as the URI BIDS asks for (``doi:<prefix>/<suffix>``; bare DOIs are deprecated)."""
    doi = doi.strip()
    for prefix in ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "http://dx.doi.org/"):
        if doi.lower().startswith(prefix):
            return "doi:" + doi[len(prefix):]
    return doi if doi.lower().startswith("doi:") else f"doi:{doi}"


def raw_location(bids_dir: Path, output_dir: Path | None = None) -> str:
    """Where the ``raw`` of ``DatasetLinks`` lies: a relative path when OUTPUT_DIR is inside
    BIDS_DIR (the BIDS layout ``<dataset>/derivatives/legseg`` gives ``../..``, which stays
    right when the dataset moves), else BIDS_DIR's ``file://`` URI."""
    bids_dir = Path(bids_dir).resolve()
    if output_dir is not None:
        output_dir = Path(output_dir).resolve()
        if output_dir != bids_dir and output_dir.is_relative_to(bids_dir):
            return Path(os.path.relpath(bids_dir, output_dir)).as_posix()
    return bids_dir.as_uri()


def source_dataset(raw: dict) -> dict:
    """The ``SourceDatasets`` entry of the input dataset: ``URL`` as the BIDS URI ``bids:raw:``
    (``DatasetLinks`` resolves ``raw``, as for the ``bids:raw:`` URIs of the sidecars),
    ``DOI`` from its ``DatasetDOI``, and ``Version`` where the DOI names one (OpenNeuro's
    ``doi:10.18112/openneuro.ds000001.v1.0.0``). No other keys: BIDS defines only these."""
    source: dict = {"URL": f"bids:{RAW_DATASET}:"}
    doi = raw.get("DatasetDOI")
    if isinstance(doi, str) and doi.strip():
        source["DOI"] = _doi_uri(doi)
        version = re.search(r"\.v(\d+(?:\.\d+)*)$", source["DOI"])
        if version:
            source["Version"] = version.group(1)
    return source


def dataset_description(bids_dir: Path, output_dir: Path | None = None) -> dict:
    """The derivative dataset_description.json content for a source dataset (``output_dir``,
    when given, lets the link to BIDS_DIR be relative; see :func:`raw_location`)."""
    generated_by = {"Name": PIPELINE_NAME, "Version": __version__, "CodeURL": CODE_URL}
    container = container_info()
    if container:
        generated_by["Container"] = container
    raw = read_raw_description(bids_dir)
    description = {
        "Name": "legseg leg-muscle segmentations",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
    }
    if isinstance(raw.get("License"), str) and raw["License"].strip():
        # derived data stay under the raw data's licence (BIDS: License of the dataset)
        description["License"] = raw["License"].strip()
    description.update({
        "Authors": list(AUTHORS),
        "GeneratedBy": [generated_by],
        "SourceDatasets": [source_dataset(raw)],
        "DatasetLinks": {RAW_DATASET: raw_location(bids_dir, output_dir)},
        "HowToAcknowledge": (
            "Cite legseg and QMRITools: Froeling M. QMRTools: a Mathematica toolbox for "
            "quantitative MRI analysis. J Open Source Softw 2019;4:1204."
        ),
    })
    return description


def read_raw_description(bids_dir: Path) -> dict:
    """BIDS_DIR's dataset_description.json as a dict ({} when missing or unreadable)."""
    try:
        raw = json.loads((Path(bids_dir) / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return raw if isinstance(raw, dict) else {}


def readme_text(bids_dir: Path) -> str:
    """README.md of the derivative dataset: what it holds, how it was made, how to read it."""
    name = read_raw_description(bids_dir).get("Name")
    source = f"the BIDS dataset \"{name}\"" if isinstance(name, str) and name.strip() else \
        "a BIDS dataset"
    return f"""# legseg leg-muscle segmentations

Muscle and bone label maps of axial Dixon-type leg MRI of {source}, made by legseg
{__version__} ({CODE_URL}), a Python/Keras port of the automated full-leg segmentation of
QMRITools (SegmentData, M. Froeling). `dataset_description.json` records the software
(GeneratedBy) and the input dataset (SourceDatasets, DatasetLinks); each label map's JSON
sidecar records its source image, the networks used (with their sha256) and the run settings.

## Contents

- `sub-<label>/[ses-<label>/]anat/*_desc-{DSEG_DESC}_dseg.nii.gz`: label maps on the grid of their
  source image (same shape and affine); `*_desc-{DSEG_DESC}_morph.tsv`: volume, cross-section
  and fat fraction per structure.
- `dseg.tsv` (+ `dseg.json`): the label table shared by every label map (QMRITools
  Muscles_leg numbering: odd = left, even = right); the same table for viewers:
  `legseg_labels.txt` (ITK-SNAP), `legseg_labels.ctbl` (3D Slicer), `legseg_labels.lut` (FSLeyes).
- `sub-<label>.html`: QC report of each participant; `group.html` and `group_*.tsv`: group
  level (written by `legseg ... group`); `logs/`: one log file per run.

Reports, tables outside the BIDS naming and logs are listed in `.bidsignore`.
Check the QC reports before using the label maps: the networks can fail on images unlike
their training data.
"""


def ensure_dataset_files(output_dir: Path, bids_dir: Path) -> None:
    """Create dataset_description.json, README.md, dseg.tsv + dseg.json, the viewer colour tables and
    .bidsignore once (entries missing from an existing .bidsignore are added).

    Safe when several participant jobs start at the same time: each file is first written
    to a private temporary file and then hard-linked into place, which fails (harmlessly) if
    another job got there first; readers never see a half-written file.
    """
    files = {
        "dataset_description.json": json.dumps(dataset_description(bids_dir, output_dir),
                                               indent=2) + "\n",
        "README.md": readme_text(bids_dir),
        "dseg.tsv": dseg_tsv_text(),
        "dseg.json": json.dumps({"Description": DSEG_DESCRIPTION, **dseg_json()}, indent=2) + "\n",
        **{name: text() for name, text in VIEWER_TABLES.items()},
        ".bidsignore": "\n".join(BIDSIGNORE_LINES) + "\n",
    }
    for name, text in files.items():
        _create_once(Path(output_dir) / name, text)
    _complete_bidsignore(Path(output_dir) / ".bidsignore")
    _check_version(Path(output_dir) / "dataset_description.json")


def _complete_bidsignore(path: Path) -> None:
    """Append the entries an older legseg (or a person) left out of an existing .bidsignore,
    keeping its lines, so that files added since stay out of validation."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    present = {line.strip() for line in text.splitlines()}
    missing = [line for line in BIDSIGNORE_LINES if line not in present]
    if missing:
        separator = "" if not text or text.endswith("\n") else "\n"
        atomic_write_text(path, text + separator + "\n".join(missing) + "\n")


def _create_once(path: Path, text: str) -> None:
    """Create ``path`` with ``text`` unless it exists; safe when several jobs do it at once
    (the complete file is hard-linked into place: the first one wins)."""
    if os.path.islink(path):
        atomic_write_text(path, text)  # the link is replaced (with a warning), never followed
        return
    if path.exists():
        return
    data = text.encode("utf-8")
    with _filled_temporary(path, lambda tmp: tmp.write_bytes(data), ".tmp", False) as tmp:
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:
            # File systems without hard links: exclusive create, then fill it in.
            try:
                with open(path, "xb") as handle:
                    handle.write(data)
            except FileExistsError:
                pass


def _check_version(path: Path) -> None:
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
        version = existing["GeneratedBy"][0].get("Version")
    except (OSError, json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        logger.warning("%s is not a legseg dataset description", path)
        return
    if version != __version__:
        logger.warning(
            "%s was written by legseg %s; this is %s: outputs of two versions are mixed",
            path, version, __version__,
        )


def dseg_path(output_dir: Path, image: InputImage, desc: str = DSEG_DESC) -> Path:
    """``OUTPUT_DIR/<source folder>/<source entities>_desc-<desc>_dseg.nii.gz``."""
    folder = Path(output_dir) / Path(image.relpath).parent
    return folder / f"{image.source_stem}_desc-{desc}_dseg.nii.gz"


def probseg_path(output_dir: Path, image: InputImage, desc: str = DSEG_DESC) -> Path:
    """``..._desc-<desc>_probseg.nii.gz`` next to the dseg."""
    folder = Path(output_dir) / Path(image.relpath).parent
    return folder / f"{image.source_stem}_desc-{desc}_probseg.nii.gz"


def sidecar_path(nifti_path: Path) -> Path:
    """JSON sidecar path of a ``.nii.gz``/``.nii`` file."""
    name = nifti_path.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name.rsplit(".", 1)[0]
    return nifti_path.with_name(stem + ".json")


#: Ending of every label map name: ``<source entities>`` + this.
DSEG_ENDING = f"_desc-{DSEG_DESC}_dseg.nii.gz"
#: Label maps of OUTPUT_DIR, relative to it (without and with a session folder).
DSEG_GLOBS = (f"sub-*/*/*{DSEG_ENDING}", f"sub-*/ses-*/*/*{DSEG_ENDING}")
#: Group-level outputs in OUTPUT_DIR.
GROUP_LONG_TSV = "group_muscles.tsv"
GROUP_WIDE_TSV = "group_muscles_wide.tsv"
GROUP_ASYMMETRY_TSV = "group_asymmetry.tsv"
GROUP_QC_FLAGS_TSV = "group_qc_flags.tsv"
GROUP_HTML = "group.html"


def label_maps(output_dir: Path, subject: str | None = None) -> list[Path]:
    """Label maps in OUTPUT_DIR (of one participant, label without ``sub-``), sorted."""
    if subject is not None:
        return sorted((Path(output_dir) / f"sub-{subject}").glob(f"**/*{DSEG_ENDING}"))
    found: set[Path] = set()
    for pattern in DSEG_GLOBS:
        found.update(Path(output_dir).glob(pattern))
    return sorted(found)


def dseg_source_stem(dseg: Path) -> str:
    """``<source entities>`` of a label map name (the source image's name without suffix)."""
    name = Path(dseg).name
    if not name.endswith(DSEG_ENDING):
        raise ValueError(f"not a label map name ending in {DSEG_ENDING}: {name}")
    return name[: -len(DSEG_ENDING)]


def morph_path(dseg: Path) -> Path:
    """``..._desc-<desc>_morph.tsv``: the morphometry table next to a ``..._dseg.nii.gz``."""
    name = Path(dseg).name
    if not name.endswith("_dseg.nii.gz"):
        raise ValueError(f"not a label map name ending in _dseg.nii.gz: {name}")
    return Path(dseg).with_name(name[: -len("_dseg.nii.gz")] + "_morph.tsv")


def report_path(output_dir: Path, subject: str) -> Path:
    """``OUTPUT_DIR/sub-<label>.html``: a participant's QC report."""
    return Path(output_dir) / f"sub-{subject}.html"


def bids_uri(relpath: str) -> str:
    """BIDS URI of a file of the source dataset: ``bids:raw:<relpath>``."""
    return f"bids:{RAW_DATASET}:{relpath}"


def software_versions() -> dict:
    """Versions of the software that shaped the result (no TensorFlow import if not loaded)."""
    import sys

    import nibabel
    import numpy
    import scipy

    versions = {
        "legseg": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "nibabel": nibabel.__version__,
    }
    for module in ("tensorflow", "keras"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "unknown")
    return versions


def dseg_sidecar(image: InputImage, models: list[dict], provenance: dict) -> dict:
    """Sidecar of a label map: description, sources, spatial reference and provenance."""
    return {
        "Description": DSEG_DESCRIPTION,
        "Sources": [bids_uri(image.relpath)],
        "SpatialReference": bids_uri(image.relpath),
        "Manual": False,
        "Type": "muscles",
        "LabelTable": "dseg.tsv",
        "Models": models,
        **provenance,
    }
