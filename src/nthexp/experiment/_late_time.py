r"""The late-time stage of a sweep point (``dynamics=late_time``): train to
convergence, compare the end of training with the hierarchy's predictions.

The last ``cfg.dynamics.n_eval`` points of the data set are evaluation points (recorded,
not trained on); the others are the training set. The network is trained from its
initialisation with :func:`nthexp.dynamics.train` (gradient flow by default) until the
residual norm falls below ``cfg.dynamics.tol``; the actual changes

.. math::
   \Delta K_2 = K_2(t_{end}) - K_2(0) \ \text{on all points}, \qquad
   \Delta f = f_{end}(x_{eval}) - f_{lin}(x_{eval}),

with :math:`f_{lin} = f_0 - P r_0` the frozen-NTK end point, are compared with
:func:`nthexp.dynamics.late_time_correction` (docs/theory.md). Each ``lt_err_*``
metric is a relative Frobenius error :math:`\|pred - actual\| / \|actual\|`:

``lt_err_dk_full``   :math:`-O_3 v + O_4 : M` (whole :math:`O_4`) against
                     :math:`\Delta K_2`
``lt_err_dk_o3``     :math:`-O_3 v` alone
``lt_err_dk_o4sym``  :math:`-O_3 v` + the :math:`O_4` term with :math:`M` symmetrised
``lt_err_df_eval``   predicted :math:`f_{end} - f_{lin}` at the evaluation points
                     against :math:`\Delta f`
``lt_err_f_linear``  frozen-NTK end point :math:`f_{lin}(x_{eval})` against the actual
                     :math:`f_{end}(x_{eval})`, relative to the actual change
                     :math:`\|f_{end} - f_0\|` at the evaluation points
``lt_err_f_full``    the same for the corrected end point :math:`f_{lin} + \text{pred.}
                     \Delta f`

and ``lt_identity_rel_err`` is :func:`nthexp.dynamics.kernel_velocity`'s ``rel_err`` at
initialisation (:math:`\dot K_2 = -c\, O_3 \cdot r_0`). Along the run (``"flow"`` and
``"gd"``), each logged time gets backward companions
``cfg.dynamics.identity_rel_step`` apart (:func:`nthexp.dynamics.stencil_log_times`)
and :func:`nthexp.dynamics.trajectory_velocity` compares :math:`\dot K_2` of the
recorded :math:`K_2(t)` with :math:`-c\, O_3 \cdot r(t)` there:
``lt_identity_rel_err_max`` is the largest per-time relative error,
``lt_identity_err_max`` the largest error relative to the run's largest velocity.
Expected scaling with the width
``n``: the first four errors of a prediction correct to order :math:`1/n` fall like
:math:`1/n` (``lt_err_dk_full``, ``lt_err_df_eval``, ``lt_err_f_linear``); those missing
a part of order :math:`1/n` stay of order one (``lt_err_dk_o3``, ``lt_err_dk_o4sym``);
``lt_err_f_full`` falls like :math:`1/n^2`.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from omegaconf import DictConfig

import nthexp as nx

log = logging.getLogger(__name__)

#: The per-run error metrics of the stage (their fits and figure: nthexp.report).
LATE_TIME_ERRORS = (
    "lt_err_dk_full",
    "lt_err_dk_o3",
    "lt_err_dk_o4sym",
    "lt_err_df_eval",
    "lt_err_f_linear",
    "lt_err_f_full",
)


def _rel(pred: np.ndarray, actual: np.ndarray) -> float:
    """``||pred - actual||_F / ||actual||_F`` (NaN when the actual change is zero)."""
    norm = float(np.linalg.norm(actual))
    if norm == 0.0:
        return float("nan")
    return float(np.linalg.norm(pred - actual)) / norm


def split(n: int, n_eval: int) -> tuple[slice, slice]:
    """Training rows (the first ``n - n_eval``) and evaluation rows (the last)."""
    return slice(0, n - n_eval), slice(n - n_eval, n)


def late_time_metrics(
    cfg: DictConfig, model, params, x, y
) -> tuple[dict, dict[str, np.ndarray], dict[str, float]]:
    r"""Run the stage; returns ``(metrics, arrays, timing)``.

    Args:
      x: ``(N, D_in)`` all points of the data set; y: ``(N,)`` their targets. The last
        ``cfg.dynamics.n_eval`` rows are the evaluation points.

    Returns:
      metrics: the ``lt_*`` scalars (module docstring), ``lt_final_residual``,
        ``lt_stop_reason``, ``lt_converged``, ``lt_t_end``, ``lt_solver_steps``,
        ``lt_dk_rel`` (:math:`\|\Delta K_2\|_F / \|K_2(0)\|_F`) and, for ``"flow"``
        and ``"gd"``, ``lt_identity_rel_err_max``, ``lt_identity_err_max``,
        ``lt_identity_n_times``.
      arrays: for ``spectra.npz``: ``lt_dk_actual`` and ``lt_dk_pred``
        ``(N, N)`` (training points first), ``lt_times`` and ``lt_residual_norm``
        ``(T,)`` (the logged training path, stencil companions included), and for
        ``"flow"``/``"gd"`` ``lt_identity_times``, ``lt_identity_rel_err_t`` and
        ``lt_identity_velocity_norm`` ``(T_check,)`` (the identity per checked time).
      timing: seconds of ``lt_train``, ``lt_predict``, ``lt_identity``.
    """
    dyn = cfg.dynamics
    n = x.shape[0]
    train_rows, eval_rows = split(n, int(dyn.n_eval))
    x_train, x_eval = x[train_rows], x[eval_rows]
    y_train = np.asarray(y, dtype=np.float64)[train_rows]
    has_eval = x_eval.shape[0] > 0
    timing = {}

    # The identity along the run needs the gradient flow (gd: to first order in the
    # step); momentum and adam move along other directions.
    along_run = dyn.optimizer in ("flow", "gd")
    log_times, base_times = None, None
    if along_run:
        lr = None if dyn.optimizer == "flow" else float(dyn.learning_rate)
        base_times = nx.dynamics.default_log_times(
            float(dyn.t_max), n_log=int(dyn.n_log), learning_rate=lr
        )
        log_times = nx.dynamics.stencil_log_times(
            base_times, rel_step=float(dyn.identity_rel_step), min_step=lr or 0.0
        )

    tic = time.perf_counter()
    run = nx.dynamics.train(
        model,
        params,
        x_train,
        y_train,
        x_eval=x_eval if has_eval else None,
        optimizer=dyn.optimizer,
        learning_rate=dyn.learning_rate,
        t_max=float(dyn.t_max),
        log_times=log_times,
        n_log=int(dyn.n_log),
        record_velocity=along_run,
        tol=float(dyn.tol),
        loss_normalization=dyn.loss_normalization,
        solver=dyn.solver,
        rtol=float(dyn.rtol),
        atol=float(dyn.atol),
        max_solver_steps=int(dyn.max_solver_steps),
        method=cfg.kernel.method,
    )
    timing["lt_train"] = time.perf_counter() - tic
    final_residual = float(run.residual_norm[-1])
    converged = run.stop_reason == "tol"
    if not converged:
        log.warning(
            "late_time: training stopped by %r with residual norm %.3g (tol %g); the "
            "errors below compare with an unconverged end point: raise "
            "dynamics.t_max or dynamics.max_solver_steps",
            run.stop_reason,
            final_residual,
            dyn.tol,
        )

    tic = time.perf_counter()
    pred = nx.dynamics.late_time_correction(
        model,
        params,
        x_train,
        y_train,
        x_eval if has_eval else None,
        method=cfg.kernel.method,
        loss_normalization=dyn.loss_normalization,
        memory_budget=cfg.kernel.memory_budget,
    )
    timing["lt_predict"] = time.perf_counter() - tic

    dk = np.asarray(run.ntk[-1] - run.ntk[0], dtype=np.float64)
    metrics = {
        "lt_err_dk_full": _rel(pred.dk, dk),
        "lt_err_dk_o3": _rel(pred.dk_o3, dk),
        "lt_err_dk_o4sym": _rel(pred.dk_o3 + pred.dk_o4_sym, dk),
        "lt_dk_rel": float(np.linalg.norm(dk) / np.linalg.norm(run.ntk[0])),
    }
    if has_eval:
        f_end = np.asarray(run.f_eval[-1], dtype=np.float64)
        f0 = pred.f0[eval_rows]
        f_lin = pred.f_end_linear[eval_rows]
        metrics["lt_err_df_eval"] = _rel(pred.df_end[eval_rows], f_end - f_lin)
        metrics["lt_err_f_linear"] = _rel(f_lin - f0, f_end - f0)
        metrics["lt_err_f_full"] = _rel(pred.f_end[eval_rows] - f0, f_end - f0)

    tic = time.perf_counter()
    velocity = nx.dynamics.kernel_velocity(
        model,
        params,
        x_train,
        y_train,
        x_eval if has_eval else None,
        method=cfg.kernel.method,
        loss_normalization=dyn.loss_normalization,
    )
    path = {}
    if along_run:
        path = _identity_along_run(run, base_times)
    timing["lt_identity"] = time.perf_counter() - tic

    metrics.update(
        {
            "lt_identity_rel_err": float(velocity.rel_err),
            **path.pop("metrics", {}),
            "lt_final_residual": final_residual,
            "lt_stop_reason": run.stop_reason,
            "lt_converged": converged,
            "lt_t_end": float(run.times[-1]),
            "lt_solver_steps": int(run.solver_steps),
            "lt_n_train": int(x_train.shape[0]),
            "lt_n_eval": int(x_eval.shape[0]),
        }
    )
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not np.isfinite(v)]
    if bad:
        raise FloatingPointError(
            f"late_time: non-finite {bad} (the actual change is zero or training "
            f"diverged); nothing was written"
        )
    arrays = {
        "lt_dk_actual": dk,
        "lt_dk_pred": np.asarray(pred.dk, dtype=np.float64),
        "lt_times": np.asarray(run.times, dtype=np.float64),
        "lt_residual_norm": np.asarray(run.residual_norm, dtype=np.float64),
        **path,
    }
    return metrics, arrays, timing


def _identity_along_run(run, base_times: np.ndarray) -> dict:
    """The identity at each base logged time that training reached (the appended end
    point of a ``tol`` stop has no stencil); ``{"metrics": {...}, arrays...}``."""
    reached = base_times[base_times <= run.times[-1]]
    check = nx.dynamics.trajectory_velocity(run, at=reached)
    err_max = float(check.abs_err.max() / check.velocity_norm.max())
    worst = int(np.argmax(check.rel_err))
    log.info(
        "late_time: identity dK2/dt = -c O3.r along the run at %d logged times: "
        "largest error %.3g of the largest |dK2/dt| (%.3g); per time, the largest "
        "relative error is %.3g at t = %.4g, where the kernel has nearly stopped "
        "(|dK2/dt| = %.3g) and rounding dominates",
        check.times.shape[0],
        err_max,
        check.velocity_norm.max(),
        check.rel_err_max,
        check.times[worst],
        check.velocity_norm[worst],
    )
    return {
        "metrics": {
            "lt_identity_rel_err_max": check.rel_err_max,
            "lt_identity_err_max": err_max,
            "lt_identity_n_times": int(check.times.shape[0]),
        },
        "lt_identity_times": check.times,
        "lt_identity_rel_err_t": check.rel_err,
        "lt_identity_velocity_norm": check.velocity_norm,
    }
