r"""Report of a depth/width sweep: the NTK diagonal's second moment against
:math:`\beta = \mathrm{depth} / \mathrm{width}`.

Estimator (Hanin and Nica 2019, "Finite depth and width corrections to the neural
tangent kernel", Theorem 1, define the moment over initialisations at a fixed input).
For the cell (depth, width) with seeds ``s = 1..S`` and the stored diagonals
``ntk_diag[s, a]`` (``spectra.npz``, inputs ``a = 1..N`` of the data set):

.. math::
   m(\mathrm{depth}, \mathrm{width}) = \frac1N \sum_a \log
   \frac{\frac1S \sum_s K_s(x_a, x_a)^2}
        {\left(\frac1S \sum_s K_s(x_a, x_a)\right)^2},

the moment over seeds at each input, averaged over the inputs (on the sphere the inputs
are exchangeable, so the average only reduces the noise). The fit is ordinary least
squares of ``m`` on ``a + b * beta`` over the cells; the interval of the growth rate
``b`` is the percentile interval of a bootstrap over seeds (within every cell the seeds
are resampled with replacement, ``m`` recomputed and the line refitted;
:data:`N_BOOTSTRAP` resamples, generator seed 0, so the report is reproducible). With
few seeds the estimate of a heavy-tailed moment is biased low at large ``beta``: the
interval covers the seed noise, not that bias.

The per-run ``ntk_diag_log_moment`` (the same moment over the inputs of one network) is
drawn in a second panel for comparison; it is not the quantity of the theory.
``fits.json["depth_width_ratio"]`` holds ``cells`` (depth, width, beta, seeds, m, the
mean per-run moment), ``slope``, ``intercept``, ``interval``, ``level``, ``r2``,
``n_bootstrap``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nthexp.report._collect import SweepRuns  # noqa: E402
from nthexp.report._fits import DEPTH, SEED, WIDTH, jsonable  # noqa: E402

log = logging.getLogger(__name__)

COLUMN = "ntk_diag_log_moment"
FIGURE = "ntk_diag_moment_vs_beta.png"
#: Bootstrap resamples of the growth-rate interval (percentiles at 2.5% rest on 25).
N_BOOTSTRAP = 1000


def _moment(diags: np.ndarray) -> float:
    """``diags (S, N)`` -> the seed moment averaged over inputs."""
    ratio = np.mean(diags**2, axis=0) / np.mean(diags, axis=0) ** 2
    return float(np.mean(np.log(ratio)))


def _line(beta: np.ndarray, m: np.ndarray) -> tuple[float, float, float]:
    design = np.stack([np.ones_like(beta), beta], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(design, m, rcond=None)
    resid = m - design @ np.array([intercept, slope])
    total = np.sum((m - m.mean()) ** 2)
    r2 = 1.0 - np.sum(resid**2) / total if total > 0 else float("nan")
    return float(intercept), float(slope), float(r2)


def depth_width_fit(runs: SweepRuns, level: float) -> dict | None:
    """The fit of the module docstring, or None unless the sweep varies both depth and
    width and has two cells (of two seeds or more) with different beta."""
    table = runs.table
    if COLUMN not in table.columns or not {DEPTH, WIDTH, SEED} <= set(table.columns):
        return None
    if table[DEPTH].nunique() < 2 or table[WIDTH].nunique() < 2:
        return None
    cells, diags = [], []
    for (depth, width), group in table.groupby([DEPTH, WIDTH]):
        stack = []
        for run_dir in group.sort_values(SEED)["run_dir"]:
            spectra = runs.spectra(run_dir)
            if spectra is not None and "ntk_diag" in spectra:
                stack.append(np.asarray(spectra["ntk_diag"], dtype=np.float64))
        if len(stack) < 2 or len({d.shape for d in stack}) != 1:
            continue
        d = np.stack(stack)
        cells.append(
            {
                "depth": int(depth),
                "width": int(width),
                "beta": float(depth) / float(width),
                "seeds": int(d.shape[0]),
                "m": _moment(d),
                "per_run_mean": float(group[COLUMN].mean()),
            }
        )
        diags.append(d)
    beta = np.array([c["beta"] for c in cells])
    if len(np.unique(beta)) < 2:
        return None
    m = np.array([c["m"] for c in cells])
    intercept, slope, r2 = _line(beta, m)

    rng = np.random.default_rng(0)
    boot = np.empty(N_BOOTSTRAP)
    for i in range(N_BOOTSTRAP):
        mb = np.array([_moment(d[rng.integers(0, len(d), len(d))]) for d in diags])
        boot[i] = _line(beta, mb)[1]
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return jsonable(
        {
            "estimator": "seed moment per input, averaged over inputs",
            "cells": cells,
            "slope": slope,
            "intercept": intercept,
            "interval": [float(lo), float(hi)],
            "level": level,
            "r2": r2,
            "n_bootstrap": N_BOOTSTRAP,
        }
    )


def depth_width_figure(fit: dict, out_dir: Path):
    """Left: the seed moment against beta (marker per width, colour per depth) and the
    fitted line; right: the per-run moment over inputs (mean over seeds)."""
    cells = fit["cells"]
    depths = sorted({c["depth"] for c in cells})
    widths = sorted({c["width"] for c in cells})
    markers = "osD^vP*Xh<>p"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, title in (
        (axes[0], "m", "over seeds (per input, averaged over inputs)"),
        (axes[1], "per_run_mean", "over inputs of one network (mean over seeds)"),
    ):
        for c in cells:
            ax.scatter(
                c["beta"],
                c[key],
                marker=markers[widths.index(c["width"]) % len(markers)],
                color=f"C{depths.index(c['depth']) % 10}",
                s=36,
            )
        ax.set_xscale("log")
        ax.set_xlabel("beta = depth / width")
        ax.set_ylabel("log( E[K(x,x)^2] / E[K(x,x)]^2 )")
        ax.set_title(title, fontsize=10)
    b = np.geomspace(min(c["beta"] for c in cells), max(c["beta"] for c in cells), 50)
    lo, hi = fit["interval"]
    axes[0].plot(
        b,
        fit["intercept"] + fit["slope"] * b,
        "k--",
        lw=1,
        label=f"fit: slope {fit['slope']:.2f} [{lo:.2f}, {hi:.2f}]",
    )
    for i, d in enumerate(depths):
        axes[0].scatter([], [], color=f"C{i % 10}", label=f"depth {d}")
    for j, w in enumerate(widths):
        axes[0].scatter(
            [], [], color="gray", marker=markers[j % len(markers)], label=f"width {w}"
        )
    axes[0].legend(fontsize=7, ncol=2)
    return fig, out_dir / FIGURE


def depth_width_markdown(fit: dict | None) -> list[str]:
    if fit is None:
        return []
    lo, hi = fit["interval"]
    seeds = max(c["seeds"] for c in fit["cells"])
    md = [
        "## NTK diagonal against depth/width",
        "",
        "`m = log( E[K(x,x)^2] / E[K(x,x)]^2 )` over seeds at each input, averaged "
        "over the inputs (docs/models.md), fitted as `m = a + b * beta`, beta = "
        f"depth/width: growth rate b = {fit['slope']:.3g}, interval "
        f"[{lo:.3g}, {hi:.3g}] at level {fit['level']} (bootstrap over seeds, "
        f"{fit['n_bootstrap']} resamples), intercept {fit['intercept']:.3g}, "
        f"R^2 = {fit['r2']:.3g}. For ReLU networks Hanin and Nica (2020) give "
        "`E[K^2] / E[K]^2 ~ exp(5 beta)` up to factors that do not grow with depth, "
        "a rate of about 5. With S seeds the estimate of this heavy-tailed moment is "
        f"biased low and can never exceed log S = {math.log(seeds):.3g} (S = {seeds}; "
        f"the largest m here is {max(c['m'] for c in fit['cells']):.3g}).",
        "",
        "Columns: `m (over seeds)` is the estimator above; `per-run m over inputs` is "
        "`log( mean_a K(x_a,x_a)^2 / (mean_a K(x_a,x_a))^2 )` over the data set's "
        "inputs for one network, averaged over seeds (metric `ntk_diag_log_moment`), "
        "which misses the fluctuation shared by all inputs.",
        "",
        "| depth | width | beta | seeds | m (over seeds) | per-run m over inputs |",
        "|---|---|---|---|---|---|",
    ]
    md += [
        f"| {c['depth']} | {c['width']} | {c['beta']:.3g} | {c['seeds']} | "
        f"{c['m']:.3g} | {c['per_run_mean']:.3g} |"
        for c in fit["cells"]
    ]
    md.append("")
    return md
