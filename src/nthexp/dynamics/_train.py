r"""Full-batch training on the mean-squared loss, with f and the NTK recorded.

Loss and time (docs/theory.md):

.. math::
   L(\theta) = \frac{c}{2} \sum_{b=1}^{N} (f(x_b; \theta) - y_b)^2, \qquad
   c = 1/N \ (\texttt{"mean"}) \ \text{or} \ c = 1 \ (\texttt{"sum"}),

and gradient flow :math:`\dot\theta = -\nabla_\theta L` gives
:math:`\dot f(x) = -c \sum_b K_2[x, b]\, r_b` with :math:`r = f(X) - Y`
(Jacot, Gabriel and Hongler 2018; Huang and Yau 2020, sec. 2).

Optimizers (:data:`Optimizer`):

``"gd"``, ``"momentum"``, ``"adam"``
    optax (``sgd``, ``sgd`` with heavy-ball momentum, ``adam``) on the full batch.
    Step ``k`` is placed at time ``t = k * learning_rate`` so that plain gradient
    descent follows the gradient flow up to an ``O(learning_rate)`` error. Cost per
    step: one forward and one backward pass on the ``N`` training points.
``"flow"``
    Gradient flow integrated by diffrax (adaptive Runge-Kutta, PID step-size control
    with the given ``rtol``/``atol``, float64). Cost: a few gradient evaluations per
    accepted step; the number of steps grows with the condition number of
    :math:`c K_2` times ``t_max``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nthexp._config import as_array
from nthexp.kernels._empirical import METHODS, _ntk, _params_dtype
from nthexp.kernels._hierarchy import _o3_contract

Optimizer = Literal["gd", "momentum", "adam", "flow"]
OPTIMIZERS = ("gd", "momentum", "adam", "flow")
LossNormalization = Literal["mean", "sum"]
LOSS_NORMALIZATIONS = ("mean", "sum")
SOLVERS = ("tsit5", "dopri8", "kvaerno5")

#: Number of logged times when ``log_times`` is not given (t = 0 plus log-spaced).
DEFAULT_N_LOG = 40
#: Default tolerances of the gradient-flow integrator: well below the 1/width effects
#: that the hierarchy predicts at the widths this package studies (>= 1e-4 relative).
DEFAULT_RTOL = 1e-10
DEFAULT_ATOL = 1e-12
#: Heavy-ball coefficient of ``optimizer="momentum"`` and the default step cap of
#: the flow solver.
DEFAULT_MOMENTUM = 0.9
DEFAULT_MAX_SOLVER_STEPS = 200_000


class DivergenceError(RuntimeError):
    """Training met a non-finite loss. ``result`` holds everything recorded before,
    with ``stop_reason == "diverged"`` and ``diverged_step`` set."""

    def __init__(self, message: str, result: TrainResult):
        super().__init__(message)
        self.result = result


@dataclasses.dataclass
class TrainResult:
    r"""What :func:`train` records, at ``T`` logged times.

    Attributes:
      times: ``(T,)`` gradient-flow times (``step * learning_rate`` for optax).
      steps: ``(T,)`` optimizer steps (``-1`` for ``"flow"``).
      f_train: ``(T, N)`` outputs on the training points.
      f_eval: ``(T, N_eval)`` outputs on the evaluation points (``N_eval = 0`` if none).
      loss: ``(T,)`` the loss :math:`\frac{c}{2}\sum_b r_b^2`.
      residual_norm: ``(T,)`` :math:`\|f(X) - Y\|_2`.
      ntk: ``(T, N + N_eval, N + N_eval)`` the empirical NTK on
        ``concat(x, x_eval)`` (training points first), or ``None`` if not recorded.
      ntk_velocity: ``(T, N + N_eval, N + N_eval)`` the hierarchy's kernel velocity
        :math:`-c \sum_d O_3[a, b, d]\, r_d` at the parameters of each logged time
        (:func:`nthexp.kernels.o3_contract`, ``d`` over training points), or ``None``
        if not recorded (``record_velocity``).
      params: the parameters at the last recorded time.
      stop_reason: ``"t_max"`` (ran to the end), ``"tol"`` (residual norm below
        ``tol``), ``"max_steps"`` (solver step cap) or ``"diverged"``.
      diverged_step: the first step with a non-finite loss (``None`` otherwise).
      solver_steps: accepted+rejected solver steps (flow) or optimizer steps taken.
    """

    times: np.ndarray
    steps: np.ndarray
    f_train: np.ndarray
    f_eval: np.ndarray
    loss: np.ndarray
    residual_norm: np.ndarray
    ntk: np.ndarray | None
    params: dict
    optimizer: str
    learning_rate: float | None
    loss_normalization: str
    stop_reason: str
    diverged_step: int | None = None
    solver_steps: int = 0
    ntk_velocity: np.ndarray | None = None

    @property
    def n_train(self) -> int:
        return self.f_train.shape[1]

    @property
    def ntk_train_train(self) -> np.ndarray | None:
        """``(T, N, N)`` the NTK block on the training points."""
        return None if self.ntk is None else self.ntk[:, : self.n_train, : self.n_train]


def loss_scale(loss_normalization: str, n: int) -> float:
    """The factor ``c`` of the loss: ``1/N`` for ``"mean"``, ``1`` for ``"sum"``."""
    if loss_normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(
            f"loss_normalization={loss_normalization!r} is unknown; allowed: "
            f"{list(LOSS_NORMALIZATIONS)}"
        )
    return 1.0 / n if loss_normalization == "mean" else 1.0


# ----------------------------------------------------------------------------------
# Pure pieces (jitted once per model and shapes; scalars are traced).
# ----------------------------------------------------------------------------------


def _loss_and_residual(model, params, x, y, scale):
    r = model.apply({"params": params}, x) - y
    return 0.5 * scale * jnp.sum(r**2), r


def _observe(model, params, x, y, x_all, scale, record_ntk, record_velocity, method):
    """Loss, residual norm, f on all points and (optionally) the NTK and the
    hierarchy's kernel velocity -c O3 . r on all points."""
    with jax.default_matmul_precision("highest"):
        loss, r = _loss_and_residual(model, params, x, y, scale)
        f_all = model.apply({"params": params}, x_all)
        k = _ntk(model, params, x_all, None, method, False) if record_ntk else None
        velocity = None
        if record_velocity:
            # The residual is zero on the evaluation points: they are not trained on.
            r_all = jnp.concatenate(
                [r, jnp.zeros(x_all.shape[0] - r.shape[0], r.dtype)]
            )
            velocity = -scale * _o3_contract(model, params, x_all, r_all, method)
    return loss, jnp.linalg.norm(r), f_all, k, velocity


