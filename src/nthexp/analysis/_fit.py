r"""Power-law fits of a measured quantity against sweep factors, with seed intervals."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


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
        stderr_method: ``"seed_spread"`` (two or more seeds) or ``"ols"`` (one).
        level: the interval's coverage.
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
    stderr_method: Literal["seed_spread", "ols"] = "seed_spread"
    level: float = 0.95

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


def _column(table: pd.DataFrame, name: str, role: str) -> np.ndarray:
    if name not in table.columns:
        raise ValueError(
            f"{role} column {name!r} is not in the table; columns are "
            f"{list(map(str, table.columns))}"
        )
    try:
        return np.asarray(table[name], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{role} column {name!r} is not numeric: {err}") from None


def fit_power_law(
    table: pd.DataFrame,
    response: str,
    factors: Sequence[str],
    *,
    seed_column: str | None = "seed",
    level: float = 0.95,
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

    Args:
        table: one row per measurement.
        response: column of the measured quantity :math:`y`; rows with a non-positive
            or non-finite value are dropped with a warning.
        factors: columns :math:`f_i`, each positive, finite and varying.
        seed_column: column naming the replicate of each row, or None for one replicate.
        level: two-sided coverage of the intervals, in (0, 1).

    Returns:
        A :class:`PowerLawFit`.

    Raises:
        ValueError: for a missing or non-numeric column, a factor that is not positive
            and finite or does not vary, linearly dependent factors, fewer rows than
            parameters + 1, a seed with too few rows, or ``level`` outside (0, 1).
    """
    from scipy import stats

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

    # Pooled fit.
    log_y = np.log(y)
    x = _design(np.log(f))
    beta = _lstsq(x, log_y, "pooled fit")
    residuals = log_y - x @ beta
    ss_res = float(residuals @ residuals)
    ss_tot = float(np.sum((log_y - log_y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)

    # Uncertainty: spread over seeds, or OLS with a single seed.
    unique_seeds = np.unique(seeds)
    n_seeds = int(unique_seeds.shape[0])
    if n_seeds >= 2:
        per_seed = []
        for s in unique_seeds:
            rows = seeds == s
            if np.count_nonzero(rows) < n_params:
                raise ValueError(
                    f"seed {s!r} has {int(np.count_nonzero(rows))} usable rows, fewer "
                    f"than the {n_params} parameters; every seed needs a full design"
                )
            per_seed.append(_lstsq(x[rows], log_y[rows], f"fit for seed {s!r}"))
        se = np.std(np.stack(per_seed), axis=0, ddof=1) / math.sqrt(n_seeds)
        dof = n_seeds - 1
        method: Literal["seed_spread", "ols"] = "seed_spread"
    else:
        dof = n_points - n_params
        sigma2 = ss_res / dof
        se = np.sqrt(sigma2 * np.diag(np.linalg.inv(x.T @ x)))
        method = "ols"
    t = float(stats.t.ppf(0.5 * (1.0 + level), dof))

    exponents = {name: float(beta[i + 1]) for i, name in enumerate(factors)}
    stderr = {name: float(se[i + 1]) for i, name in enumerate(factors)}
    interval = {
        name: (exponents[name] - t * stderr[name], exponents[name] + t * stderr[name])
        for name in factors
    }
    ranges = {
        name: (float(f[:, i].min()), float(f[:, i].max()))
        for i, name in enumerate(factors)
    }
    return PowerLawFit(
        response=response,
        factors=factors,
        exponents=exponents,
        intercept=float(beta[0]),
        stderr=stderr,
        interval=interval,
        r2=float(r2),
        n_points=n_points,
        n_seeds=n_seeds,
        ranges=ranges,
        residuals=residuals,
        stderr_method=method,
        level=float(level),
    )
