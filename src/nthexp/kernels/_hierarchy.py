r"""Higher kernels of the Neural Tangent Hierarchy and their contractions.

Definitions (Huang and Yau 2020, eq. (2.6); Dyer and Gur-Ari 2020, the :math:`O_3,
O_4` tensors), with :math:`g_a = \nabla_\theta f(x_a)` and :math:`K_2 = \Theta`:

.. math::
   O_3[a, b, c] = \langle \nabla_\theta K_2[a, b],\, g_c \rangle, \qquad
   O_4[a, b, c, d] = \langle \nabla_\theta O_3[a, b, c],\, g_d \rangle .

:math:`O_3` is the derivative of :math:`K_2[a, b]` along :math:`g_c`; :math:`O_4` is
the derivative of :math:`O_3[a, b, c]` (in which :math:`g_c` itself depends on
:math:`\theta`) along :math:`g_d`. Both are symmetric in their first two indices only;
:math:`O_4` is not symmetric in its last two.

Methods (:data:`Method`), both exact in exact arithmetic:

``"jacobian"``
    Forward-mode derivatives of the Jacobian NTK :math:`J J^T` along per-example
    gradients from reverse mode. Time ``O(N^3 P)`` for :math:`O_3`, ``O(N^4 P)`` for
    :math:`O_4`; memory ``N P`` per chunk item. The reference.

``"structured"``
    Forward-mode derivatives of the structured NTK (sum over dense layers of products
    of Gram matrices of scaled inputs and backward vectors); the tangents
    :math:`g_c` are assembled per layer as outer products
    :math:`\tilde h^l_c \otimes \delta^l_c`. Time
    ``O(N^2 L n^2 + N^3 L n)`` for :math:`O_3` and ``O(N^3 L n^2 + N^4 L n)`` for
    :math:`O_4` on an MLP of depth ``L`` and width ``n``; the ``N x P`` Jacobian is
    never formed (at most ``chunk x P`` tangents are).

Contractions never form the tensors: :math:`\sum_c O_3[a, b, c] v_c` is the
derivative of :math:`K_2[a, b]` along the single direction :math:`J^T v` (one
reverse pass gives it), and :math:`\sum_{cd} O_4[a, b, c, d] v_c w_d` is the derivative
along :math:`J^T w` of that contraction with :math:`J(\theta)^T v` inside.

The trailing index of :math:`O_3` (the pair of trailing indices of :math:`O_4`) is
computed in chunks whose size comes from :func:`plan`; each chunk is spread over all
local devices with :mod:`jax.sharding`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as PS

from nthexp._config import as_array
from nthexp.kernels._empirical import (
    METHODS,
    _ntk_jacobian,
    _ntk_structured,
    _params_dtype,
    layer_factors,
)

Method = Literal["structured", "jacobian"]

#: Fraction of the device's memory that a hierarchy kernel may plan to use when no
#: budget is given (leaves room for XLA's own buffers and the caller's arrays).
DEFAULT_MEMORY_FRACTION = 0.4


class MemoryPlanError(ValueError):
    """Raised before anything is compiled when a request cannot fit the budget."""


# ----------------------------------------------------------------------------------
# Building blocks: K2(theta) and per-example gradients as parameter pytrees.
# ----------------------------------------------------------------------------------


def _k2_fn(model, x, method):
    fn = _ntk_structured if method == "structured" else _ntk_jacobian
    return lambda theta: fn(model, theta, x, None)[0, 0]


def _structured_grads(model, theta, xc):
    """Per-example gradients ``g_c`` as a pytree with a leading ``C`` axis, assembled
    from the layer factors: weight ``h_c (x) delta_c``, bias ``s_b delta_c``."""
    flat = {}
    for path, (h, delta) in layer_factors(model, theta, xc).items():
        layer = theta
        for key in path:
            layer = layer[key]
        n_in = layer["weight"].shape[0]
        d = delta[0]  # (C, n_out), scalar output
        flat[path + ("weight",)] = h[:, :n_in, None] * d[:, None, :]
        if "bias" in layer:
            flat[path + ("bias",)] = h[:, n_in, None] * d
    return traverse_util.unflatten_dict(flat)


def _jacobian_grads(model, theta, xc):
    def grad_one(xi):
        return jax.grad(lambda p: model.apply({"params": p}, xi[None])[0])(theta)

    return jax.vmap(grad_one)(xc)


def _grads_fn(method):
    return _structured_grads if method == "structured" else _jacobian_grads


def _first(tree):
    return jax.tree.map(lambda a: a[0], tree)


def _o3_columns(model, params, x, xc, method):
    """``(C, N, N)``: ``O3[:, :, c]`` for the inputs ``xc``."""
    k2 = _k2_fn(model, x, method)
    tangents = _grads_fn(method)(model, params, xc)
    return jax.vmap(lambda t: jax.jvp(k2, (params,), (t,))[1])(tangents)


def _o4_columns(model, params, x, xc, xd, method):
    """``(C, N, N)``: ``O4[:, :, c_i, d_i]`` for the pairs ``(xc[i], xd[i])``."""
    k2 = _k2_fn(model, x, method)
    grads = _grads_fn(method)

    def o3_column(theta, xci):
        g_c = _first(grads(model, theta, xci[None]))
        return jax.jvp(k2, (theta,), (g_c,))[1]

    tangents = grads(model, params, xd)

    def one(xci, t):
        return jax.jvp(lambda th: o3_column(th, xci), (params,), (t,))[1]

    return jax.vmap(one)(xc, tangents)


@functools.partial(jax.jit, static_argnames=("model", "method"))
def _o3_chunk(model, params, x, xc, method):
    with jax.default_matmul_precision("highest"):
        return _o3_columns(model, params, x, xc, method)


@functools.partial(jax.jit, static_argnames=("model", "method"))
def _o4_chunk(model, params, x, xc, xd, method):
    with jax.default_matmul_precision("highest"):
        return _o4_columns(model, params, x, xc, xd, method)


# ----------------------------------------------------------------------------------
# Memory planning.
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a hierarchy kernel is chunked, and what it is expected to cost.

    ``chunk`` items of the trailing index (pairs of trailing indices for ``O4``) are
    computed at once; ``peak_bytes`` is the planner's estimate of the peak: the output,
    the fixed inputs and one chunk's working set.
    """

    order: int
    n: int
    chunk: int
    n_chunks: int
    output_bytes: int
    chunk_bytes: int
    peak_bytes: int
    budget_bytes: int
    n_devices: int

    def describe(self) -> str:
        gib = 2.0**30
        return (
            f"O{self.order} with N={self.n}: {self.n_chunks} chunk(s) of {self.chunk} "
            f"on {self.n_devices} device(s); estimated peak "
            f"{self.peak_bytes / gib:.3f} GiB "
            f"(output {self.output_bytes / gib:.3f} GiB) of a "
            f"{self.budget_bytes / gib:.3f} GiB budget"
        )


