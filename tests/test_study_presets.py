"""The study presets (``depth_scaling``, ``n_scaling``, ``d_in_scaling``,
``width_scaling``, ``scaling_all``): composed for real and checked against their
headers, one tiny ``depth_scaling`` sweep run end to end through the console script,
and the report sections it writes (fitted law, spectra across the sweep, Weyl bound,
bound laws readable by ``nthexp-bound``).

A sweep dir with a corrupted ``metrics.json`` is covered by
``tests/test_report.py::test_report_cli_on_a_damaged_sweep``.

Cost: the tiny sweep is 6 points (N = 8, width 16, depths 1, 2, 4 x 2 seeds), 60 s on
2 busy CPU cores (100 s with other sweeps running), nearly all start-up and compiling.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

import nthexp as nx
from nthexp.experiment import find_conf_dir, validate
from nthexp.report._scaling import study_fits, study_markdown

CONF_DIR = find_conf_dir()
BIN = Path(sys.executable).parent

#: preset -> (swept parameters, fixed config values)
PRESETS = {
    "depth_scaling": (
        {"model.depth": "1,2,4,8,16", "seed": "0,1,2"},
        {"model.width": 256, "data.name": "gaussian", "data.n": 32},
    ),
    "n_scaling": (
        {"data.n": "16,32,64,128", "seed": "0,1,2"},
        {"model.width": 256, "model.depth": 2, "data.name": "gaussian"},
    ),
    "d_in_scaling": (
        {"data.d_in": "4,8,16,32,64", "seed": "0,1,2"},
        {"model.width": 256, "model.depth": 2, "data.n": 32},
    ),
    "width_scaling": (
        {"model.width": "64,128,256,512,1024", "seed": "0,1,2"},
        {"model.depth": 2, "data.n": 32, "data.name": "gaussian"},
    ),
    "scaling_all": (
        {
            "model.width": "64,256",
            "model.depth": "1,4",
            "data.n": "16,64",
            "data.d_in": "4,32",
            "seed": "0,1,2",
        },
        {"data.name": "gaussian", "model.activation": "relu"},
    ),
}


def _compose(name: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "config", overrides=[f"experiment={name}"], return_hydra_config=True
        )


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_composes_with_its_sweep(name):
    cfg = _compose(name)
    params, fixed = PRESETS[name]
    assert dict(cfg.hydra.sweeper.params) == params
    for key, value in fixed.items():
        assert _get(cfg, key) == value, key
    assert cfg.model.activation == "relu"
    # validate() takes the app's config, composed without the hydra node.
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        validate(compose("config", overrides=[f"experiment={name}"]))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_header_states_command_and_measured_cost(name):
    head = (CONF_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()[:10]
    assert head[0] == "# @package _global_"
    assert any(f'make run ARGS="experiment={name}"' in line for line in head)
    cost = [line for line in head if "Cost:" in line]
    assert cost and "measured" in cost[0] and "COST_TBD" not in "".join(head), head


def test_tiny_depth_scaling_sweep_reports_trends_and_weyl(tmp_path):
    sweep_dir = tmp_path / "ds"
    env = dict(os.environ, WANDB_MODE="disabled")
    res = subprocess.run(
        [
            str(BIN / "nthexp"),
            "-m",
            "experiment=depth_scaling",
            "model.depth=1,2,4",
            "model.width=16",
            "seed=0,1",
            "data.n=8",
            "logger=none",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]

    fits = json.loads((sweep_dir / "fits.json").read_text())
    law = fits["scaling_law"]
    assert law["factors"] == ["depth"]
    lo, hi = law["fit"]["interval"]["depth"]
    assert lo <= law["fit"]["exponents"]["depth"] <= hi
    assert law["fit"]["curvature"] is not None  # three depths: checked, not hidden
    trends = {(r["kernel"], r["quantity"]): r for r in fits["spectra"]["depth_trends"]}
    # ReLU K_inf grows linearly in depth: slope > 0, exact line (R^2 = 1 for the trace).
    assert trends[("inf", "trace")]["slope"] > 0
    assert trends[("inf", "trace")]["r2"] == pytest.approx(1.0, abs=1e-9)
    assert trends[("inf", "lambda_min")]["slope"] > 0
    depths = {r["depth"] for r in fits["spectra"]["outlier_bulk"]}
    assert depths == {1, 2, 4}
    assert fits["weyl"]["runs"] == 6 and fits["weyl"]["violations"] == 0
    assert "bound_laws" not in fits  # width does not vary

    report = (sweep_dir / "report.md").read_text()
    for section in (
        "## Fitted law over the varying factors",
        "## Spectra across the sweep",
        "## Weyl bound",
        "**0 violations**",
    ):
        assert section in report, section
    assert "is checked for" not in report  # one factor: no '-' cells to explain
    assert (sweep_dir / "figures" / "weyl_bound.png").is_file()
    assert (sweep_dir / "figures" / "spectra_by_depth.png").is_file()

    # Width and depth both varying (the table copied at 4x the width with half the
    # ||dK||_op, so p = -1/2 exactly): bound laws that nthexp-bound reads.
    table = pd.read_parquet(sweep_dir / "results.parquet")
    wider = table.copy()
    wider["model.width"] = 64
    wider["op"] = wider["op"] / 2

    runs = SimpleNamespace(  # the part of SweepRuns that study_fits reads
        table=pd.concat([table, wider], ignore_index=True), spectra=lambda _: None
    )
    extra = study_fits(runs, "rel_fro", 0.95)
    assert extra["scaling_law"]["factors"] == ["width", "depth"]
    md = "\n".join(study_markdown(extra))
    # two widths: no curvature check, every `curved` cell is '-' and a line says why
    assert "No curvature check" in md and "is checked for" not in md
    laws = nx.analysis.BoundLaws.from_dict(extra)
    assert laws.p == pytest.approx(-0.5, abs=1e-6)
    assert laws.a > 0
    assert extra["bound_budget"]["width"] >= 1
    laws_path = tmp_path / "fits.json"
    laws_path.write_text(json.dumps(extra))
    res = subprocess.run(
        [
            str(BIN / "nthexp-bound"),
            "--laws",
            str(laws_path),
            "--params",
            "5000",
            "--d-in",
            "16",
            "--n",
            "8",
            "--out",
            str(tmp_path / "bound"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "optimum" in res.stdout


@pytest.mark.parametrize("superlinear", [False, True])
def test_bound_laws_check_the_linear_lambda_law(superlinear):
    """The report's lambda_min(K_inf) law is linear in depth; a depth where it is not
    positive or misses the measured mean by more than LAW_TOLERANCE is listed (here
    lambda = L exactly, or lambda = 0.25 L^2, whose line is negative at L = 1)."""
    import numpy as np

    from nthexp.report import _scaling

    rows = []
    for width in (64, 256):
        for depth in (1, 2, 4, 8):
            for seed in (0, 1):
                lam = 0.25 * depth**2 if superlinear else float(depth)
                rows.append(
                    {
                        "model.width": width,
                        "model.depth": depth,
                        "seed": seed,
                        "inf_lambda_min": lam,
                        "op": 0.1 * depth * width**-0.5 * (1 + 0.01 * seed),
                    }
                )
    laws = _scaling._bound_laws(pd.DataFrame(rows), 0.95)
    check = laws["lambda_min_inf_check"]
    weyl = {"runs": len(rows), "violations": 0, "certified": 0, "min_margin": 0.1}
    budget = {
        "budget": 10**5, "d_in": 4, "n": 8, "width": 100, "depth": 1, "bound": 0.5,
        "extrapolated": False,
    }  # fmt: skip
    fits = {"weyl": weyl, "bound_laws": laws, "bound_budget": budget}
    md = "\n".join(_scaling.study_markdown(fits))
    assert "Laws fitted on this sweep" in md
    assert ("does not describe" in md) == superlinear
    assert ("Budget: for P = 100000" in md) != superlinear  # held back when off
    if not superlinear:
        assert check == []
        assert np.isclose(laws["lambda_min_inf"]["a"], 1.0)
        return
    # least-squares line through 0.25, 1, 4, 16 at L = 1, 2, 4, 8
    slope, intercept = np.polyfit([1, 2, 4, 8], [0.25, 1.0, 4.0, 16.0], 1)
    assert intercept + slope < 0
    assert [c["depth"] for c in check][0] == 1
    assert check[0]["fitted"] == pytest.approx(intercept + slope)
    assert check[0]["measured"] == pytest.approx(0.25)


@pytest.mark.parametrize("sizes", [(128,), (64, 256)])
def test_bound_laws_line_has_an_n_term_only_when_n_varies(sizes):
    """With one data size the factor (N/N_ref)^m is 1 and the laws line leaves it out;
    with two it is fitted and shown (lambda_min(K_inf) = L (N/64)^-1 here)."""
    from nthexp.report import _scaling

    rows = [
        {
            "model.width": width,
            "model.depth": depth,
            "data.n": n,
            "seed": seed,
            "inf_lambda_min": depth * sizes[0] / n,
            "op": 0.1 * depth * width**-0.5 * (1 + 0.01 * seed),
        }
        for width in (64, 256)
        for depth in (1, 2, 4)
        for n in sizes
        for seed in (0, 1)
    ]
    laws = _scaling._bound_laws(pd.DataFrame(rows), 0.95)
    weyl = {"runs": len(rows), "violations": 0, "certified": 0, "min_margin": 0.1}
    md = "\n".join(_scaling.study_markdown({"weyl": weyl, "bound_laws": laws}))
    assert "smallest margin 0.1 (" in md
    line = next(x for x in md.splitlines() if x.startswith("Laws fitted"))
    if len(sizes) == 1:
        assert "(N/" not in line
        assert "(N = 128 throughout)" in line
    else:
        assert laws["lambda_min_inf"]["m"] == pytest.approx(-1.0, abs=1e-9)
        assert line.count("(N/64)^") == 2


def test_fitted_law_table_explains_its_dash_cells():
    """Width and depth both vary and three widths allow the curvature check in width:
    the depth row's `curved` cell is '-' and the line under the table says why."""
    import numpy as np

    from nthexp.report import _scaling

    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        [
            {
                "model.width": w,
                "model.depth": d,
                "seed": s,
                "rel_fro": d**0.5 * w**-0.5 * np.exp(0.05 * rng.standard_normal()),
            }
            for w in (64, 128, 256)
            for d in (1, 2, 4)
            for s in (0, 1, 2)
        ]
    )
    law = _scaling.scaling_law(table, "rel_fro", 0.95)
    md = "\n".join(_scaling.study_markdown({"scaling_law": law}))
    rows = {r.split(" | ")[0]: r for r in md.splitlines() if r.startswith("| ")}
    assert rows["| depth"].endswith("| - |")
    assert rows["| width"].endswith(("| yes |", "| no |"))
    assert "`curved` is checked for width only ('-' for the other factors)." in md


@pytest.mark.parametrize("depths", [(1, 2), (1, 2, 4)])
def test_spectra_table_says_why_two_depths_have_no_interval(depths):
    """A line through two per-depth means is exact and has no interval: the report
    says so under the table (and only then)."""
    import numpy as np

    from nthexp.report import _scaling

    df = pd.DataFrame(
        [
            {
                "model.depth": d,
                "model.width": 64,
                "seed": s,
                "inf_lambda_min": 0.8 * d,
                "emp_lambda_min": 0.7 * d + 0.01 * s,
                "inf_trace": 256.0 * d,
                "emp_trace": 250.0 * d,
            }
            for d in depths
            for s in range(3)
        ]
    )
    trends = nx.analysis.depth_trends(df).to_dict("records")
    spectra = {"depth_trends": trends, "outlier_bulk": []}
    md = "\n".join(_scaling.study_markdown({"spectra": spectra}))
    assert "| inf | lambda_min |" in md
    exact = len(depths) == 2
    assert ("With two depths the line passes through both means" in md) == exact
    if exact:
        row = next(r for r in trends if r["quantity"] == "lambda_min")
        assert row["r2"] == pytest.approx(1.0) and not np.isfinite(row["slope_low"])
