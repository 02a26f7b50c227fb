r"""Report sections of the study presets (``conf/experiment/*_scaling.yaml``): the
fitted law over the factors that vary, the spectra across the sweep, and Weyl's bound.

``fits.json`` keys written here:

- ``scaling_law``: ``{"factors": [...], "fit": fit_power_law(...).to_dict()}``, one
  joint fit of the response against every factor among width, depth, N (``data.n``)
  and D_in (``d_in``) that varies (depths >= 1), with its curvature check.
- ``spectra``: ``{"depth_trends": [rows of nx.analysis.depth_trends], "outlier_bulk":
  [per depth and kernel: lambda_max, bulk median, ratio]}`` when depth varies.
- ``weyl``: run count, violations (observed ``lambda_min(K_emp)`` below the certified
  bound by more than the round-off ``slack``: must be 0), runs certified (bound > 0),
  smallest margin, and per-depth means.
- ``bound_laws``: :class:`nthexp.analysis.BoundLaws` ``.to_dict()`` fitted on this sweep
  when width and depth both vary (``nthexp-bound --laws fits.json`` reads it), with
  ``lambda_min_inf_check``: the depths where the linear law is not positive or off
  the measured mean by more than :data:`LAW_TOLERANCE`, and
  ``bound_budget``: ``optimal_architecture(...).to_dict()`` at the budget of the largest
  network of the sweep.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import nthexp as nx  # noqa: E402
from nthexp.report._collect import SweepRuns  # noqa: E402
from nthexp.report._fits import DEPTH, SEED, WIDTH, jsonable  # noqa: E402

log = logging.getLogger(__name__)

#: fit factor name -> table column (D_in is the measured input dimension: ``data.d_in``
#: is null for digits).
FACTOR_COLUMNS = {"width": WIDTH, "depth": DEPTH, "n": "data.n", "d_in": "d_in"}
WEYL_FIGURE = "weyl_bound.png"
#: Largest relative gap between the linear lambda_min(K_inf) law and a depth's mean
#: before the report says the law does not describe the sweep.
LAW_TOLERANCE = 0.25


def _factor_table(table: pd.DataFrame, response: str) -> tuple[pd.DataFrame, list[str]]:
    cols = {f: c for f, c in FACTOR_COLUMNS.items() if c in table.columns}
    if "d_in" not in cols and "data.d_in" in table.columns:
        cols["d_in"] = "data.d_in"
    t = pd.DataFrame(
        {f: pd.to_numeric(table[c], errors="coerce") for f, c in cols.items()}
    )
    t[SEED] = table[SEED].to_numpy()
    t[response] = pd.to_numeric(table[response], errors="coerce")
    t = t[np.isfinite(t[response]) & (t[response] > 0)]
    if "depth" in t:
        t = t[t["depth"] >= 1]
    varying = [f for f in cols if t[f].notna().all() and t[f].nunique() >= 2]
    return t, varying


def scaling_law(table: pd.DataFrame, response: str, level: float) -> dict | None:
    """The joint fit over the varying factors (module doc), or None if none varies."""
    if response not in table.columns or SEED not in table.columns:
        return None
    t, varying = _factor_table(table, response)
    if not varying:
        return None
    try:
        fit = nx.analysis.fit_power_law(
            t, response, varying, seed_column=SEED, level=level
        )
    except ValueError as exc:
        return {"factors": varying, "fit": {"error": str(exc)}}
    return {"factors": varying, "fit": jsonable(fit.to_dict())}


def _outlier_bulk(runs: SweepRuns) -> list[dict]:
    table = runs.table
    rows = []
    for depth, group in table.groupby(DEPTH):
        spectra = {"inf": [], "emp": []}
        for run_dir in group["run_dir"]:
            s = runs.spectra(run_dir)
            if s is None:
                continue
            for kernel in spectra:
                if kernel in s and np.size(s[kernel]) >= 2:
                    spectra[kernel].append(np.asarray(s[kernel], dtype=np.float64))
        for kernel, evs in spectra.items():
            # Runs of one depth can differ in N: summarise each, then average.
            ob = [nx.analysis.outlier_bulk(ev) for ev in evs if np.all(np.isfinite(ev))]
            if not ob:
                continue
            rows.append(
                {
                    "depth": int(depth),
                    "kernel": kernel,
                    "runs": len(ob),
                    "lambda_max": float(np.mean([o.lambda_max for o in ob])),
                    "bulk_median": float(np.mean([o.bulk_median for o in ob])),
                    "ratio": float(np.mean([o.ratio for o in ob])),
                    "gap": float(np.mean([o.lambda_max - o.bulk_median for o in ob])),
                }
            )
    return rows


def spectra_summary(runs: SweepRuns, level: float) -> dict | None:
    """Depth trends and outlier/bulk per depth, or None unless depth varies."""
    table = runs.table
    if DEPTH not in table.columns or table[DEPTH].nunique() < 2:
        return None
    try:
        trends = nx.analysis.depth_trends(table, level=level).to_dict("records")
    except ValueError as exc:
        trends = [{"error": str(exc)}]
    return jsonable({"depth_trends": trends, "outlier_bulk": _outlier_bulk(runs)})


def _bound_laws(table: pd.DataFrame, level: float) -> dict | None:
    """BoundLaws from this sweep: lambda_min(K_inf) = (aL + b)(N/N_ref)^m and
    ||dK||_op = c width^p L^q (N/N_ref)^r, when width and depth both vary."""
    need = {WIDTH, DEPTH, SEED, "op", "inf_lambda_min"}
    if not need <= set(table.columns):
        return None
    t = table[table[DEPTH] >= 1]
    if t[WIDTH].nunique() < 2 or t[DEPTH].nunique() < 2:
        return None
    n_col = "data.n" if "data.n" in t.columns else None
    n_varies = n_col is not None and t[n_col].nunique() >= 2
    n_ref = float(t[n_col].min()) if n_col is not None else 1.0
    factors = ["width", "depth"] + (["n"] if n_varies else [])
    ft = pd.DataFrame(
        {
            "width": t[WIDTH].astype(float),
            "depth": t[DEPTH].astype(float),
            "n": (t[n_col].astype(float) / n_ref) if n_col else 1.0,
            SEED: t[SEED],
            "op": t["op"].astype(float),
            "lam": t["inf_lambda_min"].astype(float),
        }
    )
    op = nx.analysis.fit_power_law(ft, "op", factors, seed_column=SEED, level=level)
    m = 0.0
    if n_varies:
        lam_fit = nx.analysis.fit_power_law(
            ft, "lam", ["depth", "n"], seed_column=SEED, level=level, curvature=False
        )
        m = float(lam_fit.exponents["n"])
    scaled = ft["lam"] / ft["n"] ** m
    slope, intercept = np.polyfit(ft["depth"], scaled, 1)
    ranges = {
        "width": (float(ft["width"].min()), float(ft["width"].max())),
        "depth": (float(ft["depth"].min()), float(ft["depth"].max())),
    }
    if n_col is not None:
        ranges["n"] = (float(t[n_col].min()), float(t[n_col].max()))
    laws = nx.analysis.BoundLaws(
        a=float(slope),
        b=float(intercept),
        m=m,
        c=float(np.exp(op.intercept)),
        p=float(op.exponents["width"]),
        q=float(op.exponents["depth"]),
        r=float(op.exponents.get("n", 0.0)),
        n_ref=n_ref,
        source="fitted by nthexp-report on this sweep",
        ranges=ranges,
    )
    out = laws.to_dict()
    # The linear law against the per-depth means it was fitted to: where it is <= 0
    # or off by more than LAW_TOLERANCE, the budget answer rests on a law that does
    # not describe this sweep (the report says so).
    means = scaled.groupby(ft["depth"]).mean()
    fitted = slope * means.index.to_numpy(float) + intercept
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(fitted - means.to_numpy(float)) / np.abs(means.to_numpy(float))
    out["lambda_min_inf_check"] = [
        {"depth": int(d), "measured": float(v), "fitted": float(f), "rel_err": float(e)}
        for d, v, f, e in zip(
            means.index, means.to_numpy(float), fitted, rel, strict=True
        )
        if f <= 0 or e > LAW_TOLERANCE
    ]
    for col in ("d_in", "data.d_in"):
        if col in t.columns and t[col].nunique() >= 2:
            out["pooled"] = "D_in = " + ", ".join(
                str(int(v)) for v in sorted(t[col].dropna().unique())
            )
            break
    return out


def weyl_summary(table: pd.DataFrame, level: float) -> dict | None:
    """Weyl's bound across the sweep (module doc), or None without the columns."""
    try:
        w = nx.analysis.weyl_table(table)
    except ValueError:
        return None
    slack = table["slack"].to_numpy(float) if "slack" in table.columns else 0.0
    w["violates"] = w["margin"].to_numpy(float) < -np.asarray(slack)
    out: dict = {
        "runs": int(len(w)),
        "violations": int(w["violates"].sum()),
        "certified": int(w["certifies"].sum()),
        "min_margin": float(w["margin"].min()) if len(w) else None,
    }
    if DEPTH in w.columns:
        per = w.groupby(DEPTH).agg(
            bound=("weyl_bound", "mean"),
            observed=("emp_lambda_min", "mean"),
            margin_min=("margin", "min"),
            certified=("certifies", "sum"),
            runs=("margin", "size"),
        )
        out["by_depth"] = [
            {"depth": int(d), **{k: float(v) for k, v in row.items()}}
            for d, row in per.iterrows()
        ]
    out["violating_runs"] = (
        [str(r) for r in table.loc[w["violates"].to_numpy(), "run_dir"]]
        if "run_dir" in table.columns
        else []
    )
    return jsonable(out)


