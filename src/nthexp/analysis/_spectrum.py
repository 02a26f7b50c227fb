r"""Spectra of kernel matrices and the finite-width correction ``K_emp - K_inf``.

Both functions take symmetric ``(N, N)`` matrices (numpy or jax), symmetrise them as
:math:`(K + K^T)/2` and diagonalise in float64 with :func:`numpy.linalg.eigvalsh`. The
round-off tolerances use the machine epsilon of the *input* dtype, so a float32 kernel
is judged by float32 round-off even though its eigenvalues are computed in float64.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np


class NegativeEigenvalueError(ValueError):
    """A kernel that should be PSD has an eigenvalue clearly below zero."""


@dataclass(frozen=True)
class Spectrum:
    """Eigenvalues of a symmetric PSD ``(N, N)`` kernel and summaries of them.

    Attributes:
        eigenvalues: ``(N,)`` float64, ascending; those with ``|lambda| <= tol`` are
            reported as exactly 0.
        lambda_min, lambda_max: smallest and largest reported eigenvalue.
        trace: trace of the symmetrised kernel.
        cond: ``lambda_max / lambda_min``; ``inf`` when ``lambda_min == 0``.
        rank: ``N - n_zero``, the numerical rank at tolerance ``tol``.
        n_zero: number of eigenvalues within ``tol`` of 0.
        tol: the tolerance used.
    """

    eigenvalues: np.ndarray
    lambda_min: float
    lambda_max: float
    trace: float
    cond: float
    rank: int
    n_zero: int
    tol: float

    def to_dict(self) -> dict[str, Any]:
        """Python scalars only (no eigenvalues); ``cond`` may be ``inf``."""
        return {
            "n": int(self.eigenvalues.shape[0]),
            "lambda_min": float(self.lambda_min),
            "lambda_max": float(self.lambda_max),
            "trace": float(self.trace),
            "cond": float(self.cond),
            "rank": int(self.rank),
            "n_zero": int(self.n_zero),
            "tol": float(self.tol),
        }


@dataclass(frozen=True)
class Correction:
    r"""Size of the finite-width correction :math:`\Delta K = K_{emp} - K_{inf}`.

    Attributes:
        op: :math:`\|\Delta K\|_{op}`, the largest :math:`|\lambda|` of the symmetrised
            difference.
        fro: :math:`\|\Delta K\|_F`.
        rel_op, rel_fro: ``op / ||K_inf||_op`` and ``fro / ||K_inf||_F``.
        lambda_min_emp, lambda_min_inf: smallest eigenvalues (not clipped to 0).
        weyl_bound: ``lambda_min_inf - op``, a lower bound on ``lambda_min_emp``.
        weyl_holds: ``lambda_min_emp >= weyl_bound - slack``.
        slack: the round-off allowance ``N * eps * max(||K_emp||_op, ||K_inf||_op)``.
    """

    op: float
    fro: float
    rel_op: float
    rel_fro: float
    lambda_min_emp: float
    lambda_min_inf: float
    weyl_bound: float
    weyl_holds: bool
    slack: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Python scalars only."""
        return {
            "op": float(self.op),
            "fro": float(self.fro),
            "rel_op": float(self.rel_op),
            "rel_fro": float(self.rel_fro),
            "lambda_min_emp": float(self.lambda_min_emp),
            "lambda_min_inf": float(self.lambda_min_inf),
            "weyl_bound": float(self.weyl_bound),
            "weyl_holds": bool(self.weyl_holds),
            "slack": float(self.slack),
        }


def _eps(dtype: np.dtype) -> float:
    """Machine epsilon of a floating dtype; float64's for anything else."""
    if np.issubdtype(dtype, np.floating):
        return float(np.finfo(dtype).eps)
    return float(np.finfo(np.float64).eps)


def _symmetric(k: Any, what: str) -> tuple[np.ndarray, float]:
    """``(K + K^T) / 2`` as float64 ``(N, N)`` and the eps of the input dtype."""
    k = np.asarray(k)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] == 0:
        raise ValueError(
            f"{what} must be a non-empty square (N, N) matrix; got shape {k.shape}"
        )
    if np.iscomplexobj(k):
        raise ValueError(f"{what} must be real; got dtype {k.dtype}")
    eps = _eps(k.dtype)
    k64 = k.astype(np.float64)
    if not np.all(np.isfinite(k64)):
        bad = np.argwhere(~np.isfinite(k64))
        i, j = (int(v) for v in bad[0])
        raise ValueError(
            f"{what} has {bad.shape[0]} non-finite entries, the first at [{i}, {j}] "
            f"({k64[i, j]}); a kernel must be finite"
        )
    return 0.5 * (k64 + k64.T), eps


