"""Dtype checks shared by the library (which never flips a global JAX flag)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

DTYPES = ("float64", "float32")


def resolve_dtype(dtype) -> np.dtype:
    """Return the numpy dtype for ``dtype``; refuse float64 while jax x64 is off.

    The library never enables x64 itself (that is a process-wide switch); the ``nthexp``
    app does it at start from its precision config.
    """
    if dtype is None:
        dtype = "float64"
    dt = np.dtype(dtype)
    if dt.name not in DTYPES:
        raise ValueError(f"dtype={dt.name!r} is not supported; allowed: {list(DTYPES)}")
    if dt == np.float64 and not jax.config.read("jax_enable_x64"):
        raise ValueError(
            "dtype='float64' requested but jax x64 mode is off; enable it with "
            "jax.config.update('jax_enable_x64', True) at program start "
            "(or set JAX_ENABLE_X64=1), or pass dtype='float32'"
        )
    return dt


def as_array(x, dtype, name: str = "x") -> jax.Array:
    """Convert input data to a 2-d array of ``dtype``, checking its rank."""
    x = jnp.asarray(x, dtype=dtype)
    if x.ndim != 2:
        raise ValueError(
            f"{name} must have shape (N, D_in); got shape {tuple(x.shape)}"
        )
    if x.shape[0] < 1:
        raise ValueError(
            f"{name} is empty (shape {tuple(x.shape)}); need at least 1 row"
        )
    return x