def bound_fits(table: pd.DataFrame, level: float) -> tuple[dict | None, dict | None]:
    """(``bound_laws``, ``bound_budget``) or Nones (module doc)."""
    try:
        laws_dict = _bound_laws(table, level)
    except ValueError as exc:
        log.warning("bound laws not fitted: %s", exc)
        return None, None
    if laws_dict is None:
        return None, None
    laws = nx.analysis.BoundLaws.from_dict(laws_dict)
    budget = None
    if "n_params" in table.columns:
        try:
            d_in = int(table["d_in"].max()) if "d_in" in table.columns else 1
            n = int(table["data.n"].max()) if "data.n" in table.columns else 1
            arch = nx.analysis.optimal_architecture(
                int(table["n_params"].max()), d_in, n, laws
            )
            budget = jsonable(arch.to_dict())
        except ValueError as exc:
            budget = {"error": str(exc)}
    return jsonable(laws_dict), budget


def study_fits(runs: SweepRuns, response: str, level: float) -> dict:
    """Every key of the module doc that applies to this sweep."""
    table = runs.table
    out = {}
    law = scaling_law(table, response, level)
    if law is not None:
        out["scaling_law"] = law
    spectra = spectra_summary(runs, level)
    if spectra is not None:
        out["spectra"] = spectra
    weyl = weyl_summary(table, level)
    if weyl is not None:
        out["weyl"] = weyl
    laws, budget = bound_fits(table, level)
    if laws is not None:
        out["bound_laws"] = laws
        out["bound_budget"] = budget
    return out


