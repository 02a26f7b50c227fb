"""Report of a ``late_time`` sweep: a width fit per prediction error and one figure.

``fits.json["late_time"]`` maps each ``lt_err_*`` metric present in the runs (see
:mod:`nthexp.experiment._late_time`) to :func:`nthexp.report._fits.fit_table` of that
metric (the same layout as the main fit: ``width_fits`` per depth, power-law exponents
with intervals from the seed spread). The figure
``figures/late_time_errors_vs_width.png`` draws, log-log against width, the mean over
seeds of each error (error bars: standard deviation over seeds) with its fitted line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nthexp.experiment._late_time import LATE_TIME_ERRORS  # noqa: E402
from nthexp.report._fits import DEPTH, WIDTH, fit_table  # noqa: E402

log = logging.getLogger(__name__)

FIGURE = "late_time_errors_vs_width.png"

#: Legend label and the slope expected from the 1/width expansion, per error metric.
LABELS = {
    "lt_err_dk_full": ("dK2: O3 + O4 (whole)", -1.0),
    "lt_err_dk_o3": ("dK2: O3 alone", 0.0),
    "lt_err_dk_o4sym": ("dK2: O3 + symmetrised O4", 0.0),
    "lt_err_df_eval": ("f correction at eval points", -1.0),
    "lt_err_f_linear": ("f_end at eval, frozen NTK", -1.0),
    "lt_err_f_full": ("f_end at eval, corrected", -2.0),
}


def present(table: pd.DataFrame) -> list[str]:
    """The ``lt_err_*`` columns with at least one value."""
    return [
        name
        for name in LATE_TIME_ERRORS
        if name in table.columns and table[name].notna().any()
    ]


def late_time_fits(table: pd.DataFrame, settings: dict) -> dict:
    """``{metric: fit_table(...)}`` for each late-time error in the table."""
    return {
        name: fit_table(table, {**settings, "response": name})
        for name in present(table)
    }


def _slope(fit: dict, depth: int) -> tuple[float, list] | None:
    for entry in fit.get("width_fits", []):
        if entry["depth"] == depth and "exponents" in (entry.get("all") or {}):
            return entry["all"]["exponents"]["width"], entry["all"].get(
                "interval", {}
            ).get("width")
    return None


def late_time_figure(table: pd.DataFrame, fits: dict, out_dir: Path):
    """The combined figure (one line per prediction), or None without late-time runs.

    With several depths in the sweep, one panel per depth.
    """
    names = present(table)
    if not names:
        return None
    depths = sorted(int(d) for d in table[DEPTH].unique())
    fig, axes = plt.subplots(
        1, len(depths), figsize=(6.5 * len(depths), 5), squeeze=False
    )
    for ax, depth in zip(axes[0], depths, strict=True):
        group = table[table[DEPTH] == depth]
        for i, name in enumerate(names):
            color = f"C{i % 10}"
            stats = group.groupby(WIDTH)[name].agg(["mean", "std"]).sort_index()
            label, _ = LABELS.get(name, (name, None))
            slope = _slope(fits.get(name, {}), depth)
            if slope is not None:
                label += f" (slope {slope[0]:.2f})"
            ax.errorbar(
                stats.index,
                stats["mean"],
                yerr=stats["std"].fillna(0.0),
                marker="o",
                color=color,
                capsize=3,
                label=label,
            )
            if slope is not None:
                # The least-squares line passes through the geometric means.
                y = group[name].to_numpy(float)
                w = group[WIDTH].to_numpy(float)
                keep = np.isfinite(y) & (y > 0)
                if keep.any():
                    w0 = np.exp(np.mean(np.log(w[keep])))
                    y0 = np.exp(np.mean(np.log(y[keep])))
                    ws = np.asarray(stats.index, dtype=float)
                    ax.plot(ws, y0 * (ws / w0) ** slope[0], "--", color=color, lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        widths = sorted(int(w) for w in group[WIDTH].unique())
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("width")
        ax.set_ylabel("relative error against training (mean, std over seeds)")
        ax.set_title(f"late-time predictions, depth {depth}")
        ax.legend(fontsize=7)
    return fig, out_dir / FIGURE


def late_time_markdown(table: pd.DataFrame, fits: dict) -> list[str]:
    """The report section: slopes with intervals and the mean error at each width."""
    if not fits:
        return []
    md = [
        "## Late-time predictions against training",
        "",
        "Relative error of each prediction against the trained network (see "
        "docs/dynamics.md); width exponent fitted on all widths, interval from the "
        "seed spread. Expected: about -1 for predictions correct to order 1/width, "
        "about 0 for those that miss a part of that order.",
        "",
        "| metric | prediction | depth | slope | interval | expected | R^2 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, fit in fits.items():
        label, expected = LABELS.get(name, (name, None))
        for entry in fit.get("width_fits", []):
            f = entry.get("all") or {}
            if "exponents" not in f:
                md.append(
                    f"| `{name}` | {label} | {entry['depth']} | - | "
                    f"{f.get('error', 'not fitted')} | - | - |"
                )
                continue
            lo, hi = f.get("interval", {}).get("width") or [None, None]
            r2 = f.get("r2")
            md.append(
                f"| `{name}` | {label} | {entry['depth']} | "
                f"{f['exponents']['width']:.3g} | [{_fmt(lo)}, {_fmt(hi)}] | "
                f"{_fmt(expected)} | {_fmt(r2)} |"
            )
    md.append("")
    names = list(fits)
    means = table.groupby([DEPTH, WIDTH])[names].mean()
    md += [
        "Mean over seeds:",
        "",
        "| depth | width | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    md += [
        f"| {d} | {w} | " + " | ".join(_fmt(v) for v in row) + " |"
        for (d, w), row in zip(means.index, means.to_numpy(), strict=True)
    ]
    md.append("")
    if "lt_converged" in table.columns:
        bad = table[table["lt_converged"] == False]  # noqa: E712 - pandas mask
        if len(bad):
            md += [
                f"**{len(bad)} run(s) did not reach dynamics.tol** "
                f"({', '.join(f'`{r}`' for r in bad['run_dir'])}): their errors "
                "compare with an unconverged end point.",
                "",
            ]
    if "lt_final_residual" in table.columns:
        md += [
            f"Final residual norm: at most {table['lt_final_residual'].max():.3g}; "
            "identity error at initialisation (`lt_identity_rel_err`): at most "
            f"{table['lt_identity_rel_err'].max():.3g}.",
            "",
        ]
    if "lt_identity_err_max" in table.columns:
        md += [
            "Identity dK2/dt = -(1/N) O3 . r along each run, at "
            f"{int(table['lt_identity_n_times'].min())} to "
            f"{int(table['lt_identity_n_times'].max())} logged times per run "
            "(largest error relative to the run's largest kernel velocity, "
            "`lt_identity_err_max`): at most "
            f"{table['lt_identity_err_max'].max():.3g}.",
            "",
        ]
    return md


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3g}"
