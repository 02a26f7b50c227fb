r"""The smallest eigenvalue of a large symmetric PSD kernel without a full
eigendecomposition, with a fallback chain that never lets a solver error escape.

Methods (:data:`LAMBDA_MIN_METHODS`), for an ``(N, N)`` kernel:

``"dense"``
    :func:`numpy.linalg.eigvalsh` of the whole matrix: :math:`O(N^3)` time (about
    :math:`\tfrac{4}{3}N^3` flops for the tridiagonal reduction), :math:`O(N^2)`
    memory. The reference.
``"lanczos"``
    ARPACK's implicitly restarted Lanczos (:func:`scipy.sparse.linalg.eigsh`) in
    shift-invert mode around :math:`\sigma = -N\epsilon\lambda_{max}` (just below 0):
    the smallest eigenvalue of :math:`K` is the largest of :math:`(K - \sigma I)^{-1}`
    and well separated from the rest. One LU factorisation (:math:`\tfrac{2}{3}N^3`
    flops) plus a few dozen :math:`O(N^2)` solves.
``"lobpcg"``
    :func:`scipy.sparse.linalg.lobpcg` (Knyazev 2001) for the smallest eigenvalue,
    preconditioned by the Cholesky factor of :math:`K - \sigma I` (the same shift), so
    that it converges in a handful of iterations: one factorisation
    (:math:`\tfrac{1}{3}N^3`) plus :math:`O(N^2)` per iteration; without a
    factorisation (not positive definite) it runs unpreconditioned.
``"auto"``
    ``"dense"`` for :math:`N \le` :data:`DENSE_MAX_N`, else ``"lanczos"``, then
    ``"lobpcg"``, then ``"dense"``.

:math:`\lambda_{max}` comes from Lanczos on :math:`K` itself (fast: the top of an NTK
spectrum is an isolated outlier), or from the dense spectrum.

Every iterative result is certified by its residual: for a unit vector :math:`v` and
symmetric :math:`K`, some eigenvalue lies within :math:`\|Kv - \lambda v\|` of
:math:`\lambda` (Parlett, The Symmetric Eigenvalue Problem, 1998, Thm 4.5.1). A result
whose residual exceeds ``tol * lambda_max``, a solver exception, or a non-convergence
makes :func:`lambda_min` log one line (logger ``nthexp.analysis``) and try the next
method; ``"dense"`` ends every chain.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.linalg
import scipy.sparse.linalg

log = logging.getLogger("nthexp.analysis")

LambdaMinMethod = Literal["auto", "dense", "lanczos", "lobpcg"]
LAMBDA_MIN_METHODS = ("auto", "dense", "lanczos", "lobpcg")

#: Below this N, ``"auto"`` diagonalises densely: eigvalsh of a 1500 x 1500 float64
#: matrix takes about a second on one core, and the iterative methods need an
#: O(N^3) factorisation anyway, so they only pay off above.
DENSE_MAX_N = 1500

#: Default certified accuracy, relative to lambda_max (1e-8 is asked at N = 2000).
DEFAULT_TOL = 1e-10

#: LOBPCG block size and iteration cap (measured on ReLU NTKs of N = 400..2000:
#: 8 vectors reach a residual of 1e-9 lambda_max within 50 iterations).
LOBPCG_BLOCK = 8
LOBPCG_MAXITER = 60

_CHAINS = {
    "dense": ("dense",),
    "lanczos": ("lanczos", "lobpcg", "dense"),
    "lobpcg": ("lobpcg", "lanczos", "dense"),
}


@dataclass(frozen=True)
class LambdaMin:
    """Smallest eigenvalue of a symmetric ``(N, N)`` kernel and how it was found.

    Attributes:
        value: the smallest eigenvalue (float64, not clipped at 0).
        lambda_max: the largest eigenvalue.
        method: the method that produced ``value`` (``"dense"``, ``"lanczos"`` or
            ``"lobpcg"``).
        residual: ``||K v - value v||`` of its unit eigenvector (0.0 for ``"dense"``).
        failed: ``(method, reason)`` of each method that was tried first and failed.
        seconds: wall time of all attempts.
    """

    value: float
    lambda_max: float
    method: str
    residual: float
    failed: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0

    @property
    def chain(self) -> str:
        """``"lanczos"``, or e.g. ``"lanczos>lobpcg"`` after a fallback."""
        return ">".join([m for m, _ in self.failed] + [self.method])


class _SolverFailed(RuntimeError):
    pass


def _as_symmetric(k: Any) -> np.ndarray:
    k = np.asarray(k)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] == 0:
        raise ValueError(
            f"k must be a non-empty square (N, N) matrix; got shape {k.shape}"
        )
    if np.iscomplexobj(k):
        raise ValueError(f"k must be real; got dtype {k.dtype}")
    k64 = k.astype(np.float64)
    if not np.all(np.isfinite(k64)):
        raise ValueError(
            f"k has {int(np.size(k64) - np.count_nonzero(np.isfinite(k64)))} "
            "non-finite entries; a kernel must be finite"
        )
    return 0.5 * (k64 + k64.T)


def _lambda_max(k: np.ndarray, tol: float) -> float:
    """Largest eigenvalue by Lanczos on ``k``; dense for tiny N."""
    n = k.shape[0]
    if n < 3:
        return float(np.linalg.eigvalsh(k)[-1])
    try:
        vals = scipy.sparse.linalg.eigsh(
            k, k=1, which="LA", tol=tol, v0=np.ones(n), return_eigenvectors=False
        )
        return float(vals[-1])
    except (scipy.sparse.linalg.ArpackError, ValueError, np.linalg.LinAlgError):
        return float(np.linalg.eigvalsh(k)[-1])


def _shift(n: int, lam_max: float) -> float:
    """Shift just below 0: far from every eigenvalue of a PSD matrix but the smallest
    ones relative to their spread, and K - sigma I stays safely factorisable."""
    return -max(n * np.finfo(np.float64).eps * abs(lam_max), np.finfo(np.float64).tiny)


def _certify(k: np.ndarray, value: float, vec: np.ndarray, limit: float) -> float:
    vec = np.asarray(vec, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(vec))
    if not (math.isfinite(value) and math.isfinite(norm) and norm > 0):
        raise _SolverFailed(f"returned value={value!r} with a degenerate vector")
    vec = vec / norm
    residual = float(np.linalg.norm(k @ vec - value * vec))
    if not residual <= limit:
        raise _SolverFailed(f"residual {residual:.3g} > tol * lambda_max = {limit:.3g}")
    return residual


def _run_lanczos(k, lam_max, tol, maxiter):
    n = k.shape[0]
    if n < 3:
        raise _SolverFailed(f"N={n} is too small for ARPACK (needs N >= 3)")
    sigma = _shift(n, lam_max)
    vals, vecs = scipy.sparse.linalg.eigsh(
        k,
        k=1,
        sigma=sigma,
        which="LM",
        tol=0.0,
        maxiter=maxiter,
        v0=np.ones(n),
    )
    return float(vals[0]), vecs[:, 0]


def _run_lobpcg(k, lam_max, tol, maxiter):
    n = k.shape[0]
    if n < 6:
        raise _SolverFailed(f"N={n} is too small for lobpcg (needs N >= 6)")
    sigma = _shift(n, lam_max)
    precond = None
    try:
        factor = scipy.linalg.cho_factor(k - sigma * np.eye(n), check_finite=False)
        precond = scipy.sparse.linalg.LinearOperator(
            (n, n),
            matvec=lambda v: scipy.linalg.cho_solve(factor, v, check_finite=False),
            matmat=lambda v: scipy.linalg.cho_solve(factor, v, check_finite=False),
            dtype=np.float64,
        )
    except (np.linalg.LinAlgError, ValueError):
        log.info("lobpcg: K - sigma I is not positive definite; no preconditioner")
    # A block of LOBPCG_BLOCK vectors: the smallest NTK eigenvalues are clustered
    # (relative gaps of ~1%), and the first one converges at the rate set by the gap
    # to the eigenvalue just past the block, not to the second one.
    x0 = np.random.default_rng(0).standard_normal((n, min(LOBPCG_BLOCK, n // 5)))
    vals, vecs = scipy.sparse.linalg.lobpcg(
        k,
        x0,
        M=precond,
        tol=tol * max(abs(lam_max), np.finfo(np.float64).tiny) * 0.1,
        maxiter=LOBPCG_MAXITER if maxiter is None else maxiter,
        largest=False,
    )
    i = int(np.argmin(vals))
    return float(vals[i]), vecs[:, i]


_RUNNERS = {"lanczos": _run_lanczos, "lobpcg": _run_lobpcg}


def lambda_min(
    k: Any,
    *,
    method: LambdaMinMethod = "auto",
    tol: float = DEFAULT_TOL,
    maxiter: int | None = None,
) -> LambdaMin:
    r"""Smallest eigenvalue of the symmetric ``(N, N)`` kernel ``k``.

    ``k`` is symmetrised, :math:`(K + K^T)/2`, and used in float64. The result of an
    iterative method satisfies :math:`\|Kv - \lambda v\| \le` ``tol`` :math:`\cdot
    \lambda_{max}` with :math:`\|v\| = 1`, hence is within that distance of an
    eigenvalue of :math:`K`. A solver exception, a non-convergence or a larger
    residual falls back to the next method of the chain (see the module docstring),
    with a log line; ``"dense"`` ends every chain, so no solver error reaches the
    caller. No PSD check or tolerance clipping is applied here; that is
    :func:`nthexp.analysis.spectrum`'s job.

    Args:
        k: symmetric ``(N, N)`` kernel, any real dtype, finite.
        method: one of :data:`LAMBDA_MIN_METHODS`.
        tol: certified accuracy relative to :math:`|\lambda_{max}|`, in (0, 1).
        maxiter: iteration cap of the iterative solvers (their defaults if None).

    Returns:
        A :class:`LambdaMin`.

    Raises:
        ValueError: for a non-square, empty, complex or non-finite ``k``, an unknown
            ``method`` or a ``tol`` outside (0, 1).
    """
    if method not in LAMBDA_MIN_METHODS:
        raise ValueError(
            f"method={method!r} is not allowed; must be one of "
            f"{list(LAMBDA_MIN_METHODS)}"
        )
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"tol={tol!r} is not allowed; must be a number in (0, 1)")
    k = _as_symmetric(k)
    n = k.shape[0]
    tic = time.perf_counter()
    if method == "auto":
        method = "dense" if n <= DENSE_MAX_N else "lanczos"

    failed: list[tuple[str, str]] = []
    lam_max = None
    for name in _CHAINS[method]:
        if name == "dense":
            eigs = np.linalg.eigvalsh(k)
            return LambdaMin(
                value=float(eigs[0]),
                lambda_max=float(eigs[-1]),
                method="dense",
                residual=0.0,
                failed=tuple(failed),
                seconds=time.perf_counter() - tic,
            )
        try:
            if lam_max is None:
                lam_max = _lambda_max(k, tol)
            # the solvers' own warnings (lobpcg: "not reaching the requested
            # tolerance") are superseded by the residual check below
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                value, vec = _RUNNERS[name](k, lam_max, tol, maxiter)
            for w in caught:
                log.debug("lambda_min: %s warned: %s", name, w.message)
            limit = tol * max(abs(lam_max), np.finfo(np.float64).tiny)
            residual = _certify(k, value, vec, limit)
        except Exception as exc:  # noqa: BLE001 - every solver failure falls back
            reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
            log.warning(
                "lambda_min: %s failed on N=%d (%s); falling back", name, n, reason
            )
            failed.append((name, reason))
            continue
        return LambdaMin(
            value=value,
            lambda_max=float(lam_max),
            method=name,
            residual=residual,
            failed=tuple(failed),
            seconds=time.perf_counter() - tic,
        )
    raise AssertionError("unreachable: every chain ends with 'dense'")