# ------------------------------------------------------------------ tables


def _f(v) -> str:
    return (
        "-"
        if v is None or (isinstance(v, float) and not np.isfinite(v))
        else f"{v:.4g}"
    )


def _label_value(v) -> str | None:
    """A group value for a label: ``64`` for 64.0, None for missing (None, NaN,
    the string "None")."""
    if v is None or (isinstance(v, str) and v in ("None", "nan", "")):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not np.isfinite(f):
        return None
    return str(int(f)) if f.is_integer() else f"{f:g}"


def _range_value(v) -> str:
    """A range endpoint: integer when integral (``1024``), else 4 digits."""
    if v is None:
        return "-"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not np.isfinite(f):
        return "-"
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else f"{f:.4g}"


#: how the report names each ``stderr_method`` of fit_power_law
STDERR_WORDS = {
    "seed_spread": "from the spread of the per-seed fits",
    "ols": "from the least-squares residuals (one seed)",
    "bootstrap": "from a bootstrap over seeds",
}


def scaling_rows(fits: dict) -> pd.DataFrame:
    """Fitted-law table: one row per factor of ``fits["scaling_law"]``."""
    law = fits.get("scaling_law")
    cols = [
        "factor",
        "exponent",
        "low",
        "high",
        "r2",
        "range_min",
        "range_max",
        "curved",
    ]
    if not law or "exponents" not in law["fit"]:
        return pd.DataFrame(columns=cols)
    fit = law["fit"]
    curv = fit.get("curvature") or {}
    rows = []
    for f in law["factors"]:
        lo, hi = fit["interval"].get(f) or [None, None]
        rmin, rmax = fit["ranges"].get(f) or [None, None]
        rows.append(
            [
                f,
                fit["exponents"][f],
                lo,
                hi,
                fit["r2"],
                rmin,
                rmax,
                bool(curv.get("curved")) if curv.get("variable") == f else None,
            ]
        )
    return pd.DataFrame(rows, columns=cols)