_observe_jit = jax.jit(
    _observe, static_argnames=("model", "record_ntk", "record_velocity", "method")
)


def _make_tx(optimizer, learning_rate, momentum):
    if optimizer == "gd":
        return optax.sgd(learning_rate)
    if optimizer == "momentum":
        return optax.sgd(learning_rate, momentum=momentum)
    return optax.adam(learning_rate)


@functools.partial(jax.jit, static_argnames=("model", "optimizer", "momentum"))
def _optax_segment(
    model, optimizer, momentum, params, state, x, y, scale, lr, start, stop, tol
):
    """Steps ``start .. stop-1``. Before each step the loss at the current params is
    checked: a non-finite one stops with status 1, a residual norm below ``tol`` with
    status 2 (in both cases without updating). Returns (step, params, state, status)."""
    tx = _make_tx(optimizer, lr, momentum)
    grad_fn = jax.value_and_grad(
        lambda p: _loss_and_residual(model, p, x, y, scale), has_aux=True
    )

    def cond(carry):
        i, _, _, status = carry
        return (i < stop) & (status == 0)

    def body(carry):
        i, p, s, _ = carry
        with jax.default_matmul_precision("highest"):
            (loss, r), g = grad_fn(p)
        finite = jnp.isfinite(loss)
        converged = jnp.linalg.norm(r) < tol
        status = jnp.where(finite, jnp.where(converged, 2, 0), 1).astype(jnp.int32)
        updates, s_new = tx.update(g, s, p)
        p_new = optax.apply_updates(p, updates)
        keep = status != 0
        p = jax.tree.map(lambda a, b: jnp.where(keep, a, b), p, p_new)
        s = jax.tree.map(lambda a, b: jnp.where(keep, a, b), s, s_new)
        return i + jnp.where(keep, 0, 1).astype(i.dtype), p, s, status

    return jax.lax.while_loop(cond, body, (start, params, state, jnp.int32(0)))


_SOLVERS = {
    "tsit5": diffrax.Tsit5,
    "dopri8": diffrax.Dopri8,
    "kvaerno5": diffrax.Kvaerno5,
}