def spectrum(k: Any, *, tol: float | None = None) -> Spectrum:
    r"""Eigenvalues of the symmetric PSD kernel ``k`` ``(N, N)``, with a PSD check.

    The matrix is symmetrised, :math:`K \to (K + K^T)/2`, and diagonalised in float64.
    With :math:`\epsilon` the machine epsilon of the input dtype, the default tolerance
    is

    .. math:: \tau = N \, \epsilon \, \max(\max_i |\lambda_i|, \text{tiny}),

    the size of the backward error of a symmetric eigensolver on a matrix assembled in
    that precision (Golub & Van Loan, Matrix Computations 4th ed. 2013, Sec. 8.1-8.4).
    (For a PSD kernel :math:`\max_i |\lambda_i| = \lambda_{max}`.) Eigenvalues with
    :math:`|\lambda| \le \tau` are reported as exactly 0 and counted in ``n_zero``.

    Args:
        k: symmetric ``(N, N)`` kernel, numpy or jax, any real dtype.
        tol: absolute tolerance :math:`\tau` (>= 0) replacing the default.

    Returns:
        A :class:`Spectrum`.

    Raises:
        NegativeEigenvalueError: when :math:`\lambda_{min} < -\tau`.
        ValueError: for a non-square, empty, complex or non-finite ``k``, or a negative
            or non-finite ``tol``.

    Warns:
        UserWarning: when ``cond > 1 / eps`` (including a singular kernel, cond = inf).
    """
    k_sym, eps = _symmetric(k, "k")
    n = k_sym.shape[0]
    eigenvalues = np.linalg.eigvalsh(k_sym)

    scale = max(float(np.max(np.abs(eigenvalues))), float(np.finfo(np.float64).tiny))
    if tol is None:
        tol = n * eps * scale
    elif not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol={tol!r} is not allowed; must be a finite number >= 0")
    tol = float(tol)

    raw_min, raw_max = float(eigenvalues[0]), float(eigenvalues[-1])
    if raw_min < -tol:
        raise NegativeEigenvalueError(
            f"kernel is not positive semidefinite: lambda_min={raw_min:.6g} < -tol "
            f"(lambda_max={raw_max:.6g}, tol={tol:.3g}, N={n}); likely causes: blocks "
            "of the kernel computed differently (e.g. train/test blocks by different "
            "methods), wrong model parameters for the infinite-width kernel, or "
            "float32 round-off (compute in float64)"
        )

    zero = np.abs(eigenvalues) <= tol
    eigenvalues = np.where(zero, 0.0, eigenvalues)
    n_zero = int(np.count_nonzero(zero))
    lambda_min, lambda_max = float(eigenvalues[0]), float(eigenvalues[-1])
    cond = lambda_max / lambda_min if lambda_min > 0 else math.inf

    if cond > 1.0 / eps:
        warnings.warn(
            f"kernel is ill-conditioned: cond={cond:.3g} > 1/eps={1.0 / eps:.3g} "
            f"({n_zero} of N={n} eigenvalues within tol={tol:.3g} of 0, rank "
            f"{n - n_zero}); solves with it are unreliable",
            stacklevel=2,
        )

    return Spectrum(
        eigenvalues=eigenvalues,
        lambda_min=lambda_min,
        lambda_max=lambda_max,
        trace=float(np.trace(k_sym)),
        cond=float(cond),
        rank=n - n_zero,
        n_zero=n_zero,
        tol=tol,
    )


def correction(k_emp: Any, k_inf: Any) -> Correction:
    r"""Norms of :math:`\Delta K = K_{emp} - K_{inf}` and Weyl's bound on the spectrum.

    Both kernels are ``(N, N)`` and symmetrised before use. Weyl's inequality (Horn &
    Johnson, Matrix Analysis 2nd ed. 2013, Thm 4.3.1) gives, for symmetric :math:`A,
    B`, :math:`\lambda_{min}(A + B) \ge \lambda_{min}(A) + \lambda_{min}(B)`, hence with
    :math:`A = K_{inf}`, :math:`B = \Delta K`:

    .. math:: \lambda_{min}(K_{emp}) \ge \lambda_{min}(K_{inf}) - \|\Delta K\|_{op}.

    It is an equality when :math:`\Delta K = -c I`. ``weyl_holds`` compares with a
    round-off slack :math:`N \epsilon \max(\|K_{emp}\|_{op}, \|K_{inf}\|_{op})`, with
    :math:`\epsilon` the larger machine epsilon of the two input dtypes.

    Args:
        k_emp: empirical kernel ``(N, N)``.
        k_inf: infinite-width kernel ``(N, N)``.

    Returns:
        A :class:`Correction`.

    Raises:
        ValueError: for shapes that are not square or differ, non-finite entries, or
            ``k_inf == 0`` (the relative norms are undefined).
    """
    emp, eps_emp = _symmetric(k_emp, "k_emp")
    inf, eps_inf = _symmetric(k_inf, "k_inf")
    if emp.shape != inf.shape:
        raise ValueError(
            f"k_emp and k_inf must have the same shape; got {emp.shape} and {inf.shape}"
        )
    n = emp.shape[0]
    eps = max(eps_emp, eps_inf)

    eig_emp = np.linalg.eigvalsh(emp)
    eig_inf = np.linalg.eigvalsh(inf)
    eig_diff = np.linalg.eigvalsh(emp - inf)

    op = float(np.max(np.abs(eig_diff)))
    fro = float(np.linalg.norm(emp - inf, "fro"))
    op_inf = float(np.max(np.abs(eig_inf)))
    fro_inf = float(np.linalg.norm(inf, "fro"))
    if op_inf == 0.0:
        raise ValueError("k_inf is the zero matrix; the relative norms are undefined")

    lambda_min_emp, lambda_min_inf = float(eig_emp[0]), float(eig_inf[0])
    weyl_bound = lambda_min_inf - op
    slack = n * eps * max(op_inf, float(np.max(np.abs(eig_emp))))

    return Correction(
        op=op,
        fro=fro,
        rel_op=op / op_inf,
        rel_fro=fro / fro_inf,
        lambda_min_emp=lambda_min_emp,
        lambda_min_inf=lambda_min_inf,
        weyl_bound=weyl_bound,
        weyl_holds=bool(lambda_min_emp >= weyl_bound - slack),
        slack=slack,
    )
