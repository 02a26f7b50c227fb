r"""Infinite-width NNGP and NTK kernels of nthexp's networks.

Recursions (NTK parameterisation, Jacot et al. 2018, Theorem 1; Lee et al. 2019):

* input: :math:`S_0 = x \cdot x' / D_{in}`, :math:`T_0 = 0`;
* dense layer: :math:`S' = \sigma_w^2 \hat S + \sigma_b^2`,
  :math:`T' = S' + \sigma_w^2 \hat T`;
* activation: :math:`\hat S = E[\phi(u)\phi(v)]`,
  :math:`\hat T = T\, E[\phi'(u)\phi'(v)]`, with :math:`(u, v)` Gaussian of covariance
  :math:`S`.

Standard parameterisation (the convention documented by neural-tangents): a dense
layer of fan-in :math:`n` adds :math:`n \hat S + 1` (the ``1`` only with a bias) instead
of :math:`\hat S`-times-:math:`\sigma_w^2` plus :math:`\sigma_b^2` to the NTK, so the
result depends on the layer widths.

Residual blocks :math:`h \leftarrow h + \alpha\, \mathrm{branch}(h)` add the branch's
kernels to the carried ones; for the one-layer branch (DESIGN.md section 2):
:math:`S_l = S_{l-1} + \alpha^2(\sigma_w^2 E[\phi\phi] + \sigma_b^2)`,
:math:`T_l = T_{l-1}(1 + \alpha^2 \sigma_w^2 E[\phi'\phi']) + \alpha^2(\sigma_w^2 E[\phi\phi]
+ \sigma_b^2)`.

Closed forms: ReLU uses the arc-cosine kernels of order 1 and 0 (Cho and Saul 2009);
erf uses Williams (1996). Identity is exact. Other activations use Gauss-Hermite
quadrature (``quadrature_nodes`` points per axis).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nthexp._config import as_array, resolve_dtype
from nthexp.models._modules import ACTIVATIONS, MLP, ResNet

#: Gauss-Hermite nodes per axis for activations without a closed form. At 64 nodes
#: the erf quadrature is within 1e-12 of the closed form for variances up to 1; the
#: default is larger so that variances up to about 5 (deep nets, large w_std) stay
#: below 1e-8 (see docs/models.md for the measured table).
DEFAULT_QUADRATURE_NODES = 128


class _Cov(NamedTuple):
    """Kernel state on two sets of inputs: diagonals and the cross block."""

    k11: jax.Array  # (N1,)
    k22: jax.Array  # (N2,)
    k12: jax.Array  # (N1, N2)


def _map(f, *covs: _Cov) -> _Cov:
    return _Cov(*(f(*parts) for parts in zip(*covs, strict=True)))


# ----------------------------------------------------------------------------------
# Gaussian expectations E[phi(u) phi(v)] and E[phi'(u) phi'(v)], (u, v) ~ N(0, S).
# Each returns (E_phiphi, E_dphidphi) for the full _Cov (diagonals use k12 = k11).
# ----------------------------------------------------------------------------------


def _relu_pair(k11, k22, k12):
    """Arc-cosine kernels of order 1 and 0 (Cho and Saul 2009, eq. (6)).

    The angle comes from arctan2 on entries divided by max(k11, k22): exact on the
    diagonal (the determinant is then exactly zero) and free of overflow.
    """
    m = jnp.maximum(k11, k22)
    safe = jnp.where(m > 0, m, 1.0)
    a, b, c = k11 / safe, k22 / safe, k12 / safe
    s = jnp.sqrt(jnp.maximum(a * b - c * c, 0.0))
    theta = jnp.arctan2(s, c)
    e_phiphi = safe * (s + (jnp.pi - theta) * c) / (2 * jnp.pi)
    e_phiphi = jnp.where(m > 0, e_phiphi, 0.0)
    e_dphi = (jnp.pi - theta) / (2 * jnp.pi)
    return e_phiphi, e_dphi


def _erf_pair(k11, k22, k12):
    """Williams (1996), eq. (11), and its derivative kernel."""
    d = (1 + 2 * k11) * (1 + 2 * k22)
    e_phiphi = (2 / jnp.pi) * jnp.arcsin(jnp.clip(2 * k12 / jnp.sqrt(d), -1.0, 1.0))
    e_dphi = (4 / jnp.pi) / jnp.sqrt(d - 4 * k12 * k12)
    return e_phiphi, e_dphi


def _identity_pair(k11, k22, k12):
    return k12, jnp.ones_like(k12)


def _quadrature_pair(activation: str, nodes: int):
    """2-d Gauss-Hermite quadrature of E[phi(u)phi(v)] and E[phi'(u)phi'(v)]."""
    phi = ACTIVATIONS[activation]
    dphi = jax.vmap(jax.grad(phi))
    z, w = np.polynomial.hermite_e.hermegauss(nodes)  # weight exp(-z^2/2)
    w = w / np.sqrt(2 * np.pi)

    def pair(k11, k22, k12):
        dtype = k12.dtype
        zz, ww = jnp.asarray(z, dtype), jnp.asarray(w, dtype)
        # u = sqrt(k11) z1 ; v = rho sqrt(k22) z1 + sqrt(k22 (1 - rho^2)) z2
        s1, s2 = jnp.sqrt(k11), jnp.sqrt(k22)
        denom = jnp.where(s1 * s2 > 0, s1 * s2, 1.0)
        rho = jnp.clip(k12 / denom, -1.0, 1.0)
        rho_c = jnp.sqrt(jnp.maximum(1 - rho * rho, 0.0))
        u = s1[..., None, None] * zz[:, None]  # (..., n, 1)
        v = s2[..., None, None] * (rho[..., None, None] * zz[:, None]
                                   + rho_c[..., None, None] * zz[None, :])
        weights = ww[:, None] * ww[None, :]
        f = lambda g, t: g(t.reshape(-1)).reshape(t.shape)  # noqa: E731
        pu, pv = phi(u), f(phi, v)
        du, dv = f(dphi, jnp.broadcast_to(u, v.shape)), f(dphi, v)
        e_phiphi = jnp.sum(weights * pu * pv, axis=(-2, -1))
        e_dphi = jnp.sum(weights * du * dv, axis=(-2, -1))
        return e_phiphi, e_dphi

    return pair


def _expectations(activation: str, nodes: int):
    if activation == "relu":
        return _relu_pair
    if activation == "erf":
        return _erf_pair
    if activation == "identity":
        return _identity_pair
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 2:
        raise ValueError(
            f"quadrature_nodes={nodes!r} is not allowed; must be an integer >= 2"
        )
    return _quadrature_pair(activation, nodes)


def _activation(pair, s: _Cov, t: _Cov | None) -> tuple[_Cov, _Cov | None]:
    """Kernels after the activation: (E[phi phi], T * E[phi' phi'])."""
    d1 = pair(s.k11, s.k11, s.k11)
    d2 = pair(s.k22, s.k22, s.k22)
    c12 = pair(s.k11[:, None], s.k22[None, :], s.k12)
    s_hat = _Cov(d1[0], d2[0], c12[0])
    if t is None:
        return s_hat, None
    t_hat = _Cov(t.k11 * d1[1], t.k22 * d2[1], t.k12 * c12[1])
    return s_hat, t_hat


def _dense(s_hat: _Cov, t_hat: _Cov | None, w_std, b_std, use_bias, param, fan_in):
    """Kernels after a dense layer acting on the activations ``s_hat``/``t_hat``."""
    b2 = b_std**2 if use_bias else 0.0
    s = _map(lambda a: w_std**2 * a + b2, s_hat)
    if t_hat is None:
        return s, None
    if param == "ntk":
        t = _map(lambda a, b: a + w_std**2 * b, s, t_hat)
    else:
        one = 1.0 if use_bias else 0.0
        t = _map(lambda a, b: fan_in * a + one + w_std**2 * b, s_hat, t_hat)
    return s, t


def _kernels(model, x1, x2, get_ntk: bool, quadrature_nodes: int):
    if not isinstance(model, (MLP, ResNet)):
        raise NotImplementedError(
            f"infinite-width kernels are implemented for MLP and ResNet, not "
            f"{type(model).__name__}"
        )
    pair = _expectations(model.activation, quadrature_nodes)
    d_in = x1.shape[1]
    # All three blocks come from one Gram matrix of the stacked inputs, so that a pair
    # of identical inputs gets bit-identical k11, k22 and k12: the arc-cosine angle is
    # then exactly 0 there (a separately rounded diagonal gives an angle of ~1e-8).
    n1 = x1.shape[0]
    stacked = x1 if x2 is None else jnp.concatenate([x1, x2])
    with jax.default_matmul_precision("highest"):
        gram = stacked @ stacked.T / d_in
    diag = jnp.diagonal(gram)
    if x2 is None:
        s_in = _Cov(diag, diag, gram)
    else:
        s_in = _Cov(diag[:n1], diag[n1:], gram[:n1, n1:])
    t_in = _map(jnp.zeros_like, s_in) if get_ntk else None
    dense = dict(use_bias=model.use_bias, param=model.parameterization)
    width = model.width
    w_std, b_std = model.w_std, model.b_std

    if isinstance(model, ResNet):
        s, t = _dense(s_in, t_in, w_std, b_std, fan_in=d_in, **dense)
        alpha2 = model.alpha_value**2
        for _ in range(model.depth):
            bs, bt = s, t
            for _ in range(model.branch_layers):
                bs, bt = _dense(*_activation(pair, bs, bt), w_std, b_std,
                                fan_in=width, **dense)
            s = _map(lambda a, b: a + alpha2 * b, s, bs)
            if get_ntk:
                # the branch NTK carries T_{l-1} E[phi'phi'] (chain rule through the
                # branch) plus the branch's own parameters; adding the skip gives T_{l-1}.
                t = _map(lambda a, b: a + alpha2 * b, t, bt)
        s_hat, t_hat, fan_in = s, t, width
    else:
        s_hat, t_hat, fan_in = s_in, t_in, d_in
        for _ in range(model.depth):
            s, t = _dense(s_hat, t_hat, w_std, b_std, fan_in=fan_in, **dense)
            s_hat, t_hat = _activation(pair, s, t)
            fan_in = width

    rw, rb = model.readout_stds
    s, t = _dense(s_hat, t_hat, rw, rb, fan_in=fan_in, **dense)
    return s.k12, (t.k12 if get_ntk else None)


def _prepare(model, x1, x2, dtype):
    dt = resolve_dtype(dtype)
    x1 = as_array(x1, dt, "x1")
    if x2 is None:
        return x1, None
    x2 = as_array(x2, dt, "x2")
    if x2.shape[1] != x1.shape[1]:
        raise ValueError(
            f"x1 and x2 must have the same input dimension; got {x1.shape[1]} and "
            f"{x2.shape[1]}"
        )
    return x1, x2


def infinite_nngp(model, x1, x2=None, *, dtype="float64",
                  quadrature_nodes: int = DEFAULT_QUADRATURE_NODES) -> jax.Array:
    """Infinite-width NNGP kernel (output covariance) of ``model``.

    Returns ``k_12`` of shape ``(N1, N2)``, ``k_12[i, j] = K(x1[i], x2[j])``, the
    per-output kernel (the same for each of the ``n_out`` outputs).
    """
    x1, x2 = _prepare(model, x1, x2, dtype)
    return _jit_kernels(model, x1, x2, False, quadrature_nodes)[0]


def infinite_ntk(model, x1, x2=None, *, dtype="float64",
                 quadrature_nodes: int = DEFAULT_QUADRATURE_NODES) -> jax.Array:
    """Infinite-width NTK of ``model``.

    Returns ``ntk_12`` of shape ``(N1, N2)``, ``ntk_12[i, j] = Theta(x1[i], x2[j])``, the
    per-output kernel; on ``n_out`` outputs the full limit is ``ntk_12 (x) I_O``.
    """
    x1, x2 = _prepare(model, x1, x2, dtype)
    return _jit_kernels(model, x1, x2, True, quadrature_nodes)[1]


# Not jitted: the recursion is a few elementwise ops per layer on (N1, N2) arrays, which
# run faster eagerly than a fresh compilation per model (every sweep point has one).
_jit_kernels = _kernels


