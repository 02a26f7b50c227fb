r"""Flax modules for the networks whose kernels nthexp computes.

Every dense layer is an :class:`NTKDense`. Besides its output it records, for the
structured kernels of :mod:`nthexp.kernels`, two things:

* the layer input scaled by the weight factor (``ntk_inputs`` collection), with a
  column of the bias factor appended when the layer has a bias, so that the Gram
  matrix of the parameter gradients of this layer factorises as
  ``<dz/dtheta_a, dz/dtheta_b> = (h_a . h_b)``;
* a zero perturbation on its output (``perturbations`` collection, Flax's
  ``Module.perturb``) whose gradient is the backward vector ``delta = df/dz``.

Parameterisations (weights and biases are called ``weight`` and ``bias``):

* ``"ntk"``: :math:`z = \sigma_w / \sqrt{n_{in}}\, h W + \sigma_b b`, with
  :math:`W, b \sim N(0, 1)` (Jacot et al. 2018, eq. (1)).
* ``"standard"``: :math:`z = h W + b` with :math:`W \sim N(0, \sigma_w^2 / n_{in})`
  and :math:`b \sim N(0, \sigma_b^2)`. Same function at initialisation, different
  gradients and therefore a different NTK.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf

Parameterization = Literal["ntk", "standard"]
PARAMETERIZATIONS = ("ntk", "standard")

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "erf": erf,
    "tanh": jnp.tanh,
    "gelu": lambda z: jax.nn.gelu(z, approximate=False),
    "softplus": jax.nn.softplus,
    "identity": lambda z: z,
}

ALPHA_RULES = ("1", "1/sqrt(depth)", "1/depth")

#: Points where a registered activation's derivative must be finite: the NTK needs
#: :math:`\phi'` (the kink of relu at 0 gets JAX's one-sided value 0, which is fine
#: because a kink has Gaussian measure zero; an infinite or missing slope is not).
DERIVATIVE_PROBES = (-3.0, 0.0, 3.0)


@functools.cache
def _derivative_problem(name: str, phi: Callable) -> str | None:
    """Why ``phi`` has no derivative usable by the NTK, or None (cached)."""
    try:
        with jax.ensure_compile_time_eval():
            t = jnp.asarray(DERIVATIVE_PROBES)
            slopes = np.asarray(jax.vmap(jax.grad(phi))(t))
    except Exception as exc:  # any failure of autodiff means "no derivative"
        return f"jax.grad of it fails ({type(exc).__name__})"
    bad = [
        f"{d} at u={p:g}"
        for p, d in zip(DERIVATIVE_PROBES, slopes, strict=True)
        if not np.isfinite(d)
    ]
    return f"its derivative is {', '.join(bad)}" if bad else None


def check_activation(name) -> None:
    """Raise ``ValueError`` unless ``name`` is registered with a finite derivative."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(
            f"activation={name!r} is unknown; allowed: {sorted(ACTIVATIONS)}"
        )
    problem = _derivative_problem(name, ACTIVATIONS[name])
    if problem is not None:
        usable = sorted(
            a for a, f in ACTIVATIONS.items() if _derivative_problem(a, f) is None
        )
        raise ValueError(
            f"activation={name!r} is not allowed for the NTK, which needs a finite "
            f"derivative, and {problem}; allowed: {usable}"
        )


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(
            f"{name}={value!r} is not allowed; must be an integer >= {low}"
        )


def _check_std(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(
            f"{name}={value!r} is not allowed; must be a finite number >= 0"
        )
    if not math.isfinite(value):
        raise ValueError(
            f"{name}={value!r} is not allowed; must be a finite number >= 0"
        )


def _check_common(m) -> None:
    _check_int("width", m.width, 1)
    check_activation(m.activation)
    if m.parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization={m.parameterization!r} is unknown; "
            f"allowed: {list(PARAMETERIZATIONS)}"
        )
    _check_std("w_std", m.w_std)
    _check_std("b_std", m.b_std)
    if m.readout_w_std is not None:
        _check_std("readout_w_std", m.readout_w_std)
    if m.readout_b_std is not None:
        _check_std("readout_b_std", m.readout_b_std)
    _check_int("n_out", m.n_out, 1)


