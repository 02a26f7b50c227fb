"""The ``nthexp`` Hydra app: configs composed for real, validation, one tiny sweep
end to end (files, resume, reproducibility, wandb offline runs), and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nthexp.experiment import RESULT_FILES, ConfigError, find_conf_dir, validate

CONF_DIR = find_conf_dir()
BIN = Path(sys.executable).parent
NTHEXP = str(BIN / "nthexp")

# The tiny sweep: 2 widths x 2 depths x 2 seeds on 12 digits.
TINY = ["model.width=8,16", "model.depth=1,2", "seed=0,1", "data.n=12"]
TINY_POINT_0 = ["model.width=8", "model.depth=1", "seed=0", "data.n=12"]


def _compose(overrides=(), hydra_cfg=False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "config", overrides=list(overrides), return_hydra_config=hydra_cfg
        )


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_ERROR_REPORTING="false")
    env.update(extra)
    return env


def _nthexp(*args: str, cwd: Path | None = None, timeout: int = 240):
    return subprocess.run(
        [NTHEXP, *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def _without_timing(path: Path) -> dict:
    """metrics.json minus ``timing``; also minus ``git_revision``, which moves when
    the checkout gets a commit between the two runs (the code is then different)."""
    metrics = json.loads(path.read_text())
    metrics.pop("timing")
    metrics.pop("git_revision", None)
    return metrics


# ---------------------------------------------------------------- configs


def test_defaults_compose():
    cfg = _compose()
    assert cfg.seed == 0
    assert OmegaConf.to_container(cfg.model) == {
        "name": "mlp",
        "width": 256,
        "depth": 2,
        "activation": "relu",
        "w_std": 1.4142135623730951,
        "b_std": 0.0,
        "parameterization": "ntk",
        "use_bias": True,
        "n_out": 1,
        "readout_w_std": None,
        "readout_b_std": None,
    }
    assert (cfg.data.name, cfg.data.n, cfg.data.seed) == ("digits", 128, 0)
    assert (cfg.kernel.method, cfg.kernel.dtype) == ("structured", "float64")
    assert cfg.logger.project == "nthexp"
    validate(cfg)


def test_logger_mode_follows_environment(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert _compose().logger.mode == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert _compose().logger.mode == "offline"
    assert _compose(["logger=none"]).logger.mode == "disabled"


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=resnet"],
        ["model=narrow_deep"],
        ["data=gaussian"],
        ["data=torus"],
        ["experiment=smoke"],
        ["experiment=quickstart"],
        ["experiment=lyapunov"],
        ["lyapunov=default"],
    ],
)
def test_every_option_composes_and_validates(overrides):
    validate(_compose(overrides))


def test_quickstart_preset():
    cfg = _compose(["experiment=quickstart"], hydra_cfg=True)
    params = cfg.hydra.sweeper.params
    assert params["model.width"] == "64,128,256,512,1024"
    assert params["model.depth"] == "1,2,4,8"
    assert params["seed"] == "0,1,2,3,4"
    assert (cfg.data.name, cfg.data.n, cfg.model.activation) == ("digits", 128, "relu")
    first_line = (CONF_DIR / "experiment" / "quickstart.yaml").read_text().splitlines()
    assert first_line[0] == "# @package _global_"
    assert any("nthexp -m experiment=quickstart" in line for line in first_line[:4])


def test_local_launcher_preset():
    cfg = _compose(["hydra/launcher=local"], hydra_cfg=True)
    assert cfg.hydra.launcher._target_.endswith("BasicLauncher")


def test_sweep_dirs_differ_within_a_second():
    cfg = _compose(hydra_cfg=True)
    assert "%f" in OmegaConf.to_container(cfg.hydra.sweep)["dir"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["model.width=0"], "model.width"),
        (["model.depth=-1"], "model.depth"),
        (["model.activation=foo"], "model.activation"),
        (["data.n=1"], "data.n"),
        (["data=torus", "data.d_in=7"], "data.d_in"),
        (["data.n=1798"], "data.n"),
        (["kernel.dtype=float16"], "kernel.dtype"),
    ],
)
def test_validate_names_the_field(overrides, field):
    with pytest.raises(
        ValueError, match=rf"^{field}=\S+ is not allowed[^;]*; "
    ) as info:
        validate(_compose(overrides))
    assert "\n" not in str(info.value)


def test_config_error_message():
    err = ConfigError("model.width", -1, "must be an integer >= 1")
    assert str(err) == "model.width=-1 is not allowed; must be an integer >= 1"


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The tiny 2x2x2 multirun, run once for the tests below."""
    sweep_dir = tmp_path_factory.mktemp("sweep") / "s"
    res = _nthexp("-m", *TINY, f"hydra.sweep.dir={sweep_dir}")
    assert res.returncode == 0, res.stderr[-3000:]
    return sweep_dir, res


