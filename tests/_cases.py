"""Shared helpers for the kernel tests: bounded random subsets of parameter grids."""

from __future__ import annotations

import itertools
import random

import pytest


def grid(max_cases: int | None = None, seed: int = 0, **axes):
    """All combinations of ``axes`` as dicts, for ``parametrize``.

    A seeded random subset of at most ``max_cases`` runs by default; the rest of the
    grid is marked ``slow`` (``make test-all`` runs the full grid).
    """
    names = list(axes)
    cases = [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*axes.values())
    ]
    if max_cases is None or max_cases >= len(cases):
        return cases
    keep = set(random.Random(seed).sample(range(len(cases)), max_cases))
    return [
        case if i in keep else pytest.param(case, marks=pytest.mark.slow)
        for i, case in enumerate(cases)
    ]


def case_id(case: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in case.items())
