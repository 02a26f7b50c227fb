"""Weyl bound, fitted-law bound, the budget tool and the nthexp-bound CLI."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import nthexp as nx
from nthexp import analysis
from nthexp.report import bound_cli

LAWS = analysis.BoundLaws(
    a=0.8,
    b=0.2,
    c=2.0,
    p=-0.5,
    q=1.5,
    source="test laws",
    ranges={"depth": (1, 8), "width": (64, 1024)},
)


def test_weyl_bound_never_violated_on_random_pairs():
    # 400 random pairs (half with K_inf PSD, half symmetric indefinite; perturbations
    # of both signs, sizes 1e-6 to 10): lambda_min(A + E) >= weyl_bound within N eps.
    rng = np.random.default_rng(0)
    n_pairs = 400
    for i in range(n_pairs):
        n = int(rng.integers(1, 10))
        a = rng.standard_normal((n, n))
        k_inf = a @ a.T if i % 2 else 0.5 * (a + a.T) + n * np.eye(n)
        e = rng.standard_normal((n, n)) * 10.0 ** rng.uniform(-6, 1)
        k_emp = k_inf + 0.5 * (e + e.T)
        lam_inf = np.linalg.eigvalsh(k_inf)[0]
        c = analysis.correction(k_emp, k_inf)
        bound = analysis.weyl_bound(lam_inf, c.op)
        assert np.linalg.eigvalsh(k_emp)[0] >= bound - c.slack, i
        assert c.weyl_holds, i


def test_weyl_bound_values_and_errors():
    assert analysis.weyl_bound(2.0, 0.5) == 1.5
    np.testing.assert_array_equal(analysis.weyl_bound([1.0, 2.0], 1.0), [0.0, 1.0])
    with pytest.raises(ValueError, match=r"op_norm=-1\.0 is not allowed; must be a"):
        analysis.weyl_bound(1.0, -1.0)
    assert analysis.weyl_bound(-1.0, 0.5) == -1.5  # any symmetric pair
    with pytest.raises(ValueError, match=r"lambda_min_inf=nan is not allowed"):
        analysis.weyl_bound(np.nan, 1.0)


def test_certified_bound_from_laws():
    b = analysis.certified_bound(256, 4, 128, LAWS)
    assert b == pytest.approx(0.8 * 4 + 0.2 - 2.0 * 256**-0.5 * 4**1.5)
    grid = analysis.certified_bound(np.array([64, 1024]), 2, 128, LAWS)
    assert grid.shape == (2,) and grid[1] > grid[0]
    with pytest.raises(
        ValueError, match=r"width=0\.0 is not allowed; must be a finite"
    ):
        analysis.certified_bound(0, 4, 128, LAWS)
    assert LAWS.extrapolates(width=2048) and not LAWS.extrapolates(128, 4)


def test_laws_round_trip_and_bad_laws():
    again = analysis.BoundLaws.from_dict(json.loads(json.dumps(LAWS.to_dict())))
    assert again == LAWS
    with pytest.raises(ValueError, match=r"missing or malformed: 'op_norm'"):
        analysis.BoundLaws.from_dict({"lambda_min_inf": {"a": 1, "b": 0}})
    with pytest.raises(ValueError, match=r"c=-1\.0 is not allowed"):
        analysis.BoundLaws(a=1, b=0, c=-1.0, p=-0.5, q=1)


@pytest.mark.parametrize(("width", "depth", "d_in"), [(7, 3, 5), (1, 1, 64), (9, 1, 2)])
def test_param_count_matches_model(width, depth, d_in):
    params = nx.models.init(
        nx.models.MLP(width=width, depth=depth), jax.random.PRNGKey(0), d_in
    )
    assert analysis.mlp_param_count(width, depth, d_in) == nx.models.param_count(params)


def test_optimal_architecture_on_constant_budget():
    arch = analysis.optimal_architecture(100_000, 64, 128, LAWS)
    c = arch.curve
    assert np.all(c["params"] <= 100_000)
    # Widest within the budget: one more unit would exceed it.
    assert np.all(analysis.mlp_param_count(c["width"] + 1, c["depth"], 64) > 100_000)
    best = int(np.argmax(c["bound"]))
    assert (arch.depth, arch.width) == (int(c["depth"][best]), int(c["width"][best]))
    # Brute force over the same curve's neighbours: no (w, L) within budget is better.
    w, d = np.meshgrid(np.arange(1, 2000), np.arange(1, 40), indexing="ij")
    ok = analysis.mlp_param_count(w, d, 64) <= 100_000
    brute = analysis.certified_bound(w[ok], d[ok], 128, LAWS)
    assert arch.bound == pytest.approx(brute.max(), rel=1e-12)
    assert arch.bound > 0 and 1 < arch.depth < 40
    assert arch.to_dict()["laws"]["source"] == "test laws"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (
            (66, 64, 128),
            r"params=66 is not allowed; one hidden layer of width 1 on "
            r"d_in=64 inputs already needs 67 parameters; must be >= 67",
        ),
        ((-5, 64, 128), r"params=-5 is not allowed; must be an integer >= 1"),
        ((1000, 0, 128), r"d_in=0 is not allowed; must be an integer >= 1"),
        ((1000, 4, 0), r"n=0 is not allowed"),
    ],
)
def test_optimal_architecture_refuses_impossible_budgets(args, match):
    with pytest.raises(ValueError, match=match):
        analysis.optimal_architecture(*args, LAWS)


def test_cli_with_laws_file(tmp_path, capsys):
    laws = tmp_path / "fits.json"
    laws.write_text(json.dumps({"bound_laws": LAWS.to_dict()}))
    rc = bound_cli.main(
        [
            "--params",
            "100000",
            "--d-in",
            "64",
            "--n",
            "128",
            "--laws",
            str(laws),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "laws: test laws" in out and "optimum for P=100000, D_in=64, N=128" in out
    png = tmp_path / "out" / "bound_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "out" / "bound.json").read_text())
    arch = analysis.optimal_architecture(100_000, 64, 128, LAWS)
    assert (saved["width"], saved["depth"]) == (arch.width, arch.depth)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (
            ["--params", "50", "--d-in", "64", "--n", "128"],
            "--params=50 is not allowed; one hidden layer of width 1 on d_in=64 inputs "
            "needs 67; must be >= 67",
        ),
        (
            ["--params", "1000", "--d-in", "-3", "--n", "128"],
            "--d-in=-3 is not allowed; must be a positive integer",
        ),
        (
            ["--params", "1000", "--d-in", "3", "--n", "0"],
            "--n=0 is not allowed; must be a positive integer",
        ),
    ],
)
def test_cli_refuses_impossible_budgets(argv, match, capsys, tmp_path):
    rc = bound_cli.main([*argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == f"nthexp-bound: error: {match}\n"
    assert not (tmp_path / "bound_curve.png").exists()


def test_default_laws_from_digits_kernel():
    # Small N keeps this cheap; the law is a linear fit of lambda_min(K_inf) in depth.
    laws = analysis.digits_relu_laws(24, depths=(1, 2, 4))
    assert laws.a > 0 and laws.p == -0.5 and laws.n_ref == 24
    assert "digits" in laws.source and "C = 1 assumed" in laws.source
    x = nx.data.load("digits", 24).x
    lam = [
        np.linalg.eigvalsh(
            np.asarray(nx.kernels.infinite_ntk(nx.models.MLP(width=1, depth=d), x))
        )[0]
        for d in (1, 2, 4)
    ]
    assert laws.a == pytest.approx(np.polyfit([1, 2, 4], lam, 1)[0], rel=1e-10)
