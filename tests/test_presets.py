"""The ``late_time`` and ``depth_width_ratio`` presets: configs composed for real,
their validation, their estimators, and one tiny sweep of each run end to end through
the console script (smoke sizes: ``logger=none``, two widths, two seeds).

Cost: the late_time sweep compiles the gradient flow and O3/O4 once per width (about
20 s of CPU per width); the depth_width_ratio sweep compiles 4 small NTK shapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from nthexp.experiment import ConfigError, find_conf_dir, validate
from nthexp.experiment._depth_width import diag_metrics, log_second_moment, ntk_diag
from nthexp.experiment._late_time import LATE_TIME_ERRORS
from nthexp.report._depth_width import _moment

CONF_DIR = find_conf_dir()
NTHEXP = str(Path(sys.executable).parent / "nthexp")

LATE_TIME_TINY = ["experiment=late_time", "model.width=50,100", "seed=0,1"]
DEPTH_WIDTH_TINY = [
    "experiment=depth_width_ratio",
    "model.depth=2,4",
    "model.width=16,32",
    "seed=0,1",
    "data.n=8",
]


def _compose(overrides=()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _sweep(sweep_dir: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled")
    return subprocess.run(
        [NTHEXP, "-m", *overrides, "logger=none", f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


# ---------------------------------------------------------------- configs


def test_presets_compose_and_validate():
    lt = _compose(["experiment=late_time"])
    validate(lt)
    assert lt.dynamics.enabled and lt.dynamics.optimizer == "flow"
    assert (lt.model.depth, lt.model.activation, lt.model.use_bias) == (
        1,
        "tanh",
        False,
    )
    assert (lt.data.name, lt.data.n, lt.data.d_in, lt.dynamics.n_eval) == (
        "gaussian",
        7,
        4,
        2,
    )
    dw = _compose(["experiment=depth_width_ratio"])
    validate(dw)
    assert not dw.dynamics.enabled
    assert dw.model.activation == "relu"
    assert not _compose().dynamics.enabled


@pytest.mark.parametrize("name", ["late_time", "depth_width_ratio"])
def test_preset_header_states_command_and_cost(name):
    head = (CONF_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()[:8]
    assert any(f'make run ARGS="experiment={name}"' in line for line in head)
    assert any("Cost:" in line and "minute" in line for line in head), head


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["dynamics.optimizer=gd"],
            "dynamics.learning_rate=None is not allowed; must be a number > 0 with "
            "dynamics.optimizer='gd'",
        ),
        (
            ["dynamics.n_eval=6"],
            "dynamics.n_eval=6 is not allowed; must leave >= 2 of data.n=7 points "
            "for training",
        ),
        (
            ["dynamics.solver=euler"],
            "dynamics.solver='euler' is not allowed; must be one of ['dopri8', "
            "'kvaerno5', 'tsit5']",
        ),
        (
            ["dynamics.tol=-1.0"],
            "dynamics.tol=-1.0 is not allowed; must be a number >= 0",
        ),
    ],
)
def test_dynamics_validation_is_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(_compose(["experiment=late_time", *overrides]))
    assert str(err.value) == message


# ---------------------------------------------------------------- estimators


def test_ntk_diag_and_log_moment():
    k = np.diag([1.0, 2.0, 3.0]) + 0.1
    np.testing.assert_allclose(ntk_diag(k), [1.1, 2.1, 3.1])
    k4 = np.einsum("ab,op->abop", k, np.eye(2) * [1.0, 3.0])
    np.testing.assert_allclose(ntk_diag(k4), 2.0 * np.array([1.1, 2.1, 3.1]))
    metrics, arrays = diag_metrics(k)
    d = np.array([1.1, 2.1, 3.1])
    expected = np.log(np.mean(d**2) / np.mean(d) ** 2)
    assert metrics["ntk_diag_log_moment"] == pytest.approx(expected, rel=1e-14)
    assert log_second_moment(np.full(5, 2.0)) == pytest.approx(0.0, abs=1e-15)


def test_seed_moment_is_over_seeds_per_input():
    """Two inputs with different scales but no seed spread: the moment is 0 (a
    moment over inputs would not be)."""
    diags = np.array([[1.0, 4.0], [1.0, 4.0], [1.0, 4.0]])  # (seeds, inputs)
    assert _moment(diags) == pytest.approx(0.0, abs=1e-15)
    diags = np.array([[1.0, 2.0], [3.0, 6.0]])
    assert _moment(diags) == pytest.approx(np.log(5.0 / 4.0), rel=1e-14)


# ---------------------------------------------------------------- end to end


def test_late_time_tiny_sweep(tmp_path):
    sweep_dir = tmp_path / "lt"
    res = _sweep(sweep_dir, LATE_TIME_TINY)
    assert res.returncode == 0, res.stderr[-3000:]

    table = pd.read_parquet(sweep_dir / "results.parquet")
    assert len(table) == 4
    for name in (*LATE_TIME_ERRORS, "lt_identity_rel_err", "lt_final_residual"):
        assert table[name].notna().all(), name
    assert table["lt_converged"].all()
    assert (table["lt_final_residual"] < 1e-8).all()
    assert (table["lt_identity_rel_err"] < 1e-6).all()
    # the identity along each run, at every logged time it reached (of 40; the flow
    # reaches ||r|| < 1e-8 near t = 1e3)
    assert (table["lt_identity_n_times"] >= 15).all()
    assert (table["lt_identity_err_max"] < 1e-6).all(), table["lt_identity_err_max"]
    with np.load(sweep_dir / "0" / "spectra.npz") as npz:
        assert npz["lt_dk_actual"].shape == (7, 7)
        rel_t, speed = npz["lt_identity_rel_err_t"], npz["lt_identity_velocity_norm"]
        assert rel_t.shape == speed.shape == npz["lt_identity_times"].shape
        assert rel_t[speed > 1e-3 * speed.max()].max() < 1e-6

    fits = json.loads((sweep_dir / "fits.json").read_text())
    assert set(fits["late_time"]) == set(LATE_TIME_ERRORS)
    full = fits["late_time"]["lt_err_dk_full"]["width_fits"][0]["all"]
    assert "width" in full["exponents"] and "width" in full["interval"]
    assert (sweep_dir / "figures" / "late_time_errors_vs_width.png").is_file()
    report = (sweep_dir / "report.md").read_text()
    assert "## Late-time predictions against training" in report
    assert "| `lt_err_dk_full` | dK2: O3 + O4 (whole) | 1 |" in report
    assert "Identity dK2/dt = -(1/N) O3 . r along each run" in report
    assert "late_time: error of the predicted kernel change (O3 + O4)" in res.stdout
    # depth does not vary: no depth/width section
    assert "depth_width_ratio" not in fits


def test_depth_width_ratio_tiny_sweep(tmp_path):
    sweep_dir = tmp_path / "dw"
    res = _sweep(sweep_dir, DEPTH_WIDTH_TINY)
    assert res.returncode == 0, res.stderr[-3000:]

    table = pd.read_parquet(sweep_dir / "results.parquet")
    assert len(table) == 8
    assert (table["ntk_diag_log_moment"] >= 0).all()
    with np.load(sweep_dir / "0" / "spectra.npz") as npz:
        assert npz["ntk_diag"].shape == (8,)

    fit = json.loads((sweep_dir / "fits.json").read_text())["depth_width_ratio"]
    assert sorted(c["beta"] for c in fit["cells"]) == [1 / 16, 1 / 8, 1 / 8, 1 / 4]
    lo, hi = fit["interval"]
    assert lo <= fit["slope"] <= hi
    assert (sweep_dir / "figures" / "ntk_diag_moment_vs_beta.png").is_file()
    report = (sweep_dir / "report.md").read_text()
    assert "## NTK diagonal against depth/width" in report
    assert f"growth rate b = {fit['slope']:.3g}" in report
    assert "late_time" not in json.loads((sweep_dir / "fits.json").read_text())