@functools.partial(
    jax.jit,
    static_argnames=(
        "model",
        "solver",
        "record_ntk",
        "record_velocity",
        "method",
        "max_steps",
        "progress",
    ),
)
def _flow_solve(
    model,
    params,
    x,
    y,
    x_all,
    scale,
    ts,
    t_max,
    tol,
    rtol,
    atol,
    solver,
    record_ntk,
    record_velocity,
    method,
    max_steps,
    progress,
):
    def vector_field(t, p, args):
        with jax.default_matmul_precision("highest"):
            g = jax.grad(lambda q: _loss_and_residual(model, q, x, y, scale)[0])(p)
        return jax.tree.map(jnp.negative, g)

    def observe(t, p, args):
        return _observe(
            model, p, x, y, x_all, scale, record_ntk, record_velocity, method
        )

    def converged(t, p, args, **kwargs):
        r = model.apply({"params": p}, x) - y
        return jnp.linalg.norm(r) < tol

    saveat = diffrax.SaveAt(
        subs=[diffrax.SubSaveAt(ts=ts, fn=observe), diffrax.SubSaveAt(t1=True)]
    )
    meter = diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter()
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        _SOLVERS[solver](),
        t0=0.0,
        t1=t_max,
        dt0=None,
        y0=params,
        saveat=saveat,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        event=diffrax.Event(converged),
        max_steps=max_steps,
        throw=False,
        progress_meter=meter,
    )
    (ts_saved, t_end), (obs, p_end) = sol.ts, sol.ys
    final = observe(t_end[0], jax.tree.map(lambda a: a[0], p_end), None)
    return ts_saved, obs, t_end[0], p_end, final, sol.result, sol.stats["num_steps"]


# ----------------------------------------------------------------------------------
# Public function.
# ----------------------------------------------------------------------------------


def _check_args(optimizer, learning_rate, steps, t_max, solver, method):
    if optimizer not in OPTIMIZERS:
        raise ValueError(
            f"optimizer={optimizer!r} is unknown; allowed: {list(OPTIMIZERS)}"
        )
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; allowed: {list(METHODS)}")
    if optimizer == "flow":
        if solver not in SOLVERS:
            raise ValueError(f"solver={solver!r} is unknown; allowed: {list(SOLVERS)}")
        if t_max is None or not t_max > 0:
            raise ValueError(f"optimizer='flow' needs t_max > 0; got {t_max=}")
        if steps is not None:
            raise ValueError(f"optimizer='flow' takes t_max, not steps; got {steps=}")
        return
    if learning_rate is None or not learning_rate > 0:
        raise ValueError(
            f"optimizer={optimizer!r} needs learning_rate > 0; got {learning_rate=}"
        )
    if (steps is None) == (t_max is None):
        raise ValueError(f"give exactly one of steps and t_max; got {steps=}, {t_max=}")


def default_log_times(
    t_max: float, *, n_log: int = DEFAULT_N_LOG, learning_rate: float | None = None
) -> np.ndarray:
    """``(n_log,)`` the logged times :func:`train` uses when ``log_times`` is not
    given: ``t = 0`` and ``n_log - 1`` log-spaced times up to ``t_max``, from
    ``1e-4 t_max`` (flow, ``learning_rate=None``) or from one step (optax; ``t_max``
    then rounded up to a whole number of steps)."""
    n_log = max(int(n_log), 2)
    if learning_rate is None:
        t_first = 1e-4 * t_max
    else:
        t_first = learning_rate
        t_max = math.ceil(t_max / learning_rate - 1e-9) * learning_rate
    return np.concatenate([[0.0], np.geomspace(t_first, t_max, n_log - 1)])


