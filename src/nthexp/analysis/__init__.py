"""Spectra, finite-width corrections with Weyl's bound, and power-law fits."""

from nthexp.analysis._fit import PowerLawFit, fit_power_law
from nthexp.analysis._spectrum import (
    Correction,
    NegativeEigenvalueError,
    Spectrum,
    correction,
    spectrum,
)

__all__ = [
    "Correction",
    "NegativeEigenvalueError",
    "PowerLawFit",
    "Spectrum",
    "correction",
    "fit_power_law",
    "spectrum",
]
