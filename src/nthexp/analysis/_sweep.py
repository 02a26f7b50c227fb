r"""Spectral summaries across a sweep: linear trends in depth, outlier versus bulk.

For a ReLU network the infinite-width NTK grows linearly in depth: each layer adds
:math:`\dot\Sigma` terms to :math:`T_L` (docs/theory.md; Jacot et al. 2018,
Thm 1), so :math:`\mathrm{tr}\,K_{inf}` and :math:`\lambda_{min}(K_{inf})` are
fitted as :math:`\alpha L + \beta`, while the top eigenvalue separates from the bulk
as the kernel approaches a constant plus a small remainder at large depth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

#: Quantities of each kernel fitted by :func:`depth_trends`, as column suffixes.
QUANTITIES = ("lambda_min", "lambda_max", "trace", "cond")
#: Kernel prefixes: ``inf_`` (infinite width) and ``emp_`` (empirical).
KERNELS = ("inf", "emp")
#: Columns that, when they vary, split a trend into groups. The width only splits the
#: empirical kernel's trends (K_inf does not depend on it).
GROUP_COLUMNS = ("data.n", "data.d_in")
WIDTH_COLUMN = "model.width"


@dataclass(frozen=True)
class OutlierBulk:
    r"""Largest eigenvalue against the median of the others.

    Attributes:
        lambda_max: the largest eigenvalue (per row for a batch).
        bulk_median: median of the remaining ``N - 1``.
        ratio: ``lambda_max / bulk_median`` (``inf`` when the median is 0).
    """

    lambda_max: Any
    bulk_median: Any
    ratio: Any


def outlier_bulk(eigenvalues) -> OutlierBulk:
    r"""Outlier and bulk of a spectrum: :math:`\lambda_{max}` versus the median of
    the other :math:`N - 1` eigenvalues.

    Args:
        eigenvalues: ``(N,)`` or ``(R, N)`` (one spectrum per row), any order, N >= 2.

    Returns:
        An :class:`OutlierBulk` of floats for one spectrum, ``(R,)`` arrays for a batch.
    """
    ev = np.asarray(eigenvalues, dtype=np.float64)
    if ev.ndim not in (1, 2) or ev.shape[-1] < 2:
        raise ValueError(
            f"eigenvalues must have shape (N,) or (R, N) with N >= 2; got {ev.shape}"
        )
    if not np.all(np.isfinite(ev)):
        raise ValueError(
            "eigenvalues has non-finite entries; a spectrum must be finite"
        )
    ev = np.sort(ev, axis=-1)
    top = ev[..., -1]
    bulk = np.median(ev[..., :-1], axis=-1)
    with np.errstate(divide="ignore"):
        ratio = np.where(bulk > 0, top / np.where(bulk > 0, bulk, 1.0), np.inf)
    if ev.ndim == 1:
        return OutlierBulk(float(top), float(bulk), float(ratio))
    return OutlierBulk(top, bulk, ratio)


def _linear_fit(depth: np.ndarray, value: np.ndarray, level: float) -> dict[str, Any]:
    """OLS of value on depth with t intervals (scipy.stats.linregress)."""
    from scipy import stats

    res = stats.linregress(depth, value)
    dof = depth.shape[0] - 2
    if dof > 0:
        t = float(stats.t.ppf(0.5 * (1.0 + level), dof))
        s_lo, s_hi = res.slope - t * res.stderr, res.slope + t * res.stderr
        i_lo = res.intercept - t * res.intercept_stderr
        i_hi = res.intercept + t * res.intercept_stderr
    else:
        s_lo = s_hi = i_lo = i_hi = math.nan
    return {
        "slope": float(res.slope),
        "slope_low": float(s_lo),
        "slope_high": float(s_hi),
        "intercept": float(res.intercept),
        "intercept_low": float(i_lo),
        "intercept_high": float(i_hi),
        "r2": float(res.rvalue**2),
    }


def depth_trends(
    df: pd.DataFrame,
    *,
    depth_column: str = "model.depth",
    quantities: Sequence[str] = QUANTITIES,
    level: float = 0.95,
) -> pd.DataFrame:
    r"""Linear fits :math:`y = \alpha L + \beta` of kernel spectra against depth.

    For each kernel (``inf``, ``emp``) and quantity (``lambda_min``, ``lambda_max``,
    ``trace``, ``cond``) present as a column ``{kernel}_{quantity}``, the rows are
    averaged per depth (over seeds, and over widths for ``inf``) and the means fitted
    by ordinary least squares (:func:`scipy.stats.linregress`), with Student-t
    intervals on :math:`L_{count} - 2` degrees of freedom (NaN with two depths). The
    fit is done separately for each value of ``data.n`` and ``data.d_in`` (and of the
    width for ``emp``) that varies in the table. Non-finite values (an infinite
    condition number) are left out.

    Args:
        df: the sweep table (one row per run).
        depth_column: the depth column.
        quantities: which quantities to fit.
        level: two-sided coverage of the intervals.

    Returns:
        A DataFrame, one row per (kernel, quantity, group), with columns ``kernel``,
        ``quantity``, the group columns, ``slope``, ``slope_low``, ``slope_high``,
        ``intercept``, ``intercept_low``, ``intercept_high``, ``r2``, ``n_depths``,
        ``n_points``, ``depth_min``, ``depth_max``.

    Raises:
        ValueError: when the depth column is missing, or no quantity column is present.
    """
    import pandas as pd

    if depth_column not in df.columns:
        raise ValueError(
            f"depth column {depth_column!r} is not in the table; columns are "
            f"{list(map(str, df.columns))}"
        )
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r} is not allowed; must be in (0, 1)")
    rows = []
    for kernel in KERNELS:
        group_columns = [c for c in GROUP_COLUMNS if c in df.columns]
        if kernel == "emp" and WIDTH_COLUMN in df.columns:
            group_columns.append(WIDTH_COLUMN)
        group_columns = [c for c in group_columns if df[c].nunique() > 1]
        for quantity in quantities:
            column = f"{kernel}_{quantity}"
            if column not in df.columns:
                continue
            table = df[[depth_column, column, *group_columns]].copy()
            table[column] = pd.to_numeric(table[column], errors="coerce")
            table = table[np.isfinite(table[column].to_numpy(dtype=np.float64))]
            groups = table.groupby(group_columns) if group_columns else [((), table)]
            for key, part in groups:
                means = part.groupby(depth_column)[column].mean()
                if means.shape[0] < 2:
                    continue
                depth = means.index.to_numpy(dtype=np.float64)
                fit = _linear_fit(depth, means.to_numpy(dtype=np.float64), level)
                key = key if isinstance(key, tuple) else (key,)
                rows.append(
                    {
                        "kernel": kernel,
                        "quantity": quantity,
                        **dict(zip(group_columns, key, strict=True)),
                        **fit,
                        "n_depths": int(depth.shape[0]),
                        "n_points": int(part.shape[0]),
                        "depth_min": float(depth.min()),
                        "depth_max": float(depth.max()),
                    }
                )
    if not rows:
        raise ValueError(
            "no quantity could be fitted: need columns like "
            f"{[f'{k}_{q}' for k in KERNELS for q in quantities]} with >= 2 depths"
        )
    return pd.DataFrame(rows)


def weyl_table(df: pd.DataFrame) -> pd.DataFrame:
    r"""Per run: the certified bound next to the observed :math:`\lambda_{min}(K_{emp})`
    (Weyl's inequality, :func:`nthexp.analysis.weyl_bound`).

    Returns the columns present among ``model.width``, ``model.depth``, ``seed``,
    ``data.n``, then ``weyl_bound``, ``emp_lambda_min``, ``margin`` (observed minus
    bound, >= 0 up to round-off by Weyl's inequality) and ``certifies`` (bound > 0).
    """
    for column in ("weyl_bound", "emp_lambda_min"):
        if column not in df.columns:
            raise ValueError(f"column {column!r} is not in the table")
    keys = [c for c in ("model.width", "model.depth", "seed", "data.n") if c in df]
    out = df[[*keys, "weyl_bound", "emp_lambda_min"]].copy()
    out["margin"] = out["emp_lambda_min"] - out["weyl_bound"]
    out["certifies"] = out["weyl_bound"] > 0
    return out.reset_index(drop=True)
