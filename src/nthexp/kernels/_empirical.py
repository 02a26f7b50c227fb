r"""Empirical NTK of a finite network.

.. math:: \Theta(x_a, x_b) = \sum_p \partial_p f(x_a)\, \partial_p f(x_b)
   = \langle g_a, g_b \rangle, \qquad g_a = \nabla_\theta f(x_a).

Two methods (:data:`Method`):

``"jacobian"``
    The reference. Per-example Jacobians ``J`` of shape ``(N, O, P)`` by reverse mode,
    then ``J_1 J_2^T``. Time ``O(N O P)`` backward passes plus ``N_1 N_2 O^2 P`` for the
    contraction; memory ``(N_1 + N_2) O P``.

``"structured"``
    For a dense layer :math:`z = s_w h W + s_b b` the gradient of :math:`f_o(x_a)` with
    respect to its parameters is the outer product of the scaled input
    :math:`\tilde h_a = (s_w h_a, s_b)` and the backward vector
    :math:`\delta_{a,o} = \partial f_o / \partial z_a`, so

    .. math:: \Theta_{ab,op} = \sum_{l} (\tilde h^l_a \cdot \tilde h^l_b)
       (\delta^l_{a,o} \cdot \delta^l_{b,p})

    (Novak, Sohl-Dickstein, Schoenholz 2022, "structured derivatives"). One forward
    pass and ``O`` backward passes give every :math:`\tilde h^l, \delta^l`; the kernel
    is a sum of products of small Gram matrices. Time ``N O L n^2 + N_1 N_2 O^2 L n``
    for ``L`` layers of width ``n``; memory ``N O L n`` plus the output. The ``N x P``
    Jacobian is never formed.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from flax import traverse_util

from nthexp._config import as_array

Method = Literal["structured", "jacobian"]
METHODS = ("structured", "jacobian")


def _params_dtype(params):
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("params is empty; build it with nthexp.models.init")
    return leaves[0].dtype


def layer_factors(
    model, params, x: jax.Array
) -> dict[tuple, tuple[jax.Array, jax.Array]]:
    r"""Per dense layer, the scaled inputs and the backward vectors on ``x``.

    Returns a dict from the layer's module path (forward order) to ``(h, delta)`` with
    ``h`` of shape ``(N, n_in [+1 with bias])`` and ``delta`` of shape
    ``(O, N, n_out)``,
    such that the gradient of :math:`f_o(x_a)` with respect to that layer's
    parameters is ``outer(h[a], delta[o, a])``.
    """
    variables = {"params": params}
    shapes = jax.eval_shape(
        lambda: model.apply(variables, x, mutable=["perturbations"])[1]["perturbations"]
    )
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def forward(eps):
        out, state = model.apply(
            {"params": params, "perturbations": eps}, x, mutable=["ntk_inputs"]
        )
        return out, state["ntk_inputs"]

    out, vjp, inputs = jax.vjp(forward, zeros, has_aux=True)
    n_out = 1 if out.ndim == 1 else out.shape[1]
    if out.ndim == 1:
        (deltas,) = vjp(jnp.ones_like(out))
        deltas = jax.tree.map(lambda d: d[None], deltas)
    else:
        basis = jnp.eye(n_out, dtype=out.dtype)
        cotangents = jnp.broadcast_to(basis[:, None, :], (n_out,) + out.shape)
        (deltas,) = jax.vmap(vjp)(cotangents)

    inputs = traverse_util.flatten_dict(inputs)
    deltas = traverse_util.flatten_dict(deltas)
    return {key[:-1]: (h, deltas[key[:-1] + ("z",)]) for key, (h,) in inputs.items()}


#: Rows per block of the structured NTK on CPUs. The kernel is a sum over layers of
#: Hadamard products of two Gram matrices; summed block by block, a (128, 128)
#: float64 block of both Grams and of the running sum (128 KiB each) stays in cache
#: through all layers. For narrow nets, whose Grams have a small inner dimension,
#: the unblocked sum is bound by memory traffic: per layer it moves about four
#: N x N arrays for 2 N^2 (n_in + n_out) flops. Blocking pays when the mean
#: n_in + n_out over layers is at most :data:`CPU_BLOCK_MAX_INNER` (measured on
#: 2 cores, whole NTK, N = 512: width 64 depth 32 2.3x faster, width 32 depth 64
#: 3.7x, width 128 depth 16 1.4x; width 64 depth 4 N = 2048 1.6x; wide nets gain
#: nothing: width 256 depth 16, N = 256, 1.2x slower, width 1024 depth 3 1.1x
#: slower). GPUs prefer one large product: one block there.
CPU_BLOCK_ROWS = 128
#: Most blocks per side of the blocked sum (larger N gets larger blocks).
CPU_MAX_BLOCKS = 8
CPU_BLOCK_MAX_INNER = 256
#: Groups of rows of a wide net's symmetric NTK on CPUs from N = 2 CPU_BLOCK_ROWS
#: (:func:`_ntk_row_groups`): per group its own forward and backward pass, then the
#: Gram blocks on and above the diagonal, all run concurrently. Measured on 2 cores,
#: alternated with one product per layer: width 1024 depth 3 N = 512 1.12x faster,
#: N = 1024 1.17x, width 512 depth 4 N = 256 1.03x, width 256 depth 16 N = 256
#: 1.01x, width 2048 depth 2 N = 256 0.98x; 4 groups were no better than 2.
CPU_ROW_GROUPS = 2


def _block_rows() -> int | None:
    return CPU_BLOCK_ROWS if jax.default_backend() == "cpu" else None


def _gram_sum(f1, f2):
    """``(O, O, N1, N2)`` sum over layers of ``(h1 . h2) * (delta1 . delta2)``."""
    total = None
    for (h1, d1), (h2, d2) in zip(f1, f2, strict=True):
        # a, b: examples; o, p: outputs; j: layer output
        term = _gram(h1, h2)[None, None] * _gram_out(d1, d2)
        total = term if total is None else total + term
    return total


def _gram(h1, h2):
    """``(N1, N2)`` inner products of the rows."""
    return _self_gram(h1) if h1 is h2 else h1 @ h2.T


def _gram_out(d1, d2):
    """``(O, O, N1, N2)`` inner products of the backward vectors, per output pair."""
    if d1 is d2:
        return _self_gram_out(d1)
    return _row_products(d1, d2)


def _row_products(d1, d2):
    """``(O1, O2, N1, N2)`` inner products of the rows of ``d1`` ``(O1, N1, j)`` and
    ``d2`` ``(O2, N2, j)``, as one product of the stacked rows; the equivalent
    einsum copies a transposed ``d2`` first on CPUs (1.2x slower at N = 256)."""
    (o, a, j), (p, b, _) = d1.shape, d2.shape
    g = d1.reshape(o * a, j) @ d2.reshape(p * b, j).T
    return jnp.transpose(g.reshape(o, a, p, b), (0, 2, 1, 3))


# The Gram matrix of a set with itself, with a derivative that uses its symmetry:
# d(h h^T) = dh h^T + (dh h^T)^T, one product instead of the two that differentiating
# the product gives. O3 and O4 are forward-mode derivatives of the NTK, so this
# halves the products of their Gram terms.
@jax.custom_jvp
def _self_gram(h):
    return h @ h.T


@_self_gram.defjvp
def _self_gram_jvp(primals, tangents):
    (h,), (dh,) = primals, tangents
    half = dh @ h.T
    return h @ h.T, half + half.T


@jax.custom_jvp
def _self_gram_out(d):
    return _row_products(d, d)


@_self_gram_out.defjvp
def _self_gram_out_jvp(primals, tangents):
    (d,), (dd,) = primals, tangents
    half = _row_products(dd, d)
    return _row_products(d, d), half + jnp.transpose(half, (1, 0, 3, 2))


def _assemble(blocks: dict, c1: int, c2: int, symmetric: bool):
    """``(O, O, N1, N2)`` kernel from its ``(O, O, rows, cols)`` blocks ``(i, j)``;
    with ``symmetric`` only ``i <= j`` are given and ``K[j, i]`` is ``K[i, j]`` with
    the examples and the outputs swapped."""
    if symmetric:
        for i, j in list(blocks):
            if j > i:
                blocks[j, i] = jnp.transpose(blocks[i, j], (1, 0, 3, 2))
    return jnp.concatenate(
        [jnp.concatenate([blocks[i, j] for j in range(c2)], axis=3) for i in range(c1)],
        axis=2,
    )


def _stacked(factors, rows: int, count: int):
    """Layers grouped by shape, stacked, rows padded to ``count`` blocks of ``rows``.

    Returns a list of ``(h, delta)`` with ``h`` of shape ``(count, G, rows, n_in)``
    and ``delta`` of shape ``(count, G, O, rows, n_out)`` for ``G`` layers of one
    shape, so that one block of rows of every layer is a contiguous slice.
    """
    groups: dict[tuple, list] = {}
    for h, d in factors:
        groups.setdefault((h.shape[1], d.shape[0], d.shape[2]), []).append((h, d))
    out = []
    for layers in groups.values():
        h = jnp.stack([h for h, _ in layers])  # (G, N, n_in)
        d = jnp.stack([d for _, d in layers])  # (G, O, N, n_out)
        pad = count * rows - h.shape[1]
        h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
        d = jnp.pad(d, ((0, 0), (0, 0), (0, pad), (0, 0)))
        h = jnp.moveaxis(h.reshape(h.shape[0], count, rows, -1), 1, 0)
        d = jnp.moveaxis(d.reshape(d.shape[:2] + (count, rows, -1)), 2, 0)
        out.append((h, d))
    return out


def _gram_sum_blocked(f1, f2, rows: int, symmetric: bool):
    """``_gram_sum`` assembled from blocks of at least ``rows`` rows and columns,
    each summed over all layers before the next; with ``symmetric`` (``f2`` is
    ``f1``) only the blocks on and above the diagonal are computed.

    Layers of one shape are a ``lax.scan`` (so the program does not grow with depth);
    the blocks are separate, independent computations, which XLA's CPU runtime runs
    concurrently on the cores (a ``lax.map`` over blocks ran one block at a time and
    was 1.6x slower on 2 cores). At most :data:`CPU_MAX_BLOCKS` blocks per side keep
    the program small for large N.
    """
    n1, n2 = f1[0][0].shape[0], f2[0][0].shape[0]
    rows = max(rows, -(-max(n1, n2) // CPU_MAX_BLOCKS))
    c1, c2 = -(-n1 // rows), -(-n2 // rows)
    s1 = _stacked(f1, rows, c1)
    s2 = s1 if symmetric else _stacked(f2, rows, c2)

    def layer(total, xs):
        a1, e1, a2, e2 = xs
        term = (a1 @ a2.T)[None, None] * _row_products(e1, e2)
        return total + term, None

    def block(i, j):
        n_out = s1[0][1].shape[2]
        acc = jnp.zeros((n_out, n_out, rows, rows), s1[0][0].dtype)
        for (h1, d1), (h2, d2) in zip(s1, s2, strict=True):
            acc, _ = jax.lax.scan(layer, acc, (h1[i], d1[i], h2[j], d2[j]), unroll=4)
        return acc

    blocks = {}
    for i in range(c1):
        for j in range(i if symmetric else 0, c2):
            blocks[i, j] = block(i, j)
    return _assemble(blocks, c1, c2, symmetric)[:, :, :n1, :n2]


def _ntk_row_groups(model, params, x, groups: int):
    """Symmetric ``(O, O, N, N)`` kernel from ``groups`` groups of rows of ``x``.

    The layer factors of each group come from their own forward and backward pass,
    and each block on and above the diagonal is a separate sum over layers: separate
    computations, which XLA's CPU runtime runs concurrently on the cores, and
    ``(groups + 1) / (2 groups)`` of the Gram multiplications.
    """
    n = x.shape[0]
    edges = [n * i // groups for i in range(groups + 1)]
    factors = [
        list(layer_factors(model, params, x[edges[i] : edges[i + 1]]).values())
        for i in range(groups)
    ]
    blocks = {
        (i, j): _gram_sum(factors[i], factors[j])
        for i in range(groups)
        for j in range(i, groups)
    }
    return _assemble(blocks, groups, groups, symmetric=True)


def _ntk_structured(model, params, x1, x2, block_rows: int | None = None):
    """``(O, O, N1, N2)`` kernel from the layer factors.

    With ``block_rows`` (CPUs) and more rows than that, the sum is arranged for the
    cores and caches, with the same values up to the order of floating-point sums:
    narrow layers (mean ``n_in + n_out`` at most :data:`CPU_BLOCK_MAX_INNER`) are
    summed in blocks of ``block_rows`` rows and columns (:func:`_gram_sum_blocked`),
    only those on and above the diagonal when ``x2`` is None; a wide net's symmetric
    kernel comes from :data:`CPU_ROW_GROUPS` groups of rows (:func:`_ntk_row_groups`).
    """
    f1 = list(layer_factors(model, params, x1).values())
    f2 = f1 if x2 is None else list(layer_factors(model, params, x2).values())
    n = max(f1[0][0].shape[0], f2[0][0].shape[0])
    inner = sum(h.shape[1] + d.shape[2] for h, d in f1) / len(f1)
    if block_rows is None or n <= block_rows:
        return _gram_sum(f1, f2)
    if inner <= CPU_BLOCK_MAX_INNER:
        return _gram_sum_blocked(f1, f2, block_rows, symmetric=x2 is None)
    if x2 is None and n >= 2 * block_rows:  # f1 is then unused; XLA drops it
        return _ntk_row_groups(model, params, x1, CPU_ROW_GROUPS)
    return _gram_sum(f1, f2)


def _flat_jacobian(model, params, x):
    """``(O, N, P)`` per-example Jacobian (the reference method's only large array)."""
    jac = jax.jacrev(lambda p: model.apply({"params": p}, x))(params)
    flat = []
    for j, p in zip(jax.tree.leaves(jac), jax.tree.leaves(params), strict=True):
        j = j.reshape(j.shape[: j.ndim - p.ndim] + (-1,))  # (N, [O,] P_leaf)
        flat.append(j[:, None, :] if j.ndim == 2 else j)
    return jnp.swapaxes(jnp.concatenate(flat, axis=-1), 0, 1)


def _ntk_jacobian(model, params, x1, x2):
    j1 = _flat_jacobian(model, params, x1)
    j2 = j1 if x2 is None else _flat_jacobian(model, params, x2)
    return jnp.einsum("oaP,pbP->opab", j1, j2)


@functools.partial(jax.jit, static_argnames=("model", "method", "trace"))
def _ntk(model, params, x1, x2, method, trace):
    with jax.default_matmul_precision("highest"):
        if method == "structured":
            k = _ntk_structured(model, params, x1, x2, _block_rows())
        else:
            k = _ntk_jacobian(model, params, x1, x2)  # (O, O, N1, N2)
    n_out = k.shape[0]
    if n_out == 1:
        return k[0, 0]
    if trace:
        return jnp.trace(k, axis1=0, axis2=1) / n_out
    return jnp.transpose(k, (2, 3, 0, 1))


def ntk(
    model, params, x1, x2=None, method: Method = "structured", *, trace: bool = False
) -> jax.Array:
    """Empirical NTK of ``model`` at ``params``.

    Args:
      model: an nthexp model (``MLP``, ``ResNet``).
      params: its parameters (``nthexp.models.init``); their dtype sets the kernel's.
      x1: inputs ``(N1, D_in)``.
      x2: inputs ``(N2, D_in)``; ``None`` means ``x1`` (the kernel is then symmetric).
      method: ``"structured"`` (default) or ``"jacobian"`` (reference); see module doc.
      trace: for ``n_out > 1``, return the mean of the ``O`` diagonal output blocks.

    Returns:
      ``ntk_12`` of shape ``(N1, N2)`` for one output or ``trace=True``, else
      ``(N1, N2, O, O)`` with axes (example 1, example 2, output 1, output 2).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; allowed: {list(METHODS)}")
    dtype = _params_dtype(params)
    x1 = as_array(x1, dtype, "x1")
    if x2 is not None:
        x2 = as_array(x2, dtype, "x2")
    return _ntk(model, params, x1, x2, method, bool(trace))