class NTKDense(nn.Module):
    """Dense layer ``(..., n_in) -> (..., features)`` (NTK or standard param.)."""

    features: int
    w_std: float
    b_std: float
    parameterization: Parameterization = "ntk"
    use_bias: bool = True

    def scales(self, fan_in: int) -> tuple[float, float]:
        """Factors ``(s_w, s_b)`` of ``h @ weight`` and ``bias`` in the forward pass."""
        if self.parameterization == "ntk":
            return self.w_std / math.sqrt(fan_in), self.b_std
        return 1.0, 1.0

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        fan_in = h.shape[-1]
        s_w, s_b = self.scales(fan_in)
        if self.parameterization == "ntk":
            w_init, b_init = nn.initializers.normal(1.0), nn.initializers.normal(1.0)
        else:
            w_init = nn.initializers.normal(self.w_std / math.sqrt(fan_in))
            b_init = nn.initializers.normal(self.b_std)
        weight = self.param("weight", w_init, (fan_in, self.features), h.dtype)
        z = s_w * (h @ weight)
        ntk_input = s_w * h
        if self.use_bias:
            bias = self.param("bias", b_init, (self.features,), h.dtype)
            z = z + s_b * bias.reshape((1,) * (z.ndim - 1) + bias.shape)
            ones = jnp.full(h.shape[:-1] + (1,), s_b, dtype=h.dtype)
            ntk_input = jnp.concatenate([ntk_input, ones], axis=-1)
        self.sow("ntk_inputs", "h", ntk_input)
        return self.perturb("z", z)


class MLP(nn.Module):
    r"""Fully connected network: ``depth`` hidden layers ``Dense(width) -> activation``,
    then a dense readout with ``n_out`` outputs (no activation after it).

    Input ``(N, D_in)``; output ``(N,)`` when ``n_out == 1``, else ``(N, n_out)``.
    ``depth = 0`` is a linear model.
    """

    width: int
    depth: int
    activation: str = "relu"
    w_std: float = math.sqrt(2.0)
    b_std: float = 0.0
    parameterization: Parameterization = "ntk"
    use_bias: bool = True
    n_out: int = 1
    readout_w_std: float | None = None
    readout_b_std: float | None = None

    def __post_init__(self):
        _check_common(self)
        _check_int("depth", self.depth, 0)
        super().__post_init__()

    @property
    def readout_stds(self) -> tuple[float, float]:
        w = self.w_std if self.readout_w_std is None else self.readout_w_std
        b = self.b_std if self.readout_b_std is None else self.readout_b_std
        return w, b

    def _dense(self, features: int, name: str, readout: bool = False) -> NTKDense:
        w_std, b_std = self.readout_stds if readout else (self.w_std, self.b_std)
        return NTKDense(
            features, w_std, b_std, self.parameterization, self.use_bias, name=name
        )

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        phi = ACTIVATIONS[self.activation]
        h = x
        for layer in range(self.depth):
            h = phi(self._dense(self.width, f"dense_{layer}")(h))
        out = self._dense(self.n_out, "readout", readout=True)(h)
        return out[..., 0] if self.n_out == 1 else out


class ResNet(MLP):
    r"""Fully connected residual network.

    ``Dense(width)`` input layer, ``depth`` residual blocks
    :math:`h \leftarrow h + \alpha\, \mathrm{branch}(h)` with
    ``branch = activation -> Dense(width)`` (repeated ``branch_layers`` times), and a
    dense readout applied directly to the last block's output (no activation before it).
    ``alpha`` is a number or one of the rules ``"1"``, ``"1/sqrt(depth)"``,
    ``"1/depth"``.
    """

    alpha: float | str = 1.0
    branch_layers: int = 1

    def __post_init__(self):
        _check_common(self)
        if (
            isinstance(self.depth, bool)
            or not isinstance(self.depth, int)
            or self.depth < 1
        ):
            raise ValueError(
                f"depth={self.depth!r} is not allowed for a ResNet (depth counts its "
                f"residual blocks; an MLP with depth=0 is the linear model); "
                f"must be an integer >= 1"
            )
        _check_int("branch_layers", self.branch_layers, 1)
        _ = self.alpha_value
        nn.Module.__post_init__(self)

    @property
    def alpha_value(self) -> float:
        """The branch scale as a number (rules resolved against ``depth``)."""
        a = self.alpha
        if isinstance(a, str):
            if a not in ALPHA_RULES:
                try:
                    a = float(a)
                except ValueError:
                    raise ValueError(
                        f"alpha={self.alpha!r} is unknown; allowed: a number >= 0 or "
                        f"one of {list(ALPHA_RULES)}"
                    ) from None
            else:
                return {
                    "1": 1.0,
                    "1/sqrt(depth)": 1.0 / math.sqrt(self.depth),
                    "1/depth": 1.0 / self.depth,
                }[a]
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not a >= 0:
            raise ValueError(
                f"alpha={self.alpha!r} is not allowed; allowed: a number >= 0 or "
                f"one of {list(ALPHA_RULES)}"
            )
        return float(a)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        phi = ACTIVATIONS[self.activation]
        alpha = self.alpha_value
        h = self._dense(self.width, "dense_in")(x)
        for block in range(self.depth):
            branch = h
            for sub in range(self.branch_layers):
                branch = self._dense(self.width, f"block_{block}_{sub}")(phi(branch))
            h = h + alpha * branch
        out = self._dense(self.n_out, "readout", readout=True)(h)
        return out[..., 0] if self.n_out == 1 else out