def study_tables(fits: dict) -> dict[str, pd.DataFrame]:
    """The tables of the study sections, for wandb."""
    out = {}
    rows = scaling_rows(fits)
    if not rows.empty:
        out["scaling_law"] = rows
    spectra = fits.get("spectra") or {}
    trends = [r for r in spectra.get("depth_trends", []) if "error" not in r]
    if trends:
        out["depth_trends"] = pd.DataFrame(trends)
    if spectra.get("outlier_bulk"):
        out["outlier_bulk"] = pd.DataFrame(spectra["outlier_bulk"])
    weyl = fits.get("weyl") or {}
    if weyl.get("by_depth"):
        out["weyl_by_depth"] = pd.DataFrame(weyl["by_depth"])
    return out


def study_markdown(fits: dict) -> list[str]:
    """The markdown of the sections (empty when none applies)."""
    md: list[str] = []
    law = fits.get("scaling_law")
    if law is not None:
        md += ["## Fitted law over the varying factors", ""]
        fit = law["fit"]
        if "exponents" not in fit:
            md += [f"Not fitted: {fit.get('error')}", ""]
        else:
            md.append(
                f"Joint fit of log `{fit['response']}` on log "
                + ", log ".join(law["factors"])
                + f" ({fit['n_points']} runs, {fit['n_seeds']} seeds, intervals at "
                f"level {fit['level']} "
                + STDERR_WORDS.get(fit["stderr_method"], f"({fit['stderr_method']})")
                + "; one fit, so one R^2)."
            )
            md += [
                "",
                "| factor | exponent | interval | R^2 | fitted range | curved |",
                "|---|---|---|---|---|---|",
            ]
            for _, r in scaling_rows(fits).iterrows():
                curved = (
                    "-" if r["curved"] is None else ("yes" if r["curved"] else "no")
                )
                md.append(
                    f"| {r['factor']} | {_f(r['exponent'])} | [{_f(r['low'])}, "
                    f"{_f(r['high'])}] | {_f(r['r2'])} | {_range_value(r['range_min'])}"
                    f"..{_range_value(r['range_max'])} | {curved} |"
                )
            curv = fit.get("curvature")
            md.append("")
            if curv and len(law["factors"]) > 1:
                md.append(
                    f"`curved` is checked for {curv['variable']} only ('-' for the "
                    "other factors)."
                )
                md.append("")
            if curv:
                md.append(
                    f"Curvature check (quadratic in log {curv['variable']}): "
                    f"coefficient {_f(curv['coefficient'])}, interval "
                    f"[{_f(curv['interval'][0])}, {_f(curv['interval'][1])}]: "
                    + (
                        "CURVED, a pure power law is rejected"
                        + (
                            f" (with {fit['n_seeds']} seeds one noisy cell can "
                            "bend the fit: check the per-cell means, or add seeds)."
                            if fit.get("n_seeds", 0) < 10
                            else "."
                        )
                        if curv["curved"]
                        else "consistent with a power law."
                    )
                )
            else:
                md.append(f"No curvature check: {fit.get('curvature_note')}")
            md.append("")

    spectra = fits.get("spectra")
    if spectra is not None:
        md += ["## Spectra across the sweep", ""]
        trends = spectra.get("depth_trends", [])
        if trends and "error" in trends[0]:
            md += [f"No depth trends: {trends[0]['error']}", ""]
        elif trends:
            md += [
                "Linear fits y = slope * depth + intercept of the per-depth means "
                "(K_inf: over seeds and widths; K_emp: per width).",
                "",
                "| kernel | quantity | group | slope | interval | intercept | R^2 "
                "| depths |",
                "|---|---|---|---|---|---|---|---|",
            ]
            std = {
                "kernel",
                "quantity",
                "slope",
                "slope_low",
                "slope_high",
                "intercept",
                "intercept_low",
                "intercept_high",
                "r2",
                "n_depths",
                "n_points",
                "depth_min",
                "depth_max",
            }
            for r in trends:
                group = ", ".join(
                    f"{k}={_label_value(v)}"
                    for k, v in r.items()
                    if k not in std and _label_value(v) is not None
                )
                md.append(
                    f"| {r['kernel']} | {r['quantity']} | {group or '-'} | "
                    f"{_f(r['slope'])} | [{_f(r['slope_low'])}, {_f(r['slope_high'])}]"
                    f" | {_f(r['intercept'])} | {_f(r['r2'])} | "
                    f"{_range_value(r['depth_min'])}..{_range_value(r['depth_max'])} |"
                )
            if any(r.get("n_depths") == 2 for r in trends):
                md += [
                    "",
                    "With two depths the line passes through both means (R^2 = 1) "
                    "and has no interval ('-'): sweep three or more depths for one.",
                ]
            md.append("")
        ob = spectra.get("outlier_bulk", [])
        if ob:
            md += [
                "Outlier versus bulk: ratio = largest eigenvalue / median of the "
                "others, gap = their difference (means over runs); spectra in "
                "`figures/spectra_by_depth.png`.",
                "",
                "| depth | kernel | runs | lambda_max | bulk median | ratio | gap |",
                "|---|---|---|---|---|---|---|",
            ]
            md += [
                f"| {r['depth']} | {r['kernel']} | {r['runs']} | {_f(r['lambda_max'])}"
                f" | {_f(r['bulk_median'])} | {_f(r['ratio'])} | {_f(r['gap'])} |"
                for r in ob
            ]
            md.append("")

    weyl = fits.get("weyl")
    if weyl is not None:
        md += ["## Weyl bound", ""]
        md.append(
            f"Weyl's lower bound lambda_min(K_inf) - ||K_emp - K_inf||_op against "
            f"the observed lambda_min(K_emp) over {weyl['runs']} runs: "
            f"**{weyl['violations']} violations**, "
            f"{_count(weyl['certified'], 'run')} certified (bound > 0: "
            "lambda_min(K_emp) is proven positive), smallest margin "
            f"{_f(weyl['min_margin'])} "
            f"(`figures/{WEYL_FIGURE}`)."
        )
        if weyl.get("violating_runs"):
            md.append(
                "Violating runs: " + ", ".join(f"`{r}`" for r in weyl["violating_runs"])
            )
        md.append("")
        if weyl.get("by_depth"):
            md += [
                "| depth | runs | mean bound | mean observed | min margin "
                "| certified |",
                "|---|---|---|---|---|---|",
            ]
            md += [
                f"| {r['depth']} | {int(r['runs'])} | {_f(r['bound'])} | "
                f"{_f(r['observed'])} | {_f(r['margin_min'])} | {int(r['certified'])} |"
                for r in weyl["by_depth"]
            ]
            md.append("")
        laws = fits.get("bound_laws")
        if laws is not None:
            lam, op = laws["lambda_min_inf"], laws["op_norm"]
            n_ranges = (laws.get("ranges") or {}).get("n")
            n_varies = n_ranges is not None and n_ranges[0] != n_ranges[1]

            def n_term(power):
                # with one N the factor (N/N_ref)^power is 1 and is left out
                return f" (N/{_f(laws['n_ref'])})^{_f(power)}" if n_varies else ""

            md.append(
                f"Laws fitted on this sweep (`fits.json` key `bound_laws`; "
                f"`nthexp-bound --laws fits.json`): lambda_min(K_inf) = "
                f"({_f(lam['a'])} L {'-' if lam['b'] < 0 else '+'} {_f(abs(lam['b']))})"
                f"{n_term(lam['m'])}, ||dK||_op = {_f(op['c'])} width^{_f(op['p'])} "
                f"L^{_f(op['q'])}{n_term(op['r'])}"
                + (
                    f" (N = {_f(n_ranges[0])} throughout)"
                    if n_ranges is not None and not n_varies
                    else ""
                )
                + "."
            )
            if laws.get("pooled"):
                md.append(f"Pooled over {laws['pooled']} (the laws do not model it).")
            off = laws.get("lambda_min_inf_check") or []
            if off:
                md.append(
                    "**The linear law in L does not describe this sweep's "
                    "lambda_min(K_inf)** (fitted against measured mean, off by more "
                    f"than {LAW_TOLERANCE:.0%} or not positive): "
                    + ", ".join(
                        f"L={c['depth']}: {_f(c['fitted'])} vs {_f(c['measured'])}"
                        for c in off
                    )
                    + "; the budget answer (the width and depth whose bound is "
                    "largest for the sweep's largest parameter count) is held back "
                    "(`fits.json` key `bound_budget` has the optimum under this law)."
                )
            budget = None if off else fits.get("bound_budget")
            if budget and "error" not in budget:
                md.append(
                    f"Budget: for P = {budget['budget']} parameters (the largest "
                    f"network of the sweep), D_in = {budget['d_in']}, N = {budget['n']}"
                    f", the certified bound is largest at width {budget['width']}, "
                    f"depth {budget['depth']}: {_f(budget['bound'])}"
                    + (
                        " (extrapolated beyond the fitted ranges)."
                        if budget["extrapolated"]
                        else "."
                    )
                    + (
                        " It is not positive: by these laws no network of this "
                        "budget is certified."
                        if budget["bound"] is not None and budget["bound"] <= 0
                        else ""
                    )
                )
            elif budget:
                md.append(f"Budget: {budget['error']}")
            md.append("")
        else:
            md += ["No bound laws: width and depth do not both vary.", ""]
    return md


