r"""Power-law fits of a measured quantity against sweep factors, with seed intervals.

The model is :math:`\log y = c + \sum_i a_i \log f_i`, fitted by pooled least squares.
Three uncertainty methods (``stderr_method``):

* ``"seed_spread"``: Student-t interval from the spread of per-seed refits (two or more
  seeds, the default);
* ``"ols"``: the ordinary least-squares standard error (a single seed);
* ``"bootstrap"``: percentile interval of a bootstrap over seeds (Efron & Tibshirani,
  An Introduction to the Bootstrap, 1993, ch. 13): seed groups are resampled with
  replacement and the pooled fit is redone on each resample.

A curvature check refits with one extra term
:math:`\gamma\,(\log v - \overline{\log v})^2`, with :math:`v` the width (or
:math:`\beta = \mathrm{depth}/\mathrm{width}` when ``"beta"`` is a factor), and reports
:math:`\gamma` with an interval by the same method; ``curved`` is true when that
interval excludes 0. It is reported next to the power law, never used to replace it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

StderrMethod = Literal["seed_spread", "ols", "bootstrap"]

#: The smallest non-zero ``bootstrap``: with fewer resamples the 2.5% and 97.5%
#: percentiles rest on one or two draws.
MIN_BOOTSTRAP = 100

#: Column names tried, in order, for the derived factor ``beta = depth / width``.
DEPTH_COLUMNS = ("depth", "model.depth")
WIDTH_COLUMNS = ("width", "model.width")


@dataclass(frozen=True)
class CurvatureCheck:
    r"""Quadratic term of the curvature check of :func:`fit_power_law`.

    The refit is :math:`\log y = c + \sum_i a_i \log f_i + \gamma\, q`, with
    :math:`q = (\log v - \overline{\log v})^2` (centred so that :math:`\gamma` does
    not move the linear terms at the centre of the data).

    Attributes:
        variable: ``v``, the factor whose log enters squared (``"beta"`` or a width).
        coefficient: :math:`\gamma`.
        stderr: its standard error (same method as the power-law fit).
        interval: ``(low, high)``, two-sided ``level`` interval of :math:`\gamma`.
        curved: ``interval`` excludes 0: the data reject a pure power law in ``v``.
        r2: coefficient of determination of the refit, in log space.
    """

    variable: str
    coefficient: float
    stderr: float
    interval: tuple[float, float]
    curved: bool
    r2: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "variable": self.variable,
            "coefficient": float(self.coefficient),
            "stderr": float(self.stderr),
            "interval": [float(self.interval[0]), float(self.interval[1])],
            "curved": bool(self.curved),
            "r2": float(self.r2),
        }


@dataclass(frozen=True)
class PowerLawFit:
    r"""Result of :func:`fit_power_law`: :math:`y \approx e^c \prod_i f_i^{a_i}`.

    Attributes:
        response: the fitted column.
        factors: the factor columns, in the order of ``exponents``.
        exponents: ``{factor: a_i}``, the pooled least-squares estimates.
        intercept: ``c``, so that the prefactor is ``exp(c)``.
        stderr: ``{factor: standard error of a_i}``, by ``stderr_method``.
        interval: ``{factor: (low, high)}``, the two-sided ``level`` interval.
        r2: coefficient of determination of the pooled fit in log space.
        n_points: rows fitted on (after dropping non-positive or non-finite responses).
        n_seeds: distinct seeds among them (1 when ``seed_column`` is None).
        ranges: ``{factor: (min, max)}`` of the values fitted on.
        residuals: ``(n_points,)`` log-space residuals ``log y - fitted``, in row order.
        stderr_method: ``"seed_spread"`` (two or more seeds), ``"ols"`` (one) or
            ``"bootstrap"``.
        level: the interval's coverage.
        curvature: the curvature check, or None when it was not asked for or could
            not be made (then ``curvature_note`` says why).
        curvature_note: why there is no curvature check, or None.
        bootstrap: the number of bootstrap resamples (0 when not used).
    """

    response: str
    factors: tuple[str, ...]
    exponents: dict[str, float]
    intercept: float
    stderr: dict[str, float]
    interval: dict[str, tuple[float, float]]
    r2: float
    n_points: int
    n_seeds: int
    ranges: dict[str, tuple[float, float]]
    residuals: np.ndarray
    stderr_method: StderrMethod = "seed_spread"
    level: float = 0.95
    curvature: CurvatureCheck | None = None
    curvature_note: str | None = None
    bootstrap: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary; residuals reduced to their RMS."""
        return {
            "response": self.response,
            "factors": list(self.factors),
            "exponents": {k: float(v) for k, v in self.exponents.items()},
            "intercept": float(self.intercept),
            "stderr": {k: float(v) for k, v in self.stderr.items()},
            "interval": {k: [lo, hi] for k, (lo, hi) in self.interval.items()},
            "r2": float(self.r2),
            "n_points": int(self.n_points),
            "n_seeds": int(self.n_seeds),
            "ranges": {k: [float(v[0]), float(v[1])] for k, v in self.ranges.items()},
            "residual_rms": float(np.sqrt(np.mean(self.residuals**2))),
            "stderr_method": self.stderr_method,
            "level": float(self.level),
            "bootstrap": int(self.bootstrap),
            "curvature": None if self.curvature is None else self.curvature.to_dict(),
            "curvature_note": self.curvature_note,
        }


