r"""Alignment of the top eigenspaces of two kernels, by subspaces and principal
angles, with clustered eigenvalues kept together.

Why subspaces: an eigenvalue of multiplicity m (or a cluster of m eigenvalues closer
than round-off can resolve) has no preferred basis; any rotation of its eigenvectors
inside the eigenspace is as valid as the one a solver returns. Dot products of single
eigenvectors of two decompositions then say nothing (they can be anything in [0, 1]
even for the same matrix), while the eigenspace itself, spanned by the whole cluster,
is well determined when the cluster is separated from the rest of the spectrum
(Davis & Kahan, SIAM J. Numer. Anal. 7, 1970: :math:`\|\sin\Theta\| \le
\|E\|/\delta` for a perturbation :math:`E` and a gap :math:`\delta`). Subspaces are
compared by their principal angles (Björck & Golub, Math. Comp. 27, 1973; sines and
cosines together as in Knyazev & Argentati, SIAM J. Sci. Comput. 23, 2002).

Cluster policy: with eigenvalues in descending order, two neighbours are in the same
cluster when

.. math:: \lambda_i - \lambda_{i+1} \le \max(g, N\epsilon) \, \lambda_{scale},

where :math:`\epsilon` is the machine epsilon of the input dtype, :math:`N\epsilon
\lambda_{scale}` is the PSD tolerance of :func:`nthexp.analysis.spectrum` (gaps below
it are round-off), and :math:`g` = ``gap_rtol`` (default :data:`DEFAULT_GAP_RTOL`) is
the documented threshold above it. :math:`\lambda_{scale}` is the largest
:math:`|\lambda|` of the eigenvalues computed (the top ones): :math:`\lambda_{max}`
for a PSD kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np
import scipy.linalg

from nthexp.analysis._spectrum import _symmetric

#: Relative gap (to lambda_max) below which neighbouring eigenvalues form one
#: cluster. With the float64 round-off of a kernel, N eps lambda_max, Davis-Kahan
#: bounds the round-off in an angle past such a gap by N eps / DEFAULT_GAP_RTOL, i.e.
#: N * 2.2e-10 (3e-8 at N = 128), far below the finite-width angles (~width^-1/2).
DEFAULT_GAP_RTOL = 1e-6

#: Eigenpairs computed on the first try for a cut at k: the top 2k + 8 (the extra
#: ones show where a cluster at the cut ends); a cluster that runs past them makes
#: the function redo the decomposition with every eigenpair.
_EXTRA_PAIRS = 8


@dataclass(frozen=True)
class EigenspaceAlignment:
    r"""How well the top eigenspace of ``k_emp`` matches that of ``k_inf``.

    With :math:`U_{emp}, U_{inf}` ``(N, dim)`` orthonormal bases of the two top-``dim``
    eigenspaces, the cosines of the principal angles are the singular values of
    :math:`U_{emp}^T U_{inf}`.

    Attributes:
        k: the requested dimension.
        dim: the effective dimension: the smallest ``dim >= k`` at which neither
            spectrum has a cluster across the cut (``dim > k`` when extended).
        extended: ``dim > k``.
        split_by: the kernels (``"k_emp"``, ``"k_inf"``) whose cluster the cut at
            ``k`` would have split; empty when not extended.
        cosines: ``(dim,)`` cosines of the principal angles, descending, in [0, 1].
        max_angle: the largest principal angle in radians, from the arctan2 of
            its sine and cosine (accurate to about eps for small and right angles).
        alignment: projection overlap :math:`\mathrm{tr}(P_{emp} P_{inf}) / dim =
            \|U_{emp}^T U_{inf}\|_F^2 / dim`, the mean squared cosine; 1 for equal
            subspaces, 0 for orthogonal ones.
        cluster_sizes: sizes of the leading clusters that partition the top ``dim``
            (index ranges that split no cluster of either kernel), in order.
        cluster_overlaps: the projection overlap of each of those clusters, the same
            formula restricted to its eigenvectors.
        gap_tol_emp, gap_tol_inf: the absolute cluster gaps used for each kernel.
        note: one sentence saying why and how far the cut was extended ("" if not).
    """

    k: int
    dim: int
    extended: bool
    split_by: tuple[str, ...]
    cosines: np.ndarray
    max_angle: float
    alignment: float
    cluster_sizes: tuple[int, ...]
    cluster_overlaps: tuple[float, ...]
    gap_tol_emp: float
    gap_tol_inf: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Python scalars and lists only."""
        return {
            "k": int(self.k),
            "dim": int(self.dim),
            "extended": bool(self.extended),
            "split_by": list(self.split_by),
            "cosines": [float(c) for c in self.cosines],
            "max_angle": float(self.max_angle),
            "alignment": float(self.alignment),
            "cluster_sizes": [int(s) for s in self.cluster_sizes],
            "cluster_overlaps": [float(o) for o in self.cluster_overlaps],
            "gap_tol_emp": float(self.gap_tol_emp),
            "gap_tol_inf": float(self.gap_tol_inf),
            "note": self.note,
        }


