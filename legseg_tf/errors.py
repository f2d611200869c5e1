"""Errors and exit codes that cross module boundaries, in one place.

The CLIs (``legseg``, ``legseg-import``, ``legseg-train``) and the pipeline take their exit
codes and their shared exception types from here, so no module imports a CLI for them.
"""
from __future__ import annotations

import errno
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes (BIDS-App execution spec plus sysexits.h; README "Exit codes")."""

    OK = 0
    FAILED = 1            # at least one participant/image failed; the others were processed
    NO_MODEL = 3          # no usable segmentation model installed (or no TensorFlow to run one)
    INVALID_DATASET = 16  # BIDS_DIR failed BIDS validation
    UNKNOWN_LEVEL = 17    # unknown analysis level
    NO_INPUT = 18         # the filters selected no input images
    USAGE = 64            # usage error (bad option or label)
    DATA = 65             # legseg-import: a network file could not be read or translated
    NO_BIDS_DIR = 66      # BIDS_DIR (or an import PATH) missing or unreadable
    OUTPUT_DIR = 73       # OUTPUT_DIR cannot be created or written
    INTERRUPTED = 130     # SIGINT
    TERMINATED = 143      # SIGTERM (scheduler time limit, docker stop)


class UsageError(Exception):
    """A command-line problem; carries the exit code and a one-line message."""

    def __init__(self, message: str, code: int = ExitCode.USAGE):
        super().__init__(message)
        self.code = code


class NoModelError(RuntimeError):
    """No usable segmentation model is installed for the requested region, or TensorFlow is
    missing so that none can run (``device.MissingTensorFlowError``); exit 3."""


#: errno values that mean "the output file system cannot take more" (disk full, quota, file
#: too large, read-only): the run stops with exit 73 instead of failing image after image.
OUTPUT_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def is_output_full(error: BaseException) -> bool:
    """True for an OSError that says the output file system cannot be written (see
    :data:`OUTPUT_FULL_ERRNOS`), also when it is the cause of another exception."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in OUTPUT_FULL_ERRNOS:
            return True
        error = error.__cause__ or error.__context__
    return False
