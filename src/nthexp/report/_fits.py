"""Power-law fits of a finite-width correction against width and depth.

``fits.json`` holds, for the response (``analysis.response``, default ``rel_fro``):

- ``width_fits``: per depth, the width exponent fitted (a) on all widths and (b) on the
  widths with ``depth / width <= analysis.max_depth_over_width``; ``disagree`` is true
  when the two intervals do not overlap (the depth is then listed in ``flags``).
- ``depth_fits``: per width, the depth exponent on depths >= 1.
- ``joint``: one fit against width and depth together (depths >= 1).

Each fit is ``nx.analysis.fit_power_law(...).to_dict()`` (standard errors from the seed
spread) or ``{"error": "<why it could not be fitted>"}``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

import nthexp as nx

log = logging.getLogger(__name__)

WIDTH, DEPTH, SEED = "model.width", "model.depth", "seed"
FACTOR_NAMES = {WIDTH: "width", DEPTH: "depth"}


def jsonable(obj):
    """Plain JSON types: tuples and arrays as lists, non-finite floats as None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _fit(table: pd.DataFrame, response: str, factors: list[str], level: float) -> dict:
    """One fit, or ``{"error": ...}`` when it cannot be made."""
    for f in factors:
        values = sorted(table[f].unique().tolist())
        if len(values) < 2:
            return {"error": f"needs >= 2 distinct values of {f}; got {values}"}
    if table[SEED].nunique() < 2:
        log.warning("only one seed: the fitted intervals have no seed spread")
    try:
        fit = nx.analysis.fit_power_law(
            table, response, factors, seed_column=SEED, level=level
        )
    except ValueError as exc:
        return {"error": str(exc)}
    return jsonable(fit.to_dict())


def _interval(fit: dict | None, factor: str) -> tuple[float, float] | None:
    if fit is None or "interval" not in fit:
        return None
    lo_hi = fit["interval"].get(factor)
    if lo_hi is None or None in lo_hi:
        return None
    return float(lo_hi[0]), float(lo_hi[1])


def fit_table(table: pd.DataFrame, analysis: dict) -> dict:
    """All fits of a sweep table (see the module docstring for the layout)."""
    response = analysis["response"]
    level = float(analysis["level"])
    max_ratio = float(analysis["max_depth_over_width"])
    out: dict = {
        "response": response,
        "level": level,
        "max_depth_over_width": max_ratio,
        "width_fits": [],
        "depth_fits": [],
        "joint": None,
        "flags": [],
    }
    needed = [WIDTH, DEPTH, SEED, response]
    if table.empty or any(c not in table.columns for c in needed):
        out["error"] = f"the table lacks one of {needed}"
        return out

    t = table[needed].rename(columns=FACTOR_NAMES)
    t = t[np.isfinite(t[response].astype(float)) & (t[response] > 0)]
    out["pooled"] = pooled_columns(table)

    for depth, group in t.groupby("depth"):
        small = group[group["depth"] / group["width"] <= max_ratio]
        entry = {
            "depth": int(depth),
            "widths_all": sorted(int(w) for w in group["width"].unique()),
            "widths_small_ratio": sorted(int(w) for w in small["width"].unique()),
            "all": _fit(group, response, ["width"], level),
            "small_ratio": _fit(small, response, ["width"], level),
            "disagree": None,
        }
        a = _interval(entry["all"], "width")
        b = _interval(entry["small_ratio"], "width")
        if a is not None and b is not None:
            entry["disagree"] = bool(a[1] < b[0] or b[1] < a[0])
            if entry["disagree"]:
                out["flags"].append(
                    f"depth={int(depth)}: width exponent on all widths "
                    f"[{a[0]:.3g}, {a[1]:.3g}] and on depth/width <= {max_ratio:g} "
                    f"[{b[0]:.3g}, {b[1]:.3g}] do not overlap"
                )
        if t["width"].nunique() >= 2:
            out["width_fits"].append(entry)

    deep = t[t["depth"] >= 1]
    if deep["depth"].nunique() >= 2:
        for width, group in deep.groupby("width"):
            out["depth_fits"].append(
                {
                    "width": int(width),
                    "depths": sorted(int(d) for d in group["depth"].unique()),
                    "fit": _fit(group, response, ["depth"], level),
                }
            )
        if deep["width"].nunique() >= 2:
            out["joint"] = _fit(deep, response, ["width", "depth"], level)
    return out


def pooled_columns(table: pd.DataFrame) -> dict[str, list]:
    """Config columns other than width, depth and seed that vary across the runs
    (their runs are pooled in the fits; a warning says so)."""
    config_prefixes = ("model.", "data.", "kernel.")
    out = {}
    for col in table.columns:
        if col in (WIDTH, DEPTH, SEED) or not col.startswith(config_prefixes):
            continue
        values = table[col].dropna().unique().tolist()
        if len(values) > 1:
            out[col] = sorted(values, key=str)
    if out:
        log.warning("runs differing in %s are pooled in the fits", sorted(out))
    return jsonable(out)
