"""Figures of a sweep (matplotlib, Agg backend; PNG files under ``figures/``)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nthexp.experiment._files import write_bytes_atomic  # noqa: E402
from nthexp.report._collect import SweepRuns  # noqa: E402
from nthexp.report._depth_width import depth_width_figure  # noqa: E402
from nthexp.report._fits import DEPTH, SEED, WIDTH  # noqa: E402
from nthexp.report._late_time import late_time_figure  # noqa: E402
from nthexp.report._lyapunov import lyapunov_figures  # noqa: E402
from nthexp.report._scaling import weyl_figure  # noqa: E402

log = logging.getLogger(__name__)

#: Per-run hierarchy metrics (kernel=o3/o4) whose scaling with width gets a figure
#: and a fit of its own.
HIERARCHY_RESPONSES = ("o3_fro", "o4_fro", "velocity_rel", "latetime_dk_rel")


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return path


def _vs_width(table: pd.DataFrame, response: str, fits: dict | None, title: str):
    fig, ax = plt.subplots(figsize=(6, 4.5))
    slopes = {}
    if fits is not None:
        for entry in fits.get("width_fits", []):
            fit = entry.get("all") or {}
            if "exponents" in fit:
                slopes[entry["depth"]] = fit["exponents"]["width"]
    for i, (depth, group) in enumerate(table.groupby(DEPTH)):
        color = f"C{i % 10}"
        stats = group.groupby(WIDTH)[response].agg(["mean", "std"]).sort_index()
        ax.errorbar(
            stats.index,
            stats["mean"],
            yerr=stats["std"].fillna(0.0),
            marker="o",
            color=color,
            capsize=3,
            label=f"depth {depth}",
        )
        slope = slopes.get(int(depth))
        if slope is not None:
            # The least-squares line passes through the geometric means of the data.
            y = group[response].to_numpy(float)
            w = group[WIDTH].to_numpy(float)
            keep = y > 0
            if keep.any():
                w0 = np.exp(np.mean(np.log(w[keep])))
                y0 = np.exp(np.mean(np.log(y[keep])))
                ws = np.array(sorted(stats.index), dtype=float)
                ax.plot(
                    ws,
                    y0 * (ws / w0) ** slope,
                    "--",
                    color=color,
                    label=f"fit, slope {slope:.2f}",
                )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width")
    ax.set_ylabel(response)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def _spectra(runs: SweepRuns):
    table = runs.table
    if "n" in table.columns and table["n"].nunique() > 1:
        # Spectra of different N do not stack: draw those of the largest data set.
        table = table[table["n"] == table["n"].max()]
    widest = table[WIDTH].max()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, (depth, group) in enumerate(table[table[WIDTH] == widest].groupby(DEPTH)):
        color = f"C{i % 10}"
        emp, inf = [], None
        for run_dir in group.sort_values(SEED)["run_dir"]:
            spectra = runs.spectra(run_dir)
            if spectra is None:
                continue
            emp.append(np.sort(spectra["emp"])[::-1])
            inf = np.sort(spectra["inf"])[::-1]
        if not emp:
            continue
        mean_emp = np.mean(np.stack(emp), axis=0)
        idx = np.arange(1, mean_emp.size + 1)
        ax.plot(
            idx,
            np.where(mean_emp > 0, mean_emp, np.nan),
            color=color,
            label=f"depth {depth}, empirical (mean of {len(emp)})",
        )
        ax.plot(
            idx,
            np.where(inf > 0, inf, np.nan),
            "--",
            color=color,
            label=f"depth {depth}, infinite width",
        )
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index (descending)")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"NTK spectra at width {widest}")
    ax.legend(fontsize=7)
    return fig


def make_figures(runs: SweepRuns, fits: dict, out_dir: Path) -> list[Path]:
    """Write the figures of a sweep; returns their paths."""
    table = runs.table
    if table.empty or WIDTH not in table.columns or DEPTH not in table.columns:
        log.warning("no complete runs with model.width and model.depth: no figures")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    response = fits.get("response", "rel_fro")
    paths = [
        _save(
            _vs_width(
                table, response, fits, f"{response} vs width (mean and std over seeds)"
            ),
            out_dir / f"{response}_vs_width.png",
        ),
        _save(_spectra(runs), out_dir / "spectra_by_depth.png"),
    ]
    for extra in HIERARCHY_RESPONSES:
        if extra in table.columns and table[extra].notna().any():
            paths.append(
                _save(
                    _vs_width(
                        table,
                        extra,
                        fits.get("hierarchy", {}).get(extra),
                        f"{extra} vs width (mean and std over seeds)",
                    ),
                    out_dir / f"{extra}_vs_width.png",
                )
            )
    if "rel_op" in table.columns and response != "rel_op":
        paths.append(
            _save(
                _vs_width(
                    table,
                    "rel_op",
                    fits.get("responses", {}).get("rel_op"),
                    "rel_op vs width (mean and std over seeds)",
                ),
                out_dir / "rel_op_vs_width.png",
            )
        )
    late_time = late_time_figure(table, fits.get("late_time", {}), out_dir)
    if late_time is not None:
        paths.append(_save(*late_time))
    if fits.get("depth_width_ratio") is not None:
        paths.append(_save(*depth_width_figure(fits["depth_width_ratio"], out_dir)))
    paths += [_save(*pair) for pair in lyapunov_figures(fits.get("lyapunov"), out_dir)]
    weyl = weyl_figure(table, out_dir)
    if weyl is not None:
        paths.append(_save(*weyl))
    return paths
