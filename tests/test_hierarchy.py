"""O3, O4 and their contractions: methods against the Jacobian reference, exact
identities, symmetry, scaling with width, planning, sharding and compilation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nthexp as nx
from _cases import case_id, grid

D_IN = 3
N = 4
X = jax.random.normal(jax.random.key(5), (N, D_IN))
V = jnp.array([0.7, -1.2, 0.4, 2.0])
W = jnp.array([-0.3, 0.9, 1.5, -0.6])


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _model(kind, **kw):
    if kind == "resnet":
        return nx.models.ResNet(width=5, **kw)
    return nx.models.MLP(width=6, **kw)


HIER_GRID = grid(
    max_cases=3,
    seed=1,
    kind=["mlp"],
    activation=["relu", "erf", "tanh"],
    use_bias=[True, False],
    depth=[1, 2, 3, 4],
) + grid(
    max_cases=1,
    seed=2,
    kind=["resnet"],
    activation=["relu", "gelu"],
    use_bias=[True],
    depth=[2],
)


@pytest.fixture(scope="module", params=HIER_GRID, ids=case_id)
def tensors(request):
    case = dict(request.param)
    kind = case.pop("kind")
    model = _model(kind, b_std=0.2, **case)
    params = nx.models.init(model, jax.random.key(case["depth"]), D_IN)
    out = {"model": model, "params": params, "case": request.param}
    for method in nx.kernels.METHODS:
        out[("o3", method)] = nx.kernels.o3(model, params, X, method=method)
        out[("o4", method)] = nx.kernels.o4(model, params, X, method=method)
    return out


def test_every_method_matches_jacobian(tensors):
    model, params = tensors["model"], tensors["params"]
    for name in ("o3", "o4"):
        for method in nx.kernels.METHODS:
            err = _rel(tensors[(name, method)], tensors[(name, "jacobian")])
            assert err < 1e-10, f"{name} method={method!r} vs 'jacobian': {err:.2e}"
    for method in nx.kernels.METHODS:
        c3 = nx.kernels.o3_contract(model, params, X, V, method=method)
        ref3 = jnp.einsum("abc,c->ab", tensors[("o3", "jacobian")], V)
        assert _rel(c3, ref3) < 1e-10, f"o3_contract method={method!r}"
        c4 = nx.kernels.o4_contract(model, params, X, V, W, method=method)
        ref4 = jnp.einsum("abcd,c,d->ab", tensors[("o4", "jacobian")], V, W)
        assert _rel(c4, ref4) < 1e-10, f"o4_contract method={method!r}"


def test_symmetries(tensors):
    o3, o4 = tensors[("o3", "structured")], tensors[("o4", "structured")]
    scale3, scale4 = float(jnp.max(jnp.abs(o3))), float(jnp.max(jnp.abs(o4)))
    assert float(jnp.max(jnp.abs(o3 - o3.transpose(1, 0, 2)))) <= 1e-13 * scale3
    assert float(jnp.max(jnp.abs(o4 - o4.transpose(1, 0, 2, 3)))) <= 1e-13 * scale4
    # O4 is NOT symmetric in its last two indices (beyond round-off by far)
    assert float(jnp.max(jnp.abs(o4 - o4.transpose(0, 1, 3, 2)))) > 1e-6 * scale4


def _grads(model, params, x):
    return jax.vmap(
        lambda xi: jax.grad(lambda p: nx.models.apply(model, p, xi[None])[0])(params)
    )(x)


def _shift(params, tangent, eps):
    return jax.tree.map(lambda p, t: p + eps * t, params, tangent)


def _derivative(fn, params, tangent, eps=1e-5):
    """Fourth-order central difference of ``fn(params)`` along ``tangent``: the
    truncation error is about ``(eps |tangent|)^4 |fn^(5)| / 30`` (a second-order
    difference, ``(eps |tangent|)^2 / 6``, reached 2e-7 for a depth-4 erf net whose
    gradients are large), the rounding error about ``1e-16 |fn| / eps``."""

    def at(h):
        return fn(_shift(params, tangent, h))

    return (8 * (at(eps) - at(-eps)) - (at(2 * eps) - at(-2 * eps))) / (12 * eps)


def test_o3_is_the_derivative_of_the_ntk(tensors):
    """O3[:, :, c] is the derivative of K2 along g_c (float64, fourth-order central
    difference, step 1e-5)."""
    model, params = tensors["model"], tensors["params"]
    o3 = tensors[("o3", "structured")]
    g = _grads(model, params, X)
    for c in range(N):
        g_c = jax.tree.map(lambda t, c=c: t[c], g)
        fd = _derivative(lambda p: nx.kernels.ntk(model, p, X), params, g_c)
        err = float(jnp.max(jnp.abs(o3[:, :, c] - fd)) / jnp.max(jnp.abs(o3)))
        assert err < 1e-7, f"c={c}: finite difference rel err {err:.2e}"


def test_o3_from_hessian_vector_products(tensors):
    """O3[a,b,c] = g_b^T H_a g_c + g_a^T H_b g_c; H_a g_c by forward-over-reverse."""
    model, params = tensors["model"], tensors["params"]
    o3 = tensors[("o3", "structured")]
    g = _grads(model, params, X)

    def flat(tree):
        leaves = jax.tree.leaves(tree)
        return jnp.concatenate([a.reshape(a.shape[0], -1) for a in leaves], axis=1)

    g_flat = flat(g)  # (N, P)

    def hvp(a, tangent):
        grad_a = jax.grad(lambda p: nx.models.apply(model, p, X[a][None])[0])
        return jax.jvp(grad_a, (params,), (tangent,))[1]

    expected = np.zeros((N, N, N))
    for c in range(N):
        g_c = jax.tree.map(lambda t, c=c: t[c], g)
        h_gc = flat(
            jax.tree.map(lambda *a: jnp.stack(a), *[hvp(a, g_c) for a in range(N)])
        )  # (N, P): H_a g_c
        m = g_flat @ h_gc.T  # m[b, a] = g_b^T H_a g_c
        expected[:, :, c] = m.T + m
    assert _rel(o3, jnp.asarray(expected)) < 1e-10


def test_o4_is_the_derivative_of_o3(tensors):
    model, params = tensors["model"], tensors["params"]
    o4 = tensors[("o4", "structured")]
    g = _grads(model, params, X)
    d = 1
    g_d = jax.tree.map(lambda t: t[d], g)
    fd = _derivative(lambda p: nx.kernels.o3(model, p, X), params, g_d)
    err = float(jnp.max(jnp.abs(o4[..., d] - fd)) / jnp.max(jnp.abs(o4)))
    assert err < 1e-6, f"d={d}: finite difference rel err {err:.2e}"


@pytest.mark.parametrize("order", [3, 4])
def test_norm_falls_like_one_over_width(order):
    """At initialisation ||O3||_F and ||O4||_F ~ 1/width: ReLU MLP depth 2, N=4
    gaussian inputs, seeds 0..7 per width; log-log slope of the seed-mean in
    [-1.15, -0.85]."""
    widths = [64, 128, 256, 512] if order == 3 else [64, 128, 256]
    x = X
    means = []
    for width in widths:
        model = nx.models.MLP(width=width, depth=2, b_std=0.1)
        fn = nx.kernels.o3 if order == 3 else nx.kernels.o4
        norms = [
            float(
                jnp.linalg.norm(
                    fn(model, nx.models.init(model, jax.random.key(seed), D_IN), x)
                )
            )
            for seed in range(8)
        ]
        means.append(np.mean(norms))
    slope = np.polyfit(np.log(widths), np.log(means), 1)[0]
    assert -1.15 <= slope <= -0.85, f"O{order}: slope {slope:.3f}"


def test_planner_refuses_before_compiling():
    model = nx.models.MLP(width=64, depth=2)
    params = nx.models.init(model, jax.random.key(0), D_IN)
    x = jax.random.normal(jax.random.key(0), (512, D_IN))
    before = nx.kernels._hierarchy._o4_chunk._cache_size()
    with pytest.raises(
        nx.kernels.MemoryPlanError,
        match=r"O4 with N=512 needs at least .* GiB .* the largest N "
        r"that fits is about \d+\. Options: ",
    ):
        nx.kernels.o4(model, params, x, memory_budget=2**30)
    assert nx.kernels._hierarchy._o4_chunk._cache_size() == before


def test_plan_fits_and_chunks():
    model = nx.models.MLP(width=32, depth=2)
    params = nx.models.init(model, jax.random.key(0), D_IN)
    p = nx.kernels.plan(3, 64, params, memory_budget=2**24)
    assert p.chunk * p.n_chunks >= 64 and p.peak_bytes <= 2**24
    assert p.chunk % p.n_devices == 0
    assert "O3 with N=64" in p.describe()


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_inputs(n):
    model = nx.models.MLP(width=4, depth=1)
    params = nx.models.init(model, jax.random.key(0), D_IN)
    x = jnp.ones((n, D_IN))
    with pytest.raises(ValueError, match=r"(empty|needs at least N=2 inputs; got N=1)"):
        nx.kernels.o3(model, params, x)


def test_multi_output_is_refused():
    model = nx.models.MLP(width=4, depth=1, n_out=2)
    params = nx.models.init(model, jax.random.key(0), D_IN)
    with pytest.raises(NotImplementedError, match="n_out=2"):
        nx.kernels.o3(model, params, X)


def test_chunking_and_sharding_do_not_change_the_result():
    """Four fake CPU devices (conftest): chunks are spread over them; any chunk size
    gives the same tensor as one chunk, and compilation happens once per shape."""
    assert len(jax.local_devices()) == 4
    model = nx.models.MLP(width=7, depth=2, b_std=0.1)
    params = nx.models.init(model, jax.random.key(9), D_IN)
    x = jax.random.normal(jax.random.key(3), (10, D_IN))
    whole = nx.kernels.o3(model, params, x, chunk_size=12)
    fn = nx.kernels._hierarchy._o3_chunk
    pieces = nx.kernels.o3(model, params, x, chunk_size=4)
    size = fn._cache_size()
    again = nx.kernels.o3(model, params, x + 0.5, chunk_size=4)
    assert fn._cache_size() == size
    np.testing.assert_allclose(pieces, whole, rtol=1e-12, atol=1e-14)
    assert again.shape == whole.shape
    # one device: same numbers
    single = jax.jit(
        nx.kernels._hierarchy._o3_columns, static_argnames=("model", "method")
    )(model, params, x, x, "structured")
    np.testing.assert_allclose(
        jnp.moveaxis(single, 0, -1), whole, rtol=1e-12, atol=1e-14
    )
