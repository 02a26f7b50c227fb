"""Per-point progress lines with an ETA for sweeps run in one process.

The ETA excludes compilation: the time per point is the median over the points that
did not start a new (width, depth) shape (all points until there are some), and each
shape not seen yet adds a compile estimate, the median extra time the first point of
a shape took over that per-point time.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Hashable

log = logging.getLogger("nthexp.experiment")


class Progress:
    def __init__(self, total: int | None = None, shapes: int | None = None):
        self.total = total
        self.shapes = shapes  # distinct (width, depth) of the sweep, when known
        self.done = 0
        self.durations: list[float] = []  # every computed point
        self.warm: list[float] = []  # points of a shape seen before
        self.first: list[float] = []  # first point of a shape
        self.seen: set[Hashable] = set()
        self.started = time.perf_counter()

    def point_done(
        self,
        job_num: int,
        seconds: float | None,
        note: str,
        shape: Hashable | None = None,
    ) -> None:
        self.done += 1
        if seconds is not None:
            self.durations.append(seconds)
            if shape is None:
                self.warm.append(seconds)
            elif shape in self.seen:
                self.warm.append(seconds)
            else:
                self.first.append(seconds)
        if shape is not None:
            self.seen.add(shape)
        of = f"/{self.total}" if self.total is not None else ""
        eta = ""
        if self.total is not None and self.durations:
            eta = f", ETA ~{_fmt(self.eta())}"
        elapsed = _fmt(time.perf_counter() - self.started)
        log.info(
            "[%d%s] job %d %s (elapsed %s%s)",
            self.done,
            of,
            job_num,
            note,
            elapsed,
            eta,
        )

    def eta(self) -> float:
        """Seconds left: points left x time per point + new shapes x compile time."""
        left = max((self.total or 0) - self.done, 0)
        per_point = statistics.median(self.warm or self.durations)
        compile_s = 0.0
        if self.warm and self.first:
            compile_s = max(statistics.median(self.first) - per_point, 0.0)
        new_shapes = 0
        if self.shapes is not None:
            new_shapes = min(max(self.shapes - len(self.seen), 0), left)
        return left * per_point + new_shapes * compile_s


def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


# Set by the multirun callback in the driver; absent for jobs in other processes.
CURRENT: Progress | None = None
