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


def _ntk_structured(model, params, x1, x2):
    """``(O, O, N1, N2)`` kernel from the layer factors."""
    f1 = layer_factors(model, params, x1)
    f2 = f1 if x2 is None else layer_factors(model, params, x2)
    total = None
    for (h1, d1), (h2, d2) in zip(f1.values(), f2.values(), strict=True):
        # a, b: examples; o, p: outputs; i: layer input; j: layer output
        gram_h = h1 @ h2.T
        gram_d = jnp.einsum("oaj,pbj->opab", d1, d2)
        term = gram_h[None, None] * gram_d
        total = term if total is None else total + term
    return total


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
        fn = _ntk_structured if method == "structured" else _ntk_jacobian
        k = fn(model, params, x1, x2)  # (O, O, N1, N2)
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
