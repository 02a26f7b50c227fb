"""nthexp: exact empirical and infinite-width NTKs and the Neural Tangent Hierarchy."""

from nthexp import analysis, data, dynamics, kernels, models

__version__ = "0.1.0"

__all__ = ["__version__", "analysis", "data", "dynamics", "kernels", "models"]
