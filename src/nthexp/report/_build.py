"""Sweep dir -> ``results.parquet``, ``fits.json``, ``figures/*.png``, ``report.md``.

Reads only what the runs wrote (no recomputation); ``nthexp-report DIR`` and the
multirun callback both call :func:`build_report`.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from nthexp.experiment._files import (
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from nthexp.report._collect import SweepRuns, collect
from nthexp.report._depth_width import depth_width_fit, depth_width_markdown
from nthexp.report._figures import HIERARCHY_RESPONSES, make_figures
from nthexp.report._fits import DEPTH, SEED, WIDTH, fit_table
from nthexp.report._late_time import late_time_fits, late_time_markdown
from nthexp.report._lyapunov import lyapunov_fit, lyapunov_markdown
from nthexp.report._scaling import study_fits, study_markdown

log = logging.getLogger(__name__)

#: Responses fitted besides ``analysis.response`` (``fits["responses"][name]``).
SECOND_RESPONSES = ("rel_op",)
ANALYSIS_KEYS = ("response", "level", "max_depth_over_width")
PROVENANCE_PREFIXES = (
    "versions.",
    "device.",
    "dtype",
    "matmul_precision",
    "git_revision",
)


@dataclass
class Report:
    runs: SweepRuns
    fits: dict
    figures: list[Path] = field(default_factory=list)
    markdown_path: Path | None = None
    parquet_path: Path | None = None
    fits_path: Path | None = None

    @property
    def failed(self) -> list[tuple[str, str]]:
        return self.runs.failed

    def summary_text(self) -> str:
        """A short plain-text summary: the mean response table, exponents, paths."""
        runs, fits = self.runs, self.fits
        lines = [f"sweep {runs.sweep_dir}: {_census(runs)}"]
        response = fits.get("response", "rel_fro")
        table = runs.table
        if not table.empty and {WIDTH, DEPTH, response} <= set(table.columns):
            pivot = table.pivot_table(
                index=DEPTH, columns=WIDTH, values=response, aggfunc="mean"
            )
            lines += [
                f"mean {response} over seeds (rows: depth, columns: width)",
                pivot.to_string(float_format=lambda v: f"{v:.4g}"),
            ]
        # a depth/width cut that keeps every width repeats its row: report.md only
        rows = [r for r in exponent_rows(fits) if not r[0].endswith(SAME_AS_ALL)]
        if rows:
            lines.append(f"fitted exponents of {response}:")
        width = max((len(row[0]) for row in rows), default=0)
        for row in rows:
            lines.append(f"  {row[0]:<{width}} {row[1]:>8}  {row[2]:<24} R^2={row[3]}")
        lines += [f"  FLAG {flag}" for flag in fits.get("flags", [])]
        lines += _study_summary(fits)
        lines.append(f"report: {self.markdown_path}")
        return "\n".join(lines)


def _study_summary(fits: dict) -> list[str]:
    """One line each for the presets with their own verdict (late-time slopes are in
    the exponent-style sections of the report; Lyapunov's is a yes/no)."""
    lines = []
    lyap = fits.get("lyapunov")
    if lyap is not None:
        cells = [
            c
            for cell in lyap["cells"]
            for part in ("kinds", "log_norm")
            for c in cell[part].values()
            if c["agree"] is not None
        ]
        agree = sum(bool(c["agree"]) for c in cells)
        lines.append(
            f"lyapunov: {agree} of {len(cells)} compared (width, kind) cells agree "
            f"with the closed form within {lyap['k_se']:g} standard errors"
        )
    late = fits.get("late_time", {}).get("lt_err_dk_full")
    if late:
        for entry in late.get("width_fits", []):
            fit = entry.get("all") or {}
            if "width" in fit.get("exponents", {}):
                lo_hi = (fit.get("interval") or {}).get("width")
                interval = "" if lo_hi is None else f" [{lo_hi[0]:.3g}, {lo_hi[1]:.3g}]"
                lines.append(
                    f"late_time: error of the predicted kernel change (O3 + O4), "
                    f"width exponent {fit['exponents']['width']:.3g}{interval} "
                    "(expected -1)"
                )
    return lines


def _census(runs: SweepRuns) -> str:
    parts = [f"{runs.n_complete} complete"]
    if runs.expected is not None:
        parts[0] += f" of {runs.expected} planned"
    parts.append(f"{len(runs.missing)} missing")
    parts.append(f"{len(runs.failed)} failed")
    if runs.unreadable:
        parts.append(f"{len(runs.unreadable)} unreadable")
    return ", ".join(parts)


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def _fmt_range(v) -> str:
    """Range endpoints: integers when integral (``64..1024``), else 3 digits."""
    if v is None:
        return "-"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if f.is_integer() and abs(f) < 1e15:
        return str(int(f))
    return f"{f:.3g}"


#: Per-run metrics of the results table (those present are shown).
RESULT_COLUMNS = ("rel_fro", "rel_op", "emp_lambda_min", "inf_lambda_min", "weyl_bound")
#: Factors that get a column of their own in the results table when they vary.
RESULT_FACTORS = (WIDTH, DEPTH, "data.n", "d_in", "data.d_in")


def _group_value(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def results_markdown(table: pd.DataFrame) -> list[str]:
    """ "Results (mean over seeds)": one row per combination of the varying factors,
    mean +- std over seeds of each per-run metric present."""
    metrics = [c for c in RESULT_COLUMNS if c in table.columns]
    if table.empty or not metrics:
        return []
    keys = [
        c
        for c in RESULT_FACTORS
        if c in table.columns
        and table[c].notna().all()
        and (c in (WIDTH, DEPTH) or table[c].nunique() >= 2)
    ]
    if "d_in" in keys and "data.d_in" in keys:
        keys.remove("data.d_in")
    keys += [
        c
        for c in pooled_columns_quiet(table)
        if c not in keys and table[c].notna().all()
    ]
    if not keys:
        return []
    t = table[keys + metrics].copy()
    for m in metrics:
        t[m] = pd.to_numeric(t[m], errors="coerce")
    grouped = t.groupby(keys, sort=True, dropna=True)
    mean, std, count = grouped.mean(), grouped.std(), grouped.size()
    md = ["## Results (mean over seeds)", ""]
    md.append("Mean ± standard deviation over seeds (`results.parquet` has every run).")
    md.append("")
    head = [k.split(".")[-1] if k in (WIDTH, DEPTH) else k for k in keys]
    md.append("| " + " | ".join(head + ["seeds"] + metrics) + " |")
    md.append("|" + "---|" * (len(head) + 1 + len(metrics)))
    for idx in mean.index:
        idx_t = idx if isinstance(idx, tuple) else (idx,)
        cells = [_group_value(v) for v in idx_t] + [str(int(count.loc[idx]))]
        for m in metrics:
            mu, sd = mean.loc[idx, m], std.loc[idx, m]
            if pd.isna(mu):
                cells.append("-")
            elif pd.isna(sd) or count.loc[idx] < 2:
                cells.append(f"{mu:.4g}")
            else:
                cells.append(f"{mu:.4g} ± {sd:.2g}")
        md.append("| " + " | ".join(cells) + " |")
    md.append("")
    return md


def pooled_columns_quiet(table: pd.DataFrame) -> list[str]:
    """Config columns other than the result factors that vary (no warning)."""
    prefixes = ("model.", "data.", "kernel.")
    return [
        c
        for c in table.columns
        if c.startswith(prefixes)
        and c not in RESULT_FACTORS
        and c != SEED
        and table[c].dropna().nunique() > 1
    ]


#: Label suffix of a depth/width <= r fit that keeps every width.
SAME_AS_ALL = " (= all widths)"


def exponent_rows(fits: dict) -> list[tuple[str, str, str, str, str]]:
    """(fit, exponent, interval, R^2, fitted range) per fitted exponent."""
    rows = []

    def add(label: str, fit: dict | None, factor: str) -> None:
        if fit is None:
            return
        if "exponents" not in fit:
            rows.append((label, "-", fit.get("error", "not fitted"), "-", "-"))
            return
        lo_hi = fit.get("interval", {}).get(factor) or [None, None]
        rng = fit.get("ranges", {}).get(factor) or [None, None]
        rows.append(
            (
                label,
                _fmt(fit["exponents"][factor]),
                # 4 digits: an interval end near a round value (-0.50013) shows
                # which side of it it lies on
                f"[{_fmt(lo_hi[0], 4)}, {_fmt(lo_hi[1], 4)}]",
                _fmt(fit.get("r2")),
                f"{_fmt_range(rng[0])}..{_fmt_range(rng[1])}",
            )
        )

    ratio = fits.get("max_depth_over_width")
    for e in fits.get("width_fits", []):
        add(f"width, depth={e['depth']}, all widths", e["all"], "width")
        label = f"width, depth={e['depth']}, depth/width<={ratio:g}"
        same = e.get("widths_small_ratio") is not None and e.get(
            "widths_small_ratio"
        ) == e.get("widths_all")
        add(label + (SAME_AS_ALL if same else ""), e["small_ratio"], "width")
    for e in fits.get("depth_fits", []):
        add(f"depth, width={e['width']}", e["fit"], "depth")
    joint = fits.get("joint")
    if joint is not None:
        add("joint: width", joint, "width")
        add("joint: depth", joint, "depth")
    return rows


def _analysis_settings(table: pd.DataFrame, overrides: dict | None) -> dict:
    settings = {}
    for key in ANALYSIS_KEYS:
        col = f"analysis.{key}"
        if overrides is not None and overrides.get(key) is not None:
            settings[key] = overrides[key]
        elif col in table.columns and table[col].notna().any():
            settings[key] = table[col].dropna().iloc[0]
        else:
            raise ValueError(
                f"analysis.{key} is missing from the runs' resolved configs; pass it "
                "explicitly (nthexp-report --help)"
            )
    return settings


def _provenance(table: pd.DataFrame) -> dict[str, list]:
    out = {}
    for col in table.columns:
        if col.startswith(PROVENANCE_PREFIXES):
            out[col] = sorted({str(v) for v in table[col].dropna()})
    return out


def _precision_lines(table: pd.DataFrame) -> list[str]:
    """The runs flagged ``precision_limited`` (docs/numerics.md), with their dtype."""
    if table.empty or "precision_limited" not in table.columns:
        return []
    flagged = table[table["precision_limited"].fillna(False).astype(bool)]
    if flagged.empty:
        return ["Precision-limited runs: none.", ""]
    names = [f"`{r['run_dir']}` ({r.get('dtype', '?')})" for _, r in flagged.iterrows()]
    return [
        f"Precision-limited runs ({len(names)}; correction within "
        "100x of the round-off floor eps*sqrt(N), not to be trusted): "
        + ", ".join(names),
        "",
    ]


def _markdown(runs: SweepRuns, fits: dict, figures: list[Path], sweep_dir: Path) -> str:
    md = [f"# nthexp sweep report: `{sweep_dir.name}`", ""]
    md += ["## Command", ""]
    if runs.overrides or runs.sweeper_params:
        md.append("```")
        md.append("nthexp -m " + " ".join(runs.overrides))
        md.append("```")
        if runs.sweeper_params:
            md += ["", "Swept by the config (`hydra.sweeper.params`):", ""]
            md += [f"- `{k}={v}`" for k, v in runs.sweeper_params.items()]
    else:
        md.append("(no multirun.yaml in the sweep dir)")
    md += ["", f"Sweep dir: `{sweep_dir}`", ""]

    md += ["## Runs", "", _census(runs) + ".", ""]
    md += _precision_lines(runs.table)
    for title, items in (
        (
            "Missing (no metrics.json, no error recorded)",
            [(r, "") for r in runs.missing],
        ),
        ("Failed", runs.failed),
        ("Unreadable (skipped)", runs.unreadable),
    ):
        if items:
            md += [f"{title}:", ""]
            md += [f"- `{r}`" + (f": {why}" if why else "") for r, why in items]
            md.append("")
    if runs.expected is not None:
        seen = runs.n_complete + len(runs.missing) + len(runs.failed)
        seen += len(runs.unreadable)
        if seen < runs.expected:
            md += [f"{runs.expected - seen} planned point(s) have no run dir yet.", ""]

    md += results_markdown(runs.table)

    md += ["## Fitted exponents", ""]
    md.append(
        f"Response `{fits.get('response')}`, intervals at level "
        f"{fits.get('level')}, standard errors from the seed spread."
    )
    md.append("")
    md += _exponent_table(fits, "No fit: width and depth do not vary.")
    if fits.get("flags"):
        md += ["Flags (all-widths and small depth/width fits disagree):", ""]
        md += [f"- {flag}" for flag in fits["flags"]]
        md.append("")
    if fits.get("pooled"):
        md += [
            "Pooled in the fits (these config values vary across runs): "
            + ", ".join(f"`{k}`" for k in fits["pooled"]),
            "",
        ]

    for title, group in (
        ("Second response", fits.get("responses", {})),
        ("Hierarchy", fits.get("hierarchy", {})),
    ):
        for name, sub in group.items():
            md += [f"### {title}: `{name}`", ""]
            md += _exponent_table(sub, "No fit.")

    md += late_time_markdown(runs.table, fits.get("late_time", {}))
    md += depth_width_markdown(fits.get("depth_width_ratio"))
    md += lyapunov_markdown(fits.get("lyapunov"))
    md += study_markdown(fits)

    if figures:
        md += ["## Figures", ""]
        md += [f"![{p.stem}](figures/{p.name})" for p in figures]
        md.append("")

    md += ["## Provenance", ""]
    prov = _provenance(runs.table)
    if prov:
        md += ["| field | value(s) |", "|---|---|"]
        md += [f"| {k} | {', '.join(v)} |" for k, v in sorted(prov.items())]
    else:
        md.append("No complete runs.")
    md.append("")
    return "\n".join(md)


def build_report(sweep_dir: str | Path, analysis: dict | None = None) -> Report:
    """Aggregate ``sweep_dir`` and write the report files into it."""
    sweep_dir = Path(sweep_dir)
    runs = collect(sweep_dir)
    table = runs.table

    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    parquet_path = sweep_dir / "results.parquet"
    write_bytes_atomic(parquet_path, buf.getvalue())

    if table.empty:
        fits = {"error": "no complete runs", "flags": []}
    else:
        settings = _analysis_settings(table, analysis)
        fits = fit_table(table, settings)
        hierarchy = {
            name: fit_table(table, {**settings, "response": name})
            for name in HIERARCHY_RESPONSES
            if name in table.columns and table[name].notna().any()
        }
        if hierarchy:
            fits["hierarchy"] = hierarchy
        responses = {
            name: fit_table(table, {**settings, "response": name})
            for name in SECOND_RESPONSES
            if name != settings["response"]
            and name in table.columns
            and pd.to_numeric(table[name], errors="coerce").notna().any()
        }
        if responses:
            fits["responses"] = responses
        late_time = late_time_fits(table, settings)
        if late_time:
            fits["late_time"] = late_time
        depth_width = depth_width_fit(runs, float(settings["level"]))
        if depth_width is not None:
            fits["depth_width_ratio"] = depth_width
        lyapunov = lyapunov_fit(runs)
        if lyapunov is not None:
            fits["lyapunov"] = lyapunov
        fits.update(study_fits(runs, settings["response"], float(settings["level"])))
    fits_path = sweep_dir / "fits.json"
    write_json_atomic(fits_path, json.loads(json.dumps(fits, default=str)))

    figures = make_figures(runs, fits, sweep_dir / "figures")
    markdown_path = sweep_dir / "report.md"
    write_text_atomic(markdown_path, _markdown(runs, fits, figures, sweep_dir))
    return Report(runs, fits, figures, markdown_path, parquet_path, fits_path)


def _exponent_table(fits: dict, no_fit: str) -> list[str]:
    """Markdown lines: the table of :func:`exponent_rows`, or why there is no fit."""
    rows = exponent_rows(fits)
    if not rows:
        return [fits.get("error", no_fit), ""]
    return [
        "| fit | exponent | interval | R^2 | fitted range |",
        "|---|---|---|---|---|",
        *(f"| {' | '.join(r)} |" for r in rows),
        "",
    ]
