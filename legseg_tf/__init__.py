"""legseg: automated full-leg muscle segmentation as a BIDS App.

Importing this package is cheap: it never imports TensorFlow or Keras.
"""
from __future__ import annotations

from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _read_version() -> str:
    """Return the version from the ``version`` file (the single source of truth)."""
    candidates = [SOURCE_ROOT / "version", Path("/version")]
    for path in candidates:
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("legseg")
    except PackageNotFoundError:
        return "unknown"


__version__ = _read_version()
