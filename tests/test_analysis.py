"""nthexp.analysis: spectra, corrections with Weyl's bound, and power-law fits."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from nthexp import analysis

EPS64 = np.finfo(np.float64).eps


def _psd(rng, n, rank=None):
    """A random PSD ``(n, n)`` matrix of the given rank (full by default)."""
    a = rng.standard_normal((n, n if rank is None else rank))
    return a @ a.T


# ---------------------------------------------------------------------------- spectrum


def test_spectrum_matches_eigvalsh():
    rng = np.random.default_rng(0)
    k = _psd(rng, 6) + np.eye(6)
    s = analysis.spectrum(k)
    ref = np.linalg.eigvalsh(k)

    np.testing.assert_allclose(s.eigenvalues, ref, rtol=1e-12)
    assert np.all(np.diff(s.eigenvalues) >= 0)
    assert s.lambda_min == pytest.approx(ref[0], rel=1e-12)
    assert s.lambda_max == pytest.approx(ref[-1], rel=1e-12)
    assert s.trace == pytest.approx(np.trace(k), rel=1e-14)
    assert s.cond == pytest.approx(ref[-1] / ref[0], rel=1e-10)
    assert (s.rank, s.n_zero) == (6, 0)
    assert s.tol == pytest.approx(6 * EPS64 * ref[-1], rel=1e-12)
    assert json.loads(json.dumps(s.to_dict()))["rank"] == 6


def test_spectrum_accepts_jax_and_symmetrises():
    rng = np.random.default_rng(1)
    k = _psd(rng, 5) + np.eye(5)
    skew = 1e-3 * np.triu(rng.standard_normal((5, 5)), 1)
    s = analysis.spectrum(jnp.asarray(k + skew - skew.T))
    np.testing.assert_allclose(s.eigenvalues, np.linalg.eigvalsh(k), rtol=1e-12)


def test_spectrum_rank_deficient_reports_zeros_and_warns():
    rng = np.random.default_rng(2)
    k = _psd(rng, 8, rank=5)
    with pytest.warns(UserWarning, match=r"cond=inf .*3 of N=8 eigenvalues within tol"):
        s = analysis.spectrum(k)

    assert (s.rank, s.n_zero) == (5, 3)
    np.testing.assert_array_equal(s.eigenvalues[:3], 0.0)
    assert s.lambda_min == 0.0 and s.cond == np.inf


def test_spectrum_tiny_negative_is_zero_but_clear_negative_raises():
    k = np.diag([-1e-15, 1.0, 2.0])
    with pytest.warns(UserWarning, match="ill-conditioned"):
        s = analysis.spectrum(k)
    assert s.eigenvalues[0] == 0.0 and s.n_zero == 1

    with pytest.raises(
        analysis.NegativeEigenvalueError,
        match=r"lambda_min=-0\.001 < -tol \(lambda_max=2, tol=1\.33e-15, N=3\).*"
        r"computed differently.*wrong model parameters.*float32 round-off",
    ):
        analysis.spectrum(np.diag([-1e-3, 1.0, 2.0]))
    assert issubclass(analysis.NegativeEigenvalueError, ValueError)


def test_spectrum_tolerance_uses_input_dtype():
    # -1e-8 is round-off for float32 (eps 1.2e-7) but clearly negative for float64.
    k = np.diag([-1e-8, 1.0, 1.5])
    s = None
    with pytest.warns(UserWarning, match="ill-conditioned"):
        s = analysis.spectrum(k.astype(np.float32))
    assert s.n_zero == 1
    assert s.tol == pytest.approx(3 * np.finfo(np.float32).eps * 1.5, rel=1e-6)
    with pytest.raises(analysis.NegativeEigenvalueError):
        analysis.spectrum(k)


def test_spectrum_ill_conditioned_warns_with_explicit_tol():
    k = np.diag([1e-17, 1.0])
    with pytest.warns(UserWarning, match=r"cond=1e\+17 > 1/eps=4\.5e\+15"):
        s = analysis.spectrum(k, tol=0.0)
    assert s.rank == 2


@pytest.mark.parametrize(
    ("k", "match"),
    [
        (np.ones((2, 3)), r"k must be a non-empty square \(N, N\) matrix; got shape"),
        (np.ones(3), r"got shape \(3,\)"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), r"2 non-finite entries.*\[0, 1\]"),
    ],
)
def test_spectrum_bad_input(k, match):
    with pytest.raises(ValueError, match=match):
        analysis.spectrum(k)


def test_spectrum_bad_tol():
    with pytest.raises(ValueError, match=r"tol=-1\.0 is not allowed"):
        analysis.spectrum(np.eye(2), tol=-1.0)


# -------------------------------------------------------------------------- correction


def test_correction_norms():
    rng = np.random.default_rng(3)
    k_inf = _psd(rng, 5) + np.eye(5)
    d = rng.standard_normal((5, 5))
    d = 0.1 * (d + d.T)
    c = analysis.correction(k_inf + d, k_inf)

    op = np.max(np.abs(np.linalg.eigvalsh(d)))
    assert c.op == pytest.approx(op, rel=1e-12)
    assert c.fro == pytest.approx(np.linalg.norm(d), rel=1e-12)
    assert c.rel_op == pytest.approx(op / np.linalg.eigvalsh(k_inf)[-1], rel=1e-12)
    assert c.rel_fro == pytest.approx(np.linalg.norm(d) / np.linalg.norm(k_inf))
    assert c.weyl_bound == pytest.approx(c.lambda_min_inf - c.op, rel=1e-14)
    assert json.loads(json.dumps(c.to_dict()))["weyl_holds"] is True


def test_weyl_holds_on_random_symmetric_pairs():
    # Property test over many random pairs, including indefinite ones and large
    # perturbations: Weyl's inequality holds for every symmetric pair.
    rng = np.random.default_rng(4)
    n_pairs = 300
    for i in range(n_pairs):
        n = int(rng.integers(1, 12))
        a = rng.standard_normal((n, n))
        b = rng.standard_normal((n, n)) * 10.0 ** rng.uniform(-8, 1)
        k_inf = a @ a.T if i % 2 else a + a.T
        c = analysis.correction(k_inf + b + b.T, k_inf)
        assert c.weyl_holds, f"pair {i}: {c}"
        assert c.lambda_min_emp >= c.weyl_bound - c.slack


def test_weyl_bound_tight_for_shift():
    # K_emp = K_inf - c I: every eigenvalue moves by -c, so the bound is an equality.
    rng = np.random.default_rng(5)
    k_inf = _psd(rng, 7) + 0.5 * np.eye(7)
    shift = 0.3
    c = analysis.correction(k_inf - shift * np.eye(7), k_inf)

    assert c.op == pytest.approx(shift, rel=1e-12)
    assert c.weyl_holds
    scale = np.linalg.eigvalsh(k_inf)[-1]
    assert abs(c.lambda_min_emp - c.weyl_bound) <= 7 * EPS64 * scale * 10


def test_correction_bad_input():
    with pytest.raises(ValueError, match=r"same shape; got \(3, 3\) and \(2, 2\)"):
        analysis.correction(np.eye(3), np.eye(2))
    with pytest.raises(ValueError, match="k_inf is the zero matrix"):
        analysis.correction(np.eye(2), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"k_emp has 1 non-finite entries"):
        analysis.correction(np.diag([1.0, np.inf]), np.eye(2))


# ----------------------------------------------------------------------- fit_power_law

WIDTHS = (16.0, 32.0, 64.0, 128.0, 256.0)
DEPTHS = (1.0, 2.0, 4.0, 8.0)


def _table(rng, n_seeds=5, noise=0.05):
    """err = 3 width^-0.5 depth^0.7 exp(noise z); one row per width, depth and seed."""
    w, d, s = np.meshgrid(WIDTHS, DEPTHS, np.arange(n_seeds), indexing="ij")
    w, d, s = w.ravel(), d.ravel(), s.ravel()
    z = rng.standard_normal(w.shape)
    y = 3.0 * w**-0.5 * d**0.7 * np.exp(noise * z)
    return pd.DataFrame({"width": w, "depth": d, "seed": s, "err": y})


def test_fit_recovers_exponents():
    rng = np.random.default_rng(6)
    fit = analysis.fit_power_law(_table(rng), "err", ["width", "depth"])

    assert fit.stderr_method == "seed_spread" and fit.n_seeds == 5
    assert fit.n_points == len(WIDTHS) * len(DEPTHS) * 5
    assert fit.exponents["width"] == pytest.approx(-0.5, abs=0.02)
    assert fit.exponents["depth"] == pytest.approx(0.7, abs=0.02)
    assert fit.intercept == pytest.approx(np.log(3.0), abs=0.05)
    assert fit.r2 > 0.99
    assert fit.ranges == {"width": (16.0, 256.0), "depth": (1.0, 8.0)}
    assert fit.residuals.shape == (fit.n_points,)
    for name in fit.factors:
        low, high = fit.interval[name]
        assert low < fit.exponents[name] < high
    d = json.loads(json.dumps(fit.to_dict()))
    assert d["factors"] == ["width", "depth"] and d["stderr_method"] == "seed_spread"


def test_fit_noise_free_is_exact():
    rng = np.random.default_rng(7)
    fit = analysis.fit_power_law(_table(rng, noise=0.0), "err", ["width", "depth"])
    assert fit.exponents["width"] == pytest.approx(-0.5, abs=1e-12)
    assert fit.stderr["width"] == pytest.approx(0.0, abs=1e-12)


def test_fit_interval_coverage():
    # 200 independent tables; the 95% seed-spread interval should cover the truth in
    # about 95% of them (binomial sd 1.5%, so [0.85, 0.99] is a wide band).
    rng = np.random.default_rng(8)
    n_draws = 200
    covered = {"width": 0, "depth": 0}
    truth = {"width": -0.5, "depth": 0.7}
    for _ in range(n_draws):
        fit = analysis.fit_power_law(_table(rng, n_seeds=4), "err", ["width", "depth"])
        for name, value in truth.items():
            low, high = fit.interval[name]
            covered[name] += low <= value <= high
    for name in truth:
        assert 0.85 <= covered[name] / n_draws <= 0.99, (name, covered[name])


def test_fit_single_seed_uses_ols():
    rng = np.random.default_rng(9)
    table = _table(rng, n_seeds=1)
    fit = analysis.fit_power_law(table, "err", ["width", "depth"])
    assert fit.stderr_method == "ols" and fit.n_seeds == 1

    x = np.column_stack([np.ones(len(table)), np.log(table.width), np.log(table.depth)])
    resid = np.log(table.err) - x @ np.linalg.lstsq(x, np.log(table.err), rcond=None)[0]
    sigma2 = resid @ resid / (len(table) - 3)
    se = np.sqrt(sigma2 * np.linalg.inv(x.T @ x)[1, 1])
    assert fit.stderr["width"] == pytest.approx(se, rel=1e-10)

    no_seed = analysis.fit_power_law(
        table.drop(columns="seed"), "err", ["width"], seed_column=None
    )
    assert no_seed.stderr_method == "ols"


def test_fit_excludes_non_positive_rows_with_warning():
    rng = np.random.default_rng(10)
    table = _table(rng)
    table.loc[[0, 3], "err"] = [0.0, np.nan]
    with pytest.warns(UserWarning, match=r"2 of 100 rows excluded .*'err'"):
        fit = analysis.fit_power_law(table, "err", ["width", "depth"])
    assert fit.n_points == 98


@pytest.mark.parametrize(
    ("change", "args", "match"),
    [
        (None, ("loss", ["width"]), r"response column 'loss' is not in the table"),
        (None, ("err", ["lr"]), r"factor column 'lr' is not in the table"),
        ("one_depth", ("err", ["width", "depth"]), r"factor 'depth' does not vary"),
        ("few_rows", ("err", ["width", "depth"]), r"3 usable rows .* need at least 4"),
        ("neg_width", ("err", ["width"]), r"factor 'width' has 1 non-positive"),
        (None, ("err", []), r"give at least one factor"),
        ("collinear", ("err", ["width", "width2"]), r"linearly dependent"),
        ("no_seed", ("err", ["width"]), r"seed column 'seed' .*seed_column=None"),
    ],
)
def test_fit_errors(change, args, match):
    table = _table(np.random.default_rng(11), n_seeds=2)
    if change == "one_depth":
        table = table[table.depth == 1.0]
    elif change == "few_rows":
        table = table.iloc[[0, 4, 9]]
    elif change == "neg_width":
        table.loc[0, "width"] = -1.0
    elif change == "collinear":
        table["width2"] = table.width**2
    elif change == "no_seed":
        table = table.drop(columns="seed")
    with pytest.raises(ValueError, match=match):
        analysis.fit_power_law(table, *args)


def test_fit_bad_level():
    with pytest.raises(ValueError, match=r"level=1\.5 is not allowed"):
        analysis.fit_power_law(
            _table(np.random.default_rng(0)), "err", ["w"], level=1.5
        )
