"""Errors that cross module boundaries, in one place (no module imports another for them)."""
from __future__ import annotations


class NoModelError(RuntimeError):
    """No usable segmentation model is installed for the requested region (CLI exit 3)."""
