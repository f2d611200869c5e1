"""A one-line text progress bar with rate and ETA (written to a stream, switchable off)."""
from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    """``H:MM:SS`` (or ``M:SS`` under an hour)."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar:
    """Progress of ``total`` steps starting at ``start``; :meth:`update` redraws one line.

    Args:
        total: the step count at which the work is done.
        start: steps already done (a resumed run).
        enabled: False makes every call a no-op.
        stream: where to draw (default stderr).
        width: bar width in characters.
    """

    def __init__(self, total: int, start: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, width: int = 30) -> None:
        self.total = max(int(total), 1)
        self.start = int(start)
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.t0 = time.monotonic()

    def line(self, done: int, suffix: str = "") -> str:
        """The text of the bar at ``done`` steps."""
        fraction = min(max(done / self.total, 0.0), 1.0)
        filled = int(round(fraction * self.width))
        elapsed = time.monotonic() - self.t0
        new = done - self.start
        rate = new / elapsed if elapsed > 0 and new > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        eta_text = format_seconds(eta) if eta == eta else "?"
        return (f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} "
                f"{rate:.2f} it/s ETA {eta_text} {suffix}").rstrip()

    def update(self, done: int, suffix: str = "") -> None:
        """Redraw at ``done`` steps."""
        if self.enabled:
            self.stream.write("\r" + self.line(done, suffix))
            self.stream.flush()

    def close(self) -> None:
        """End the line."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
