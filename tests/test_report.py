"""Sweep aggregation: table, fits and flags, figures, report.md, the ``nthexp-report``
CLI on damaged sweep dirs, and the wandb sink's fallback."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from nthexp.report import build_report, log_point

NTHEXP_REPORT = str(Path(sys.executable).parent / "nthexp-report")
WIDTHS = (16, 32, 64, 128, 256, 512)
DEPTHS = (1, 8)
SEEDS = (0, 1, 2, 3)
N = 6


def _rel_fro(width: int, depth: int, seed: int) -> float:
    """Slope -1/2 in width, except that depth 8 falls off faster (slope -3/2) while
    depth/width > 1/16, i.e. below width 128; +-2% seed noise."""
    noise = 1.0 + 0.02 * np.sin(1.7 * seed + width + 3 * depth)
    base = 2.0 * width**-0.5 * depth**0.5
    if depth == 8 and width < 128:
        base *= (width / 128) ** -1.0
    return float(base * noise)


def _write_run(run: Path, width: int, depth: int, seed: int) -> None:
    (run / ".hydra").mkdir(parents=True)
    config = {
        "seed": seed,
        "model": {"name": "mlp", "width": width, "depth": depth, "activation": "relu"},
        "data": {"name": "digits", "n": N, "d_in": None, "seed": 0},
        "kernel": {"method": "structured", "dtype": "float64"},
        "analysis": {
            "response": "rel_fro",
            "level": 0.95,
            "max_depth_over_width": 1 / 16,
        },
        "logger": {"name": "none", "mode": "disabled", "project": "nthexp"},
    }
    (run / "resolved_config.yaml").write_text(yaml.safe_dump(config))
    rel = _rel_fro(width, depth, seed)
    metrics = {
        "rel_fro": rel,
        "rel_op": 0.8 * rel,
        "n_params": width * width * depth,
        "dtype": "float64",
        "matmul_precision": "highest",
        "versions": {"jax": "0.0-test", "nthexp": "0.1.0"},
        "device": {"platform": "cpu", "kind": "cpu", "count": 1},
        "timing": {"total": 0.1},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    ev_inf = np.geomspace(1e-2, 10.0, N) * depth
    np.savez(run / "spectra.npz", emp=ev_inf * (1 + rel), inf=ev_inf)


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    points = [(w, d, s) for w in WIDTHS for d in DEPTHS for s in SEEDS]
    for num, (w, d, s) in enumerate(points):
        _write_run(tmp_path / str(num), w, d, s)
    return tmp_path


def _fit(fits: dict, depth: int, which: str) -> dict:
    (entry,) = [e for e in fits["width_fits"] if e["depth"] == depth]
    return entry[which], entry


def test_report_files_and_fits(sweep_dir):
    report = build_report(sweep_dir)

    table = pd.read_parquet(sweep_dir / "results.parquet")
    assert len(table) == len(WIDTHS) * len(DEPTHS) * len(SEEDS)
    assert {"model.width", "model.depth", "seed", "rel_fro", "versions.jax"} <= set(
        table.columns
    )

    fits = json.loads((sweep_dir / "fits.json").read_text())
    assert fits == json.loads(json.dumps(report.fits))
    shallow, entry = _fit(fits, 1, "all")
    lo, hi = shallow["interval"]["width"]
    assert lo <= -0.5 <= hi and hi - lo < 0.1
    assert entry["disagree"] is False
    assert entry["widths_small_ratio"] == list(WIDTHS)

    deep_all, entry = _fit(fits, 8, "all")
    deep_small, _ = _fit(fits, 8, "small_ratio")
    assert entry["widths_small_ratio"] == [128, 256, 512]
    assert abs(deep_small["exponents"]["width"] + 0.5) < 0.05
    assert deep_all["exponents"]["width"] < -0.8
    assert entry["disagree"] is True
    assert len(fits["flags"]) == 1 and fits["flags"][0].startswith("depth=8:")

    assert [e["width"] for e in fits["depth_fits"]] == list(WIDTHS)
    assert set(fits["joint"]["exponents"]) == {"width", "depth"}

    pngs = sorted(p.name for p in (sweep_dir / "figures").glob("*.png"))
    assert {"rel_fro_vs_width.png", "spectra_by_depth.png"} <= set(pngs)
    md = (sweep_dir / "report.md").read_text()
    for png in pngs:
        assert f"](figures/{png})" in md
    assert "depth=8: width exponent" in md
    assert "| versions.jax | 0.0-test |" in md
    assert "48 complete" in md


def test_report_cli_on_a_damaged_sweep(sweep_dir):
    corrupt = sweep_dir / "5" / "metrics.json"
    corrupt.write_text('{"rel_fro": 0.1, ')
    (sweep_dir / "7" / "metrics.json").unlink()
    (sweep_dir / "9" / "metrics.json").unlink()
    (sweep_dir / "9" / "error.txt").write_text("stamp\nFloatingPointError: K_emp bad\n")
    before = {p for p in sweep_dir.rglob("*") if p.is_file()}

    env = dict(os.environ, WANDB_MODE="disabled")
    res = subprocess.run(
        [NTHEXP_REPORT, str(sweep_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert str(corrupt) in res.stderr
    assert "WARNING" in res.stderr
    assert str(sweep_dir / "report.md") in res.stdout

    after = {p for p in sweep_dir.rglob("*") if p.is_file()}
    assert before <= after
    assert corrupt.read_text() == '{"rel_fro": 0.1, '
    table = pd.read_parquet(sweep_dir / "results.parquet")
    assert len(table) == len(WIDTHS) * len(DEPTHS) * len(SEEDS) - 3
    md = (sweep_dir / "report.md").read_text()
    assert "45 complete, 1 missing, 1 failed, 1 unreadable" in md
    assert "- `7`" in md
    assert "- `9`: FloatingPointError: K_emp bad" in md
    assert "- `5`: JSONDecodeError" in md


def test_report_cli_rejects_a_missing_dir(tmp_path):
    res = subprocess.run(
        [NTHEXP_REPORT, str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == [
        f"Error: sweep_dir={str(tmp_path / 'nope')!r} is not allowed; must be an "
        "existing sweep directory"
    ]


def test_wandb_failure_falls_back(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "offline")
    caplog.set_level(logging.WARNING, logger="nthexp.report")
    used = log_point(
        mode="no-such-mode",
        project="nthexp",
        run_dir=tmp_path,
        group="g",
        name="g-0",
        config={"seed": 0},
        metrics={"rel_fro": 0.5, "timing": {"total": 1.0}},
        spectra={"emp": np.ones(3), "inf": np.ones(3)},
    )
    assert used in ("offline", "disabled")
    assert "no-such-mode" in caplog.text
