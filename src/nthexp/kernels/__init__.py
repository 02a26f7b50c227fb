"""Empirical and infinite-width kernels (NTK, NNGP, hierarchy kernels)."""

from nthexp.kernels._empirical import METHODS, layer_factors, ntk
from nthexp.kernels._infinite import (
    DEFAULT_QUADRATURE_NODES,
    infinite_nngp,
    infinite_ntk,
)

__all__ = [
    "DEFAULT_QUADRATURE_NODES",
    "METHODS",
    "infinite_nngp",
    "infinite_ntk",
    "layer_factors",
    "ntk",
]
