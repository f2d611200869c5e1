"""Find the images to segment in a BIDS dataset.

Default query (replaced entirely by ``--bids-filter-file``):

1. anatomical images whose ``acq`` entity contains ``outphase`` (case-insensitive), e.g.
   ``sub-01_acq-outphase_T1w.nii.gz`` (vendor-reconstructed opposed-phase Dixon images);
2. multi-echo gradient-echo series (``_MEGRE``, magnitude only): from each series one echo is
   chosen, the one whose EchoTime lies nearest an out-of-phase time of fat and water at the
   series' field strength (see :func:`out_of_phase_distance`).

Labels of participants and sessions are given without their ``sub-``/``ses-`` prefixes; files
that have no session are kept when a session filter is given (BIDS execution spec).

The images of one session with their entities and inherited sidecar metadata
(:func:`session_files`, for :mod:`legseg_tf.fatfraction`) and the grouping of MEGRE echoes into
series (:func:`megre_series`) come from the same pybids index; :func:`parse_entities` reads
the entities of names outside it (legseg's own outputs, ``Sources`` of their sidecars).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from legseg_tf.results import InputImage

logger = logging.getLogger(__name__)

LABEL_PATTERN = re.compile(r"^[A-Za-z0-9]+$")
#: Main methylene fat peak relative to water, in ppm.
FAT_WATER_SHIFT_PPM = 3.4
#: Proton gyromagnetic ratio / 2 pi, in MHz per tesla.
GAMMA_MHZ_PER_T = 42.577
#: Field strength assumed when a MEGRE sidecar lacks MagneticFieldStrength, in tesla.
DEFAULT_FIELD_T = 3.0
NIFTI_EXTENSIONS = [".nii", ".nii.gz"]


class InputSelectionError(ValueError):
    """The filters selected no input image (exit code 18)."""


class FilterFileError(ValueError):
    """The ``--bids-filter-file`` is unreadable or malformed (usage error)."""


class DatasetIndexError(ValueError):
    """A file of BIDS_DIR cannot be indexed (e.g. an invalid JSON sidecar): exit 16."""


#: Top-level folders of BIDS_DIR that are never inputs (as pybids is told).
IGNORED_TOP = ("code", "stimuli", "sourcedata", "models", "derivatives")


@dataclass
class DatasetScan:
    """What a walk of BIDS_DIR found before indexing.

    Attributes:
        loops: folders (relative POSIX paths) that are symbolic links back to a folder already
            walked (a loop or a second route to the same folder); not indexed.
        invalid_json: JSON files (relative paths) that do not parse, with the reason.
        excluded: folders left out because they hold legseg's own outputs or work files.
        fingerprint: sha256 of what an index of the dataset holds: the path of every file
            walked, and the size and modification time of every JSON file (pybids indexes
            their content).
    """

    loops: list[str] = field(default_factory=list)
    invalid_json: dict[str, str] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    fingerprint: str = ""

    def ignore_patterns(self, include_invalid_json: bool = True) -> list:
        """pybids ignore patterns (compiled; matched against "/<relative path>")."""
        paths = self.loops + self.excluded + (list(self.invalid_json) if include_invalid_json else [])
        return [re.compile("^/" + re.escape(rel) + "(/|$)") for rel in paths]


def scan_dataset(bids_dir: Path, exclude: tuple[Path, ...] = ()) -> DatasetScan:
    """Walk BIDS_DIR once, following folder links but never twice into the same real folder
    (so link loops end at once), and check every JSON file parses.

    Args:
        bids_dir: dataset root.
        exclude: folders never to index (OUTPUT_DIR, the work dir) when they lie inside it.
    """
    root = Path(bids_dir).resolve()
    scan = DatasetScan()
    excluded_real = set()
    for folder in exclude:
        real = Path(folder).resolve()
        if real != root and root in real.parents:
            rel = real.relative_to(root).as_posix()
            if rel.split("/")[0] not in IGNORED_TOP:
                scan.excluded.append(rel)
            excluded_real.add(str(real))
    seen = {str(root)}
    files: list[str] = []
    for current, dirnames, filenames in os.walk(root, followlinks=True, onerror=None):
        rel_current = Path(current).relative_to(root).as_posix()
        keep = []
        for name in sorted(dirnames):
            rel = name if rel_current == "." else f"{rel_current}/{name}"
            if name.startswith(".") or (rel_current == "." and name in IGNORED_TOP):
                continue
            real = os.path.realpath(os.path.join(current, name))
            if real in excluded_real:
                continue
            if real in seen:
                scan.loops.append(rel)
                continue
            seen.add(real)
            keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            if name.startswith("."):
                continue
            rel = name if rel_current == "." else f"{rel_current}/{name}"
            if not name.endswith(".json"):
                files.append(rel)
                continue
            try:
                with open(os.path.join(current, name), encoding="utf-8") as handle:
                    stat = os.fstat(handle.fileno())
                    files.append(f"{rel}\t{stat.st_size}\t{stat.st_mtime_ns}")
                    json.load(handle)
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                scan.invalid_json[rel] = str(error).splitlines()[0]
            except OSError as error:
                files.append(rel)
                scan.invalid_json[rel] = f"unreadable: {error.strerror or error}"
    listing = "\n".join(sorted(files)).encode("utf-8", "surrogateescape")
    scan.fingerprint = hashlib.sha256(listing).hexdigest()
    for rel in scan.loops:
        logger.warning("%s/%s leads back to a folder already indexed (symbolic link loop or "
                       "duplicate route); not followed", root, rel)
    return scan


def normalise_label(label: str, prefix: str) -> str:
    """Strip an optional ``sub-``/``ses-`` prefix and validate the label.

    >>> normalise_label("sub-01", "sub-")
    '01'

    Raises:
        ValueError: when the label is not alphanumeric (e.g. ``../x``).
    """
    value = label[len(prefix):] if label.startswith(prefix) else label
    if not LABEL_PATTERN.fullmatch(value):
        raise ValueError(f"invalid label {label!r}: BIDS labels are alphanumeric ([A-Za-z0-9]+)")
    return value


def load_filter_file(path: Path) -> dict:
    """Read a pybids filter JSON object (entity -> value, list of values, null or "*")."""
    try:
        filters = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise FilterFileError(f"cannot read --bids-filter-file {path}: {error}") from error
    if not isinstance(filters, dict) or not filters:
        raise FilterFileError(
            f"--bids-filter-file {path} must hold a non-empty JSON object of pybids entity filters"
        )
    return filters


def out_of_phase_distance(echo_time_s: float, field_t: float) -> float:
    """How far an echo time is from the nearest fat-water out-of-phase time, in cycles.

    Fat precesses ``3.4 ppm x 42.577 MHz/T x B0`` slower than water; after ``k`` cycles of
    that difference frequency fat and water are in phase (integer ``k``) or opposed (half-odd
    ``k``). Returns ``|frac(k) - 0.5|``: 0 at an out-of-phase echo, 0.5 at an in-phase one.

    >>> round(out_of_phase_distance(3.45e-3, 3.0), 3)
    0.002
    >>> round(out_of_phase_distance(4.60e-3, 3.0), 3)
    0.498
    """
    cycles = echo_time_s * FAT_WATER_SHIFT_PPM * 1e-6 * GAMMA_MHZ_PER_T * 1e6 * field_t
    return abs((cycles % 1.0) - 0.5)


def _root_anchored_config(root: str) -> dict:
    """pybids' ``bids`` config with every entity pattern confined to the path below ``root``.

    pybids finds an entity by ``pattern.search(absolute path of the file)``, so folders *above*
    the dataset root take part: a root under ``/data/perf/`` makes every file ``datatype-perf``
    (the datatype pattern is ``[/\\]+(anat|func|perf|...)[/\\]+``), ``/x/sub-foo/ds`` makes
    every file ``subject-foo``, and ``ses-``, ``acq-``, ``task-``, ``run-``... folders do the
    same; the default query then finds nothing (issue 15). Each pattern ``P`` becomes
    ``^<root>(?s:.*?)(?:P)``: the root is consumed literally and ``P`` is tried at the first
    position after it, then the next, and so on -- exactly ``P.search(relative path)``, with
    the relative path starting at its ``/``. Nothing is copied, linked or written, so it works
    on read-only datasets and whatever the parent folders are called. The config keeps the
    name ``bids``, which pybids checks (e.g. to add the dot to ``extension`` filters).
    """
    from bids.config import get_option

    with open(get_option("config_paths")["bids"], encoding="utf-8") as handle:
        config = json.load(handle)
    prefix = "^" + re.escape(root.rstrip("/\\")) + "(?s:.*?)"
    for entity in config["entities"]:
        if entity.get("pattern"):
            entity["pattern"] = prefix + "(?:" + entity["pattern"] + ")"
    return config


def _layout(bids_dir: Path, extra_ignore: list | None = None):
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    indexer = BIDSLayoutIndexer(
        validate=False,
        ignore=[*IGNORED_TOP, re.compile(r"/\."), *(extra_ignore or [])],
    )
    # pybids makes the root absolute (without resolving links) and files' paths start with it
    root = str(Path(bids_dir).absolute())
    try:
        return BIDSLayout(root, validate=False, indexer=indexer,
                          config=[_root_anchored_config(root)])
    except (OSError, ValueError) as error:
        # pybids names the file in its message (e.g. a JSON file that does not decode)
        cause = f"{error}" + (f" ({error.__cause__})" if error.__cause__ else "")
        raise DatasetIndexError(f"cannot index {bids_dir}: {cause}".splitlines()[0]) from error


#: Part of the name of an index saved by --bids-database-dir: change it whenever
#: :func:`_layout` indexes differently (patterns, config), so that older indexes are not reused.
INDEX_FORMAT = 1
#: File that pybids keeps an index in, inside its database folder.
INDEX_FILE = "layout_index.sqlite"


def _saved_layout(bids_dir: Path, scan: DatasetScan, database_dir: Path):
    """The layout of ``bids_dir`` from the index saved in ``database_dir`` for this dataset
    state; without one, :func:`_layout` indexes the dataset and the index is saved there."""
    from bids import BIDSLayout

    folder = Path(database_dir) / _index_name(bids_dir, scan)
    if (folder / INDEX_FILE).is_file():
        try:
            layout = BIDSLayout(str(Path(bids_dir).absolute()), validate=False,
                                database_path=str(folder))
            logger.info("reusing the BIDS index %s", folder)
            return layout
        except Exception as error:  # noqa: BLE001 - a damaged index is rebuilt, not fatal
            logger.warning("cannot read the BIDS index %s (%s); indexing %s again", folder,
                           str(error).splitlines()[0] if str(error) else type(error).__name__,
                           bids_dir)
            return _layout(bids_dir, scan.ignore_patterns())
    layout = _layout(bids_dir, scan.ignore_patterns())
    _save_index(layout, folder)
    return layout


def _index_name(bids_dir: Path, scan: DatasetScan) -> str:
    """Folder name of a saved index: a digest of everything that makes two indexes differ
    (dataset location, its files and sidecars, what is left out, pybids, legseg's indexing),
    so one database dir serves several datasets and a changed dataset is indexed again."""
    import bids

    key = json.dumps({
        "root": str(Path(bids_dir).absolute()),
        "content": scan.fingerprint,
        "ignore": [*IGNORED_TOP, *(p.pattern for p in scan.ignore_patterns())],
        "pybids": bids.__version__,
        "format": INDEX_FORMAT,
    }, sort_keys=True)
    return "legseg-" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def _save_index(layout, folder: Path) -> None:
    """Save an in-memory index as ``folder`` in one step: written into a private folder next
    to it, then renamed, so that the tasks of a job array that index at the same time never
    read a half-written index (the first rename wins; the others drop their copy). When the
    index cannot be saved (e.g. a read-only database dir), the run goes on with it in memory."""
    import shutil
    import tempfile

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as error:
        logger.warning("cannot save the BIDS index in %s: %s", folder.parent, error.strerror or error)
        return
    try:
        layout.save(str(private), replace_connection=False)
        private.chmod(0o755)
        os.rename(private, folder)
        logger.info("saved the BIDS index as %s", folder)
    except Exception as error:  # noqa: BLE001 - the index stays in memory for this run
        if not (folder / INDEX_FILE).is_file():  # else another task saved it first
            logger.warning("cannot save the BIDS index as %s: %s", folder,
                           getattr(error, "strerror", None) or error)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _pybids_filters(filters: dict) -> dict:
    from bids.layout import Query

    converted = {}
    for key, value in filters.items():
        if value is None:
            converted[key] = Query.NONE
        elif value == "*":
            converted[key] = Query.ANY
        else:
            converted[key] = value
    return converted


def _to_input(bids_file, bids_dir: Path, layout) -> InputImage:
    entities = {k: v for k, v in bids_file.get_entities().items() if isinstance(v, (str, int, float))}
    path = Path(bids_file.path)
    metadata = layout.get_metadata(bids_file.path)
    echo_time = metadata.get("EchoTime")
    body_part = metadata.get("BodyPartExamined")
    return InputImage(
        subject=str(entities["subject"]),
        session=str(entities["session"]) if entities.get("session") is not None else None,
        path=path,
        relpath=path.relative_to(bids_dir).as_posix(),
        entities=entities,
        echo_time=float(echo_time) if isinstance(echo_time, (int, float)) else None,
        body_part=body_part.strip() if isinstance(body_part, str) and body_part.strip() else None,
    )


_T = TypeVar("_T")


def megre_series(files: Iterable[_T], entities: Callable[[_T], Mapping[str, Any]]) -> list[list[_T]]:
    """MEGRE files grouped into series: files whose pybids entities differ only in ``echo``
    (in the order first seen; members in the order given)."""
    series: dict[tuple, list] = defaultdict(list)
    for item in files:
        key = tuple(sorted((k, str(v)) for k, v in entities(item).items() if k != "echo"))
        series[key].append(item)
    return list(series.values())


def _pick_megre_echoes(files: list, layout) -> list:
    """One echo per MEGRE series: the one nearest an out-of-phase echo time."""
    chosen = []
    for members in megre_series(files, lambda bids_file: bids_file.get_entities()):
        scored = []
        for bids_file in members:
            metadata = layout.get_metadata(bids_file.path)
            echo_time = metadata.get("EchoTime")
            if not isinstance(echo_time, (int, float)):
                logger.warning("%s has no EchoTime; it cannot be ranked", bids_file.path)
                continue
            field_t = metadata.get("MagneticFieldStrength")
            if not isinstance(field_t, (int, float)):
                field_t = DEFAULT_FIELD_T
                logger.warning(
                    "%s has no MagneticFieldStrength; assuming %.1f T for echo choice",
                    bids_file.path, DEFAULT_FIELD_T,
                )
            scored.append((out_of_phase_distance(float(echo_time), float(field_t)), float(echo_time), bids_file))
        if scored:
            scored.sort(key=lambda item: (round(item[0], 3), item[1]))
            logger.info(
                "MEGRE series: chose %s (TE %.2f ms)", Path(scored[0][2].path).name, scored[0][1] * 1e3
            )
            chosen.append(scored[0][2])
    return chosen


@dataclass(frozen=True)
class SessionFile:
    """A NIfTI image of one session, as the pybids index has it.

    Attributes:
        path: the file.
        entities: pybids entities (``subject``, ``session``, ``acquisition``, ``run``,
            ``echo``, ``part``, ``suffix``, ``datatype``, ``extension``, ...).
        metadata: its sidecar metadata with BIDS inheritance (dataset-level files first, the
            image's own sidecar last).
    """

    path: Path
    entities: dict[str, Any]
    metadata: dict[str, Any]


def session_files(bids_dir: Path, subject: str, session: str | None) -> list[SessionFile]:
    """The NIfTI images of one subject and session (None: those without a session), any
    datatype folder, sorted by path. Only that subject's folder (and the dataset-level
    sidecars) is indexed; JSON files that do not parse are left out."""
    bids_dir = Path(bids_dir)
    if not (bids_dir / f"sub-{subject}").is_dir():
        return []
    from bids.layout import Query

    layout = _subject_layout(bids_dir, subject)
    found = layout.get(return_type="object", subject=subject, extension=NIFTI_EXTENSIONS,
                       session=session if session else Query.NONE)
    return [SessionFile(Path(f.path), dict(f.get_entities()), dict(layout.get_metadata(f.path)))
            for f in sorted(found, key=lambda f: f.path)]


#: The last subject's index for :func:`session_files`, with the state of the files it saw:
#: the sessions of one subject (segmented one after the other) share it.
_SUBJECT_INDEX: dict[tuple[str, str], tuple[tuple, Any]] = {}


def _subject_layout(bids_dir: Path, subject: str):
    """A pybids index of ``sub-<subject>`` (and the dataset-level files), reused while no
    file there was added, removed, resized or touched."""
    key = (str(bids_dir.absolute()), subject)
    state = _subject_state(bids_dir, subject)
    cached = _SUBJECT_INDEX.get(key)
    if cached is not None and cached[0] == state:
        return cached[1]
    others = re.compile("^/sub-(?!" + re.escape(subject) + "(/|$))")
    scan = DatasetScan(invalid_json=_invalid_json(bids_dir, subject))
    layout = _layout(bids_dir, [others, *scan.ignore_patterns()])
    _SUBJECT_INDEX.clear()
    _SUBJECT_INDEX[key] = (state, layout)
    return layout


def _subject_state(bids_dir: Path, subject: str) -> tuple:
    """(path, size, mtime in ns) of every entry at the dataset's top level and under
    ``sub-<subject>``, sorted."""
    entries = [*bids_dir.iterdir(), *(bids_dir / f"sub-{subject}").rglob("*")]
    state = []
    for path in entries:
        try:
            info = path.stat()
        except OSError:
            continue
        state.append((str(path), info.st_size, info.st_mtime_ns))
    return tuple(sorted(state))


def _invalid_json(bids_dir: Path, subject: str) -> dict[str, str]:
    """JSON files of the dataset level and of ``sub-<subject>`` that do not parse."""
    invalid = {}
    candidates = [*bids_dir.glob("*.json"), *(bids_dir / f"sub-{subject}").rglob("*.json")]
    for path in candidates:
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            invalid[path.relative_to(bids_dir).as_posix()] = str(error).splitlines()[0]
    return invalid


def parse_entities(path: Path) -> tuple[dict[str, str], str]:
    """Key-value entities and suffix of a BIDS-style file name, keys as written
    (``sub-01_acq-x_T1w.nii.gz`` -> ``({"sub": "01", "acq": "x"}, "T1w")``): for names that
    are not in the pybids index (legseg's outputs, the ``Sources`` of their sidecars)."""
    stem = _NAME_EXTENSION.sub("", Path(path).name)
    parts = stem.split("_")
    entities = {}
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if sep:
            entities[key] = value
    return entities, parts[-1]


_NAME_EXTENSION = re.compile(r"(\.nii(\.gz)?|\.json|\.tsv)$")


def _one_per_location(images: list[InputImage]) -> list[InputImage]:
    """Drop images whose file (real folder + name) was already reached by another route."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for image in images:
        key = (os.path.realpath(image.path.parent), image.path.name)
        if key in seen:
            logger.warning("%s is the same file as an input already selected; skipped", image.relpath)
            continue
        seen.add(key)
        unique.append(image)
    return unique


def find_inputs(
    bids_dir: Path,
    participant_labels: tuple[str, ...] = (),
    session_labels: tuple[str, ...] = (),
    filters: dict | None = None,
    exclude: tuple[Path, ...] = (),
    skip_invalid_json: bool = False,
    database_dir: Path | None = None,
) -> list[InputImage]:
    """Select the images to segment.

    Args:
        bids_dir: root of the BIDS dataset.
        participant_labels: labels without ``sub-``; empty = all participants.
        session_labels: labels without ``ses-``; empty = all sessions.
        filters: pybids entity filters replacing the default query (``--bids-filter-file``).
        exclude: folders inside BIDS_DIR never to index (OUTPUT_DIR, the work dir).
        skip_invalid_json: leave JSON files that do not parse out of the index with a warning
            (``--skip_bids_validator``) instead of refusing the dataset.
        database_dir: folder that keeps the pybids index between runs
            (``--bids-database-dir``): reused while the dataset's files and JSON sidecars,
            what is left out and the pybids version are the same, else built and saved.

    Returns:
        The selected images, sorted by path; one per real file location (a folder reached
        twice through links counts once).

    Raises:
        InputSelectionError: a requested participant does not exist, or nothing matched.
        DatasetIndexError: a JSON file does not parse (unless ``skip_invalid_json``), or the
            dataset cannot be indexed.
    """
    bids_dir = Path(bids_dir).resolve()
    scan = scan_dataset(bids_dir, exclude)
    for rel in scan.excluded:
        logger.warning("%s lies inside BIDS_DIR (not under derivatives/); it is left out of the "
                       "inputs", bids_dir / rel)
    if scan.invalid_json:
        first, reason = next(iter(scan.invalid_json.items()))
        if not skip_invalid_json:
            more = f" (and {len(scan.invalid_json) - 1} more)" if len(scan.invalid_json) > 1 else ""
            raise DatasetIndexError(
                f"{bids_dir / first} is not valid JSON: {reason}{more}; fix it or use "
                "--skip_bids_validator to skip such files"
            )
        for rel, reason in scan.invalid_json.items():
            logger.warning("skipping %s: not valid JSON (%s)", bids_dir / rel, reason)
    if database_dir is not None:
        layout = _saved_layout(bids_dir, scan, database_dir)
    else:
        layout = _layout(bids_dir, scan.ignore_patterns())
    subjects = set(layout.get_subjects())
    missing = sorted(set(participant_labels) - subjects)
    if missing:
        raise InputSelectionError(
            f"participant(s) {', '.join(missing)} not found in {bids_dir} "
            f"(available: {', '.join(sorted(subjects)) or 'none'})"
        )
    scope: dict = {"extension": NIFTI_EXTENSIONS}
    if participant_labels:
        scope["subject"] = list(participant_labels)

    def query(**entities) -> list:
        found = layout.get(return_type="object", **{**scope, **entities})
        if session_labels:
            found = [f for f in found if f.get_entities().get("session") in (None, *session_labels)]
        return found

    if filters is not None:
        selected = query(**_pybids_filters(filters))
        megre = [f for f in selected if f.get_entities().get("suffix") == "MEGRE"]
        if megre and "echo" not in filters:
            selected = [f for f in selected if f not in megre] + _pick_megre_echoes(megre, layout)
    else:
        anat = query(datatype="anat")
        outphase = [
            f for f in anat
            if "outphase" in str(f.get_entities().get("acquisition", "")).lower()
            and f.get_entities().get("part", "mag") == "mag"
            and f.get_entities().get("suffix") != "MEGRE"
        ]
        megre = [
            f for f in anat
            if f.get_entities().get("suffix") == "MEGRE" and f.get_entities().get("part", "mag") == "mag"
        ]
        selected = outphase + _pick_megre_echoes(megre, layout)
    images = _one_per_location(sorted({_to_input(f, bids_dir, layout) for f in selected},
                                      key=lambda im: (len(im.relpath), im.relpath)))
    images.sort(key=lambda im: im.relpath)
    if not images:
        what = "the --bids-filter-file query" if filters is not None else "the default query (acq-*outphase* anatomical images or MEGRE series)"
        raise InputSelectionError(f"no input images in {bids_dir} matched {what}; {no_input_hint(query())}")
    return images


def no_input_hint(files: list) -> str:
    """The fix for "no input images" (exit 18), in one line: which kinds of NIfTI images the
    selected participants have, and a ``--bids-filter-file`` content that selects one kind.

    ``files``: pybids files (NIfTI images of the selected participants and sessions)."""
    kinds: dict[tuple, int] = defaultdict(int)
    for bids_file in files:
        entities = bids_file.get_entities()
        if entities.get("suffix"):
            kinds[(entities.get("datatype") or "", entities["suffix"], entities.get("acquisition"))] += 1
    if not kinds:
        return "the selected participants have no NIfTI images at all (is BIDS_DIR right?)"

    def preference(item):
        (datatype, suffix, acquisition), count = item
        opposed = any(word in str(acquisition or "").lower() for word in ("out", "opp"))
        return (datatype != "anat", not opposed, suffix != "T1w", -count, str(acquisition or ""))

    ranked = sorted(kinds.items(), key=preference)
    shown = ", ".join(
        f"{datatype + '/' if datatype else ''}{f'acq-{acq}_' if acq else ''}{suffix} ({count})"
        for (datatype, suffix, acq), count in ranked[:4]
    ) + (f" and {len(ranked) - 4} more kinds" if len(ranked) > 4 else "")
    (datatype, suffix, acquisition), _ = ranked[0]
    example = {"datatype": datatype, "suffix": suffix, "acquisition": acquisition}
    example = {key: value for key, value in example.items() if value}
    return (f"the selected participants have {shown}: to segment one of these, pass --bids-filter-file FILE with FILE "
            f"holding e.g. {json.dumps(example)}")