def device_memory_bytes(device=None) -> int:
    """Memory of ``device`` (the first local device by default): the allocator's limit
    on accelerators, physical memory on the CPU."""
    device = jax.local_devices()[0] if device is None else device
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - CPU backends may not implement memory_stats
        stats = None
    if stats is not None and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _sizes(params) -> tuple[int, int, int]:
    """(P, sum of layer input+output widths, number of dense layers)."""
    flat = traverse_util.flatten_dict(params)
    p = sum(int(np.prod(v.shape)) for v in flat.values())
    widths, layers = 0, 0
    for key, v in flat.items():
        if key[-1] == "weight":
            widths += v.shape[0] + 1 + v.shape[1]
            layers += 1
    return p, widths, layers


def _item_bytes(
    order: int,
    n: int,
    p: int,
    widths: int,
    layers: int,
    itemsize: int,
    method: str = "structured",
):
    """Working set of one chunk item: its tangent (P), the forward-mode activations of
    the structured NTK on N inputs (N x widths) and the tangents of the per-layer Gram
    matrices (2 N^2 per layer). Calibrated against XLA's compiled memory analysis of
    the chunk functions on CPU (within 0.7x-1.4x for MLPs of width 32-512, depth 2-8,
    N 32-128); an O4 item costs about 3.5 O3 items."""
    first = p + n * widths + 2 * n * n * layers
    if method == "jacobian":
        first += 3 * n * p  # the reference forms J (N x P) and its tangent per item
    return int(itemsize * (first if order == 3 else 3.5 * first))