def train(
    model,
    params,
    x,
    y,
    *,
    x_eval=None,
    optimizer: Optimizer = "gd",
    learning_rate: float | None = None,
    steps: int | None = None,
    t_max: float | None = None,
    log_times=None,
    n_log: int = DEFAULT_N_LOG,
    record_ntk: bool = True,
    record_velocity: bool = False,
    tol: float = 0.0,
    loss_normalization: LossNormalization = "mean",
    momentum: float = DEFAULT_MOMENTUM,
    solver: str = "tsit5",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    max_solver_steps: int = DEFAULT_MAX_SOLVER_STEPS,
    method: str = "structured",
    progress: bool = False,
) -> TrainResult:
    r"""Train ``model`` on ``(x, y)`` with the full batch and record f, the loss and
    the NTK at logged times.

    Args:
      model, params: a scalar-output nthexp model and its initial parameters.
      x: training inputs ``(N, D_in)``; y: targets ``(N,)``.
      x_eval: optional evaluation inputs ``(N_eval, D_in)`` (recorded, not trained on).
      optimizer: ``"gd"``, ``"momentum"``, ``"adam"`` (optax) or ``"flow"``.
      learning_rate: optax step size; step ``k`` sits at time ``k * learning_rate``.
      steps, t_max: length of optax training (one of them), or the final time of the
        flow (required for ``"flow"``).
      log_times: times at which to record (rounded to steps for optax). Default:
        ``t = 0`` and ``n_log - 1`` log-spaced times up to ``t_max``, from one step
        (optax) or from ``1e-4 t_max`` (flow).
      record_ntk: record the NTK on ``concat(x, x_eval)`` at the logged times.
      record_velocity: also record the hierarchy's kernel velocity
        :math:`-c\, O_3 \cdot r` there (``ntk_velocity``; one
        :func:`nthexp.kernels.o3_contract`, about 3 NTKs, per logged time), for
        :func:`nthexp.dynamics.trajectory_velocity`.
      tol: stopping rule; training stops once :math:`\|f(X) - Y\|_2 <` ``tol`` (that
        state is recorded as the last entry). ``0`` never stops early.
      loss_normalization: ``"mean"`` (:math:`c = 1/N`, docs/theory.md) or ``"sum"``.
      solver, rtol, atol, max_solver_steps: diffrax settings for ``"flow"``
        (``"tsit5"``, ``"dopri8"`` or the implicit ``"kvaerno5"``; PID controller).
      method: NTK method for the recorded kernels (see :func:`nthexp.kernels.ntk`).
      progress: show a tqdm progress bar (the library is otherwise silent).

    Returns:
      A :class:`TrainResult`.

    Raises:
      DivergenceError: at the first non-finite loss, naming the step and the learning
        rate; ``error.result`` keeps everything recorded before.
    """
    _check_args(optimizer, learning_rate, steps, t_max, solver, method)
    dtype = _params_dtype(params)
    x = as_array(x, dtype, "x")
    y = jnp.asarray(y, dtype=dtype)
    n = x.shape[0]
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},); got {tuple(y.shape)}")
    x_all = (
        x if x_eval is None else jnp.concatenate([x, as_array(x_eval, dtype, "x_eval")])
    )
    scale = loss_scale(loss_normalization, n)
    record_ntk = bool(record_ntk)
    common = dict(
        optimizer=optimizer,
        loss_normalization=loss_normalization,
        n=n,
        n_eval=x_all.shape[0] - n,
        record_ntk=record_ntk,
        record_velocity=bool(record_velocity),
    )

    if optimizer == "flow":
        return _train_flow(
            model,
            params,
            x,
            y,
            x_all,
            scale,
            t_max,
            log_times,
            n_log,
            tol,
            rtol,
            atol,
            solver,
            max_solver_steps,
            method,
            progress,
            common,
        )
    return _train_optax(
        model,
        params,
        x,
        y,
        x_all,
        scale,
        learning_rate,
        steps,
        t_max,
        log_times,
        n_log,
        tol,
        momentum,
        method,
        progress,
        common,
    )


def _result(
    records, params, stop_reason, lr, common, diverged_step=None, solver_steps=0
):
    n = common["n"]
    if records:
        times, steps, loss, rnorm, f_all, k, velocity = (
            list(z) for z in zip(*records, strict=True)
        )
        f_all = np.asarray(f_all)
    else:
        times, steps, loss, rnorm, k, velocity = [], [], [], [], [], []
        f_all = np.zeros((0, n + common["n_eval"]))
    return TrainResult(
        times=np.asarray(times, dtype=float),
        steps=np.asarray(steps, dtype=int),
        f_train=f_all[:, :n],
        f_eval=f_all[:, n:],
        loss=np.asarray(loss),
        residual_norm=np.asarray(rnorm),
        ntk=np.asarray(k) if common["record_ntk"] else None,
        params=params,
        optimizer=common["optimizer"],
        learning_rate=lr,
        loss_normalization=common["loss_normalization"],
        stop_reason=stop_reason,
        diverged_step=diverged_step,
        solver_steps=int(solver_steps),
        ntk_velocity=np.asarray(velocity) if common["record_velocity"] else None,
    )


