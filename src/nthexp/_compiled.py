"""Keeps a long-lived process below Linux's limit on memory mappings.

XLA's CPU backend maps the code of every compiled executable into memory regions of
its own, and JAX keeps each executable alive in its caches. A process that compiles
hundreds of distinct shapes (a local multirun over many widths, depths and data sizes,
or a long test session) reaches the kernel's ``vm.max_map_count`` (65530 by default,
about 300 sweep points of distinct shape), and the next compilation then ends the
process with a segmentation fault instead of an error. :func:`release_compiled` drops
JAX's caches once the process holds more than a fraction of that limit; the next call
of a dropped function compiles it again.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import jax

log = logging.getLogger(__name__)

#: this process's mappings, one per line (Linux)
MAPS = Path("/proc/self/maps")
#: the kernel's limit on mappings per process (Linux)
MAP_LIMIT = Path("/proc/sys/vm/max_map_count")
#: fraction of the limit above which the caches are dropped
RELEASE_FRACTION = 0.5


def mapping_count() -> tuple[int, int] | None:
    """``(mappings held by this process, the kernel's limit)``, or None off Linux."""
    try:
        held = MAPS.read_bytes().count(b"\n")
        limit = int(MAP_LIMIT.read_text())
    except (OSError, ValueError):
        return None
    return held, limit


def release_compiled(fraction: float = RELEASE_FRACTION) -> bool:
    """Drop JAX's compilation caches when this process holds more than ``fraction`` of
    the kernel's mapping limit; returns whether they were dropped."""
    counts = mapping_count()
    if counts is None or counts[0] < fraction * counts[1]:
        return False
    jax.clear_caches()
    gc.collect()
    after = mapping_count()
    log.info(
        "dropped JAX's compiled functions: memory mappings %d -> %s (limit %d)",
        counts[0],
        after[0] if after else "?",
        counts[1],
    )
    return True
