"""Training dynamics: optax and gradient-flow training with the NTK recorded, and
the predictions of the Neural Tangent Hierarchy (linearised, truncated at O3, and the
end-of-training correction to order 1/width)."""

from nthexp.dynamics._predict import (
    DEFAULT_STENCIL_POINTS,
    DEFAULT_STENCIL_REL_STEP,
    KernelVelocity,
    LateTimeCorrection,
    Prediction,
    TrajectoryVelocity,
    kernel_velocity,
    late_time_correction,
    late_time_weights,
    linearized,
    stencil_log_times,
    trajectory_velocity,
    truncated_o3,
)
from nthexp.dynamics._train import (
    DEFAULT_ATOL,
    DEFAULT_N_LOG,
    DEFAULT_RTOL,
    LOSS_NORMALIZATIONS,
    OPTIMIZERS,
    SOLVERS,
    DivergenceError,
    TrainResult,
    default_log_times,
    loss_scale,
    train,
)

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_N_LOG",
    "DEFAULT_RTOL",
    "DEFAULT_STENCIL_POINTS",
    "DEFAULT_STENCIL_REL_STEP",
    "LOSS_NORMALIZATIONS",
    "OPTIMIZERS",
    "SOLVERS",
    "DivergenceError",
    "KernelVelocity",
    "LateTimeCorrection",
    "Prediction",
    "TrainResult",
    "TrajectoryVelocity",
    "default_log_times",
    "kernel_velocity",
    "late_time_correction",
    "late_time_weights",
    "linearized",
    "loss_scale",
    "stencil_log_times",
    "train",
    "trajectory_velocity",
    "truncated_o3",
]