def plan(
    order: int,
    n: int,
    params,
    *,
    memory_budget: int | None = None,
    n_items: int | None = None,
    method: Method = "structured",
) -> Plan:
    """Chunk size and peak-memory estimate for ``O3`` (``order=3``) or ``O4``.

    Raises :class:`MemoryPlanError` (before anything is compiled) when the output plus
    one chunk does not fit ``memory_budget`` bytes (default: ``DEFAULT_MEMORY_FRACTION``
    of the device memory), naming the bytes needed, the largest N that fits and the
    options.
    """
    if order not in (3, 4):
        raise ValueError(f"order={order!r} is not allowed; allowed: 3, 4")
    itemsize = _params_dtype(params).itemsize
    p, widths, layers = _sizes(params)
    n_dev = len(jax.local_devices())
    budget = memory_budget
    if budget is None:
        budget = int(DEFAULT_MEMORY_FRACTION * device_memory_bytes())
    if budget <= 0:
        raise ValueError(f"memory_budget={memory_budget!r} is not allowed; must be > 0")
    items = n_items if n_items is not None else n ** (order - 2)

    def need(n_, chunk):
        out = itemsize * n_**order
        fixed = itemsize * (p + n_ * widths)
        return out, fixed + chunk * _item_bytes(
            order, n_, p, widths, layers, itemsize, method
        )

    out, rest = need(n, n_dev)
    if out + rest > budget:
        largest = n
        while largest > 1 and sum(need(largest, n_dev)) > budget:
            largest = int(largest * 0.9)
        gib = 2.0**30
        raise MemoryPlanError(
            f"O{order} with N={n} needs at least {(out + rest) / gib:.2f} GiB (output "
            f"{out / gib:.2f} GiB) but memory_budget is {budget / gib:.2f} GiB; the "
            f"largest N that fits is about {largest}. Options: raise "
            f"kernel.memory_budget, use fewer inputs, use dtype float32, or use "
            f"o{order}_contract which never forms the tensor"
        )
    per_item = _item_bytes(order, n, p, widths, layers, itemsize, method)
    chunk = (budget - out - itemsize * (p + n * widths)) // per_item
    chunk = max(n_dev, min(int(chunk), items))
    chunk = math.ceil(chunk / n_dev) * n_dev
    n_chunks = math.ceil(items / chunk)
    chunk = math.ceil(math.ceil(items / n_chunks) / n_dev) * n_dev  # balance chunks
    out, peak = need(n, chunk)
    return Plan(
        order, n, chunk, n_chunks, out, chunk * per_item, out + peak, budget, n_dev
    )


# ----------------------------------------------------------------------------------
# Public functions.
# ----------------------------------------------------------------------------------


def _check(model, params, x, method, name):
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; allowed: {list(METHODS)}")
    if getattr(model, "n_out", 1) != 1:
        raise NotImplementedError(
            f"{name} is implemented for scalar-output networks; got n_out={model.n_out}"
        )
    x = as_array(x, _params_dtype(params), "x")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least N=2 inputs; got N={x.shape[0]}")
    return x


def _sharded(*arrays):
    """Place arrays with their leading (chunk) axis spread over all local devices."""
    devices = jax.local_devices()
    if len(devices) == 1:
        return arrays
    sharding = NamedSharding(Mesh(np.array(devices), ("chunk",)), PS("chunk"))
    return tuple(jax.device_put(a, sharding) for a in arrays)


