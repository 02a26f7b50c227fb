"""nthexp.data: shapes, scaling, reproducibility, targets and the error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits

from nthexp import data

CASES = [("gaussian", 5), ("torus", 6), ("digits", None)]


@pytest.mark.parametrize(("name", "d_in"), CASES)
def test_shapes_norms_and_info(name, d_in):
    ds = data.load(name, 20, d_in=d_in, seed=3)
    d = 64 if d_in is None else d_in

    assert ds.name == name
    assert ds.x.shape == (20, d) and ds.x.dtype == np.float64
    assert ds.y.shape == (20,) and ds.y.dtype == np.float64
    np.testing.assert_allclose(np.sum(ds.x**2, axis=1), d, rtol=1e-13)
    info = json.loads(json.dumps(ds.info))
    assert info["n"] == 20 and info["d_in"] == d and info["seed"] == 3
    assert info["name"] == name and info["source"] and info["target_rule"]


@pytest.mark.parametrize(("name", "d_in"), CASES)
def test_seed_reproducible_and_distinct(name, d_in):
    a = data.load(name, 10, d_in=d_in, seed=0)
    b = data.load(name, 10, d_in=d_in, seed=0)
    c = data.load(name, 10, d_in=d_in, seed=1)

    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)


def test_gaussian_is_uniform_on_sphere():
    # Uniform on the sphere: mean 0 and second moment E[x x^T] = I (since |x|^2 = D).
    n_samples, d_in = 4000, 3
    x = data.load("gaussian", n_samples, d_in=d_in, seed=0).x
    tol = 5.0 / np.sqrt(n_samples)  # about 5 standard errors of entries of size 1
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=tol)
    np.testing.assert_allclose(x.T @ x / n_samples, np.eye(d_in), atol=tol)


def test_torus_embedding():
    ds = data.load("torus", 50, d_in=4, seed=2)
    pairs = ds.x.reshape(50, 2, 2)  # (n, angle, cos/sin)

    # Each (cos t, sin t) pair has norm 1 before the sqrt(2) rescale to |x|^2 = 4.
    np.testing.assert_allclose(np.sum(pairs**2, axis=-1), 2.0, rtol=1e-13)
    angles = np.arctan2(pairs[..., 1], pairs[..., 0]) % (2 * np.pi)
    assert angles.min() < 0.5 and angles.max() > 2 * np.pi - 0.5


def test_synthetic_target_rule():
    ds = data.load("gaussian", 30, d_in=4, seed=7)
    _, u_stream = np.random.SeedSequence(7).spawn(2)
    u = np.random.default_rng(u_stream).standard_normal(4)

    np.testing.assert_allclose(ds.y, np.tanh(ds.x @ u / 2.0), rtol=1e-14)
    assert "tanh" in ds.info["target_rule"]


@pytest.mark.parametrize("name", ["gaussian", "torus"])
def test_larger_n_extends_the_draw(name):
    # Separate streams: the teacher u does not depend on n, and rows fill in order.
    small = data.load(name, 5, d_in=4, seed=4)
    big = data.load(name, 9, d_in=4, seed=4)
    np.testing.assert_array_equal(small.x, big.x[:5])
    np.testing.assert_array_equal(small.y, big.y[:5])


def test_digits_preprocessing_and_targets():
    bunch = load_digits()
    images = bunch.data.astype(np.float64)
    centred = images - images.mean(axis=0)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True) * 8.0
    ds = data.load("digits", 40, seed=5)

    # Recover which images were drawn; centring uses the whole set, not the draw.
    match = np.argmin(((ds.x[:, None, :] - unit[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(ds.x, unit[match], rtol=0, atol=1e-12)
    assert np.unique(match).size == 40
    np.testing.assert_array_equal(ds.y, np.where(bunch.target[match] % 2 == 0, 1, -1))
    assert data.load("digits", 40, d_in=64, seed=5).x.tolist() == ds.x.tolist()


def test_digits_full_set():
    ds = data.load("digits", 1797, seed=0)
    assert ds.x.shape == (1797, 64)
    assert set(np.unique(ds.y)) == {-1.0, 1.0}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            dict(name="mnist", n=4),
            r"data\.name='mnist' .*'gaussian', 'torus', 'digits'",
        ),
        (
            dict(name="digits", n=1),
            r"^data\.n=1 is not allowed; must be an integer >= 2$",
        ),
        (dict(name="digits", n=2.5), r"data\.n=2\.5 is not allowed"),
        (dict(name="digits", n=True), r"data\.n=True is not allowed"),
        (dict(name="digits", n=1798), r"data\.n=1798 .*data set has 1797 samples"),
        (dict(name="digits", n=4, d_in=32), r"data\.d_in=32 .*None or 64"),
        (dict(name="torus", n=4, d_in=3), r"data\.d_in=3 .*'torus'; must be an even"),
        (dict(name="torus", n=4, d_in=0), r"data\.d_in=0 is not allowed; .*>= 1"),
        (dict(name="gaussian", n=4, d_in=0), r"data\.d_in=0 is not allowed; .*>= 1"),
        (dict(name="gaussian", n=4), r"data\.d_in=None .*'gaussian'"),
        (dict(name="gaussian", n=4, d_in=2, seed=-1), r"data\.seed=-1 is not allowed"),
    ],
)
def test_errors(kwargs, match):
    name, n = kwargs.pop("name"), kwargs.pop("n")
    with pytest.raises(ValueError, match=match) as info:
        data.load(name, n, **kwargs)
    assert "\n" not in str(info.value)


def test_non_finite_row_names_index():
    x = np.ones((4, 3))
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"row 2 of x is not finite"):
        data.check_rows(x, "gaussian")


def test_duplicated_rows_warn():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    with pytest.warns(UserWarning, match=r"2 duplicated rows in x: 2 \(= row 0\)"):
        data.check_rows(x, "torus")

    # d_in = 1 leaves only the two points +-1, so duplicates are certain.
    with pytest.warns(UserWarning, match=r"data\.name='gaussian': \d+ duplicated"):
        data.load("gaussian", 5, d_in=1, seed=0)
