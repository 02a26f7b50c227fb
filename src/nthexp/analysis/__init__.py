"""Spectra, eigenspace alignment, corrections, Weyl's bound and the budget tool,
power-law fits, sweep trends and Lyapunov exponents."""

from nthexp.analysis._bound import (
    Architecture,
    BoundLaws,
    certified_bound,
    digits_relu_laws,
    mlp_param_count,
    optimal_architecture,
    weyl_bound,
)
from nthexp.analysis._eig import LAMBDA_MIN_METHODS, LambdaMin, lambda_min
from nthexp.analysis._eigenspace import (
    DEFAULT_GAP_RTOL,
    EigenspaceAlignment,
    eigenspace_alignment,
)
from nthexp.analysis._fit import CurvatureCheck, PowerLawFit, fit_power_law
from nthexp.analysis._lyapunov import (
    LogNormVariance,
    LyapunovSpectrum,
    NoSurvivorsError,
    log_norm_variance,
    lyapunov_closed_form,
    lyapunov_exponents,
    relu_top_exponent,
)
from nthexp.analysis._spectrum import (
    Correction,
    NegativeEigenvalueError,
    Spectrum,
    correction,
    spectrum,
)
from nthexp.analysis._sweep import OutlierBulk, depth_trends, outlier_bulk, weyl_table

__all__ = [
    "Architecture",
    "BoundLaws",
    "Correction",
    "DEFAULT_GAP_RTOL",
    "EigenspaceAlignment",
    "LAMBDA_MIN_METHODS",
    "LambdaMin",
    "CurvatureCheck",
    "LogNormVariance",
    "LyapunovSpectrum",
    "NoSurvivorsError",
    "NegativeEigenvalueError",
    "OutlierBulk",
    "PowerLawFit",
    "Spectrum",
    "certified_bound",
    "correction",
    "depth_trends",
    "digits_relu_laws",
    "eigenspace_alignment",
    "fit_power_law",
    "lambda_min",
    "log_norm_variance",
    "lyapunov_closed_form",
    "lyapunov_exponents",
    "mlp_param_count",
    "optimal_architecture",
    "outlier_bulk",
    "relu_top_exponent",
    "spectrum",
    "weyl_bound",
    "weyl_table",
]
