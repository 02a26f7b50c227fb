r"""Predictions of the training path from kernels at initialisation.

Notation (docs/theory.md): ``N`` training points ``X`` with targets ``Y``, the
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
import math

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
      v: ``(N,)``; m: ``(N, N)``; m3: ``(N, N, N)``: the weights of docs/theory.md.
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


#: Points of the difference stencil of :func:`trajectory_velocity` (fourth order).
DEFAULT_STENCIL_POINTS = 5
#: Stencil step of :func:`stencil_log_times` relative to the logged time: the
#: difference error :math:`(\lambda t\, 10^{-3})^4 / 5` stays below ``1e-8`` while the
#: modes still moving (rate :math:`\lambda`, :math:`\lambda t \lesssim 20` before a
#: residual of ``1e-8``) are resolved, and the rounding error
#: :math:`\epsilon \|K_2\| / h` stays small against the kernel's motion over ``h``.
DEFAULT_STENCIL_REL_STEP = 1e-3


def _check_points(points: int) -> int:
    if isinstance(points, bool) or not isinstance(points, int | np.integer):
        raise ValueError(f"points={points!r} must be an integer >= 2")
    if points < 2:
        raise ValueError(f"points={points} must be >= 2")
    return int(points)


def stencil_log_times(
    times,
    *,
    rel_step: float = DEFAULT_STENCIL_REL_STEP,
    min_step: float = 0.0,
    points: int = DEFAULT_STENCIL_POINTS,
) -> np.ndarray:
    r"""Logged times for :func:`trajectory_velocity`: each of ``times`` with
    ``points - 1`` companions one step ``h`` apart, so that the derivative of the
    recorded :math:`K_2(t)` at that time comes from a tight stencil.

    The step is :math:`h = \max(\texttt{rel\_step}\; t, \texttt{min\_step})` (at
    ``t = 0``: ``rel_step`` times the smallest positive time, or ``min_step``).
    Companions lie before the time (:math:`t - h, \dots, t - (p-1) h`, a backward
    stencil), so a time that training reached has its whole stencil recorded, also
    when training stops early or at ``t_max``; where that would reach below 0 they
    lie after it. For optax pass ``min_step = learning_rate`` (steps are whole).

    Args:
      times: ``(T,)`` the times to check, ``>= 0``.

    Returns:
      ``(T',)`` sorted, distinct: pass as ``log_times`` to :func:`train`.
    """
    points = _check_points(points)
    times = np.unique(np.asarray(times, dtype=np.float64))
    if times.size == 0 or times[0] < 0 or not np.all(np.isfinite(times)):
        raise ValueError(f"times must be finite and >= 0; got {times}")
    if not rel_step > 0:
        raise ValueError(f"rel_step={rel_step!r} must be > 0")
    if not min_step >= 0:
        raise ValueError(f"min_step={min_step!r} must be >= 0")
    positive = times[times > 0]
    t_ref = np.where(times > 0, times, positive[0] if positive.size else 0.0)
    h = np.maximum(rel_step * t_ref, min_step)
    if np.any(h <= 0):
        raise ValueError(
            f"times={times} has no positive time to set the step at t = 0; give "
            f"min_step > 0"
        )
    k = np.arange(points)
    backward = times[:, None] - (points - 1) * h[:, None] >= 0
    offsets = np.where(backward, -k[None, :], k[None, :]) * h[:, None]  # (T, p)
    return np.unique(times[:, None] + offsets)


def _difference_weights(s: np.ndarray, t: float) -> tuple[np.ndarray, float, float]:
    r"""Weights ``w`` with :math:`\sum_j w_j f(s_j) = f'(t) + O(h^{p-1})` on the
    ``p`` distinct points ``s``; ``h = max |s - t|``; the error's leading term is
    :math:`C h^{p-1} f^{(p)}` with the returned ``C``; and :math:`h \sum_j |w_j|`
    (the factor by which rounding in ``f`` is amplified, times ``h``).

    In the scaled offsets :math:`u_j = (s_j - t)/h` the weights are
    :math:`\omega / h` with :math:`\sum_j \omega_j u_j^k = \delta_{k1}`,
    :math:`k < p` (Taylor's theorem; Fornberg 1988 builds the same weights
    recursively, which matters only for many more points than used here).
    """
    d = s - t
    h = float(np.max(np.abs(d)))
    u = d / h
    p = s.shape[0]
    vander = u[None, :] ** np.arange(p)[:, None]  # (k, j)
    omega = np.linalg.solve(vander, np.eye(p)[1])
    coef = abs(float(omega @ u**p)) / math.factorial(p)
    return omega / h, coef, float(np.sum(np.abs(omega)))


@dataclasses.dataclass
class TrajectoryVelocity:
    r"""The instantaneous identity :math:`\dot K_2 = -c\, O_3 \cdot r` along a run
    of :func:`train`, at ``T`` of its logged times, on its ``N_all`` points.

    Attributes:
      times: ``(T,)`` the checked logged times.
      dk_dt_trajectory: ``(T, N_all, N_all)`` :math:`\dot K_2` from the recorded
        :math:`K_2(t)` by a ``points``-point difference over the nearest logged times.
      dk_dt_hierarchy: ``(T, N_all, N_all)`` :math:`-c \sum_d O_3[a, b, d]\, r_d`
        at the parameters of each time (``TrainResult.ntk_velocity``).
      rel_err: ``(T,)`` :math:`\|\text{trajectory} - \text{hierarchy}\|_F /
        \|\text{hierarchy}\|_F`.
      rel_err_max: the largest ``rel_err``.
      abs_err: ``(T,)`` :math:`\|\text{trajectory} - \text{hierarchy}\|_F`.
      velocity_norm: ``(T,)`` :math:`\|\text{hierarchy}\|_F`: the kernel's speed,
        which falls with the residual; relative errors at times where it has died
        out measure rounding, not the identity.
      h: ``(T,)`` the stencil's reach :math:`\max_j |t_j - t|`.
      diff_coef: ``(T,)`` the difference error's coefficient ``C``: the error is
        :math:`C h^{p-1} \|K_2^{(p)}\|`, so relative
        :math:`\lesssim C (\Lambda h)^{p-1}` when :math:`K_2` moves with rates up
        to :math:`\Lambda`.
      round_coef: ``(T,)`` :math:`h \sum_j |w_j|`: rounding (or integrator) error
        :math:`\delta` in the recorded :math:`K_2` enters as
        :math:`\delta \cdot \texttt{round\_coef} / h`.
      points: stencil size.
    """

    times: np.ndarray
    dk_dt_trajectory: np.ndarray
    dk_dt_hierarchy: np.ndarray
    rel_err: np.ndarray
    rel_err_max: float
    abs_err: np.ndarray
    velocity_norm: np.ndarray
    h: np.ndarray
    diff_coef: np.ndarray
    round_coef: np.ndarray
    points: int


def _logged_indices(run, at) -> np.ndarray:
    """Indices of the logged times ``at`` (rounded to steps for optax, as
    :func:`train` rounds ``log_times``)."""
    times = np.asarray(run.times, dtype=np.float64)
    if at is None:
        return np.arange(times.shape[0])
    at = np.atleast_1d(np.asarray(at, dtype=np.float64))
    if run.learning_rate is not None:
        at = np.round(at / run.learning_rate) * run.learning_rate
    scale = 1e-12 * max(float(np.max(np.abs(times))), 1.0)
    idx = np.searchsorted(times, at).clip(0, times.shape[0] - 1)
    left = (idx - 1).clip(0)
    idx = np.where(np.abs(times[left] - at) < np.abs(times[idx] - at), left, idx)
    missing = at[np.abs(times[idx] - at) > scale]
    if missing.size:
        raise ValueError(
            f"at={missing.tolist()} are not logged times of the run (it logged "
            f"{times.shape[0]} times in [{times[0]:.6g}, {times[-1]:.6g}])"
        )
    return idx


def trajectory_velocity(
    run, *, at=None, points: int = DEFAULT_STENCIL_POINTS
) -> TrajectoryVelocity:
    r"""Check :math:`\dot K_2 = -c \sum_d O_3[\cdot, \cdot, d]\, r_d` at logged times
    of a real training run (Huang and Yau 2020, sec. 2: the hierarchy's first
    equation).

    The left side comes from the trajectory: the recorded :math:`K_2(t_j)` at the
    ``points`` logged times nearest to :math:`t` differenced with the weights exact
    for polynomials of degree ``points - 1`` (central on an even grid inside, one-
    sided at its ends and on the backward stencils of :func:`stencil_log_times`).
    The right side is ``run.ntk_velocity``, computed during training at the
    parameters of time :math:`t` (:func:`train` with ``record_velocity=True``).

    Expected relative error at time :math:`t` (stencil reach ``h``):

    * difference: :math:`C (\Lambda h)^{p-1}` with ``C = diff_coef`` (1/30 for
      5 central points, 1/5 for 5 one-sided) and :math:`\Lambda` the fastest rate
      still present in :math:`K_2(t)`, at most about :math:`2 c \kappa_{max}` (the
      products :math:`r_c r_d` of the :math:`O_4` term move at
      :math:`c (\kappa_i + \kappa_j)`);
    * integrator and rounding: an error :math:`\delta` in the recorded :math:`K_2`
      becomes :math:`\delta\, \texttt{round\_coef} / (h \|\dot K_2\|)`. diffrax keeps
      the local error of the parameters near ``rtol`` :math:`\|\theta\|`; the saved
      states are its dense interpolant, smooth within a step, so this term is mostly
      rounding, :math:`\epsilon \|K_2\|`. It grows as the motion dies out: near
      convergence :math:`\|\dot K_2\| \propto \|r\|`;
    * optimizer: ``"gd"`` adds :math:`O(\texttt{learning\_rate})` (it is the Euler
      scheme of the flow; its steps are the stencil's points).

    Args:
      run: a :class:`TrainResult` with ``ntk`` and ``ntk_velocity`` recorded, from
        ``"flow"`` or ``"gd"`` (the identity is for the gradient flow; momentum and
        adam move along other directions).
      at: logged times to check (default: all; rounded to steps for optax).
      points: stencil size ``p`` (error order ``p - 1``).

    Returns:
      A :class:`TrajectoryVelocity`.
    """
    points = _check_points(points)
    if run.optimizer not in ("flow", "gd"):
        raise ValueError(
            f"optimizer={run.optimizer!r}: the identity dK2/dt = -c O3 . r holds for "
            f"the gradient flow; allowed: ['flow', 'gd']"
        )
    if run.ntk is None or run.ntk_velocity is None:
        raise ValueError(
            "the run has no recorded NTK or kernel velocity; train with "
            "record_ntk=True and record_velocity=True"
        )
    times = np.asarray(run.times, dtype=np.float64)
    if times.shape[0] < points:
        raise ValueError(
            f"points={points} needs at least {points} logged times; the run has "
            f"{times.shape[0]}"
        )
    idx = _logged_indices(run, at)

    ntk = np.asarray(run.ntk, dtype=np.float64)
    hierarchy = np.asarray(run.ntk_velocity, dtype=np.float64)[idx]
    fd = np.empty_like(hierarchy)
    h, diff_coef, round_coef = (np.empty(idx.shape[0]) for _ in range(3))
    for row, i in enumerate(idx):
        near = np.sort(np.argsort(np.abs(times - times[i]), kind="stable")[:points])
        w, diff_coef[row], round_coef[row] = _difference_weights(times[near], times[i])
        h[row] = np.max(np.abs(times[near] - times[i]))
        fd[row] = np.tensordot(w, ntk[near], axes=1)
    abs_err = np.linalg.norm(fd - hierarchy, axis=(1, 2))
    velocity_norm = np.linalg.norm(hierarchy, axis=(1, 2))
    rel = abs_err / velocity_norm
    return TrajectoryVelocity(
        times=times[idx],
        dk_dt_trajectory=fd,
        dk_dt_hierarchy=hierarchy,
        rel_err=rel,
        rel_err_max=float(np.max(rel)),
        abs_err=abs_err,
        velocity_norm=velocity_norm,
        h=h,
        diff_coef=diff_coef,
        round_coef=round_coef,
        points=points,
    )
