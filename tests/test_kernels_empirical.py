"""Empirical NTK: every method against the Jacobian reference, and its Monte Carlo
mean against the infinite-width kernel."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nthexp as nx
from _cases import case_id, grid

D_IN = 5
X1 = jax.random.normal(jax.random.key(11), (7, D_IN))
X2 = jax.random.normal(jax.random.key(12), (4, D_IN))

MLP_GRID = grid(
    max_cases=8,
    activation=["relu", "erf"],
    use_bias=[True, False],
    parameterization=["ntk", "standard"],
    depth=[1, 2, 3, 4, 5, 6],
)


def _rel_err(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.mark.parametrize("case", MLP_GRID, ids=case_id)
def test_structured_equals_jacobian_mlp(case):
    model = nx.models.MLP(width=12, b_std=0.2, **case)
    params = nx.models.init(model, jax.random.key(case["depth"]), D_IN)
    reference = nx.kernels.ntk(model, params, X1, method="jacobian")
    for x2 in (None, X2):
        ref = (
            reference
            if x2 is None
            else nx.kernels.ntk(model, params, X1, x2, method="jacobian")
        )
        got = nx.kernels.ntk(model, params, X1, x2, method="structured")
        assert got.shape == ref.shape
        err = _rel_err(got, ref)
        assert err < 1e-10, f"method='structured' vs 'jacobian': rel err {err:.2e}"


@pytest.mark.parametrize("n_out,trace", [(3, False), (3, True)])
def test_multi_output_axes(n_out, trace):
    """Output axes are kept as (N1, N2, O, O) unless traced; trace = mean of the
    diagonal output blocks."""
    model = nx.models.MLP(width=10, depth=2, n_out=n_out, b_std=0.1)
    params = nx.models.init(model, jax.random.key(0), D_IN)
    got = nx.kernels.ntk(model, params, X1, X2, trace=trace)
    ref = nx.kernels.ntk(model, params, X1, X2, method="jacobian", trace=trace)
    assert _rel_err(got, ref) < 1e-10
    full = nx.kernels.ntk(model, params, X1, X2)
    assert full.shape == (7, 4, n_out, n_out)
    if trace:
        assert got.shape == (7, 4)
        diag_mean = jnp.mean(jnp.diagonal(full, axis1=2, axis2=3), axis=-1)
        np.testing.assert_allclose(got, diag_mean, rtol=1e-13)


@pytest.mark.parametrize("kind", ["mlp", "resnet", "wide"])
def test_blocked_sum_equals_jacobian(kind):
    """More rows than ``CPU_BLOCK_ROWS`` (and not a multiple of it): the CPU path
    assembles a narrow net's kernel from blocks, and a wide net's symmetric kernel
    from two groups of rows (odd N: unequal groups); with x2 None only the blocks on
    and above the diagonal are computed.
    Every path equals the Jacobian reference, and the symmetric ones are exactly
    symmetric."""
    rows = nx.kernels._empirical.CPU_BLOCK_ROWS
    x1 = jax.random.normal(jax.random.key(21), (2 * rows + 44, D_IN))
    x2 = jax.random.normal(jax.random.key(22), (rows + 3, D_IN))
    if kind == "mlp":
        model = nx.models.MLP(width=6, depth=3, n_out=2, b_std=0.1, activation="erf")
    elif kind == "wide":  # mean n_in + n_out above CPU_BLOCK_MAX_INNER
        x1 = jax.random.normal(jax.random.key(21), (4 * rows + 11, D_IN))
        model = nx.models.MLP(width=300, depth=1, n_out=2, b_std=0.1)
    else:
        model = nx.models.ResNet(width=5, depth=2, branch_layers=2, alpha=0.5)
    params = nx.models.init(model, jax.random.key(5), D_IN)
    for b in (None, x2):
        got = nx.kernels.ntk(model, params, x1, b)
        ref = nx.kernels.ntk(model, params, x1, b, method="jacobian")
        assert got.shape == ref.shape
        assert _rel_err(got, ref) < 1e-10
    k = np.asarray(nx.kernels.ntk(model, params, x1))
    np.testing.assert_array_equal(
        k, np.swapaxes(np.swapaxes(k, 0, 1), -1, -2) if k.ndim == 4 else k.T
    )


def test_ntk_is_symmetric_psd():
    model = nx.models.MLP(width=32, depth=3)
    params = nx.models.init(model, jax.random.key(3), D_IN)
    k = np.asarray(nx.kernels.ntk(model, params, X1))
    np.testing.assert_allclose(k, k.T, rtol=1e-14, atol=0)
    assert np.linalg.eigvalsh(k).min() > -1e-12 * np.abs(k).max()


def test_compiles_once_per_shape():
    model = nx.models.MLP(width=8, depth=2)
    params = nx.models.init(model, jax.random.key(0), D_IN)
    fn = nx.kernels._empirical._ntk
    nx.kernels.ntk(model, params, X1)
    before = fn._cache_size()
    for seed in range(3):
        p = nx.models.init(model, jax.random.key(seed), D_IN)
        nx.kernels.ntk(model, p, X1 + seed)
    assert fn._cache_size() == before


def test_unknown_method():
    model = nx.models.MLP(width=8, depth=1)
    params = nx.models.init(model, jax.random.key(0), D_IN)
    with pytest.raises(ValueError, match=r"method='fast' is unknown; allowed: "):
        nx.kernels.ntk(model, params, X1, method="fast")


# Monte Carlo: E[K_emp] -> K_inf. At depth L the mean has an O(L/width) bias, so the
# check uses shallow nets at width 1024 where that bias is far below the tolerance.
N_SAMPLES = 200
WIDTH = 1024
N_SIGMA = 4.0


def _mc_ntk(model, x, n_samples):
    def one(key):
        return nx.kernels.ntk(model, nx.models.init(model, key, x.shape[1]), x)

    keys = jax.random.split(jax.random.key(2024), n_samples)
    return np.asarray(jax.lax.map(one, keys, batch_size=25))


@pytest.mark.parametrize(
    "activation,depth,b_std", [("relu", 2, 0.0), ("erf", 2, 0.1)], ids=str
)
def test_monte_carlo_mean_matches_infinite_width(activation, depth, b_std):
    x = np.asarray(X1[:5])
    model = nx.models.MLP(
        width=WIDTH,
        depth=depth,
        activation=activation,
        w_std=1.5 if activation == "erf" else 2**0.5,
        b_std=b_std,
    )
    samples = _mc_ntk(model, x, N_SAMPLES)
    mean = samples.mean(axis=0)
    stderr = samples.std(axis=0, ddof=1) / np.sqrt(N_SAMPLES)
    k_inf = np.asarray(nx.kernels.infinite_ntk(model, x))
    z = np.abs(mean - k_inf) / stderr
    assert z.max() < N_SIGMA, (
        f"n_samples={N_SAMPLES}, width={WIDTH}: max |mean - K_inf| / stderr = "
        f"{z.max():.2f} >= {N_SIGMA}"
    )
