r"""Predictions of the training path from kernels at initialisation.

Notation (DESIGN.md section 2): ``N`` training points ``X`` with targets ``Y``, the
residual :math:`r = f(X) - Y`, the loss :math:`L = \frac{c}{2}\sum_b r_b^2` with
:math:`c = 1/N` (``"mean"``) or :math:`c = 1` (``"sum"``); :math:`K = K_2(X, X)` at
initialisation with eigenpairs :math:`(\kappa_i, u_i)` and
:math:`\rho_i = u_i \cdot r_0`. Points ``a, b`` run over ``concat(x_train, x_eval)``
(training first); ``c, d, e`` over the training points only. Gradient flow gives the
hierarchy (Huang and Yau 2020, sec. 2; Dyer and Gur-Ari 2020, sec. 2):

.. math::
   \dot f_a = -c \sum_b K_2[a, b]\, r_b, \qquad
   \dot K_2[a, b] = -c \sum_d O_3[a, b, d]\, r_d, \qquad
   \dot O_3[a, b, d] = -c \sum_e O_4[a, b, d, e]\, r_e .

Three predictions, in increasing order of what they keep:

1. :func:`linearized` (frozen NTK, the infinite-width limit; Jacot, Gabriel and
   Hongler 2018; Lee et al. 2019, sec. 2):

   .. math:: r(t) = e^{-c K t} r_0, \qquad
      f_x(t) = f_x(0) - K_{xX} K^{-1} (I - e^{-c K t})\, r_0 .

2. :func:`truncated_o3`: the hierarchy truncated at :math:`O_3` (:math:`O_3` frozen at
   its initial value, :math:`K_2` moving), integrated with diffrax. Correct to first
   order in :math:`O_3` only: the :math:`O_4` term, of the same order :math:`1/n` in
   the width (Dyer and Gur-Ari 2020, sec. 3; Roberts, Yaida and Hanin 2022, ch. 11), is
   missing.

3. :func:`late_time_correction`: the end-of-training change to order :math:`1/n`,
   from the linear :math:`r(t)` inserted into the integrated hierarchy (Huang and Yau
   2020, sec. 2, the truncated hierarchy and its solution; Dyer and Gur-Ari 2020,
   sec. 3, the :math:`1/n` correction at the end of training; Roberts, Yaida and Hanin
   2022, ch. 11, the same structure for the dNTK and ddNTKs in their notation):

   .. math::
      v = K^{-1} r_0, \quad
      M = \sum_{ij} u_i u_j^T \frac{\rho_i \rho_j}{\kappa_i (\kappa_i + \kappa_j)},
      \quad
      M_3 = \sum_{ijk} u_i \otimes u_j \otimes u_k
      \frac{\rho_i \rho_j \rho_k}{\kappa_i (\kappa_i + \kappa_j)
      (\kappa_i + \kappa_j + \kappa_k)},

   .. math::
      \Delta K_2[a, b] \approx -\sum_c O_3[a, b, c]\, v_c
      + \sum_{cd} O_4[a, b, c, d]\, M_{cd},

   .. math::
      C_a = -\sum_{cd} O_3[a, c, d]\, M_{cd} + \sum_{cde} O_4[a, c, d, e]\, M_{3, cde},
      \qquad
      f_\infty(x) \approx f_0(x) - P(x)\, r_0 + P(x)\, C(X) - C(x),

   with :math:`P(x) = K_2[x, X] K^{-1}`. :math:`M` is not symmetric and
   :math:`O_4` is not symmetric in its last two indices: the antisymmetric parts pair
   up, so the whole :math:`O_4` term is kept. :math:`c` cancels: no :math:`N` appears.
   On a training point :math:`P = e_x` and the prediction is :math:`f = y`.

Derivation of :math:`M` (where the index order comes from): with the linear residual
:math:`r(t) = \sum_i u_i \rho_i e^{-c\kappa_i t}`,
:math:`c^2 \int_0^\infty dt\, r_c(t) \int_0^t ds\, r_d(s) = M_{cd}` and
:math:`c \int_0^\infty r\, dt = v`; the code computes these integrals with the rates
:math:`\lambda_i = c \kappa_i`, so the cancellation of :math:`c` is a check.
"""

from __future__ import annotations