def _top_eigh(k_sym: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``m`` eigenpairs of ``k_sym`` ``(N, N)``, eigenvalues descending."""
    n = k_sym.shape[0]
    values, vectors = scipy.linalg.eigh(
        k_sym, subset_by_index=[n - m, n - 1], check_finite=False
    )
    return values[::-1], vectors[:, ::-1]


def _cuts(values: np.ndarray, n: int, gap_tol: float) -> np.ndarray:
    """``(m,)`` booleans for the top ``m`` eigenvalues (descending) of an ``(N, N)``
    kernel: entry ``j - 1`` is true when the cut after the ``j``-th eigenvalue splits
    no cluster. The last entry is known only when ``m == N`` (then it is true)."""
    return np.append(values[:-1] - values[1:] > gap_tol, values.shape[0] == n)


def _overlap(u_emp: np.ndarray, u_inf: np.ndarray) -> float:
    """``||U_emp^T U_inf||_F^2 / dim`` of two ``(N, dim)`` orthonormal bases, clipped
    to [0, 1] (round-off can take it a few eps above 1)."""
    return float(np.clip(np.sum((u_emp.T @ u_inf) ** 2) / u_emp.shape[1], 0.0, 1.0))


def _principal_angles(u_emp: np.ndarray, u_inf: np.ndarray):
    """Cosines (descending) and angles (ascending) of the principal angles between
    the spans of two ``(N, dim)`` orthonormal bases."""
    cosines = scipy.linalg.svdvals(u_emp.T @ u_inf)
    sines = scipy.linalg.svdvals(u_inf - u_emp @ (u_emp.T @ u_inf))
    # Knyazev & Argentati 2002: the sines resolve small angles, the cosines large
    # ones; arctan2 of both is accurate to ~eps over [0, pi/2]. (Departs from
    # scipy.linalg.subspace_angles, which in scipy 1.17 takes the largest angle from
    # an arcsine when another angle is small: off by sqrt(eps) ~ 1.5e-8 at pi/2.)
    angles = np.arctan2(np.clip(sines[::-1], 0.0, 1.0), np.clip(cosines, 0.0, 1.0))
    return np.clip(cosines, 0.0, 1.0), angles


def eigenspace_alignment(
    k_emp: Any, k_inf: Any, *, k: int, gap_rtol: float = DEFAULT_GAP_RTOL
) -> EigenspaceAlignment:
    r"""Principal angles between the top-``k`` eigenspaces of ``k_emp`` and ``k_inf``.

    Both ``(N, N)`` kernels are symmetrised, :math:`(K + K^T)/2`, and diagonalised in
    float64. Eigenvalues are grouped into clusters by the policy of the module
    docstring (``gap_rtol`` and the PSD round-off :math:`N\epsilon\lambda_{max}`); if
    the cut after the ``k``-th eigenvalue of either kernel falls inside a cluster, the
    subspace is extended to the smallest ``dim > k`` that splits no cluster of either,
    and the result says so (``extended``, ``split_by``, ``note``). The subspaces are
    compared by principal angles, never by dot products of single eigenvectors, so the
    result does not depend on the basis a solver picks inside a cluster.

    Cost: time :math:`O(N^3)`, one Householder tridiagonal reduction per kernel
    (about :math:`\tfrac{4}{3}N^3` flops, the cost of :func:`numpy.linalg.eigvalsh`),
    plus :math:`O(N^2 m)` for the top :math:`m = \min(N, 2k + 8)` eigenvectors
    (:func:`scipy.linalg.eigh`, MRRR) and :math:`O(N\,dim^2)` for the angles; a
    cluster that runs past the top :math:`m` redoes the decomposition with all
    :math:`N` eigenvectors (about :math:`3N^3` more). Memory: :math:`O(N^2)` for the
    two symmetrised float64 copies plus :math:`O(N m)` for the eigenvectors.

    Args:
        k_emp: empirical kernel ``(N, N)``, any real dtype, finite.
        k_inf: infinite-width kernel ``(N, N)``, the same shape.
        k: number of leading eigenvalues, an integer in [1, N].
        gap_rtol: relative cluster gap :math:`g`, a finite number in [0, 1).

    Returns:
        An :class:`EigenspaceAlignment`.

    Raises:
        ValueError: for a non-square, empty, complex or non-finite kernel, shapes that
            differ, a ``k`` outside [1, N] or a ``gap_rtol`` outside [0, 1).
    """
    emp, eps_emp = _symmetric(k_emp, "k_emp")
    inf, eps_inf = _symmetric(k_inf, "k_inf")
    if emp.shape != inf.shape:
        raise ValueError(
            f"k_emp and k_inf must have the same shape; got {emp.shape} and {inf.shape}"
        )
    n = emp.shape[0]
    if not isinstance(k, Integral) or isinstance(k, bool) or not 1 <= k <= n:
        raise ValueError(f"k={k!r} is not allowed; must be an integer in [1, N={n}]")
    ok = isinstance(gap_rtol, (int, float)) and not isinstance(gap_rtol, bool)
    if not (ok and math.isfinite(gap_rtol) and 0 <= gap_rtol < 1):
        raise ValueError(
            f"gap_rtol={gap_rtol!r} is not allowed; must be a finite number in [0, 1)"
        )

    m = min(n, 2 * k + _EXTRA_PAIRS)
    tiny = float(np.finfo(np.float64).tiny)
    while True:
        val_emp, vec_emp = _top_eigh(emp, m)
        val_inf, vec_inf = _top_eigh(inf, m)
        gap_tol_emp = max(gap_rtol, n * eps_emp) * max(np.max(np.abs(val_emp)), tiny)
        gap_tol_inf = max(gap_rtol, n * eps_inf) * max(np.max(np.abs(val_inf)), tiny)
        cuts_emp = _cuts(val_emp, n, gap_tol_emp)
        cuts_inf = _cuts(val_inf, n, gap_tol_inf)
        joint = cuts_emp & cuts_inf
        if np.any(joint[k - 1 :]) or m == n:
            break
        # a cluster at the cut runs past the computed eigenpairs: take them all
        m = n
    dim = k + int(np.argmax(joint[k - 1 :]))

    split_by = tuple(
        name
        for name, cuts in (("k_emp", cuts_emp), ("k_inf", cuts_inf))
        if not cuts[k - 1]
    )
    note = ""
    if dim > k:
        note = (
            f"the cut at k={k} splits a cluster of {' and '.join(split_by)} "
            f"(gap <= max(gap_rtol={gap_rtol:g}, N*eps) * lambda_max); extended to "
            f"dim={dim}"
        )

    u_emp, u_inf = vec_emp[:, :dim], vec_inf[:, :dim]
    cosines, angles = _principal_angles(u_emp, u_inf)

    bounds = [0] + [j for j in range(1, dim + 1) if joint[j - 1]]
    sizes = tuple(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    overlaps = tuple(
        _overlap(u_emp[:, a:b], u_inf[:, a:b])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    )

    return EigenspaceAlignment(
        k=int(k),
        dim=int(dim),
        extended=dim > k,
        split_by=split_by,
        cosines=cosines,
        max_angle=float(angles[-1]),
        alignment=_overlap(u_emp, u_inf),
        cluster_sizes=sizes,
        cluster_overlaps=overlaps,
        gap_tol_emp=float(gap_tol_emp),
        gap_tol_inf=float(gap_tol_inf),
        note=note,
    )
