"""Progress lines with an estimate of the time left, for terminals and for logs."""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


class Progress:
    """Reports `done / total` units of work (cells, FLOPs, exports) on a stream.

    The time left scales the seconds spent in this process by the work still to do;
    work reused from an earlier run (`skip`) costs nothing and does not enter the rate.
    On a terminal every update rewrites one line; in logs a line is written every 10% of
    the work, when `force` is set, and at the end.
    """

    def __init__(self, label: str, total: float, stream: TextIO | None = None):
        self.label = label
        self.total = max(float(total), 1e-12)
        self.stream = stream or sys.stderr
        self.done = 0.0
        self.spent = 0.0
        self.start = time.time()
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._next_report = 0.1

    def skip(self, cost: float) -> None:
        """Counts work that was already done (reused) without running it."""
        self.done += cost

    def advance(self, cost: float = 1.0, message: str = "", force: bool = False) -> None:
        """Counts work done now; reports it when due."""
        self.done += cost
        self.spent += cost
        fraction = self.done / self.total
        finished = fraction >= 1.0 - 1e-9
        due = force or finished or fraction >= self._next_report
        if not (due or self.interactive):
            return
        if fraction >= self._next_report:
            self._next_report = (math.floor(fraction * 10) + 1) / 10
        elapsed = time.time() - self.start
        left = elapsed / self.spent * (self.total - self.done) if self.spent > 0 else math.nan
        line = (
            f"{100 * min(fraction, 1.0):5.1f}% done, {duration(elapsed)} spent, "
            f"about {duration(left)} left" + (f" ({message})" if message else "")
        )
        if self.interactive and not force:
            self.stream.write(f"\r[{self.label}] {line}   " + ("\n" if finished else ""))
            self.stream.flush()
        else:
            self.print(line)

    def print(self, message: str) -> None:
        """One line of this task's log."""
        self.stream.write(f"[{self.label}] {message}\n")
        self.stream.flush()


def duration(seconds: float) -> str:
    """'1h02m' or '3m07s'; '?' when unknown."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