import dataclasses
import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from nthexp._config import as_array
from nthexp.dynamics._train import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    LossNormalization,
    loss_scale,
)
from nthexp.kernels._empirical import _ntk, _params_dtype
from nthexp.kernels._hierarchy import o3 as _o3
from nthexp.kernels._hierarchy import o3_contract as _o3_contract
from nthexp.kernels._hierarchy import o4 as _o4


@functools.partial(jax.jit, static_argnames=("model",))
def _apply(model, params, x):
    with jax.default_matmul_precision("highest"):
        return model.apply({"params": params}, x)


def _eigh(k_train_train):
    """Eigenpairs of the (symmetrised) training kernel; refuses a singular one."""
    k = np.asarray(k_train_train, dtype=np.float64)
    kappa, u = np.linalg.eigh(0.5 * (k + k.T))
    if not kappa[0] > 1e3 * np.finfo(np.float64).eps * kappa[-1]:
        raise ValueError(
            f"the training NTK is singular to working precision (eigenvalues "
            f"{kappa[0]:.3e} .. {kappa[-1]:.3e}); the predictions need K^-1: remove "
            f"duplicate training points"
        )
    return kappa, u


@dataclasses.dataclass
class Prediction:
    """A predicted trajectory at ``T`` times.

    Attributes:
      times: ``(T,)``.
      f_train: ``(T, N)``; f_eval: ``(T, N_eval)``.
      ntk: ``(T, N + N_eval, N + N_eval)`` the predicted NTK, or ``None`` (frozen).
    """

    times: np.ndarray
    f_train: np.ndarray
    f_eval: np.ndarray
    ntk: np.ndarray | None = None


def linearized(
    k_train_train,
    k_eval_train,
    f0_train,
    f0_eval,
    y,
    t,
    *,
    loss_normalization: LossNormalization = "mean",
) -> Prediction:
    r"""Frozen-NTK (linearised) trajectory, closed form in the eigenbasis of ``K``.

    .. math::
       f_X(t) = Y + U e^{-c \kappa t} U^T r_0, \qquad
       f_x(t) = f_x(0) - K_{xX} U \frac{1 - e^{-c\kappa t}}{\kappa} U^T r_0

    (Lee et al. 2019, sec. 2; ``c`` as in :func:`nthexp.dynamics.loss_scale`).

    Args:
      k_train_train: ``(N, N)`` NTK on the training points.
      k_eval_train: ``(N_eval, N)`` NTK between evaluation and training points, or
        ``None``.
      f0_train: ``(N,)``; f0_eval: ``(N_eval,)`` or ``None``: outputs at ``t = 0``.
      y: ``(N,)`` targets.
      t: times, scalar or ``(T,)``.

    Returns:
      A :class:`Prediction` with ``f_train (T, N)``, ``f_eval (T, N_eval)``.
    """
    kappa, u = _eigh(k_train_train)
    n = kappa.shape[0]
    c = loss_scale(loss_normalization, n)
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    y = np.asarray(y, dtype=np.float64)
    rho = u.T @ (np.asarray(f0_train, dtype=np.float64) - y)

    decay = np.exp(-c * t[:, None] * kappa[None, :])  # (T, N): t, i
    f_train = y[None, :] + (decay * rho[None, :]) @ u.T
    if k_eval_train is None:
        return Prediction(t, f_train, np.zeros((t.shape[0], 0)))
    k_et = np.asarray(k_eval_train, dtype=np.float64)
    gain = (1.0 - decay) * (rho / kappa)[None, :]  # (T, N): t, i
    f_eval = np.asarray(f0_eval, dtype=np.float64)[None, :] - gain @ (k_et @ u).T
    return Prediction(t, f_train, f_eval)


@functools.partial(jax.jit, static_argnames=("n_train",))
def _truncated_solve(ntk_all, o3_all, f0_all, y, ts, scale, rtol, atol, n_train):
    def vector_field(t, state, args):
        f, k = state
        r = f[:n_train] - y
        return -scale * (k[:, :n_train] @ r), -scale * (o3_all[:, :, :n_train] @ r)

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        diffrax.Tsit5(),
        t0=0.0,
        t1=ts[-1],
        dt0=None,
        y0=(f0_all, ntk_all),
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=100_000,
    )
    return sol.ys