def test_tiny_sweep_writes_everything(sweep):
    sweep_dir, res = sweep
    runs = sorted(p for p in sweep_dir.iterdir() if p.name.isdigit())
    assert len(runs) == 8
    for run in runs:
        for name in RESULT_FILES:
            assert (run / name).is_file(), run / name
        assert len(list((run / "wandb").glob("offline-run-*"))) == 1, run
        metrics = json.loads((run / "metrics.json").read_text())
        for key in (
            "rel_fro",
            "rel_op",
            "emp_lambda_min",
            "inf_lambda_min",
            "n_params",
        ):
            assert key in metrics
        assert set(metrics["timing"]) >= {"data", "init", "ntk", "infinite", "total"}
        assert {"jax", "jaxlib", "flax", "nthexp", "numpy", "python"} <= set(
            metrics["versions"]
        )
        assert metrics["dtype"] == "float64"
        resolved = OmegaConf.load(run / "resolved_config.yaml")
        assert "${" not in OmegaConf.to_yaml(resolved)

    table = pd.read_parquet(sweep_dir / "results.parquet")
    assert len(table) == 8
    assert sorted(
        set(zip(table["model.width"], table["model.depth"], table["seed"], strict=True))
    ) == [(w, d, s) for w in (8, 16) for d in (1, 2) for s in (0, 1)]
    fits = json.loads((sweep_dir / "fits.json").read_text())
    assert [e["depth"] for e in fits["width_fits"]] == [1, 2]
    assert len(list((sweep_dir / "figures").glob("*.png"))) >= 2
    report = (sweep_dir / "report.md").read_text()
    assert "8 complete of 8 planned" in report
    assert "](figures/" in report
    assert str(sweep_dir / "report.md") in res.stdout
    assert "[8/8]" in res.stdout + res.stderr


def test_rerun_skips_complete_points(sweep):
    sweep_dir, _ = sweep
    before = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/metrics.json")}
    redo = sweep_dir / "3" / "metrics.json"
    kept = redo.read_text()
    redo.unlink()

    res = _nthexp("-m", *TINY, f"hydra.sweep.dir={sweep_dir}", "logger=none")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert out.count("metrics.json exists") == 7
    for path, mtime in before.items():
        if path != redo:
            assert path.stat().st_mtime_ns == mtime, path
    (sweep_dir / "kept.json").write_text(kept)
    assert _without_timing(redo) == _without_timing(sweep_dir / "kept.json")


def test_identical_reruns_differ_only_in_timing(sweep, tmp_path):
    sweep_dir, _ = sweep
    res = _nthexp(*TINY_POINT_0, f"hydra.run.dir={tmp_path / 'single'}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert _without_timing(tmp_path / "single" / "metrics.json") == _without_timing(
        sweep_dir / "0" / "metrics.json"
    )


# One case per path a bad value can take (the field messages themselves are covered
# in-process by test_validate_names_the_field): a single run, a swept value, an
# unknown group option, a rule of the data module, a swept group and misspelt keys.
BAD_INPUTS = [
    (["model.width=0"], "model.width"),
    (["-m", "model.width=8,-4"], "model.width"),
    (["model=transformer"], "model"),
    (["data=torus", "data.d_in=7"], "data.d_in"),
    (["data.n=1798"], "data.n"),
    (["-m", "model=mlp,resnet", "model.depth=0"], "model.depth"),
    (["model.widht=64"], "model.widht"),  # a misspelt key: not Hydra's message
    (["-m", "sed=0,1"], "sed"),
    (["model.alpha=0.5"], "model.alpha"),  # a resnet key, the default model is mlp
    (["-m", "experiment=quickstart", "model.alpha=0.5"], "model.alpha"),
    (["lyapunov=foo"], "lyapunov"),
    (["seed.x=1"], "seed.x"),
]


@pytest.mark.parametrize(
    ("args", "options"),
    [
        ([], {"model": ["mlp"], "data": ["digits"]}),
        (["model=resnet", "model.alpha=0.5"], {"model": ["resnet"]}),
        (["model=mlp,resnet"], {"model": ["mlp", "resnet"]}),
        (["experiment=late_time"], {"data": ["gaussian"], "dynamics": ["late_time"]}),
        (["experiment=late_time", "data=torus"], {"data": ["torus"]}),
    ],
)
def test_selected_options(args, options):
    """The group options a command line composes: its own, else the preset's, else
    conf/config.yaml's; a key is checked against the options chosen."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from nthexp.experiment import app

    overrides = OverridesParser.create().parse_overrides(args)
    selected = app._selected_options(overrides)
    for group, chosen in options.items():
        assert selected[group] == chosen, (group, selected)
    for ov in overrides:
        app._check_override_key(ov, selected)  # raises SystemExit when refused


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    procs = []
    for i, (args, field) in enumerate(BAD_INPUTS):
        out = tmp_path / f"case{i}"
        cmd = [NTHEXP, *args, f"hydra.run.dir={out}", f"hydra.sweep.dir={out}"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
        )
        procs.append((args, field, out, proc))
    for args, field, out, proc in procs:
        _, stderr = proc.communicate(timeout=240)
        assert proc.returncode != 0, args
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, (args, stderr)
        assert lines[0].startswith(f"Error: {field}="), (args, lines[0])
        assert "is not allowed" in lines[0], (args, lines[0])
        assert "Traceback" not in stderr
        found = [p for name in RESULT_FILES for p in out.rglob(name)]
        assert found == [], (args, found)


def test_release_compiled_drops_compiled_code():
    """Past the threshold the caches go and the process's mappings fall; below it they
    stay (release_compiled guards local multiruns against vm.max_map_count)."""
    import jax
    import jax.numpy as jnp

    from nthexp._compiled import mapping_count, release_compiled

    if mapping_count() is None:
        pytest.skip("no /proc/self/maps (not Linux)")
    for n in range(1, 41):  # 40 executables of distinct shapes
        jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((n, 3))).block_until_ready()
    assert not release_compiled(fraction=1.0)
    before = mapping_count()[0]
    assert release_compiled(fraction=0.0)
    after = mapping_count()[0]
    assert after < before - 40, (before, after)
