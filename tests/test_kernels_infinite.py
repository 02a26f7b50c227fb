"""Infinite-width kernels against neural-tangents' values and closed forms."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

import nthexp as nx

REFERENCE = json.loads(
    (Path(__file__).parent / "data" / "nt_infinite_width.json").read_text()
)
X_REF = np.array(REFERENCE["inputs"]["x"])


def _reference_model(case: dict):
    """Build the network that a reference case describes (see its 'description')."""
    h = case["hyperparameters"]
    if case["name"].startswith("resnet"):
        # input Dense, blocks h + Dense(ReLU(h)), readout straight after the blocks
        return nx.models.ResNet(
            width=512,
            depth=h["n_blocks"],
            activation="relu",
            w_std=h["W_std"],
            b_std=h["b_std"],
            alpha=1.0,
        )
    activation = h["nonlinearity"].split()[0]
    return nx.models.MLP(
        width=512,
        depth=h["depth"],
        activation=activation,
        w_std=h["W_std"],
        b_std=h["b_std"],
    )


MLP_CASES = [c for c in REFERENCE["cases"] if "mlp" in c["name"]]
OTHER_CASES = [c for c in REFERENCE["cases"] if "mlp" not in c["name"]]


@pytest.mark.parametrize("case", MLP_CASES + OTHER_CASES, ids=lambda c: c["name"])
@pytest.mark.parametrize("kind", ["ntk", "nngp"])
def test_reference_values(case, kind):
    model = _reference_model(case)
    fn = nx.kernels.infinite_ntk if kind == "ntk" else nx.kernels.infinite_nngp
    expected = np.array(case[kind])
    np.testing.assert_allclose(
        fn(model, X_REF), expected, rtol=1e-10, atol=0, err_msg=f"{case['name']} {kind}"
    )


@pytest.mark.parametrize("case", MLP_CASES[:3] + OTHER_CASES, ids=lambda c: c["name"])
def test_cross_blocks_match_the_full_kernel(case):
    """K(x1, x2) computed from separate sets equals the block of K on their union,
    including rows that appear in both (the angle must be exactly 0 there)."""
    model = _reference_model(case)
    full = nx.kernels.infinite_ntk(model, X_REF)
    block = nx.kernels.infinite_ntk(model, X_REF[3:], X_REF[:11])
    np.testing.assert_allclose(block, full[3:, :11], rtol=1e-12, atol=0)


def test_relu_depth_one_closed_form():
    """One hidden ReLU layer, no bias, w_std^2 = 2, angle from a plain arccos (hence
    rtol 1e-7): NNGP = 2 E[relu relu], NTK = NNGP + 2 S_1 E[relu' relu']."""
    x = X_REF[:8]
    d = x.shape[1]
    model = nx.models.MLP(width=1, depth=1, w_std=math.sqrt(2.0), b_std=0.0)
    norms = np.linalg.norm(x, axis=1)
    t = np.arccos(np.clip(x @ x.T / np.outer(norms, norms), -1, 1))
    s1 = 2 * (x @ x.T) / d  # pre-activation covariance of the hidden layer
    e_phiphi = (
        2
        * np.outer(norms, norms)
        / d
        / (2 * np.pi)
        * (np.sin(t) + (np.pi - t) * np.cos(t))
    )
    nngp = 2 * e_phiphi
    ntk = nngp + 2 * s1 * (np.pi - t) / (2 * np.pi)
    np.testing.assert_allclose(nx.kernels.infinite_nngp(model, x), nngp, rtol=1e-7)
    np.testing.assert_allclose(nx.kernels.infinite_ntk(model, x), ntk, rtol=1e-7)


def test_identity_network_is_linear_kernel():
    """Identity activation, no bias: NNGP = w^{2(L+1)} x.x'/d, NTK = (L+1) NNGP."""
    x = X_REF[:6]
    depth, w = 3, 1.3
    model = nx.models.MLP(
        width=4, depth=depth, activation="identity", w_std=w, b_std=0.0
    )
    nngp = w ** (2 * (depth + 1)) * (x @ x.T) / x.shape[1]
    np.testing.assert_allclose(nx.kernels.infinite_nngp(model, x), nngp, rtol=1e-13)
    np.testing.assert_allclose(
        nx.kernels.infinite_ntk(model, x), (depth + 1) * nngp, rtol=1e-13
    )


def test_float64_needs_x64_and_says_how():
    model = nx.models.MLP(width=4, depth=1)
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match="jax_enable_x64"):
            nx.kernels.infinite_ntk(model, X_REF)
    finally:
        jax.config.update("jax_enable_x64", True)


def test_mismatched_input_dimensions():
    model = nx.models.MLP(width=4, depth=1)
    with pytest.raises(ValueError, match="same input dimension"):
        nx.kernels.infinite_ntk(model, X_REF, X_REF[:, :3])