def o3(
    model,
    params,
    x,
    method: Method = "structured",
    *,
    memory_budget: int | None = None,
    chunk_size: int | None = None,
) -> jax.Array:
    """Third kernel of the hierarchy on ``x``.

    Args:
      model, params: a scalar-output nthexp model and its parameters.
      x: inputs ``(N, D_in)``, ``N >= 2``.
      method: ``"structured"`` (default) or ``"jacobian"`` (reference).
      memory_budget: bytes the computation may plan for (default: a fraction of the
        device memory); the request is refused before compiling if it cannot fit.
      chunk_size: override the planned number of trailing indices per chunk.

    Returns:
      ``o3`` of shape ``(N, N, N)``, ``o3[a, b, c] = <grad K2[a, b], g_c>``; symmetric
      in ``(a, b)``, zero mean over initialisations, not PSD.
    """
    x = _check(model, params, x, method, "o3")
    n = x.shape[0]
    p = plan(3, n, params, memory_budget=memory_budget, method=method)
    chunk = p.chunk if chunk_size is None else int(chunk_size)
    columns = []
    for start in range(0, n, chunk):
        idx = np.arange(start, start + chunk) % n  # pad the last chunk by wrapping
        (xc,) = _sharded(x[idx])
        columns.append(_o3_chunk(model, params, x, xc, method)[: min(chunk, n - start)])
    return jnp.moveaxis(jnp.concatenate(columns), 0, -1)


def o4(
    model,
    params,
    x,
    method: Method = "structured",
    *,
    memory_budget: int | None = None,
    chunk_size: int | None = None,
) -> jax.Array:
    """Fourth kernel of the hierarchy on ``x``.

    Returns:
      ``o4`` of shape ``(N, N, N, N)``, ``o4[a, b, c, d]`` the derivative of
      ``o3[a, b, c]`` along ``g_d``; symmetric in ``(a, b)``, not in ``(c, d)``.
      Chunked over the ``N^2`` pairs ``(c, d)``; see :func:`o3` for the arguments.
    """
    x = _check(model, params, x, method, "o4")
    n = x.shape[0]
    p = plan(4, n, params, memory_budget=memory_budget, method=method)
    chunk = p.chunk if chunk_size is None else int(chunk_size)
    c_all, d_all = np.divmod(np.arange(n * n), n)
    columns = []
    for start in range(0, n * n, chunk):
        idx = np.arange(start, start + chunk) % (n * n)
        xc, xd = _sharded(x[c_all[idx]], x[d_all[idx]])
        block = _o4_chunk(model, params, x, xc, xd, method)
        columns.append(block[: min(chunk, n * n - start)])
    return jnp.moveaxis(jnp.concatenate(columns), 0, -1).reshape(n, n, n, n)


def _direction(model, params, x, v):
    """``J(params)^T v`` as a parameter pytree (one reverse pass)."""
    _, vjp = jax.vjp(lambda p: model.apply({"params": p}, x), params)
    return vjp(v)[0]


@functools.partial(jax.jit, static_argnames=("model", "method"))
def _o3_contract(model, params, x, v, method):
    with jax.default_matmul_precision("highest"):
        k2 = _k2_fn(model, x, method)
        return jax.jvp(k2, (params,), (_direction(model, params, x, v),))[1]


@functools.partial(jax.jit, static_argnames=("model", "method"))
def _o4_contract(model, params, x, v, w, method):
    with jax.default_matmul_precision("highest"):
        k2 = _k2_fn(model, x, method)

        def contracted(theta):
            return jax.jvp(k2, (theta,), (_direction(model, theta, x, v),))[1]

        return jax.jvp(contracted, (params,), (_direction(model, params, x, w),))[1]


def _vector(v, n, dtype, name):
    v = jnp.asarray(v, dtype=dtype)
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},); got {tuple(v.shape)}")
    return v


def o3_contract(model, params, x, v, method: Method = "structured") -> jax.Array:
    r"""``(N, N)`` contraction :math:`\sum_c O_3[a, b, c]\, v_c` at the cost of a
    forward-mode NTK (about 3 NTKs), without forming :math:`O_3`."""
    x = _check(model, params, x, method, "o3_contract")
    v = _vector(v, x.shape[0], x.dtype, "v")
    return _o3_contract(model, params, x, v, method)


def o4_contract(model, params, x, v, w, method: Method = "structured") -> jax.Array:
    r"""``(N, N)`` contraction :math:`\sum_{cd} O_4[a, b, c, d]\, v_c w_d` (``v`` on the
    third index, ``w`` on the fourth) without forming :math:`O_4`."""
    x = _check(model, params, x, method, "o4_contract")
    v = _vector(v, x.shape[0], x.dtype, "v")
    w = _vector(w, x.shape[0], x.dtype, "w")
    return _o4_contract(model, params, x, v, w, method)
