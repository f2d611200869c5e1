"""Configure logging once per process: console verbosity from ``-v`` (DEBUG) and ``-vv``
(also library messages), and an optional log file."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def level_from_verbosity(verbosity: int) -> int:
    """Console level: INFO by default (a BIDS App reports what it does), DEBUG with -v."""
    return logging.DEBUG if verbosity >= 1 else logging.INFO


#: Libraries whose messages are shown only from -vv on (WARNING and above before that), on the
#: console and in the log file: e.g. fsspec logs a DEBUG line per file pybids opens.
NOISY = ("tensorflow", "absl", "h5py", "matplotlib", "PIL", "bids", "bidsschematools", "numexpr",
         "fsspec", "upath", "urllib3")


def configure(verbosity: int = 0, log_dir: Path | None = None, tag: str = "legseg") -> Path | None:
    """Set up the root logger; return the log file path when ``log_dir`` is given."""
    release()  # replace only what an earlier call added
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler()
    console.setLevel(level_from_verbosity(verbosity))
    console.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    console._legseg = True
    root.addHandler(console)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING if verbosity < 2 else logging.NOTSET)
    if verbosity < 2:  # TensorFlow's C++ start-up banner, unless -vv (read at TF import)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    log_file = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log_file = log_dir / f"{tag}_{stamp}_{os.getpid()}.log"
        handler = _QuietFileHandler(log_file, encoding="utf-8")
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._legseg = True
        root.addHandler(handler)
    return log_file


def release() -> None:
    """Detach and close the handlers :func:`configure` added (the log file is complete then):
    a run called from Python leaves no handler behind to write into its output folder."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_legseg", False):
            root.removeHandler(handler)
            handler.close()


class _QuietFileHandler(logging.FileHandler):
    """A log file that stops itself with one line on stderr when it cannot be written (e.g. a
    full disk), instead of a traceback per message."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging API
        import sys

        if getattr(self, "_failed", False):
            return
        self._failed = True
        error = sys.exc_info()[1]
        sys.stderr.write(f"legseg: cannot write the log file {self.baseFilename}: {error}; "
                         "logging to the console only\n")
        try:
            self.close()
        except OSError:
            pass

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self, "_failed", False):
            return
        try:  # reopening a closed file happens outside the handler's own error handling
            super().emit(record)
        except OSError:
            self.handleError(record)