def _design(log_f: np.ndarray) -> np.ndarray:
    """``[1, log f_1, ..., log f_p]`` ``(M, p + 1)`` from ``log_f`` ``(M, p)``."""
    return np.concatenate([np.ones((log_f.shape[0], 1)), log_f], axis=1)


def _lstsq(x: np.ndarray, y: np.ndarray, where: str) -> np.ndarray:
    """Least-squares coefficients ``(p + 1,)``; ValueError if ``x`` lacks full rank."""
    beta, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    if rank < x.shape[1]:
        raise ValueError(
            f"{where}: the log-factors are linearly dependent (design rank {rank} < "
            f"{x.shape[1]} parameters); drop a factor or vary them independently"
        )
    return beta


def _first_column(table: pd.DataFrame, names: Sequence[str]) -> str | None:
    return next((name for name in names if name in table.columns), None)


def _column(table: pd.DataFrame, name: str, role: str) -> np.ndarray:
    if name not in table.columns:
        if name == "beta" and role == "factor":
            depth = _first_column(table, DEPTH_COLUMNS)
            width = _first_column(table, WIDTH_COLUMNS)
            if depth is not None and width is not None:
                return _column(table, depth, role) / _column(table, width, role)
            raise ValueError(
                "factor 'beta' = depth / width needs a depth column (one of "
                f"{list(DEPTH_COLUMNS)}) and a width column (one of "
                f"{list(WIDTH_COLUMNS)}); columns are {list(map(str, table.columns))}"
            )
        raise ValueError(
            f"{role} column {name!r} is not in the table; columns are "
            f"{list(map(str, table.columns))}"
        )
    try:
        return np.asarray(table[name], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{role} column {name!r} is not numeric: {err}") from None


@dataclass(frozen=True)
class _Estimate:
    """Coefficients ``(p,)`` with standard errors and intervals, one method."""

    beta: np.ndarray
    se: np.ndarray
    low: np.ndarray
    high: np.ndarray
    ss_res: float
    method: StderrMethod


def _estimate(
    x: np.ndarray,
    log_y: np.ndarray,
    seeds: np.ndarray,
    level: float,
    bootstrap: int,
    rng: np.random.Generator,
    what: str,
) -> _Estimate:
    """Pooled least squares on ``x`` ``(M, p)``, uncertainty as in the module doc."""
    from scipy import stats

    n_points, n_params = x.shape
    beta = _lstsq(x, log_y, f"pooled fit{what}")
    residuals = log_y - x @ beta
    ss_res = float(residuals @ residuals)

    unique_seeds = np.unique(seeds)
    n_seeds = int(unique_seeds.shape[0])
    if n_seeds < 2:
        dof = n_points - n_params
        sigma2 = ss_res / dof
        se = np.sqrt(sigma2 * np.diag(np.linalg.inv(x.T @ x)))
        t = float(stats.t.ppf(0.5 * (1.0 + level), dof))
        return _Estimate(beta, se, beta - t * se, beta + t * se, ss_res, "ols")

    # Per-seed normal equations: (S, p, p) and (S, p).
    gram, moment, per_seed = [], [], []
    for s in unique_seeds:
        rows = seeds == s
        if np.count_nonzero(rows) < n_params:
            raise ValueError(
                f"seed {s!r} has {int(np.count_nonzero(rows))} usable rows, fewer "
                f"than the {n_params} parameters{what}; every seed needs a full design"
            )
        per_seed.append(_lstsq(x[rows], log_y[rows], f"fit for seed {s!r}{what}"))
        gram.append(x[rows].T @ x[rows])
        moment.append(x[rows].T @ log_y[rows])

    if bootstrap == 0:
        se = np.std(np.stack(per_seed), axis=0, ddof=1) / math.sqrt(n_seeds)
        t = float(stats.t.ppf(0.5 * (1.0 + level), n_seeds - 1))
        return _Estimate(beta, se, beta - t * se, beta + t * se, ss_res, "seed_spread")

    # Bootstrap over seeds: the pooled fit of a resample with seed counts c_s solves
    # (sum_s c_s X_s^T X_s) beta = sum_s c_s X_s^T y_s, positive definite because
    # every seed alone has a full-rank design.
    draws = rng.integers(0, n_seeds, size=(bootstrap, n_seeds))
    counts = np.stack([np.bincount(row, minlength=n_seeds) for row in draws])
    counts = counts.astype(np.float64)
    lhs = np.einsum("bs,sij->bij", counts, np.stack(gram))
    rhs = np.einsum("bs,si->bi", counts, np.stack(moment))
    betas = np.linalg.solve(lhs, rhs[..., None])[..., 0]
    low, high = np.quantile(betas, [0.5 * (1.0 - level), 0.5 * (1.0 + level)], axis=0)
    se = np.std(betas, axis=0, ddof=1)
    return _Estimate(beta, se, low, high, ss_res, "bootstrap")


def _r2(log_y: np.ndarray, ss_res: float) -> float:
    ss_tot = float(np.sum((log_y - log_y.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)


def _curvature_variable(factors: tuple[str, ...]) -> str:
    """``beta`` if fitted, else a width column, else the first factor."""
    for name in ("beta", *WIDTH_COLUMNS):
        if name in factors:
            return name
    return factors[0]


def fit_power_law(
    table: pd.DataFrame,
    response: str,
    factors: Sequence[str],
    *,
    seed_column: str | None = "seed",
    level: float = 0.95,
    bootstrap: int = 0,
    rng: int | np.random.Generator = 0,
    curvature: bool = True,
) -> PowerLawFit:
    r"""Fit :math:`\log y = c + \sum_i a_i \log f_i` by least squares, pooled over rows.

    The exponents :math:`a_i` come from one ordinary least-squares fit on all rows.
    Their uncertainty comes from the spread over seeds: the same model is fitted
    separately on the rows of each of the :math:`S` seeds, giving :math:`a_i^{(s)}`, and

    .. math::

        \mathrm{SE}(a_i) = \frac{\mathrm{std}_{ddof=1}(a_i^{(s)})}{\sqrt{S}}, \qquad
        a_i \pm t_{(1+\text{level})/2,\, S-1}\, \mathrm{SE}(a_i),

    the Student-t interval for the mean of :math:`S` independent replicates (for a
    design balanced over seeds the pooled estimate equals that mean). This counts the
    fluctuation over initialisations as the noise, as it is, and does not treat points
    of one seed as independent. With a single seed (or ``seed_column=None``) the
    ordinary OLS standard error :math:`\sqrt{\hat\sigma^2 (X^T X)^{-1}_{ii}}` with
    :math:`M - p - 1` degrees of freedom is used instead.

    With ``bootstrap = B > 0`` the interval is instead the percentile interval of
    :math:`B` pooled refits on seed groups resampled with replacement (Efron &
    Tibshirani 1993, eq. (13.5)), and the standard error their standard deviation. With
    few seeds it is narrower than the t interval: for a balanced design it is the
    bootstrap of a mean of :math:`S` replicates, whose spread is
    :math:`\sqrt{(S-1)/S}` times the standard error and which uses normal instead of
    t quantiles (coverage about 0.90 at ``level=0.95`` for :math:`S = 10`).

    The factor ``"beta"``, when absent from the table, is derived as depth / width from
    the ``depth`` (or ``model.depth``) and ``width`` (or ``model.width``) columns.

    With ``curvature=True`` the model is refitted with one more term
    :math:`\gamma (\log v - \overline{\log v})^2`, where :math:`v` is ``beta`` if it is
    a factor, else the width, else the first factor, and :math:`\gamma` is reported
    with its interval (same method) in ``curvature``; ``curvature.curved`` is true
    when the interval excludes 0. A pure power law is then flagged at rate about
    ``1 - level``. When the check cannot be made (fewer than 3 distinct values of
    :math:`v`, too few rows), ``curvature`` is None and ``curvature_note`` says why.

    Args:
        table: one row per measurement.
        response: column of the measured quantity :math:`y`; rows with a non-positive
            or non-finite value are dropped with a warning.
        factors: columns :math:`f_i`, each positive, finite and varying; ``"beta"`` may
            be derived (above).
        seed_column: column naming the replicate of each row, or None for one replicate.
        level: two-sided coverage of the intervals, in (0, 1).
        bootstrap: number of bootstrap resamples over seeds; 0 (default) for the
            t interval, else an integer >= ``MIN_BOOTSTRAP`` (100).
        rng: seed or :class:`numpy.random.Generator` of the bootstrap resamples.
        curvature: whether to make the curvature check.

    Returns:
        A :class:`PowerLawFit`.

    Raises:
        ValueError: for a missing or non-numeric column, a factor that is not positive
            and finite or does not vary, linearly dependent factors, fewer rows than
            parameters + 1, a seed with too few rows, ``level`` outside (0, 1), a
            ``bootstrap`` that is neither 0 nor >= 100, or a bootstrap with one seed.
    """
    factors = tuple(factors)
    if len(factors) == 0:
        raise ValueError("factors=() is not allowed; give at least one factor column")
    if len(set(factors)) != len(factors) or response in factors:
        raise ValueError(
            f"factors={factors} must be distinct and must not include the response "
            f"{response!r}"
        )
    if not (isinstance(level, float | int) and 0.0 < level < 1.0):
        raise ValueError(f"level={level!r} is not allowed; must be in (0, 1)")
    if (
        isinstance(bootstrap, bool)
        or not isinstance(bootstrap, int | np.integer)
        or not (bootstrap == 0 or bootstrap >= MIN_BOOTSTRAP)
    ):
        raise ValueError(
            f"bootstrap={bootstrap!r} is not allowed; must be 0 (t interval) or an "
            f"integer >= {MIN_BOOTSTRAP}"
        )
    generator = np.random.default_rng(rng)

    y = _column(table, response, "response")
    f = np.stack([_column(table, name, "factor") for name in factors], axis=1)
    if seed_column is None:
        seeds = np.zeros(y.shape[0])
    elif seed_column not in table.columns:
        raise ValueError(
            f"seed column {seed_column!r} is not in the table; columns are "
            f"{list(map(str, table.columns))}; pass seed_column=None for one replicate"
        )
    else:
        seeds = np.asarray(table[seed_column])

    keep = np.isfinite(y) & (y > 0)
    if not np.all(keep):
        warnings.warn(
            f"fit_power_law: {int(np.count_nonzero(~keep))} of {y.shape[0]} rows "
            f"excluded because {response!r} is non-positive or non-finite",
            stacklevel=2,
        )
    y, f, seeds = y[keep], f[keep], seeds[keep]

    for i, name in enumerate(factors):
        bad = ~(np.isfinite(f[:, i]) & (f[:, i] > 0))
        if np.any(bad):
            raise ValueError(
                f"factor {name!r} has {int(np.count_nonzero(bad))} non-positive or "
                "non-finite values; a power law needs positive factors"
            )
        if f.shape[0] > 0 and np.ptp(f[:, i]) == 0:
            raise ValueError(
                f"factor {name!r} does not vary (every fitted row has {f[0, i]:g}); "
                "its exponent cannot be fitted"
            )
    n_params = len(factors) + 1
    n_points = int(y.shape[0])
    if n_points < n_params + 1:
        raise ValueError(
            f"{n_points} usable rows are too few to fit {n_params} parameters "
            f"(intercept + {len(factors)} exponents); need at least {n_params + 1}"
        )
    n_seeds = int(np.unique(seeds).shape[0])
    if bootstrap > 0 and n_seeds < 2:
        raise ValueError(
            f"bootstrap={bootstrap} resamples seeds, but the fitted rows have "
            f"{n_seeds} seed; use bootstrap=0 or add seeds"
        )

    # Power-law fit.
    log_y = np.log(y)
    log_f = np.log(f)
    x = _design(log_f)
    est = _estimate(x, log_y, seeds, level, bootstrap, generator, "")
    residuals = log_y - x @ est.beta

    # Curvature check: one more column, the centred square of log v.
    check, note = None, None
    if curvature:
        variable = _curvature_variable(factors)
        log_v = log_f[:, factors.index(variable)]
        if np.unique(log_v).shape[0] < 3:
            note = (
                f"curvature in {variable!r} needs >= 3 distinct values; got "
                f"{np.unique(log_v).shape[0]}"
            )
        elif n_points < n_params + 2:
            note = f"{n_points} rows are too few for the quadratic refit"
        else:
            x_q = np.concatenate([x, ((log_v - log_v.mean()) ** 2)[:, None]], axis=1)
            try:
                quad = _estimate(
                    x_q, log_y, seeds, level, bootstrap, generator, " (curvature)"
                )
            except ValueError as err:
                note = f"curvature check not made: {err}"
            else:
                low, high = float(quad.low[-1]), float(quad.high[-1])
                check = CurvatureCheck(
                    variable=variable,
                    coefficient=float(quad.beta[-1]),
                    stderr=float(quad.se[-1]),
                    interval=(low, high),
                    curved=bool(low > 0.0 or high < 0.0),
                    r2=_r2(log_y, quad.ss_res),
                )

    exponents = {name: float(est.beta[i + 1]) for i, name in enumerate(factors)}
    return PowerLawFit(
        response=response,
        factors=factors,
        exponents=exponents,
        intercept=float(est.beta[0]),
        stderr={name: float(est.se[i + 1]) for i, name in enumerate(factors)},
        interval={
            name: (float(est.low[i + 1]), float(est.high[i + 1]))
            for i, name in enumerate(factors)
        },
        r2=float(_r2(log_y, est.ss_res)),
        n_points=n_points,
        n_seeds=n_seeds,
        ranges={
            name: (float(f[:, i].min()), float(f[:, i].max()))
            for i, name in enumerate(factors)
        },
        residuals=residuals,
        stderr_method=est.method,
        level=float(level),
        curvature=check,
        curvature_note=note,
        bootstrap=int(bootstrap),
    )
