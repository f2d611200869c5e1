"""legseg: automated full-leg muscle segmentation as a BIDS App.

Importing this package is cheap: it never imports TensorFlow or Keras.
"""
from __future__ import annotations

import re
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "legseg"


def _read_version(source_root: Path = SOURCE_ROOT, distribution: str = DISTRIBUTION) -> str:
    """legseg's own version, never another application's.

    1. In legseg's source tree (a checkout, or the editable install of the container images,
       ``/opt/legseg``): its ``version`` file, the single source of truth that pyproject.toml
       also reads. The tree is recognised by its ``pyproject.toml`` naming the distribution,
       so a stray ``version`` file next to an installed package is never taken; the file
       wins over the installed metadata, which an editable install freezes at install time.
    2. Installed from a wheel: the distribution's metadata (``importlib.metadata``).
    3. Else ``"unknown"``. Files outside legseg, such as ``/version`` (which belongs to
       whatever image legseg runs in), are never read.
    """
    version_file = source_root / "version"
    if version_file.is_file() and _is_source_tree(source_root, distribution):
        text = version_file.read_text(encoding="utf-8").strip()
        if text:
            return text
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def _is_source_tree(folder: Path, distribution: str) -> bool:
    """True when ``folder/pyproject.toml`` is the project file of ``distribution``."""
    try:
        text = (folder / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return False
    return re.search(rf'^name\s*=\s*"{re.escape(distribution)}"\s*$', text, flags=re.M) is not None


__version__ = _read_version()
