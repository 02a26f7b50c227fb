r"""The NTK diagonal of a sweep point and its normalised second moment over inputs.

Per run (one network, ``N`` inputs of the data set):

.. math::
   m_{x} = \log \frac{\frac1N \sum_a K(x_a, x_a)^2}
                     {\left(\frac1N \sum_a K(x_a, x_a)\right)^2} \ \ge 0,

stored as ``ntk_diag_log_moment``, and the diagonal itself as ``ntk_diag`` ``(N,)`` in
``spectra.npz``. This is a moment over inputs at a fixed network. The finite-width
quantity of Hanin and Nica (2019, "Finite depth and width corrections to the neural
tangent kernel", Theorem 1) is the moment over initialisations at a fixed input,
:math:`\log E_\theta[K(x,x)^2] / E_\theta[K(x,x)]^2`, which grows about linearly in
:math:`\beta = \sum_l 1/n_l` (``depth / width`` for equal widths); the sweep report
estimates that one from the stored diagonals of all seeds of a (depth, width) cell
(:mod:`nthexp.report._depth_width`). On inputs of equal norm the infinite-width
:math:`K(x, x)` does not depend on ``x``, so both vanish at infinite width.
"""

from __future__ import annotations

import numpy as np


def ntk_diag(k_emp: np.ndarray) -> np.ndarray:
    """``(N,)`` the diagonal :math:`K(x_a, x_a)` of an ``(N, N)`` NTK, or of an
    ``(N, N, O, O)`` one traced over the outputs (mean of the ``O`` diagonal blocks)."""
    k = np.asarray(k_emp, dtype=np.float64)
    if k.ndim == 2:
        return np.diagonal(k).copy()
    if k.ndim == 4:
        return np.einsum("aaoo->a", k) / k.shape[2]
    raise ValueError(f"k_emp must have 2 or 4 axes; got shape {k.shape}")


def log_second_moment(values: np.ndarray, axis=None) -> np.ndarray:
    r""":math:`\log(E[v^2] / E[v]^2)` of positive samples along ``axis``."""
    v = np.asarray(values, dtype=np.float64)
    return np.log(np.mean(v**2, axis=axis) / np.mean(v, axis=axis) ** 2)


def diag_metrics(k_emp: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
    """``({"ntk_diag_log_moment": m_x}, {"ntk_diag": diag})`` of one run."""
    diag = ntk_diag(k_emp)
    if not np.all(diag > 0):
        raise FloatingPointError(
            f"the NTK diagonal has non-positive entries (min {diag.min():.3g}); the "
            f"network output vanished or overflowed; lower model.depth"
        )
    return {"ntk_diag_log_moment": float(log_second_moment(diag))}, {"ntk_diag": diag}
