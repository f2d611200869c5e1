"""BIDS-App command line: ``run.py bids_dir output_dir {participant,group} [options]``.

Exit codes follow the BIDS execution spec (see README "Exit codes"). This module imports
nothing heavy at load time, so ``--version`` answers without TensorFlow.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path

from legseg_tf import __version__
from legseg_tf.config import DEVICES, MERGE_MODES, PRECISIONS, REGIONS, InferenceConfig, RunConfig
from legseg_tf.errors import ExitCode, UsageError, is_output_full
from legseg_tf.model_store import resolve_models_dir

logger = logging.getLogger(__name__)

#: The app's exit codes (names kept for the CLI's users; values from legseg_tf.errors).
EXIT_OK = ExitCode.OK
EXIT_FAILED = ExitCode.FAILED
EXIT_NO_MODEL = ExitCode.NO_MODEL
EXIT_INVALID_DATASET = ExitCode.INVALID_DATASET
EXIT_UNKNOWN_LEVEL = ExitCode.UNKNOWN_LEVEL
EXIT_NO_INPUT = ExitCode.NO_INPUT
EXIT_USAGE = ExitCode.USAGE
EXIT_NO_BIDS_DIR = ExitCode.NO_BIDS_DIR
EXIT_OUTPUT_DIR = ExitCode.OUTPUT_DIR
EXIT_INTERRUPTED = ExitCode.INTERRUPTED
EXIT_TERMINATED = ExitCode.TERMINATED
ANALYSIS_LEVELS = ("participant", "group")


class _Parser(argparse.ArgumentParser):
    """argparse with the execution-spec usage exit code (64) instead of 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _resolution(text: str):
    from legseg_tf.resampling import parse_resolution

    try:
        return parse_resolution(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _overlap(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


#: Unit prefixes of --mem/--mem-mb in GB (as fMRIPrep: decimal units; "Ki".."Ti" are binary).
_MEMORY_UNITS = {"k": 1e-6, "m": 1e-3, "g": 1.0, "t": 1e3,
                 "ki": 2**10 / 1e9, "mi": 2**20 / 1e9, "gi": 2**30 / 1e9, "ti": 2**40 / 1e9}
_MEMORY_PATTERN = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(?:([kmgt]i?)b?)?$", re.IGNORECASE)


def memory_gb(text: str) -> float:
    """GB of a memory size as fMRIPrep's ``--mem`` takes it: a number of MB, or a number with
    a unit (``16G``, ``16GB``, ``16000M``, ``16GiB``; K, M, G, T are powers of 1000).

    A number below 100 without a unit is refused: ``--mem 16`` would be a 16 MB budget, and
    was almost certainly meant as 16 GB.

    >>> memory_gb("16000"), memory_gb("16G"), memory_gb("16000MB"), memory_gb("0.5t")
    (16.0, 16.0, 16.0, 500.0)
    """
    match = _MEMORY_PATTERN.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected a size in MB or with a unit (e.g. 16000, 16000M, 16G), got {text!r}")
    number, unit = float(match.group(1)), match.group(2)
    if unit is None and number < 100:
        raise argparse.ArgumentTypeError(
            f"{text} without a unit means {text} MB (as in fMRIPrep); write {text}G for GB")
    value = number * _MEMORY_UNITS[(unit or "m").lower()]
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _memory_text(text: str) -> str:
    """Check a ``--mem``/``--mem-mb`` value; the text is kept (converted in :func:`parse_args`)."""
    memory_gb(text)
    return text


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _installed_regions_text() -> str:
    """Which ``--region`` values the default models folder can serve (manifest only)."""
    from legseg_tf import model_store
    from legseg_tf.regions import covered_regions

    folder = model_store.resolve_models_dir()
    try:
        covered = covered_regions(model_store.load_manifest(folder))
    except (model_store.ManifestError, OSError, ValueError):
        return f"no usable models in {folder}"
    return ("the installed models cover " + ", ".join(covered) if covered
            else f"the models in {folder} cover no region")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the BIDS App (also used to check the Boutiques descriptor)."""
    parser = _Parser(
        prog="legseg",
        allow_abbrev=False,  # no prefix matching: "--mem-g" must never mean "--mem-gb"
        description="Automated segmentation of leg muscles in BIDS datasets "
        "(a Python/Keras port of the QMRITools SegmentData pipeline).",
    )
    parser.add_argument("bids_dir", type=Path, help="root folder of the input BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="folder of the BIDS-Derivatives output dataset")
    parser.add_argument(
        "analysis_level",
        help="'participant' segments each selected image; 'group' gathers the participant outputs",
    )
    inputs = parser.add_argument_group("input selection")
    inputs.add_argument(
        "--participant_label", "--participant-label", dest="participant_label", nargs="+",
        metavar="LABEL", default=[], help="participants to process (with or without 'sub-'); default all",
    )
    inputs.add_argument(
        "--session_label", "--session-label", dest="session_label", nargs="+",
        metavar="LABEL", default=[], help="sessions to process (with or without 'ses-'); default all",
    )
    inputs.add_argument(
        "--bids-filter-file", "--bids_filter_file", dest="bids_filter_file", type=Path,
        metavar="FILE", help="JSON object of pybids entity filters that replaces the default input query",
    )
    inputs.add_argument(
        "--bids-database-dir", "--bids_database_dir", dest="bids_database_dir", type=Path,
        metavar="DIR", help="keep the pybids index of BIDS_DIR in DIR (created when missing) and "
        "reuse it while the dataset is unchanged, e.g. across the tasks of a job array",
    )
    inputs.add_argument(
        "--skip_bids_validator", "--skip-bids-validator", "--skip-bids-validation",
        dest="skip_bids_validator",
        action="store_true", help="do not run the BIDS validator on BIDS_DIR",
    )
    seg = parser.add_argument_group("segmentation")
    seg.add_argument("--region", choices=REGIONS, default=InferenceConfig.region,
                     help="body region to segment (default: %(default)s; "
                          f"{_installed_regions_text()})")
    seg.add_argument("--device", choices=DEVICES, default=InferenceConfig.device,
                     help="where networks run (default: %(default)s)")
    seg.add_argument("--models", type=Path, metavar="DIR",
                     help="models folder with manifest.json (default: $LEGSEG_MODELS_DIR or the bundled models/)")
    seg.add_argument("--merge", choices=MERGE_MODES, default=InferenceConfig.merge,
                     help="how overlapping tiles are merged (default: %(default)s)")
    seg.add_argument("--precision", choices=PRECISIONS, default=InferenceConfig.precision,
                     help="arithmetic of the region networks: float32, or bfloat16 (mixed "
                          "precision, float32 output layer) for CPUs with AVX-512 BF16/AMX and "
                          "GPUs; label maps may differ from float32 in some voxels "
                          "(default: %(default)s)")
    seg.add_argument("--segmentation-resolution", dest="segmentation_resolution",
                     type=_resolution, default=InferenceConfig.segmentation_resolution,
                     metavar="model|native|DZxDYxDX",
                     help="voxel size the networks run at: 'model' = the one the installed "
                          "networks were trained on (when their manifest says so), 'native' = "
                          "the input's own (QMRITools' default), or sizes in mm such as "
                          "6x1.5x1.5; labels are mapped back onto the input grid "
                          "(default: %(default)s)")
    seg.add_argument("--overlap", type=_overlap, default=InferenceConfig.overlap,
                     help="tile overlap when a part needs several tiles (default: %(default)s)")
    seg.add_argument("--batch-size", "--batch_size", dest="batch_size", type=_positive_int,
                     default=InferenceConfig.batch_size, help="tiles per network call (default: %(default)s)")
    seg.add_argument("--save-probabilities", "--save_probabilities", dest="save_probabilities",
                     action="store_true", help="also write a 4-D probseg image")
    seg.add_argument("--ff-erosion", "--ff_erosion", dest="ff_erosion", type=_non_negative_int,
                     default=RunConfig.ff_erosion,
                     help="voxels eroded from each muscle for the eroded fat-fraction columns (default: %(default)s)")
    resources = parser.add_argument_group("resources and outputs")
    resources.add_argument("--nprocs", "--nthreads", "--n_cpus", "--n-cpus", "--n_procs",
                           "--omp-nthreads", dest="nprocs", type=_positive_int,
                           help="CPU threads to use (default: the CPUs this process may use: affinity set, container CPU quota)")
    memory = resources.add_mutually_exclusive_group()
    memory.add_argument("--mem-gb", "--mem_gb", dest="mem_gb", type=_positive_float,
                        help="memory budget in GB for the whole process (TensorFlow runtime, "
                             "models, the image, merge buffers and the network's activations): "
                             "the network's tiles are sized so that the peak stays within it "
                             "(default: the memory in use plus 3/4 of the memory still "
                             "available, at most 2.5 GB; larger budgets allow larger tiles)")
    memory.add_argument("--mem", dest="mem", type=_memory_text, metavar="MEMORY_MB",
                        help="the same budget in fMRIPrep's spelling: MB, or with a unit "
                             "(16000, 16000M, 16G); one of --mem, --mem-mb, --mem-gb")
    memory.add_argument("--mem-mb", "--mem_mb", dest="mem_mb", type=_memory_text, metavar="MEMORY_MB",
                        help="the same budget in MB (a unit as for --mem is accepted)")
    resources.add_argument("-w", "--work-dir", dest="work_dir", type=Path,
                           help="folder for caches: the BIDS validator's (Deno) and, when HOME "
                                "cannot be written, Keras's and Matplotlib's (default: "
                                "$TMPDIR/legseg-cache-UID); temporary files go to TMPDIR")
    resources.add_argument("--overwrite", action="store_true",
                           help="replace existing outputs instead of skipping them")
    resources.add_argument("--notrack", dest="notrack", action="store_true",
                           help="accepted for fMRIPrep/MRIQC command lines; no effect: legseg "
                                "never sends usage data anywhere")
    checks = parser.add_argument_group("checks")
    checks.add_argument(
        "--assume-orientation", "--assume_orientation", dest="assume_orientation", metavar="CODES",
        help="axis directions (e.g. RAS, LPS) to assume for images whose header has no "
        "orientation (sform_code = qform_code = 0); such images are refused without it",
    )
    checks.add_argument(
        "--include-failed-qc", "--include_failed_qc", dest="include_failed_qc", action="store_true",
        help="group level: keep images with a QC fail flag (e.g. not_anatomy) in the statistics",
    )
    parser.add_argument("-v", "--verbose", dest="verbose", action="count", default=0,
                        help="more log output (-v: debug messages; -vv: also those of TensorFlow and other libraries)")
    parser.add_argument("--version", action="version", version=f"legseg {__version__}")
    return parser


def parse_args(argv: list[str]) -> RunConfig:
    """Parse and check the command line; return the run's configuration.

    Raises:
        UsageError: with the exit code of the problem found.
        SystemExit: from argparse for --help, --version and syntax errors (code 64).
    """
    from legseg_tf.bids_inputs import FilterFileError, load_filter_file, normalise_label

    args = build_parser().parse_args(argv)
    if args.analysis_level not in ANALYSIS_LEVELS:
        raise UsageError(
            f"unknown analysis level {args.analysis_level!r}; use one of {', '.join(ANALYSIS_LEVELS)}",
            EXIT_UNKNOWN_LEVEL,
        )
    try:
        participants = tuple(dict.fromkeys(normalise_label(x, "sub-") for x in args.participant_label))
        sessions = tuple(dict.fromkeys(normalise_label(x, "ses-") for x in args.session_label))
    except ValueError as error:
        raise UsageError(str(error)) from error
    filters = None
    if args.bids_filter_file is not None:
        try:
            filters = load_filter_file(args.bids_filter_file)
        except FilterFileError as error:
            raise UsageError(str(error)) from error
    if args.assume_orientation is not None:
        from legseg_tf.nifti_io import parse_orientation

        try:
            args.assume_orientation = "".join(parse_orientation(args.assume_orientation))
        except ValueError as error:
            raise UsageError(f"--assume-orientation: {error}") from error
    bids_dir = args.bids_dir.expanduser().absolute()
    output_dir = args.output_dir.expanduser().absolute()
    if not bids_dir.is_dir() or not os.access(bids_dir, os.R_OK | os.X_OK):
        raise UsageError(f"BIDS_DIR {bids_dir} does not exist or is not a readable folder", EXIT_NO_BIDS_DIR)
    if output_dir.resolve() == bids_dir.resolve():
        raise UsageError("OUTPUT_DIR must differ from BIDS_DIR (use e.g. BIDS_DIR/derivatives/legseg)")
    mem_gb = args.mem_gb
    for text in (args.mem, args.mem_mb):
        if text is not None:
            mem_gb = memory_gb(text)
    inference = InferenceConfig(
        region=args.region,
        device=args.device,
        mem_gb=mem_gb,
        merge=args.merge,
        precision=args.precision,
        segmentation_resolution=args.segmentation_resolution,
        overlap=args.overlap,
        batch_size=args.batch_size,
        save_probabilities=args.save_probabilities,
        models_dir=resolve_models_dir(args.models),
        nprocs=args.nprocs,
    )
    config = RunConfig(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_level=args.analysis_level,
        participant_labels=participants,
        session_labels=sessions,
        bids_filters=filters,
        work_dir=args.work_dir.expanduser().absolute() if args.work_dir else None,
        bids_database_dir=(args.bids_database_dir.expanduser().absolute()
                           if args.bids_database_dir else None),
        overwrite=args.overwrite,
        skip_bids_validator=args.skip_bids_validator,
        verbosity=args.verbose,
        inference=inference,
        command_line=tuple(argv),
        assume_orientation=args.assume_orientation,
        include_failed_qc=args.include_failed_qc,
        ff_erosion=args.ff_erosion,
    )
    return config


def _prepare_output_dir(output_dir: Path, what: str = "OUTPUT_DIR") -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".legseg-write-test-{os.getpid()}"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as error:
        raise UsageError(
            f"cannot create or write {what} {output_dir}: {error.strerror or error}", EXIT_OUTPUT_DIR
        ) from error


def _prepare_database_dir(folder: Path) -> None:
    """Create the --bids-database-dir when missing; a folder that exists may be read-only
    (a shared index built beforehand): legseg then only reads it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"cannot create the BIDS database dir (--bids-database-dir) {folder}: "
            f"{error.strerror or error}", EXIT_OUTPUT_DIR
        ) from error


class Terminated(BaseException):
    """SIGTERM arrived (SLURM time limit, ``docker stop``): unwind so temporary files go.

    A BaseException, like KeyboardInterrupt, so that per-image error handling does not
    swallow it."""


def _cache_dirs_off_an_unwritable_home(work_dir: Path | None) -> None:
    """Point the Keras and Matplotlib caches at the work dir (else a per-user temporary
    folder) when HOME cannot be written, e.g. a cluster account with a full or read-only HOME;
    variables already set are kept."""
    home = os.environ.get("HOME")
    if home and os.access(home, os.W_OK):
        return
    import tempfile

    base = work_dir if work_dir is not None else Path(tempfile.gettempdir()) / f"legseg-cache-{os.getuid()}"
    os.environ.setdefault("KERAS_HOME", str(base / ".keras"))
    os.environ.setdefault("MPLCONFIGDIR", str(base / ".matplotlib"))


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run the BIDS App; return the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config = parse_args(argv)
        _prepare_output_dir(config.output_dir)
        if config.work_dir is not None:
            _prepare_output_dir(config.work_dir, "the work dir (-w/--work-dir)")
        if config.bids_database_dir is not None:
            _prepare_database_dir(config.bids_database_dir)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    except UsageError as error:
        print(f"legseg: error: {error}", file=sys.stderr)
        return error.code

    _cache_dirs_off_an_unwritable_home(config.work_dir)
    from legseg_tf import logging_setup

    try:
        log_file = logging_setup.configure(
            config.verbosity, config.output_dir / "logs", tag=f"legseg_{config.analysis_level}"
        )
    except OSError as error:
        print(f"legseg: error: cannot create the log file in {config.output_dir / 'logs'}: "
              f"{error.strerror or error}", file=sys.stderr)
        return EXIT_OUTPUT_DIR
    try:
        return _run_logged(config, log_file)
    finally:
        logging_setup.release()


def _run_logged(config: RunConfig, log_file: Path | None) -> int:
    """The run itself, once logging is set up; return the process exit code."""
    logger.info("legseg %s: %s level, %s -> %s", __version__, config.analysis_level,
                config.bids_dir, config.output_dir)
    logger.debug("log file: %s", log_file)
    if config.analysis_level == "participant":
        # the manifest must serve --region before anything heavy is imported (TensorFlow)
        from legseg_tf.errors import NoModelError
        from legseg_tf.regions import check_models

        try:
            check_models(config.inference.region, config.inference.models_dir)
        except NoModelError as error:
            logger.error("%s", error)
            return EXIT_NO_MODEL
    from legseg_tf import pipeline

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return pipeline.run(config)
    except UsageError as error:
        logger.error("%s", error)
        return error.code
    except KeyboardInterrupt:
        logger.error("interrupted")
        return EXIT_INTERRUPTED
    except Terminated:
        logger.error("terminated (SIGTERM); finished outputs are kept, none is half-written")
        return EXIT_TERMINATED
    except Exception as error:  # noqa: BLE001 - every failure ends in one line and the log
        logger.debug("details", exc_info=True)
        if is_output_full(error):
            where = getattr(error, "filename", None) or config.output_dir
            logger.error("cannot write %s: %s; finished outputs are kept, none is half-written",
                         where, getattr(error, "strerror", None) or error)
            return EXIT_OUTPUT_DIR
        logger.error("unexpected error: %s: %s (traceback in %s)", type(error).__name__,
                     str(error).splitlines()[0] if str(error) else "", log_file or "the log")
        return EXIT_FAILED
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def exit_after_run(code: int) -> None:
    """End the process with ``code`` once :func:`main` has returned.

    Its outputs are written and closed by then, and the atexit handlers (log flush) still
    run; the objects alive now are frozen out of the final garbage collection, which would
    otherwise spend about a second walking TensorFlow's and matplotlib's objects.
    """
    gc.freeze()
    sys.exit(code)


def main_entry() -> None:
    """Console-script entry point (``legseg``)."""
    exit_after_run(main())
