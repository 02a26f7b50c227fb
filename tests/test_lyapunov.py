"""Lyapunov exponents by repeated QR against closed forms (DESIGN.md section 2)."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from scipy.special import polygamma

import nthexp as nx
from nthexp.analysis import (
    log_norm_variance,
    lyapunov_closed_form,
    lyapunov_exponents,
    relu_top_exponent,
)


def test_closed_form_values():
    # n = 2: lambda_1 = 0.5 [log 1 + psi(1)] = -gamma/2, lambda_2 = 0.5 psi(1/2).
    lam = lyapunov_closed_form(2)
    assert lam[0] == pytest.approx(-0.5 * np.euler_gamma, rel=1e-12)
    assert lam[1] == pytest.approx(0.5 * (-np.euler_gamma - 2 * math.log(2)), rel=1e-12)
    np.testing.assert_allclose(
        lyapunov_closed_form(4, 2.0) - lyapunov_closed_form(4),
        math.log(2.0),
        rtol=1e-12,
    )
    assert np.all(np.diff(lyapunov_closed_form(8)) < 0)


@pytest.mark.parametrize("width", [2, 4, 8])
def test_gaussian_exponents_match_closed_form(width):
    # 8 chains x 1000 QR steps = 8000 factors. Each step's log|R_kk| is
    # 0.5 log(chi^2_{n-k+1} / n) exactly, so the Monte Carlo standard error is
    # sqrt(0.25 psi_1((n-k+1)/2) / 8000) (at most 0.012, for k = n); the test allows 4.
    depth, n_samples = 1000, 8
    res = lyapunov_exponents(
        width, depth, "gaussian", key=jax.random.PRNGKey(width), n_samples=n_samples
    )
    k = np.arange(1, width + 1)
    se_theory = np.sqrt(0.25 * polygamma(1, (width - k + 1) / 2) / (depth * n_samples))

    assert res.exponents.shape == (width,) and res.n_survived == n_samples
    assert np.all(np.diff(res.exponents) <= 0)
    np.testing.assert_array_less(
        np.abs(res.exponents - res.closed_form),
        4 * se_theory,
        err_msg=f"width={width}: measured {res.exponents}, closed {res.closed_form}",
    )
    # The reported standard errors estimate se_theory (8 samples: within a factor 2.5).
    assert np.all(res.stderr > se_theory / 2.5) and np.all(res.stderr < 2.5 * se_theory)


def test_gaussian_scale_shifts_by_log_s():
    res = lyapunov_exponents(3, 400, key=jax.random.PRNGKey(0), s=3.0, n_samples=4)
    base = lyapunov_exponents(3, 400, key=jax.random.PRNGKey(0), n_samples=4)
    np.testing.assert_allclose(res.exponents, base.exponents + math.log(3), rtol=1e-10)
    np.testing.assert_allclose(res.closed_form, lyapunov_closed_form(3) + math.log(3))
    assert res.s == 3.0 and res.top_closed_form == pytest.approx(res.closed_form[0])


def test_relu_top_exponent():
    # n = 32, He scaling: 16 chains x 250 steps = 4000 factors; per-step sd of
    # log|R_11| is about 0.2, so SE ~ 0.0032. The exact per-step law (conditioned on
    # survival) is matched within 4 SE, and -5/(4n) = -0.0391 within 4 SE plus the
    # O(n^-2) term 2.3/n^2 = 0.0022.
    n, depth, n_samples = 32, 250, 16
    res = lyapunov_exponents(
        n, depth, "relu", key=jax.random.PRNGKey(1), n_samples=n_samples
    )
    top, se = res.exponents[0], res.stderr[0]
    exact = relu_top_exponent(n, exact=True)

    assert res.s == pytest.approx(math.sqrt(2)) and res.n_survived == n_samples
    assert 0.002 < se < 0.006
    assert abs(top - exact) < 4 * se, (top, exact, se)
    assert abs(top - (-5 / (4 * n))) < 4 * se + 2.3 / n**2, (top, se)
    assert exact == pytest.approx(-5 / (4 * n) - 2.26 / n**2, abs=1e-4)
    # A masked factor has rank ~ n/2, so the bottom of the spectrum is -inf.
    assert res.exponents[-1] == -np.inf and np.isnan(res.stderr[-1])


def test_relu_small_width_conditions_on_survival():
    # n = 1: a step survives with probability 1/2, so ~2^-20 of chains survive 20
    # steps; with 64 chains none survive and the error says so.
    with pytest.raises(ValueError, match=r"no sample survived: every one of the 64"):
        lyapunov_exponents(1, 20, "relu", key=jax.random.PRNGKey(0), n_samples=64)
    res = lyapunov_exponents(2, 3, "relu", key=jax.random.PRNGKey(0), n_samples=64)
    assert 0 < res.n_survived < 64 and np.isfinite(res.exponents[0])


def test_network_jacobians_linear_and_relu():
    # Identity activation: the layer Jacobians are Gaussian N(0, w_std^2/n), so the
    # closed form applies: 4 networks x 39 factors = 156 factors at n = 4; per-step sd
    # <= 1.1 so SE <= 0.09, and the test allows 4 SE per exponent.
    model = nx.models.MLP(width=4, depth=40, activation="identity", w_std=1.0)
    res = lyapunov_exponents(
        4, 40, "network", key=jax.random.PRNGKey(2), n_samples=4, model=model
    )
    assert res.depth == 39 and res.top_closed_form == pytest.approx(
        lyapunov_closed_form(4)[0]
    )
    k = np.arange(1, 5)
    se = np.sqrt(0.25 * polygamma(1, (4 - k + 1) / 2) / (39 * 4))
    np.testing.assert_array_less(
        np.abs(res.exponents - lyapunov_closed_form(4)), 4 * se
    )

    # ReLU network at He scaling: same law as the masked product.
    relu = lyapunov_exponents(16, 12, "network", key=jax.random.PRNGKey(3), n_samples=2)
    assert relu.top_closed_form == pytest.approx(-5 / 64)
    assert abs(relu.exponents[0] - relu_top_exponent(16, exact=True)) < 0.15


def test_network_with_given_params_and_input():
    # Same layer maps as the ReLU case above (width 16), so no new compilation.
    model = nx.models.MLP(width=16, depth=3)
    params = nx.models.init(model, jax.random.PRNGKey(0), 3)
    x = np.array([1.0, -1.0, 1.0])
    a = lyapunov_exponents(
        16,
        3,
        "network",
        key=jax.random.PRNGKey(9),
        n_samples=1,
        model=model,
        params=params,
        x=x,
    )
    b = lyapunov_exponents(
        16,
        3,
        "network",
        key=jax.random.PRNGKey(7),
        n_samples=1,
        model=model,
        params=params,
        x=x,
    )
    np.testing.assert_array_equal(a.exponents, b.exponents)
    assert np.all(np.isnan(a.stderr))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 0, "depth": 3}, r"width=0 is not allowed; must be an integer >= 1"),
        ({"width": 2, "depth": 3, "kind": "tanh"}, r"kind='tanh' is not allowed"),
        ({"width": 2, "depth": 3, "s": -1.0}, r"s=-1\.0 is not allowed"),
        ({"width": 2, "depth": 1, "kind": "network"}, r"depth=1 is not allowed.* >= 2"),
        ({"width": 2, "depth": 3, "x": np.ones(2)}, r"for kind='network' only"),
        ({"width": 2, "depth": 3, "kind": "network", "s": 2.0}, r"s is not allowed"),
        (
            {
                "width": 2,
                "depth": 3,
                "kind": "network",
                "model": nx.models.MLP(width=3, depth=3),
            },
            r"model has width=3, depth=3; must match width=2, depth=3",
        ),
    ],
)
def test_lyapunov_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lyapunov_exponents(key=jax.random.PRNGKey(0), **kwargs)


def test_network_resnet_not_implemented():
    model = nx.models.ResNet(width=2, depth=3)
    with pytest.raises(NotImplementedError, match=r"MLP only; got ResNet"):
        lyapunov_exponents(
            2, 3, "network", key=jax.random.PRNGKey(0), model=model, n_samples=1
        )


def test_log_norm_variance_grows_linearly():
    # Gaussian: Var log|P_L x|^2 = L psi_1(n/2) exactly; 2000 samples give a relative
    # standard error of about sqrt(2/2000) = 3%; the test allows 5 SE.
    depths = [2, 4, 8, 16]
    g = log_norm_variance(8, depths, key=jax.random.PRNGKey(4), n_samples=2000)
    np.testing.assert_array_less(np.abs(g.variance - g.closed_form), 5 * g.stderr)
    assert g.slope == pytest.approx(polygamma(1, 4.0), rel=0.1)

    # ReLU, He scaling, n = 32: mean -5L/(2n) and variance 5L/n to leading order;
    # the O(1/n^2) terms are ~10% here, so a 25% band on the slope.
    r = log_norm_variance(32, depths, "relu", key=jax.random.PRNGKey(5), n_samples=2000)
    assert r.slope == pytest.approx(5 / 32, rel=0.25)
    np.testing.assert_allclose(r.mean, -5 * np.array(depths) / 64, rtol=0.3, atol=0.02)


@pytest.mark.slow
def test_relu_top_exponent_large_width():
    # n = 64, 16 chains x 500 steps = 8000 factors; per-step sd ~ 0.14, SE ~ 1.6e-3.
    # -5/(4n) = -0.0195 and the exact law -0.0201 differ by 5e-4 < SE.
    n = 64
    res = lyapunov_exponents(n, 500, "relu", key=jax.random.PRNGKey(11), n_samples=16)
    assert abs(res.exponents[0] - relu_top_exponent(n, exact=True)) < 4 * res.stderr[0]
    assert abs(res.exponents[0] + 5 / (4 * n)) < 4 * res.stderr[0] + 2.3 / n**2