def _train_optax(
    model,
    params,
    x,
    y,
    x_all,
    scale,
    lr,
    steps,
    t_max,
    log_times,
    n_log,
    tol,
    momentum,
    method,
    progress,
    common,
):
    optimizer = common["optimizer"]
    lr = float(lr)
    steps = int(math.ceil(t_max / lr - 1e-9)) if steps is None else int(steps)
    if log_times is None:
        log_times = default_log_times(steps * lr, n_log=n_log, learning_rate=lr)
    log_steps = np.unique(np.clip(np.round(np.asarray(log_times) / lr), 0, steps))
    log_steps = log_steps.astype(int)

    tx = _make_tx(optimizer, lr, momentum)
    state = tx.init(params)
    observe = functools.partial(
        _observe_jit,
        model,
        x=x,
        y=y,
        x_all=x_all,
        scale=scale,
        record_ntk=common["record_ntk"],
        record_velocity=common["record_velocity"],
        method=method,
    )
    records = []
    step = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(log_steps[-1]), desc=f"train ({optimizer})", unit="step")
    try:
        for target in log_steps:
            new_step, params, state, status = _optax_segment(
                model,
                optimizer,
                float(momentum),
                params,
                state,
                x,
                y,
                scale,
                lr,
                jnp.int32(step),
                jnp.int32(target),
                tol,
            )
            new_step, status = int(new_step), int(status)
            if bar is not None:
                bar.update(new_step - step)
            step = new_step
            loss, rnorm, f_all, k, velocity = observe(params)
            if status == 1 or not np.isfinite(float(loss)):
                message = (
                    f"training diverged: non-finite loss at step {step} "
                    f"(t = {step * lr:.6g}) with optimizer={optimizer!r} and "
                    f"learning_rate={lr:g}; lower the learning rate"
                )
                partial = _result(records, params, "diverged", lr, common, step, step)
                raise DivergenceError(message, partial)
            records.append(
                (
                    step * lr,
                    step,
                    float(loss),
                    float(rnorm),
                    np.asarray(f_all),
                    None if k is None else np.asarray(k),
                    None if velocity is None else np.asarray(velocity),
                )
            )
            if status == 2:
                return _result(records, params, "tol", lr, common, solver_steps=step)
    finally:
        if bar is not None:
            bar.close()
    return _result(records, params, "t_max", lr, common, solver_steps=step)


def _train_flow(
    model,
    params,
    x,
    y,
    x_all,
    scale,
    t_max,
    log_times,
    n_log,
    tol,
    rtol,
    atol,
    solver,
    max_steps,
    method,
    progress,
    common,
):
    t_max = float(t_max)
    if log_times is None:
        log_times = default_log_times(t_max, n_log=n_log)
    ts = jnp.asarray(np.unique(np.clip(np.asarray(log_times, dtype=float), 0, t_max)))
    out = _flow_solve(
        model,
        params,
        x,
        y,
        x_all,
        scale,
        ts,
        t_max,
        tol,
        rtol,
        atol,
        solver,
        common["record_ntk"],
        common["record_velocity"],
        method,
        int(max_steps),
        bool(progress),
    )
    ts_saved, obs, t_end, p_end, final, result, num_steps = out
    p_end = jax.tree.map(lambda a: a[0], p_end)
    ts_saved = np.asarray(ts_saved)
    keep = np.isfinite(ts_saved) & (ts_saved <= float(t_end))
    loss, rnorm, f_all, k, velocity = (
        None if a is None else np.asarray(a) for a in obs
    )
    records = [
        (
            ts_saved[i],
            -1,
            loss[i],
            rnorm[i],
            f_all[i],
            None if k is None else k[i],
            None if velocity is None else velocity[i],
        )
        for i in np.flatnonzero(keep)
    ]
    t_end = float(t_end)
    if not records or records[-1][0] < t_end:
        records.append(
            (
                t_end,
                -1,
                float(final[0]),
                float(final[1]),
                np.asarray(final[2]),
                None if final[3] is None else np.asarray(final[3]),
                None if final[4] is None else np.asarray(final[4]),
            )
        )

    finite = np.isfinite(np.asarray([r[2] for r in records]))
    if not finite.all() or not np.isfinite(float(final[0])):
        bad = int(np.argmin(finite)) if not finite.all() else len(records) - 1
        message = (
            f"gradient flow diverged: non-finite loss at t = {records[bad][0]:.6g} "
            f"(solver {solver!r}, {int(num_steps)} steps); the flow has no learning "
            f"rate: check the data scale and the initialisation"
        )
        partial = _result(
            records[:bad], p_end, "diverged", None, common, None, num_steps
        )
        raise DivergenceError(message, partial)

    if result == diffrax.RESULTS.successful:
        reason = "tol" if tol > 0 and float(final[1]) < tol else "t_max"
    elif result == diffrax.RESULTS.max_steps_reached:
        reason = "max_steps"
    else:
        reason = "tol" if float(final[1]) < tol else str(result)
    return _result(records, p_end, reason, None, common, solver_steps=num_steps)