def weyl_figure(table: pd.DataFrame, out_dir: Path):
    """(figure, path): per depth, the observed lambda_min(K_emp) and the certified
    bound against width (mean and range over seeds) on a symlog y axis, so that a
    large negative bound and a small positive observation are both readable; or None
    without the columns."""
    if not {"weyl_bound", "emp_lambda_min"} <= set(table.columns):
        return None
    t = table.copy()
    for c in ("weyl_bound", "emp_lambda_min"):
        t[c] = pd.to_numeric(t[c], errors="coerce")
    has_width = WIDTH in t.columns and t[WIDTH].notna().all()
    if not has_width:
        t[WIDTH] = 1.0
    groups = (
        list(t.groupby(DEPTH))
        if DEPTH in t.columns and t[DEPTH].notna().all()
        else [("all", t)]
    )
    n = len(groups)
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False, sharey=True
    )
    values = np.concatenate(
        [t["weyl_bound"].to_numpy(float), t["emp_lambda_min"].to_numpy(float)]
    )
    values = np.abs(values[np.isfinite(values) & (values != 0)])
    linthresh = float(np.min(values)) if values.size else 1e-3
    # Decade ticks on both sides, none inside the linear band around 0 but 0 itself
    # (the ticks at +-linthresh would print over it).
    low = math.floor(math.log10(linthresh)) + 1
    high = math.ceil(math.log10(float(np.max(values)))) if values.size else low
    decades = [10.0**k for k in range(low, max(high, low) + 1)]
    ticks = [-v for v in reversed(decades)] + [0.0] + decades
    for ax, (depth, g) in zip(list(axes.flat)[:n], groups, strict=True):
        for col, color, label in (
            ("emp_lambda_min", "C0", "observed lambda_min(K_emp)"),
            ("weyl_bound", "C3", "Weyl lower bound"),
        ):
            stats = g.groupby(WIDTH)[col].agg(["mean", "min", "max"]).sort_index()
            x = stats.index.to_numpy(float)
            ax.plot(x, stats["mean"], "o-", color=color, ms=4, label=label)
            ax.fill_between(x, stats["min"], stats["max"], color=color, alpha=0.2)
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_yscale("symlog", linthresh=linthresh)
        ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
        ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if has_width and g[WIDTH].nunique() > 1:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("width")
        ax.set_title(f"depth {_label_value(depth) or depth}")
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    axes[0][0].set_ylabel("lambda_min (symlog)")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(
        "Weyl bound: observed lambda_min(K_emp) must lie above the bound "
        "(mean, band: min..max over seeds)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig, out_dir / WEYL_FIGURE


def _count(n: int, noun: str) -> str:
    """``"1 run"``, ``"3 runs"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
