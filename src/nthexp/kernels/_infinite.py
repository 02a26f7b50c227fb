r"""Infinite-width NNGP and NTK kernels of nthexp's networks.

Recursions (NTK parameterisation; Neal 1996, Lee et al. 2018 for the NNGP, Jacot et
al. 2018, Theorem 1 for the NTK):

* input: :math:`S_0 = x \cdot x' / D_{in}`, :math:`T_0 = 0`;
* dense layer: :math:`S' = \sigma_w^2 \hat S + \sigma_b^2`,
  :math:`T' = S' + \sigma_w^2 \hat T`;
* activation: :math:`\hat S = E[\phi(u)\phi(v)]`,
  :math:`\hat T = T\, E[\phi'(u)\phi'(v)]`, with :math:`(u, v)` Gaussian of covariance
  :math:`S`.

Standard parameterisation (the convention documented by neural-tangents): a dense
layer of fan-in :math:`n` adds :math:`n \hat S + 1` (the ``1`` only with a bias)
instead of :math:`\sigma_w^2 \hat S + \sigma_b^2` to the NTK, so the result depends
on the layer widths (:math:`n = D_{in}` for the first layer, ``width`` after it).

Residual blocks :math:`h \leftarrow h + \alpha\, \mathrm{branch}(h)` add the branch's
kernels to the carried ones: the branch's last dense layer has fresh zero-mean weights,
so the cross terms between skip and branch vanish at infinite width. For the one-layer
branch (docs/theory.md)

.. math::
   S_l = S_{l-1} + \alpha^2(\sigma_w^2 E[\phi\phi] + \sigma_b^2), \qquad
   T_l = T_{l-1}(1 + \alpha^2 \sigma_w^2 E[\phi'\phi'])
   + \alpha^2(\sigma_w^2 E[\phi\phi] + \sigma_b^2);

a branch of ``branch_layers`` layers applies the MLP recursion ``branch_layers`` times
to :math:`(S_{l-1}, T_{l-1})` and adds :math:`\alpha^2` times the result.

Expectations: ReLU uses the arc-cosine kernels of order 1 and 0 (Cho and Saul 2009,
eq. (6)); erf uses Williams (1996), eq. (11), and its derivative kernel
:math:`E[\phi'\phi'] = (4/\pi)/\sqrt{(1+2k_{11})(1+2k_{22}) - 4k_{12}^2}`; identity
is exact. tanh, gelu and softplus use a 2-d quadrature (:func:`gaussian_quadrature`,
``quadrature_nodes`` points per axis, trapezoid rule by default).
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nthexp._config import as_array, resolve_dtype
from nthexp.models._modules import ACTIVATIONS, MLP, ResNet, check_activation

#: Nodes per axis of the 2-d quadrature for activations without a closed form
#: (tanh, gelu, softplus). 128 keeps the error of every expectation below 1e-11 for
#: pre-activation variances up to 5 (the largest in the reference cases, erf at
#: ``w_std = 1.5``) and below 3e-8 up to 10; docs/models.md has the measured table.
DEFAULT_QUADRATURE_NODES = 128

QuadratureRule = Literal["trapezoid", "gauss_hermite"]
QUADRATURE_RULES = ("trapezoid", "gauss_hermite")

#: The default rule; see :func:`gaussian_quadrature` for why it is not Gauss-Hermite.
DEFAULT_QUADRATURE_RULE: QuadratureRule = "trapezoid"

#: Half-width of the trapezoid rule's interval in units of the standard deviation.
#: The Gaussian mass outside is 1.2e-15; beyond that the discretisation dominates, and
#: a narrower interval (finer nodes) measured better than 9 at every variance above 1.
TRAPEZOID_HALF_WIDTH = 8.0

#: Work array per quadrature chunk: entries per chunk times nodes^2 stays near this,
#: so a large kernel never materialises an (N1, N2, n, n) array (16 MiB in float64).
_CHUNK_ELEMENTS = 2**21


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
    # Departs from the paper's form (1 + 2k11)(1 + 2k22) - 4k12^2, which overflows
    # (inf - inf = NaN) at variances ~1e154: the square roots are taken apart, and
    # the determinant k11 k22 - k12^2 is formed on entries divided by m >= 1.
    m = jnp.maximum(jnp.maximum(k11, k22), 1.0)
    a, b, c = k11 / m, k22 / m, k12 / m
    rho = 2 * k12 / (jnp.sqrt(1 + 2 * k11) * jnp.sqrt(1 + 2 * k22))
    e_phiphi = (2 / jnp.pi) * jnp.arcsin(jnp.clip(rho, -1.0, 1.0))
    # (1 + 2k11)(1 + 2k22) - 4k12^2 = m^2 (1/m^2 + 2(a + b)/m + 4(ab - c^2))
    rest = (1 / m + 2 * (a + b)) / m + 4 * jnp.maximum(a * b - c * c, 0.0)
    e_dphi = (4 / jnp.pi) / (m * jnp.sqrt(rest))
    return e_phiphi, e_dphi


def _identity_pair(k11, k22, k12):
    return k12, jnp.ones_like(k12)


def _check_nodes(nodes) -> int:
    if isinstance(nodes, bool) or not isinstance(nodes, (int, np.integer)) or nodes < 2:
        raise ValueError(
            f"quadrature_nodes={nodes!r} is not allowed; must be an integer >= 2"
        )
    return int(nodes)


def gaussian_quadrature(n: int, rule: QuadratureRule = DEFAULT_QUADRATURE_RULE):
    r"""Nodes ``z`` and weights ``w`` (both ``(n,)``, numpy float64) with
    :math:`\sum_i w_i f(z_i) \approx E[f(Z)]`, :math:`Z \sim N(0, 1)`.

    ``"gauss_hermite"``
        Gauss-Hermite rule for the weight :math:`e^{-z^2/2}`: exact for polynomials of
        degree below :math:`2n`. Its nodes spread to :math:`|z| \approx 2\sqrt{n}`,
        far into the Gaussian tail, so their spacing near the origin is about
        :math:`\pi/\sqrt{n}`.
    ``"trapezoid"``
        Equally spaced nodes on :math:`[-L, L]`, :math:`L` =
        :data:`TRAPEZOID_HALF_WIDTH`, weights :math:`h\,e^{-z^2/2}/\sqrt{2\pi}`. For an
        integrand analytic in a strip of half-width :math:`d` around the real axis
        the error falls like :math:`e^{-2\pi d/h}` (Trefethen and Weideman 2014, "The
        exponentially convergent trapezoidal rule", SIAM Review 56, Thm. 5.1), and
        the spacing :math:`h = 2L/(n-1)` is about half Gauss-Hermite's.

    With :math:`u = \sqrt{k} z` an activation varying on the scale 1 in :math:`u`
    varies on the scale :math:`1/\sqrt{k}` in :math:`z`, so the error grows with the
    pre-activation variance :math:`k`; the finer spacing is what matters there (for
    tanh at ``n = 128``, :math:`k = 5`: 3e-12 against Gauss-Hermite's 6e-5, see
    docs/models.md).

    Both cost :math:`n^2` activation evaluations per kernel entry.
    """
    n = _check_nodes(n)
    if rule == "gauss_hermite":
        z, w = np.polynomial.hermite_e.hermegauss(n)  # weight exp(-z^2/2)
        return z, w / np.sqrt(2 * np.pi)
    if rule == "trapezoid":
        z = np.linspace(-TRAPEZOID_HALF_WIDTH, TRAPEZOID_HALF_WIDTH, n)
        h = z[1] - z[0]
        return z, h * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
    raise ValueError(
        f"quadrature_rule={rule!r} is unknown; allowed: {list(QUADRATURE_RULES)}"
    )


@functools.partial(jax.jit, static_argnames=("activation",))
def _quadrature_chunk(k11, k22, k12, z, w, *, activation: str):
    r"""``(E[phi(u)phi(v)], E[phi'(u)phi'(v)])`` for ``(C,)`` covariance entries.

    :math:`u = \sqrt{k_{11}}\, z_1`, :math:`v = \sqrt{k_{22}}(\rho z_1 +
    \sqrt{1-\rho^2}\, z_2)`, :math:`\rho = k_{12}/\sqrt{k_{11}k_{22}}` (Cholesky factor
    of the 2x2 covariance), then the tensor-product rule in :math:`(z_1, z_2)`; the
    sum over :math:`z_2` is done first, so :math:`\phi(u)` costs ``n`` evaluations
    per entry and :math:`\phi(v)` ``n^2``.
    """
    phi = ACTIVATIONS[activation]

    def values_and_slopes(t):
        return jax.jvp(phi, (t,), (jnp.ones_like(t),))

    s1, s2 = jnp.sqrt(k11), jnp.sqrt(k22)
    denom = jnp.where(s1 * s2 > 0, s1 * s2, 1.0)
    rho = jnp.clip(k12 / denom, -1.0, 1.0)
    rho_c = jnp.sqrt(jnp.maximum(1.0 - rho * rho, 0.0))
    u = s1[:, None] * z[None, :]  # (C, n): index i of z_1
    v = s2[:, None, None] * (
        rho[:, None, None] * z[None, :, None] + rho_c[:, None, None] * z[None, None, :]
    )  # (C, n, n): indices i of z_1, j of z_2
    pu, du = values_and_slopes(u)
    pv, dv = values_and_slopes(v)
    return (pu * (pv @ w)) @ w, (du * (dv @ w)) @ w


def _quadrature_pair(activation: str, nodes: int, rule: QuadratureRule):
    """E[phi(u)phi(v)] and E[phi'(u)phi'(v)] by :func:`gaussian_quadrature` in 2-d."""
    z_np, w_np = gaussian_quadrature(nodes, rule)
    chunk_max = max(1, _CHUNK_ELEMENTS // (nodes * nodes))

    def pair(k11, k22, k12):
        shape = jnp.broadcast_shapes(k11.shape, k22.shape, k12.shape)
        dtype = k12.dtype
        flat = [jnp.broadcast_to(k, shape).reshape(-1) for k in (k11, k22, k12)]
        size = flat[0].shape[0]
        # chunks of a power-of-two size: a handful of compilations per activation
        # serve every kernel shape, and memory stays at chunk * nodes^2 per array
        chunk = min(chunk_max, 1 << max(size - 1, 0).bit_length())
        pad = -size % chunk
        # padded entries are a unit-variance diagonal: finite, and dropped below
        flat = [jnp.concatenate([f, jnp.ones((pad,), dtype)]) for f in flat]
        z, w = jnp.asarray(z_np, dtype), jnp.asarray(w_np, dtype)
        parts = [
            _quadrature_chunk(
                *(f[start : start + chunk] for f in flat), z, w, activation=activation
            )
            for start in range(0, size + pad, chunk)
        ]
        e_phiphi = jnp.concatenate([p[0] for p in parts])[:size]
        e_dphi = jnp.concatenate([p[1] for p in parts])[:size]
        return e_phiphi.reshape(shape), e_dphi.reshape(shape)

    return pair


def _expectations(activation: str, nodes, rule: QuadratureRule):
    """The pair function of ``activation``: closed form where one exists."""
    _check_nodes(nodes)
    if rule not in QUADRATURE_RULES:
        raise ValueError(
            f"quadrature_rule={rule!r} is unknown; allowed: {list(QUADRATURE_RULES)}"
        )
    if activation == "relu":
        return _relu_pair
    if activation == "erf":
        return _erf_pair
    if activation == "identity":
        return _identity_pair
    return _quadrature_pair(activation, int(nodes), rule)


def gaussian_expectations(
    activation: str,
    k11,
    k22,
    k12,
    *,
    quadrature_nodes: int = DEFAULT_QUADRATURE_NODES,
    quadrature_rule: QuadratureRule = DEFAULT_QUADRATURE_RULE,
    closed_form: bool = True,
) -> tuple[jax.Array, jax.Array]:
    r""":math:`(E[\phi(u)\phi(v)],\ E[\phi'(u)\phi'(v)])` for
    :math:`(u, v) \sim N(0, [[k_{11}, k_{12}], [k_{12}, k_{22}]])`.

    ``k11``, ``k22``, ``k12`` are broadcast together (float arrays; ``k12^2 <= k11
    k22``); both results have the broadcast shape. ``closed_form=False`` uses the
    quadrature even for relu, erf and identity (to measure its accuracy, as in
    docs/models.md).
    """
    check_activation(activation)
    k11, k22, k12 = (
        jnp.asarray(k, dtype=jnp.result_type(float)) for k in (k11, k22, k12)
    )
    if closed_form:
        pair = _expectations(activation, quadrature_nodes, quadrature_rule)
    else:
        _expectations(activation, quadrature_nodes, quadrature_rule)  # validation
        pair = _quadrature_pair(activation, int(quadrature_nodes), quadrature_rule)
    shape = jnp.broadcast_shapes(k11.shape, k22.shape, k12.shape)
    return pair(*(jnp.broadcast_to(k, shape) for k in (k11, k22, k12)))


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


def _kernels(model, x1, x2, get_ntk: bool, nodes: int, rule: QuadratureRule):
    if not isinstance(model, (MLP, ResNet)):
        raise NotImplementedError(
            f"infinite-width kernels are implemented for MLP and ResNet, not "
            f"{type(model).__name__}"
        )
    pair = _expectations(model.activation, nodes, rule)
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
                bs, bt = _dense(
                    *_activation(pair, bs, bt), w_std, b_std, fan_in=width, **dense
                )
            s = _map(lambda a, b: a + alpha2 * b, s, bs)
            if get_ntk:
                # the branch NTK carries T_{l-1} E[phi'phi'] (chain rule through the
                # branch) plus the branch's own parameters; the skip adds T_{l-1}.
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


def infinite_nngp(
    model,
    x1,
    x2=None,
    *,
    dtype="float64",
    quadrature_nodes: int = DEFAULT_QUADRATURE_NODES,
    quadrature_rule: QuadratureRule = DEFAULT_QUADRATURE_RULE,
) -> jax.Array:
    """Infinite-width NNGP kernel (output covariance) of ``model``.

    Returns ``k_12`` of shape ``(N1, N2)``, ``k_12[i, j] = K(x1[i], x2[j])``, the
    per-output kernel (the same for each of the ``n_out`` outputs).

    ``quadrature_nodes`` (per axis) and ``quadrature_rule``
    (:func:`gaussian_quadrature`) matter only for tanh, gelu and softplus; relu, erf
    and identity are closed forms.
    """
    x1, x2 = _prepare(model, x1, x2, dtype)
    k = _jit_kernels(model, x1, x2, False, quadrature_nodes, quadrature_rule)[0]
    return _check_overflow(k, model)


def infinite_ntk(
    model,
    x1,
    x2=None,
    *,
    dtype="float64",
    quadrature_nodes: int = DEFAULT_QUADRATURE_NODES,
    quadrature_rule: QuadratureRule = DEFAULT_QUADRATURE_RULE,
) -> jax.Array:
    """Infinite-width NTK of ``model``.

    Returns ``ntk_12`` of shape ``(N1, N2)``, ``ntk_12[i, j] = Theta(x1[i], x2[j])``,
    the per-output kernel; on ``n_out`` outputs the full limit is ``ntk_12 (x) I_O``. In
    standard parameterisation it depends on ``model.width`` (neural-tangents'
    convention, see the module docstring).

    ``quadrature_nodes`` and ``quadrature_rule`` as in :func:`infinite_nngp`.
    """
    x1, x2 = _prepare(model, x1, x2, dtype)
    k = _jit_kernels(model, x1, x2, True, quadrature_nodes, quadrature_rule)[1]
    return _check_overflow(k, model)


def _check_overflow(k, model):
    """Raise a one-line error instead of returning a kernel with inf or NaN entries
    (e.g. a depth-100 recursion with w_std = 3 on inputs of norm 1e150 exceeds the
    float range); traced values pass through unchecked."""
    if isinstance(k, jax.core.Tracer) or bool(jnp.all(jnp.isfinite(k))):
        return k
    bad = int(k.size - jnp.count_nonzero(jnp.isfinite(k)))
    raise FloatingPointError(
        f"the infinite-width kernel has {bad} non-finite entries (depth={model.depth}, "
        f"w_std={model.w_std}, activation={model.activation!r}): the recursion left "
        f"the {k.dtype} range; lower model.w_std or model.depth, or rescale the inputs"
    )


# Not jitted: the recursion is a few elementwise ops per layer on (N1, N2) arrays, which
# run faster eagerly than a fresh compilation per model (every sweep point has one).
_jit_kernels = _kernels
