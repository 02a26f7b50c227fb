r"""Report of a sweep with the Lyapunov stage (``lyapunov=default``): measured exponents
against their closed forms, per width.

Estimator. For a width :math:`n` and a kind, the runs (seeds) :math:`i` give the
exponents :math:`\hat\lambda^{(i)}_k` from :math:`S_i` surviving chains with standard
errors :math:`se^{(i)}_k` (``spectra.npz``: ``lyap_<kind>``, ``lyap_<kind>_stderr``;
:mod:`nthexp.experiment._lyapunov`). They are pooled over all surviving chains,

.. math::
   \bar\lambda_k = \frac{\sum_i S_i \hat\lambda^{(i)}_k}{\sum_i S_i}, \qquad
   SE_k = \frac{\sqrt{\sum_i S_i^2 (se^{(i)}_k)^2}}{\sum_i S_i},

and compared with the closed form :math:`\lambda_k` where one exists (every :math:`k`
for ``gaussian``, Newman 1986; :math:`k = 1` for ``relu`` and a bias-free ReLU
``network``, the exact law conditioned on survival): the width *agrees* when every
compared :math:`|\bar\lambda_k - \lambda_k| \le` :data:`K_SE` :math:`SE_k`. The figures'
error bars are the spread over seeds (standard deviation of the per-run estimates).

The log-norm rates :math:`\mathrm{Var}\log|P_L x|^2 / L` (``lyap_lognorm_<kind>_rate``)
are pooled and compared the same way, with the exact per-factor laws.

``fits.json["lyapunov"]`` holds ``k_se``, ``steps`` and ``n_samples`` (their values in
the runs), ``pooled`` (other config columns that vary), ``agree`` (every compared cell
agrees) and ``cells``: per width ``width``, ``s``, ``seeds``, ``kinds`` (per kind:
``runs``, ``chains``, ``survived``, ``factors``, ``compared``, ``exponents``,
``spread``, ``stderr``, ``closed`` (the whole spectrum or null), ``top_closed``,
``max_abs_err``, ``max_z``, ``agree``) and ``log_norm`` (per kind: ``chains``,
``survived``, ``depths``, ``variance``, ``spread``, ``rate``, ``stderr``, ``closed``,
``leading``, ``z``, ``agree``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import nthexp as nx  # noqa: E402
from nthexp.analysis._lyapunov import KINDS  # noqa: E402
from nthexp.experiment._lyapunov import LOG_NORM_KINDS  # noqa: E402
from nthexp.report._collect import SweepRuns  # noqa: E402
from nthexp.report._fits import SEED, WIDTH, jsonable  # noqa: E402

log = logging.getLogger(__name__)

#: Agreement threshold in standard errors. With up to n compared exponents per width
#: (Gaussian), a true closed form is rejected by chance with probability about
#: n * 6e-5 (two-sided normal tail at 4): 0.2% at n = 32.
K_SE = 4.0

FIGURES = (
    "lyapunov_spectra.png",
    "lyapunov_top_vs_width.png",
    "lyapunov_log_norm_variance.png",
)
#: Config columns that change the exponents; noted in the report when they vary.
_CONFIG = (
    "model.w_std",
    "model.b_std",
    "model.activation",
    "model.use_bias",
    "model.parameterization",
    "lyapunov.steps",
    "lyapunov.n_samples",
    "lyapunov.log_norm_samples",
)
_MARKERS = {"gaussian": "o", "relu": "s", "network": "^"}
_COLORS = {"gaussian": "C0", "relu": "C1", "network": "C2"}
#: Horizontal offsets of the measured points, so that equal laws do not hide each other.
_OFFSETS = {"gaussian": 0.0, "relu": -0.15, "network": 0.15}


def _pool(values: np.ndarray, stderr: np.ndarray, weights: np.ndarray):
    """Chain-weighted mean ``(K,)`` and its standard error over runs ``(R, K)``."""
    w = weights[:, None] / weights.sum()
    with np.errstate(invalid="ignore"):
        mean = np.sum(w * values, axis=0)
        se = np.sqrt(np.sum(w**2 * stderr**2, axis=0))
    return mean, se


def _spread(values: np.ndarray) -> np.ndarray:
    """Standard deviation over runs (ddof=1; 0 for one run, NaN where not finite)."""
    if values.shape[0] < 2:
        return np.zeros(values.shape[1])
    with np.errstate(invalid="ignore"):
        return np.std(values, axis=0, ddof=1)


def _agreement(mean, se, closed) -> tuple[float | None, float | None, bool | None]:
    """(max |err|, max |err| / SE, agree) over the compared exponents."""
    if closed.size == 0:
        return None, None, None
    err = np.abs(mean - closed)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = err / se
    if not np.all(np.isfinite(z)):
        return float(np.max(err)) if np.all(np.isfinite(err)) else None, None, None
    return float(err.max()), float(z.max()), bool(z.max() <= K_SE)


def _kind_cell(runs: SweepRuns, group, kind: str) -> dict | None:
    """The pooled spectrum of one kind at one width, or None without the kind."""
    col = f"lyap_{kind}_n_survived"
    if col not in group.columns or group[col].isna().all():
        return None
    values, errors, weights, closed = [], [], [], None
    for _, row in group.sort_values(SEED).iterrows():
        spectra = runs.spectra(row["run_dir"])
        if spectra is None or f"lyap_{kind}" not in spectra:
            continue
        values.append(np.asarray(spectra[f"lyap_{kind}"], dtype=np.float64))
        errors.append(np.asarray(spectra[f"lyap_{kind}_stderr"], dtype=np.float64))
        weights.append(float(row[col]))
        if f"lyap_{kind}_closed" in spectra:
            closed = np.asarray(spectra[f"lyap_{kind}_closed"], dtype=np.float64)
    top_closed = group[f"lyap_{kind}_top_closed"].dropna()
    top_closed = float(top_closed.iloc[0]) if len(top_closed) else None
    steps = group["lyap_steps"].astype(int)
    chains = int(group["lyap_n_samples"].sum())
    survived = int(group[col].sum())
    out = {
        "runs": len(values),
        "chains": chains,
        "survived": survived,
        "factors": int((group[col] * steps).sum()),
        "top_closed": top_closed,
        "closed": None if closed is None else closed,
    }
    if not values:
        return {**out, "compared": "none (no chain survived)", "agree": None}
    values, errors = np.stack(values), np.stack(errors)
    mean, se = _pool(values, errors, np.asarray(weights))
    if closed is not None:
        compared, ref, m, s = f"all {mean.size}", closed, mean, se
    elif top_closed is not None:
        compared, ref, m, s = "lambda_1", np.array([top_closed]), mean[:1], se[:1]
    else:
        compared, ref, m, s = "none (no closed form)", np.zeros(0), mean[:0], se[:0]
    max_abs_err, max_z, agree = _agreement(m, s, ref)
    return {
        **out,
        "compared": compared,
        "exponents": mean,
        "spread": _spread(values),
        "stderr": se,
        "max_abs_err": max_abs_err,
        "max_z": max_z,
        "agree": agree,
    }


def _log_norm_cell(runs: SweepRuns, group, kind: str, width: int) -> dict | None:
    prefix = f"lyap_lognorm_{kind}"
    if f"{prefix}_n_survived" not in group.columns:
        return None
    done = group[group[f"{prefix}_n_survived"].fillna(0) > 0]
    out = {
        "chains": int(group["lyapunov.log_norm_samples"].sum()),
        "survived": int(group[f"{prefix}_n_survived"].fillna(0).sum()),
        "closed": float(group[f"{prefix}_rate_closed"].iloc[0]),
        "leading": (2.0 if kind == "gaussian" else 5.0) / width,
    }
    if done.empty:
        return {**out, "agree": None}
    weights = done[f"{prefix}_n_survived"].to_numpy(float)
    rate, se = _pool(
        done[[f"{prefix}_rate"]].to_numpy(float),
        done[[f"{prefix}_rate_stderr"]].to_numpy(float),
        weights,
    )
    variances, depths = [], None
    for run_dir in done.sort_values(SEED)["run_dir"]:
        spectra = runs.spectra(run_dir)
        if spectra is not None and f"{prefix}_var" in spectra:
            variances.append(np.asarray(spectra[f"{prefix}_var"], dtype=np.float64))
            depths = np.asarray(spectra["lyap_lognorm_depths"], dtype=np.int64)
    z = (rate[0] - out["closed"]) / se[0] if se[0] > 0 else math.nan
    out.update(
        {
            "rate": float(rate[0]),
            "stderr": float(se[0]),
            "z": z,
            "agree": bool(abs(z) <= K_SE) if math.isfinite(z) else None,
        }
    )
    if variances and len({v.shape for v in variances}) == 1:
        stack = np.stack(variances)
        out.update(
            {"depths": depths, "variance": stack.mean(axis=0), "spread": _spread(stack)}
        )
    return out


def lyapunov_fit(runs: SweepRuns) -> dict | None:
    """The comparison of the module doc, or None when no run has the stage."""
    table = runs.table
    if "lyap_steps" not in table.columns or WIDTH not in table.columns:
        return None
    table = table[table["lyap_steps"].notna()]
    if table.empty:
        return None
    cells = []
    for width, group in table.groupby(WIDTH, sort=True):
        width = int(width)
        kinds = {
            kind: cell
            for kind in KINDS
            if (cell := _kind_cell(runs, group, kind)) is not None
        }
        log_norm = {
            kind: cell
            for kind in LOG_NORM_KINDS
            if (cell := _log_norm_cell(runs, group, kind, width)) is not None
        }
        cells.append(
            {
                "width": width,
                "s": float(group["lyap_s"].iloc[0]),
                "seeds": int(group[SEED].nunique()),
                "kinds": kinds,
                "log_norm": log_norm,
            }
        )
    verdicts = [
        c["agree"]
        for cell in cells
        for part in ("kinds", "log_norm")
        for c in cell[part].values()
        if c["agree"] is not None
    ]
    return jsonable(
        {
            "k_se": K_SE,
            "steps": sorted({int(v) for v in table["lyap_steps"]}),
            "n_samples": sorted({int(v) for v in table["lyap_n_samples"]}),
            "pooled": [
                c for c in _CONFIG if c in table.columns and table[c].nunique() > 1
            ],
            "agree": all(verdicts) if verdicts else None,
            "cells": cells,
        }
    )


# ------------------------------------------------------------------ figures


def _spectra_figure(fit: dict):
    """One panel per width: measured exponents against their index, closed forms."""
    cells = fit["cells"]
    ncols = min(len(cells), 3)
    nrows = math.ceil(len(cells) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(5 * ncols, 4 * nrows),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat[len(cells) :]:
        ax.set_visible(False)
    for ax, cell in zip(axes.flat, cells, strict=False):
        n = cell["width"]
        drawn_tops = set()
        for kind, c in cell["kinds"].items():
            color, marker = _COLORS[kind], _MARKERS[kind]
            if c.get("closed") is not None:
                ax.plot(
                    np.arange(1, n + 1),
                    c["closed"],
                    "-",
                    color=color,
                    lw=1,
                    label=f"{kind}: closed form",
                )
            top = c.get("top_closed")
            if top is not None and c.get("closed") is None and top not in drawn_tops:
                # relu and a bias-free ReLU network share this law: drawn once
                drawn_tops.add(top)
                ax.plot(
                    [0.7, 1.3],
                    [c["top_closed"]] * 2,
                    "-",
                    color=color,
                    lw=2,
                    label="exact ReLU law, lambda_1",
                )
            if c.get("exponents") is None:
                continue
            mean = np.array([np.nan if v is None else v for v in c["exponents"]])
            spread = np.array([0.0 if v is None else v for v in c["spread"]])
            idx = np.arange(1, n + 1) + _OFFSETS[kind]
            ax.errorbar(
                idx,
                mean,
                yerr=spread,
                fmt=marker,
                color=color,
                ms=4,
                capsize=2,
                mfc="none" if kind == "network" else color,
                label=f"{kind}: measured ({c['survived']} chains)",
            )
        ax.set_xlabel("index k")
        ax.set_ylabel("lambda_k (per factor)")
        ax.set_title(f"width {n}, s = {cell['s']:.3g}", fontsize=10)
        ax.legend(fontsize=6)
    fig.suptitle(
        "Lyapunov spectra: mean over seeds, error bars = spread over seeds "
        "(-inf exponents of masked products not drawn)",
        fontsize=10,
    )
    return fig


def _top_figure(fit: dict):
    r"""``n (lambda_1 - shift)`` against width: shift ``log s`` for Gaussian factors,
    ``log(s / sqrt 2)`` for masked ones, so that the limits are -1/2 and -5/4."""
    cells = fit["cells"]
    fig, ax = plt.subplots(figsize=(6.5, 4.8), layout="constrained")
    widths = np.array([c["width"] for c in cells])
    grid = np.arange(widths.min(), widths.max() + 1)
    s = cells[0]["s"]
    shifts = {"gaussian": math.log(s), "relu": math.log(s / math.sqrt(2.0))}
    shifts["network"] = shifts["relu"]
    kinds = [k for k in KINDS if any(k in c["kinds"] for c in cells)]
    # (kind, top exponent at width n, limit of n (lambda_1 - shift), labels)
    references = []
    if "gaussian" in kinds:
        references.append(
            (
                "gaussian",
                lambda n: nx.analysis.lyapunov_closed_form(n, s)[0],
                -0.5,
                ("gaussian: closed form", None),
            )
        )
    if "relu" in kinds or "network" in kinds:
        references.append(
            (
                "relu",
                lambda n: nx.analysis.relu_top_exponent(n, s, exact=True),
                -1.25,
                ("relu: exact law (survival)", "relu: -5/4 (leading order)"),
            )
        )
    for kind, exponent, limit, (curve_label, limit_label) in references:
        values = np.array([exponent(int(n)) for n in grid])
        ax.plot(
            grid,
            grid * (values - shifts[kind]),
            "-",
            color=_COLORS[kind],
            lw=1,
            label=curve_label,
        )
        ax.axhline(limit, color=_COLORS[kind], ls=":", lw=1, label=limit_label)
    for j, kind in enumerate(kinds):
        xs, ys, es = [], [], []
        for c in cells:
            entry = c["kinds"].get(kind) or {}
            if entry.get("exponents") is None or entry["exponents"][0] is None:
                continue
            n = c["width"]
            xs.append(n * (1 + 0.03 * (j - 1)))
            ys.append(n * (entry["exponents"][0] - shifts[kind]))
            es.append(n * (entry["spread"][0] or 0.0))
        ax.errorbar(
            xs,
            ys,
            yerr=es,
            fmt=_MARKERS[kind],
            color=_COLORS[kind],
            capsize=3,
            mfc="none" if kind == "network" else _COLORS[kind],
            label=f"{kind}: measured",
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_xlabel("width n")
    ax.set_ylabel("n (lambda_1 - log s)   [masked: log(s / sqrt 2)]")
    ax.set_title("top exponent (mean, spread over seeds)", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def _log_norm_figure(fit: dict):
    """Var log|P_L x|^2 against depth L, one panel per kind, exact lines dashed."""
    cells = fit["cells"]
    kinds = [k for k in LOG_NORM_KINDS if any(k in c["log_norm"] for c in cells)]
    fig, axes = plt.subplots(
        1,
        len(kinds),
        figsize=(6 * len(kinds), 4.6),
        squeeze=False,
        layout="constrained",
    )
    for ax, kind in zip(axes[0], kinds, strict=True):
        for i, cell in enumerate(cells):
            entry = cell["log_norm"].get(kind) or {}
            if entry.get("variance") is None:
                continue
            color = f"C{i % 10}"
            d = np.asarray(entry["depths"], dtype=float)
            ax.errorbar(
                d,
                entry["variance"],
                yerr=entry["spread"],
                fmt="o",
                color=color,
                ms=4,
                capsize=2,
                label=f"width {cell['width']}",
            )
            ax.plot(d, d * entry["closed"], "--", color=color, lw=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("depth L (factors)")
        ax.set_ylabel("Var log |P_L x|^2")
        law = "L psi_1(n/2)" if kind == "gaussian" else "L v(n), about 5L/n"
        ax.set_title(
            f"{kind}: measured (spread over seeds), exact {law} dashed", fontsize=9
        )
        ax.legend(fontsize=7)
    return fig


def lyapunov_figures(fit: dict | None, out_dir: Path) -> list[tuple]:
    """``[(figure, path), ...]`` for :func:`nthexp.report._figures._save`."""
    if fit is None or not fit["cells"]:
        return []
    out = [
        (_spectra_figure(fit), out_dir / FIGURES[0]),
        (_top_figure(fit), out_dir / FIGURES[1]),
    ]
    if any(c["log_norm"] for c in fit["cells"]):
        out.append((_log_norm_figure(fit), out_dir / FIGURES[2]))
    return out


# ------------------------------------------------------------------ markdown


def _f(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def _verdict(agree) -> str:
    return "-" if agree is None else ("yes" if agree else "**no**")


def lyapunov_markdown(fit: dict | None) -> list[str]:
    if fit is None:
        return []
    k = fit["k_se"]
    steps = ", ".join(str(v) for v in fit["steps"])
    samples = ", ".join(str(v) for v in fit["n_samples"])
    md = [
        "## Lyapunov exponents against the closed form",
        "",
        f"Per run and kind: {samples} chains of {steps} factors (`lyapunov.n_samples`,"
        " `lyapunov.steps`; the network kind: parameter draws of a copy of the MLP "
        f"{steps} hidden-to-hidden maps deep), entries N(0, s^2/n), s = `model.w_std`. "
        "Per width the surviving chains of all seeds are pooled; SE is the standard "
        "error of the pooled mean from the chain spread. Compared: every exponent "
        "with the Gaussian closed form (Newman 1986), lambda_1 with the exact ReLU law "
        f"conditioned on survival (relu, bias-free ReLU network). Agrees: every "
        f"compared exponent within {k:g} SE (docs/analysis.md).",
        "",
        "| width | kind | seeds | chains survived / drawn | factors | compared | "
        "lambda_1 | closed lambda_1 | max abs err | SE of lambda_1 | max err / SE "
        f"| within {k:g} SE |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in fit["cells"]:
        for kind, c in cell["kinds"].items():
            top = c.get("exponents", [None])[0] if c.get("exponents") else None
            se = c.get("stderr", [None])[0] if c.get("stderr") else None
            md.append(
                f"| {cell['width']} | {kind} | {c['runs']} | {c['survived']} / "
                f"{c['chains']} | {c['factors']} | {c['compared']} | {_f(top)} | "
                f"{_f(c['top_closed'])} | {_f(c.get('max_abs_err'), 3)} | "
                f"{_f(se, 2)} | {_f(c.get('max_z'), 3)} | {_verdict(c['agree'])} |"
            )
    md.append("")
    rows = [
        (cell, kind, c) for cell in fit["cells"] for kind, c in cell["log_norm"].items()
    ]
    if rows:
        depth = max(
            (max(c["depths"]) for _, _, c in rows if c.get("depths")), default=None
        )
        md += [
            "Growth of the log-norm variance with depth: `Var log|P_L x|^2` is linear "
            "in L (figures/lyapunov_log_norm_variance.png); its rate Var/L at "
            f"L = {_f(depth)} against the exact per-factor law (Gaussian: psi_1(n/2); "
            "ReLU: E psi_1(K/2) + Var psi(K/2), K ~ Bin(n, 1/2) given K >= 1) and the "
            "leading order (2/n; 5/n, Hanin & Nica 2020).",
            "",
            "| width | kind | inputs survived / drawn | Var/L | SE | exact | "
            f"leading order | (Var/L - exact) / SE | within {k:g} SE |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        md += [
            f"| {cell['width']} | {kind} | {c['survived']} / {c['chains']} | "
            f"{_f(c.get('rate'))} | {_f(c.get('stderr'), 2)} | {_f(c['closed'])} | "
            f"{_f(c['leading'])} | {_f(c.get('z'), 3)} | {_verdict(c['agree'])} |"
            for cell, kind, c in rows
        ]
        md.append("")
    verdict = {
        True: f"every compared value agrees within {k:g} SE",
        False: f"**some compared value is more than {k:g} SE from its closed form**",
        None: "nothing compared",
    }[fit["agree"]]
    md += [f"Overall: {verdict}.", ""]
    if fit["pooled"]:
        md += [
            "Pooled per width (these config values vary across runs): "
            + ", ".join(f"`{c}`" for c in fit["pooled"]),
            "",
        ]
    return md
