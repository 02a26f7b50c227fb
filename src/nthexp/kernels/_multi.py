r"""Comparing a multi-output empirical NTK with its infinite-width limit.

For a network with :math:`O` outputs the empirical NTK keeps the output axes,
``ntk_emp[a, b, o, p]`` of shape ``(N1, N2, O, O)``. At infinite width the outputs
decouple: the limit is :math:`\Theta_\infty \otimes I_O` (Jacot et al. 2018,
Theorem 1), one per-output kernel ``ntk_inf`` of shape ``(N1, N2)`` on the diagonal
output blocks and zeros elsewhere. The comparisons here reduce the axes in one stated
way:

* the **traced** kernel, the mean of the :math:`O` diagonal output blocks
  :math:`\frac1O \sum_o \Theta_{ab,oo}`, is what ``ntk_inf`` predicts (the same
  reduction as ``nthexp.kernels.ntk(..., trace=True)``);
* the **off-diagonal size** :math:`\|\Theta_{o \ne p}\|_F / \|\Theta_{o = p}\|_F`
  (Frobenius norms over all examples and the off-diagonal, resp. diagonal, output
  pairs) measures what the traced comparison leaves out. At initialisation the
  off-diagonal blocks are sums of ``width`` zero-mean terms divided by ``width`` (the
  readout weights of different outputs are independent), so they shrink like
  :math:`n^{-1/2}`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _as_blocks(ntk_emp) -> jnp.ndarray:
    k = jnp.asarray(ntk_emp)
    if k.ndim == 2:
        return k[:, :, None, None]
    if k.ndim != 4 or k.shape[2] != k.shape[3]:
        raise ValueError(
            f"ntk_emp must have shape (N1, N2) or (N1, N2, O, O); got shape "
            f"{tuple(k.shape)}"
        )
    return k


def reduce_outputs(ntk_emp) -> tuple[jnp.ndarray, float]:
    r"""Traced kernel and the relative size of the off-diagonal output blocks.

    Args:
      ntk_emp: empirical NTK, ``(N1, N2, O, O)`` with axes (example 1, example 2,
        output 1, output 2), as returned by ``nthexp.kernels.ntk``; a ``(N1, N2)``
        kernel counts as ``O = 1``.

    Returns:
      ``(ntk_traced, offdiag_rel)``: ``ntk_traced`` of shape ``(N1, N2)``,
      :math:`\frac1O \sum_o \Theta_{ab,oo}`; ``offdiag_rel`` the float
      :math:`\|\Theta_{o\ne p}\|_F / \|\Theta_{o=p}\|_F` (0 for one output).
    """
    k = _as_blocks(ntk_emp)
    n_out = k.shape[2]
    diag = jnp.diagonal(k, axis1=2, axis2=3)  # (N1, N2, O)
    ntk_traced = jnp.mean(diag, axis=-1)
    diag_sq = float(jnp.sum(diag * diag))
    offdiag_sq = float(jnp.sum(k * k)) - diag_sq
    if n_out == 1 or diag_sq == 0.0:
        return ntk_traced, 0.0
    return ntk_traced, float(np.sqrt(max(offdiag_sq, 0.0) / diag_sq))


def expand_outputs(ntk_inf, n_out: int) -> jnp.ndarray:
    r"""The full infinite-width limit :math:`\Theta_\infty \otimes I_O`.

    Returns ``(N1, N2, O, O)`` with axes (example 1, example 2, output 1, output 2):
    ``ntk_inf`` on the diagonal output blocks, zeros elsewhere.
    """
    if isinstance(n_out, bool) or not isinstance(n_out, (int, np.integer)) or n_out < 1:
        raise ValueError(f"n_out={n_out!r} is not allowed; must be an integer >= 1")
    k = jnp.asarray(ntk_inf)
    eye = jnp.eye(int(n_out), dtype=k.dtype)
    return k[:, :, None, None] * eye[None, None, :, :]


def compare_outputs(ntk_emp, ntk_inf) -> dict[str, float]:
    r"""How far a multi-output empirical NTK is from :math:`\Theta_\infty \otimes I_O`.

    Returns a dict of floats:

    * ``rel_fro_traced``: :math:`\|\bar\Theta - \Theta_\infty\|_F /
      \|\Theta_\infty\|_F`, :math:`\bar\Theta` the traced kernel;
    * ``rel_fro_full``: the same on all output blocks against
      :math:`\Theta_\infty \otimes I_O`;
    * ``offdiag_rel``: as in :func:`reduce_outputs`;
    * ``n_out``: :math:`O`.
    """
    k = _as_blocks(ntk_emp)
    k_inf = jnp.asarray(ntk_inf)
    if k_inf.shape != k.shape[:2]:
        raise ValueError(
            f"ntk_inf must have shape {tuple(k.shape[:2])} (per-output kernel); got "
            f"shape {tuple(k_inf.shape)}"
        )
    n_out = k.shape[2]
    traced, offdiag_rel = reduce_outputs(k)
    norm_inf = float(jnp.linalg.norm(k_inf))
    full_ref = expand_outputs(k_inf, n_out)
    return {
        "rel_fro_traced": float(jnp.linalg.norm(traced - k_inf)) / norm_inf,
        "rel_fro_full": float(jnp.linalg.norm(k - full_ref))
        / (norm_inf * np.sqrt(n_out)),
        "offdiag_rel": offdiag_rel,
        "n_out": float(n_out),
    }
