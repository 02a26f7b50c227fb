"""Empirical and infinite-width kernels (NTK, NNGP, hierarchy kernels)."""

from nthexp.kernels._empirical import METHODS, layer_factors, ntk
from nthexp.kernels._hierarchy import (
    DEFAULT_MEMORY_FRACTION,
    MemoryPlanError,
    Plan,
    device_memory_bytes,
    o3,
    o3_contract,
    o4,
    o4_contract,
    plan,
)
from nthexp.kernels._infinite import (
    DEFAULT_QUADRATURE_NODES,
    infinite_nngp,
    infinite_ntk,
)

__all__ = [
    "DEFAULT_MEMORY_FRACTION",
    "MemoryPlanError",
    "Plan",
    "device_memory_bytes",
    "o3",
    "o3_contract",
    "o4",
    "o4_contract",
    "plan",
    "DEFAULT_QUADRATURE_NODES",
    "METHODS",
    "infinite_nngp",
    "infinite_ntk",
    "layer_factors",
    "ntk",
]
