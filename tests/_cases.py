"""Shared helpers for the kernel tests: bounded random subsets of parameter grids."""

from __future__ import annotations

import itertools
import os
import random


def grid(max_cases: int | None = None, seed: int = 0, **axes):
    """All combinations of ``axes`` as dicts; a seeded random subset of at most
    ``max_cases`` unless NTHEXP_FULL_GRID=1 (set by the slow test run)."""
    names = list(axes)
    cases = [dict(zip(names, values, strict=True))
             for values in itertools.product(*axes.values())]
    if max_cases is not None and os.environ.get("NTHEXP_FULL_GRID") != "1":
        cases = random.Random(seed).sample(cases, min(max_cases, len(cases)))
    return cases


def case_id(case: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in case.items())
