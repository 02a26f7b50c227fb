"""Training dynamics: optax and gradient-flow training with the NTK recorded, and
the predictions of the Neural Tangent Hierarchy (linearised, truncated at O3, and the
end-of-training correction to order 1/width)."""

from nthexp.dynamics._predict import (
    KernelVelocity,
    LateTimeCorrection,
    Prediction,
    kernel_velocity,
    late_time_correction,
    late_time_weights,
    linearized,
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
    loss_scale,
    train,
)

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_N_LOG",
    "DEFAULT_RTOL",
    "LOSS_NORMALIZATIONS",
    "OPTIMIZERS",
    "SOLVERS",
    "DivergenceError",
    "KernelVelocity",
    "LateTimeCorrection",
    "Prediction",
    "TrainResult",
    "kernel_velocity",
    "late_time_correction",
    "late_time_weights",
    "linearized",
    "loss_scale",
    "train",
    "truncated_o3",
]