def truncated_o3(
    ntk_all,
    o3_all,
    f0_all,
    y,
    t,
    *,
    loss_normalization: LossNormalization = "mean",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> Prediction:
    r"""The hierarchy truncated at :math:`O_3`, integrated with diffrax (Tsit5, PID
    controller with ``rtol``/``atol``):

    .. math::
       \dot f_a = -c \sum_b K_2[a, b]\, r_b, \qquad
       \dot K_2[a, b] = -c \sum_d O_3[a, b, d]\, r_d, \qquad O_3 = O_3(0).

    Args:
      ntk_all: ``(N_all, N_all)`` NTK at initialisation on ``concat(x_train, x_eval)``.
      o3_all: ``(N_all, N_all, N_all)`` (or ``(N_all, N_all, N)``) :math:`O_3` at
        initialisation; only the training part of the last axis is used.
      f0_all: ``(N_all,)`` outputs at initialisation; y: ``(N,)`` targets (training
        points are the first ``N`` of ``N_all``).
      t: ``(T,)`` increasing times, ``t >= 0``.

    Returns:
      A :class:`Prediction` with ``f_train (T, N)``, ``f_eval (T, N_eval)`` and
      ``ntk (T, N_all, N_all)``.
    """
    y = jnp.asarray(y, dtype=jnp.float64)
    n = y.shape[0]
    c = loss_scale(loss_normalization, n)
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    if np.any(np.diff(t) <= 0) or t[0] < 0:
        raise ValueError(f"t must be increasing and >= 0; got {t}")
    f_t, k_t = _truncated_solve(
        jnp.asarray(ntk_all, jnp.float64),
        jnp.asarray(o3_all, jnp.float64),
        jnp.asarray(f0_all, jnp.float64),
        y,
        jnp.asarray(t),
        c,
        rtol,
        atol,
        n,
    )
    f_t = np.asarray(f_t)
    return Prediction(t, f_t[:, :n], f_t[:, n:], np.asarray(k_t))


@dataclasses.dataclass
class LateTimeCorrection:
    r"""End-of-training predictions to order :math:`1/n` on ``N_all = N + N_eval``
    points (training first).

    Attributes:
      dk: ``(N_all, N_all)`` predicted :math:`K_2(\infty) - K_2(0)`: ``dk_o3 + dk_o4``.
      dk_o3: ``(N_all, N_all)`` :math:`-\sum_c O_3[a, b, c] v_c`.
      dk_o4: ``(N_all, N_all)`` :math:`\sum_{cd} O_4[a, b, c, d] M_{cd}` (whole).
      dk_o4_sym: ``(N_all, N_all)`` the same with :math:`O_4` symmetrised in
        ``(c, d)`` (equivalently :math:`M` replaced by its symmetric part); shown to
        be insufficient by the tests.
      f_end: ``(N_all,)`` predicted :math:`f(\infty)` (``= y`` on training points).
      f_end_linear: ``(N_all,)`` the frozen-NTK end point :math:`f_0 - P r_0`.
      df_end: ``(N_all,)`` the correction ``f_end - f_end_linear``
        :math:`= P(x) C(X) - C(x)`.
      c_all: ``(N_all,)`` the vector :math:`C`.
      v: ``(N,)``; m: ``(N, N)``; m3: ``(N, N, N)``: the weights of DESIGN.md.
      ntk0: ``(N_all, N_all)``; f0: ``(N_all,)``: values at initialisation.
    """

    dk: np.ndarray
    dk_o3: np.ndarray
    dk_o4: np.ndarray
    dk_o4_sym: np.ndarray
    f_end: np.ndarray
    f_end_linear: np.ndarray
    df_end: np.ndarray
    c_all: np.ndarray
    v: np.ndarray
    m: np.ndarray
    m3: np.ndarray
    ntk0: np.ndarray
    f0: np.ndarray
    n_train: int


def late_time_weights(
    k_train_train, r0, *, loss_normalization: LossNormalization = "mean"
):
    r"""``(v, M, M3)`` of shapes ``(N,)``, ``(N, N)``, ``(N, N, N)``:

    .. math::
       v = c \int_0^\infty r\,dt, \quad
       M_{cd} = c^2 \int_0^\infty dt\, r_c(t) \int_0^t ds\, r_d(s), \quad
       M_{3,cde} = c^3 \int_0^\infty dt\, r_c(t) \int_0^t ds\, r_d(s)
       \int_0^s du\, r_e(u)

    for the linear residual :math:`r(t) = e^{-cKt} r_0`; in closed form these are the
    :math:`N`-free expressions of the module docstring (rates :math:`c\kappa_i`).
    """
    kappa, u = _eigh(k_train_train)
    c = loss_scale(loss_normalization, kappa.shape[0])
    lam = c * kappa
    rho = u.T @ np.asarray(r0, dtype=np.float64)

    v = c * (u @ (rho / lam))
    s2 = lam[:, None] + lam[None, :]
    w2 = c**2 * rho[:, None] * rho[None, :] / (lam[:, None] * s2)  # (i, j)
    s3 = s2[:, :, None] + lam[None, None, :]
    w3 = (
        c**3
        * (rho[:, None, None] * rho[None, :, None] * rho[None, None, :])
        / (lam[:, None, None] * s2[:, :, None] * s3)
    )  # (i, j, k)
    m = u @ w2 @ u.T
    m3 = np.einsum("ci,dj,ek,ijk->cde", u, u, u, w3)
    return v, m, m3


def late_time_correction(
    model,
    params,
    x_train,
    y_train,
    x_eval=None,
    *,
    method: str = "structured",
    loss_normalization: LossNormalization = "mean",
    memory_budget: int | None = None,
) -> LateTimeCorrection:
    r"""Predicted end-of-training change of the NTK and of f to order :math:`1/n`.

    Forms :math:`O_3` and :math:`O_4` on ``concat(x_train, x_eval)`` with
    :func:`nthexp.kernels.o3`/:func:`~nthexp.kernels.o4` (memory
    ``N_all^4`` floats; see :func:`nthexp.kernels.plan`) and applies the formulas of
    the module docstring (Huang and Yau 2020; Dyer and Gur-Ari 2020; Roberts, Yaida
    and Hanin 2022). The linear residual is assumed to decay to zero: every
    eigenvalue of ``K`` must be positive.

    Args:
      model, params: a scalar-output nthexp model at initialisation.
      x_train: ``(N, D_in)``; y_train: ``(N,)``; x_eval: ``(N_eval, D_in)`` or None.
      method: kernel method (``"structured"`` or the ``"jacobian"`` reference).
      loss_normalization: ``"mean"`` or ``"sum"``; the results do not depend on it
        (up to rounding), which the tests check.

    Returns:
      A :class:`LateTimeCorrection` on all ``N_all`` points.
    """
    dtype = _params_dtype(params)
    x_train = as_array(x_train, dtype, "x_train")
    n = x_train.shape[0]
    y = np.asarray(y_train, dtype=np.float64)
    if y.shape != (n,):
        raise ValueError(f"y_train must have shape ({n},); got {y.shape}")
    x_all = x_train
    if x_eval is not None:
        x_all = jnp.concatenate([x_train, as_array(x_eval, dtype, "x_eval")])

    f0 = np.asarray(_apply(model, params, x_all), dtype=np.float64)
    ntk0 = np.asarray(_ntk(model, params, x_all, None, method, False), np.float64)
    o3_all = np.asarray(
        _o3(model, params, x_all, method, memory_budget=memory_budget), np.float64
    )
    o4_all = np.asarray(
        _o4(model, params, x_all, method, memory_budget=memory_budget), np.float64
    )

    r0 = f0[:n] - y
    v, m, m3 = late_time_weights(
        ntk0[:n, :n], r0, loss_normalization=loss_normalization
    )
    o3_t = o3_all[:, :, :n]  # (a, b, c): c over training points
    o4_tt = o4_all[:, :, :n, :n]  # (a, b, c, d): c, d over training points
    dk_o3 = -o3_t @ v
    dk_o4 = np.einsum("abcd,cd->ab", o4_tt, m)
    dk_o4_sym = np.einsum("abcd,cd->ab", o4_tt, 0.5 * (m + m.T))

    # C(a) = -sum_cd O3[a, c, d] M[c, d] + sum_cde O4[a, c, d, e] M3[c, d, e]
    c_all = -np.einsum("acd,cd->a", o3_all[:, :n, :n], m) + np.einsum(
        "acde,cde->a", o4_all[:, :n, :n, :n], m3
    )
    # P(x) = K2[x, X] K^-1 by a solve; on training rows P is the identity.
    p_all = np.linalg.solve(ntk0[:n, :n], ntk0[:, :n].T).T  # (N_all, N)
    p_all[:n] = np.eye(n)
    f_end_linear = f0 - p_all @ r0
    df_end = p_all @ c_all[:n] - c_all
    return LateTimeCorrection(
        dk=dk_o3 + dk_o4,
        dk_o3=dk_o3,
        dk_o4=dk_o4,
        dk_o4_sym=dk_o4_sym,
        f_end=f_end_linear + df_end,
        f_end_linear=f_end_linear,
        df_end=df_end,
        c_all=c_all,
        v=v,
        m=m,
        m3=m3,
        ntk0=ntk0,
        f0=f0,
        n_train=n,
    )


@functools.partial(jax.jit, static_argnames=("model",))
def _residual_and_grad(model, params, x, y, scale):
    r"""``r = f(X) - Y`` and the gradient of :math:`\frac{c}{2}\|r\|^2`."""

    def loss(p):
        r = model.apply({"params": p}, x) - y
        return 0.5 * scale * jnp.sum(r**2), r

    with jax.default_matmul_precision("highest"):
        (_, r), grad = jax.value_and_grad(loss, has_aux=True)(params)
    return r, grad


@dataclasses.dataclass
class KernelVelocity:
    r"""The instantaneous identity :math:`\dot K_2 = -c\, O_3 \cdot r` at one point of
    the flow, on ``N_all`` points.

    Attributes:
      dk_dt_hierarchy: ``(N_all, N_all)`` :math:`-c \sum_d O_3[a, b, d] r_d`
        (:func:`nthexp.kernels.o3_contract`).
      dk_dt_fd: ``(N_all, N_all)`` :math:`\frac{d}{ds} K_2(\theta - s \nabla L)` at
        ``s = 0`` by a fourth-order central difference with step ``h``; since the
        flow's velocity is :math:`-\nabla L`, this is :math:`\dot K_2` of the flow.
      rel_err: :math:`\|\text{fd} - \text{hierarchy}\|_F / \|\text{fd}\|_F`.
      h: the time step of the difference.
    """

    dk_dt_hierarchy: np.ndarray
    dk_dt_fd: np.ndarray
    rel_err: float
    h: float


def kernel_velocity(
    model,
    params,
    x_train,
    y_train,
    x_eval=None,
    *,
    h: float | None = None,
    method: str = "structured",
    loss_normalization: LossNormalization = "mean",
) -> KernelVelocity:
    r"""Check :math:`\dot K_2 = -c \sum_d O_3[\cdot, \cdot, d]\, r_d` at ``params``.

    The derivative along the flow is a five-point central difference of
    :math:`s \mapsto K_2(\theta - s \nabla_\theta L)` (error :math:`O(h^4)`, rounding
    about :math:`\epsilon \|K_2\| / h`). Default ``h``: ``1e-2`` of the fastest time
    scale :math:`1 / (c \lambda_{max}(K))`.

    Returns:
      A :class:`KernelVelocity` on ``concat(x_train, x_eval)``.
    """
    dtype = _params_dtype(params)
    x_train = as_array(x_train, dtype, "x_train")
    n = x_train.shape[0]
    y = jnp.asarray(y_train, dtype=dtype)
    x_all = x_train
    if x_eval is not None:
        x_all = jnp.concatenate([x_train, as_array(x_eval, dtype, "x_eval")])
    c = loss_scale(loss_normalization, n)

    r, grad = _residual_and_grad(model, params, x_train, y, c)
    r_all = jnp.concatenate([r, jnp.zeros(x_all.shape[0] - n, dtype=dtype)])
    hierarchy = -c * np.asarray(_o3_contract(model, params, x_all, r_all, method))

    k0 = np.asarray(_ntk(model, params, x_all, None, method, False))
    if h is None:
        h = 1e-2 / (c * float(np.linalg.eigvalsh(k0[:n, :n])[-1]))

    def k_at(s):
        p = jax.tree.map(lambda a, g: a - s * g, params, grad)
        return np.asarray(_ntk(model, p, x_all, None, method, False))

    fd = (8 * (k_at(h) - k_at(-h)) - (k_at(2 * h) - k_at(-2 * h))) / (12 * h)
    rel = float(np.linalg.norm(fd - hierarchy) / np.linalg.norm(fd))
    return KernelVelocity(hierarchy, fd, rel, float(h))
