"""Functional entry points: ``init``, ``apply`` and presets."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nthexp._config import resolve_dtype
from nthexp.models._modules import MLP


def init(model, key: jax.Array, d_in: int, dtype="float64") -> dict:
    """Draw the parameters of ``model`` for inputs of dimension ``d_in``.

    Returns the ``params`` pytree (weights ``weight`` of shape ``(fan_in, fan_out)``
    and biases ``bias``), in ``dtype`` (float64 by default, which needs jax x64).
    """
    if isinstance(d_in, bool) or not isinstance(d_in, (int, np.integer)) or d_in < 1:
        raise ValueError(f"d_in={d_in!r} is not allowed; must be an integer >= 1")
    dt = resolve_dtype(dtype)
    return _init(model, key, int(d_in), dt.name)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _init(model, key, d_in, dtype):
    return model.init(key, jnp.zeros((1, d_in), dtype=dtype))["params"]


def apply(model, params: dict, x: jax.Array) -> jax.Array:
    """Network output on ``x`` of shape ``(N, D_in)``: ``(N,)`` or ``(N, n_out)``."""
    return model.apply({"params": params}, x)


def param_count(params) -> int:
    """Number of scalar parameters P."""
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def narrow_deep(width: int = 16, depth: int = 32, **kwargs) -> MLP:
    """A ReLU MLP whose depth/width ratio is not small (default beta = 2)."""
    return MLP(width=width, depth=depth, **kwargs)
