"""The ``lyapunov`` preset and config group: configs composed for real, their one-line
validation errors, the stage's closed forms, and one tiny sweep run end to end through
the console script (``logger=none``; widths 4 and 16 x 2 seeds, 64 chains of 6 factors
per kind and run).

Cost: the tiny sweep is about 25 s on 2 busy CPU cores, most of it start-up and the
NTK and Jacobian compilations of the two widths.
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from scipy.special import polygamma

import nthexp as nx
from nthexp.experiment import ConfigError, find_conf_dir, validate
from nthexp.experiment._lyapunov import (
    _closed_forms,
    lyapunov_metrics,
    relu_log_norm_rate,
)
from nthexp.experiment._validate import build_model
from nthexp.report._lyapunov import FIGURES, K_SE

CONF_DIR = find_conf_dir()
from test_presets import _sweep  # noqa: E402 - one sweep runner for the preset tests

WIDTHS, SEEDS, STEPS, CHAINS = (4, 16), (0, 1), 6, 64
TINY = [
    "experiment=lyapunov",
    f"model.width={','.join(map(str, WIDTHS))}",
    f"seed={','.join(map(str, SEEDS))}",
    f"lyapunov.steps={STEPS}",
    f"lyapunov.n_samples={CHAINS}",
    "lyapunov.log_norm_depths=[1,2,4,8]",
    "lyapunov.log_norm_samples=500",
]


def _compose(overrides=(), hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "config", overrides=list(overrides), return_hydra_config=hydra_cfg
        )


# ---------------------------------------------------------------- configs


def test_preset_composes_and_validates():
    cfg = _compose(["experiment=lyapunov"], hydra_cfg=True)
    assert dict(cfg.hydra.sweeper.params) == {
        "model.width": "2,4,8,16,32,64",
        "seed": "0,1,2",
    }
    cfg = _compose(["experiment=lyapunov"])
    validate(cfg)
    assert cfg.lyapunov.enabled and list(cfg.lyapunov.kinds) == [
        "gaussian",
        "relu",
        "network",
    ]
    # bias-free ReLU layers at He scaling: the network kind has the relu kind's law
    assert (cfg.model.activation, cfg.model.b_std) == ("relu", 0.0)
    assert cfg.model.w_std == pytest.approx(math.sqrt(2.0))
    assert not cfg.dynamics.enabled
    assert not _compose().lyapunov.enabled
    validate(_compose(["lyapunov=default", "model=narrow_deep"]))


def test_preset_header_states_command_and_measured_cost():
    head = (CONF_DIR / "experiment" / "lyapunov.yaml").read_text().splitlines()[:10]
    assert head[0] == "# @package _global_"
    assert any('make run ARGS="experiment=lyapunov"' in line for line in head)
    cost = [line for line in head if "Cost:" in line]
    assert cost and "measured" in cost[0] and "minute" in cost[0], head
    assert "COST_TBD" not in "".join(head)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["lyapunov.kinds=[gaussian,lognormal]"],
            "lyapunov.kinds=['gaussian', 'lognormal'] is not allowed; must be a "
            "non-empty list of distinct values from ['gaussian', 'network', 'relu']",
        ),
        (
            ["lyapunov.kinds=[]"],
            "lyapunov.kinds=[] is not allowed; must be a non-empty list of distinct "
            "values from ['gaussian', 'network', 'relu']",
        ),
        (
            ["lyapunov.kinds=[relu,relu]"],
            "lyapunov.kinds=['relu', 'relu'] is not allowed; must be a non-empty list "
            "of distinct values from ['gaussian', 'network', 'relu']",
        ),
        (
            ["lyapunov.steps=0"],
            "lyapunov.steps=0 is not allowed; must be an integer >= 1",
        ),
        (
            ["lyapunov.n_samples=1"],
            "lyapunov.n_samples=1 is not allowed; must be an integer >= 2",
        ),
        (
            ["lyapunov.log_norm_depths=[4,2]"],
            "lyapunov.log_norm_depths=[4, 2] is not allowed; must be a list of "
            "increasing integers >= 1 (empty: none)",
        ),
        (
            ["lyapunov.log_norm_depths=[0,2]"],
            "lyapunov.log_norm_depths=[0, 2] is not allowed; must be a list of "
            "increasing integers >= 1 (empty: none)",
        ),
        (
            ["lyapunov.log_norm_samples=1.5"],
            "lyapunov.log_norm_samples=1.5 is not allowed; must be an integer >= 2",
        ),
        (
            ["lyapunov.enabled=maybe"],
            "lyapunov.enabled='maybe' is not allowed; must be true or false",
        ),
        (
            ["model=resnet"],
            "lyapunov.kinds=['gaussian', 'relu', 'network'] is not allowed; may hold "
            "'network' only with an MLP (model.name 'mlp' or 'narrow_deep'); got "
            "model.name='resnet', whose blocks are not layer-to-layer maps",
        ),
    ],
)
def test_lyapunov_validation_is_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(_compose(["experiment=lyapunov", *overrides]))
    assert str(err.value) == message
    assert "\n" not in str(err.value)


def test_unknown_lyapunov_key_is_refused():
    with pytest.raises(
        ConfigError, match=r"^lyapunov\.depth=3 is not allowed; unknown"
    ):
        validate(_compose(["experiment=lyapunov", "+lyapunov.depth=3"]))


def test_resnet_without_network_kind_validates():
    validate(_compose(["lyapunov=default", "model=resnet", "lyapunov.kinds=[relu]"]))


# ---------------------------------------------------------------- closed forms


def test_relu_log_norm_rate():
    # n = 1: K = 1 always, so v = psi_1(1/2) = pi^2 / 2.
    assert relu_log_norm_rate(1) == pytest.approx(math.pi**2 / 2, rel=1e-13)
    # Leading order 5/n (Hanin & Nica 2020): v = 5/n + O(1/n^2), so n v - 5 falls
    # like 1/n (4 times per 4 times the width).
    gaps = [abs(n * relu_log_norm_rate(n) - 5.0) for n in (64, 256, 1024)]
    assert gaps[2] < gaps[1] < gaps[0] < 0.4, gaps
    assert gaps[1] / gaps[2] == pytest.approx(4.0, rel=0.1)


def test_relu_log_norm_rate_matches_monte_carlo():
    # n = 4, L = 4, 20000 products: the variance's standard error (from the fourth
    # moment) is about 2% of it; the exact law holds within 4 of them.
    n, depth, n_samples = 4, 4, 20000
    res = nx.analysis.log_norm_variance(
        n, [depth], "relu", key=jax.random.key(3), n_samples=n_samples
    )
    assert abs(res.variance[0] - depth * relu_log_norm_rate(n)) < 4 * res.stderr[0]
    # the leading order 5L/n is far off at this width (it is 1.25 per factor, not 2.9)
    assert abs(res.variance[0] - 5.0 * depth / n) > 10 * res.stderr[0]


def test_network_closed_forms_follow_the_layer_law():
    s = math.sqrt(2.0)
    relu = nx.models.MLP(width=4, depth=2)
    full, top = _closed_forms("network", relu, 4, s)
    assert full is None
    assert top == nx.analysis.relu_top_exponent(4, s, exact=True)
    # biases change the masks' law: no closed form
    assert _closed_forms("network", nx.models.MLP(4, 2, b_std=0.1), 4, s) == (
        None,
        None,
    )
    # the Jacobian of an identity layer is W, biases or not
    full, top = _closed_forms(
        "network", nx.models.MLP(4, 2, activation="identity", b_std=0.1), 4, s
    )
    np.testing.assert_allclose(full, nx.analysis.lyapunov_closed_form(4, s))
    assert _closed_forms("network", nx.models.MLP(4, 2, activation="tanh"), 4, s) == (
        None,
        None,
    )


def test_stage_records_kinds_whose_chains_all_died():
    """Width 1, 60 ReLU factors: a chain survives with probability 2^-60, so none of
    4 does; the stage records that instead of failing the point."""
    cfg = _compose(
        [
            "lyapunov=default",
            "model.width=1",
            "lyapunov.kinds=[gaussian,relu]",
            "lyapunov.steps=60",
            "lyapunov.n_samples=4",
            "lyapunov.log_norm_depths=[60]",
            "lyapunov.log_norm_samples=4",
        ]
    )
    validate(cfg)
    metrics, arrays, timing = lyapunov_metrics(cfg, build_model(cfg))

    assert metrics["lyap_relu_n_survived"] == 0
    assert metrics["lyap_relu_top_closed"] == pytest.approx(
        nx.analysis.relu_top_exponent(1, exact=True)
    )
    assert "lyap_relu" not in arrays and "lyap_relu_top" not in metrics
    assert metrics["lyap_lognorm_relu_n_survived"] == 0
    assert "lyap_lognorm_relu_var" not in arrays
    # n = 1 Gaussian: lambda_1 = log s + (1/2)[log 2 + psi(1/2)]
    assert metrics["lyap_gaussian_n_survived"] == 4
    assert metrics["lyap_gaussian_top_closed"] == pytest.approx(
        nx.analysis.lyapunov_closed_form(1, math.sqrt(2.0))[0]
    )
    assert arrays["lyap_lognorm_gaussian_var"].shape == (1,)
    assert timing["lyapunov"] > 0


# ---------------------------------------------------------------- end to end


def test_lyapunov_tiny_sweep(tmp_path):
    sweep_dir = tmp_path / "ly"
    res = _sweep(sweep_dir, TINY)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "compared (width, kind) cells agree with the closed form" in res.stdout

    table = pd.read_parquet(sweep_dir / "results.parquet")
    assert len(table) == len(WIDTHS) * len(SEEDS)
    assert (table["lyap_steps"] == STEPS).all()
    assert (table["lyap_n_samples"] == CHAINS).all()
    for kind in ("gaussian", "relu", "network"):
        for name in ("top", "top_stderr", "top_closed", "max_abs_err", "max_z"):
            assert table[f"lyap_{kind}_{name}"].notna().all(), (kind, name)
    assert (table["lyap_gaussian_n_survived"] == CHAINS).all()
    assert table["lyap_gaussian_sum"].notna().all()
    assert table["lyap_relu_sum"].isna().all()  # a masked product loses rank
    for kind in ("gaussian", "relu"):
        assert table[f"lyap_lognorm_{kind}_rate"].notna().all()
    with np.load(sweep_dir / "0" / "spectra.npz") as npz:
        n = int(table.loc[table["run_dir"] == "0", "model.width"].iloc[0])
        assert npz["lyap_gaussian"].shape == npz["lyap_gaussian_closed"].shape == (n,)
        assert npz["lyap_relu"].shape == npz["lyap_network_stderr"].shape == (n,)
        assert "lyap_relu_closed" not in npz.files
        np.testing.assert_array_equal(npz["lyap_lognorm_depths"], [1, 2, 4, 8])
        assert npz["lyap_lognorm_relu_var"].shape == (4,)

    # The closed forms, recomputed here from the stored spectra. Per width: 2 seeds x
    # 64 chains x 6 factors = 768 factors per exponent (fewer for ReLU chains that
    # died); SE from the chain spread, pooled over seeds weighted by surviving chains.
    for width, group in table.groupby("model.width"):
        n = int(width)
        runs = [np.load(sweep_dir / d / "spectra.npz") for d in group["run_dir"]]
        for kind, closed in (
            ("gaussian", nx.analysis.lyapunov_closed_form(n, math.sqrt(2.0))),
            ("relu", [nx.analysis.relu_top_exponent(n, exact=True)]),
            ("network", [nx.analysis.relu_top_exponent(n, exact=True)]),
        ):
            w = group[f"lyap_{kind}_n_survived"].to_numpy(float)
            w = w / w.sum()
            k = len(closed)
            mean = sum(
                wi * r[f"lyap_{kind}"][:k] for wi, r in zip(w, runs, strict=True)
            )
            se = np.sqrt(
                sum(
                    (wi * r[f"lyap_{kind}_stderr"][:k]) ** 2
                    for wi, r in zip(w, runs, strict=True)
                )
            )
            assert np.all(np.abs(mean - closed) < K_SE * se), (
                n,
                kind,
                mean,
                closed,
                se,
            )

    fit = json.loads((sweep_dir / "fits.json").read_text())["lyapunov"]
    assert fit["agree"] is True and fit["k_se"] == K_SE
    assert [c["width"] for c in fit["cells"]] == list(WIDTHS)
    for cell in fit["cells"]:
        assert cell["seeds"] == len(SEEDS)
        assert cell["kinds"]["gaussian"]["compared"] == f"all {cell['width']}"
        assert cell["kinds"]["gaussian"]["factors"] == len(SEEDS) * CHAINS * STEPS
        assert cell["kinds"]["relu"]["compared"] == "lambda_1"
        # the exact log-norm law: psi_1(n/2) for Gaussian factors
        assert cell["log_norm"]["gaussian"]["closed"] == pytest.approx(
            polygamma(1, cell["width"] / 2)
        )
        assert cell["log_norm"]["relu"]["agree"] is True
    for name in FIGURES:
        assert (sweep_dir / "figures" / name).is_file(), name

    report = (sweep_dir / "report.md").read_text()
    assert "## Lyapunov exponents against the closed form" in report
    assert f"{CHAINS} chains of {STEPS} factors" in report
    gauss = fit["cells"][0]["kinds"]["gaussian"]
    assert (
        f"| {WIDTHS[0]} | gaussian | {len(SEEDS)} | {gauss['survived']} / "
        f"{gauss['chains']} | {gauss['factors']} | all {WIDTHS[0]} | "
        f"{gauss['exponents'][0]:.4g} |"
    ) in report
    assert "Overall: every compared value agrees within 4 SE." in report
    assert "**no**" not in report
    assert "Var/L at L = 8" in report
