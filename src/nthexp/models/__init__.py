"""Networks (Flax modules) and their initialisation and application."""

from nthexp.models._api import apply, init, narrow_deep, param_count
from nthexp.models._modules import (
    ACTIVATIONS,
    ALPHA_RULES,
    MLP,
    PARAMETERIZATIONS,
    NTKDense,
    ResNet,
)

__all__ = [
    "ACTIVATIONS",
    "ALPHA_RULES",
    "MLP",
    "NTKDense",
    "PARAMETERIZATIONS",
    "ResNet",
    "apply",
    "init",
    "narrow_deep",
    "param_count",
]
