"""Per-point progress lines with an ETA for sweeps run in one process.

The ETA uses the median time of the points computed so far, so the few points that pay
for compilation do not dominate it.
"""

from __future__ import annotations

import logging
import statistics
import time

log = logging.getLogger("nthexp.experiment")


class Progress:
    def __init__(self, total: int | None = None):
        self.total = total
        self.done = 0
        self.durations: list[float] = []
        self.started = time.perf_counter()

    def point_done(self, job_num: int, seconds: float | None, note: str) -> None:
        self.done += 1
        if seconds is not None:
            self.durations.append(seconds)
        of = f"/{self.total}" if self.total is not None else ""
        eta = ""
        if self.total is not None and self.durations:
            left = max(self.total - self.done, 0)
            eta = f", ETA {_fmt(left * statistics.median(self.durations))}"
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


def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


# Set by the multirun callback in the driver; absent for jobs in other processes.
CURRENT: Progress | None = None
