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
    DEFAULT_QUADRATURE_RULE,
    QUADRATURE_RULES,
    gaussian_expectations,
    gaussian_quadrature,
    infinite_nngp,
    infinite_ntk,
)
from nthexp.kernels._multi import compare_outputs, expand_outputs, reduce_outputs

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
    "DEFAULT_QUADRATURE_RULE",
    "QUADRATURE_RULES",
    "compare_outputs",
    "expand_outputs",
    "gaussian_expectations",
    "gaussian_quadrature",
    "reduce_outputs",
    "METHODS",
    "infinite_nngp",
    "infinite_ntk",
    "layer_factors",
    "ntk",
]
