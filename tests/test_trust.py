"""Trustworthy numbers (issue 8): precision policy, rank-deficient and indefinite
spectra, the iterative lambda_min, thirty bad inputs, SIGKILL safety, and the
infinite-width recursion at extreme inputs.

Identical reruns (acceptance 6) are tested in
tests/test_experiment.py::test_identical_reruns_differ_only_in_timing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from jax.flatten_util import ravel_pytree

import nthexp as nx
from nthexp.analysis import _eig
from nthexp.experiment import RESULT_FILES, find_conf_dir, validate
from nthexp.experiment._task import PRECISION_LIMIT_FACTOR, precision_floor

CONF_DIR = find_conf_dir()
NTHEXP = str(Path(sys.executable).parent / "nthexp")
EPS32 = float(np.finfo(np.float32).eps)


def _env() -> dict:
    env = dict(os.environ)
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_ERROR_REPORTING="false")
    return env


# ------------------------------------------------------------- 1. precision grid

#: float32 error allowed on rel_fro / rel_op: the round-off floor eps32 * sqrt(N)
#: (5.8e-7 at N = 16... 24). Measured: |rel32 - rel64| <= 3.3e-8 at widths 64..4096.
PRECISION_N = 16


def _relative_corrections(width: int) -> tuple[dict, dict, float]:
    """rel_fro/rel_op in float64 and float32 (params cast from one float64 draw) and
    the relative Frobenius error of the float32 K_emp."""
    x64 = jnp.asarray(nx.data.load("gaussian", PRECISION_N, d_in=8, seed=0).x)
    model = nx.models.MLP(width=width, depth=1)
    p64 = nx.models.init(model, jax.random.key(0), 8, dtype="float64")
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), p64)
    out = {}
    kernels = {}
    with jax.default_matmul_precision("highest"):
        for name, params, x in (("64", p64, x64), ("32", p32, x64.astype(jnp.float32))):
            k_emp = np.asarray(nx.kernels.ntk(model, params, x), dtype=np.float64)
            k_inf = nx.kernels.infinite_ntk(model, x, dtype=str(x.dtype))
            corr = nx.analysis.correction(k_emp, np.asarray(k_inf, dtype=np.float64))
            out[name] = {"rel_fro": corr.rel_fro, "rel_op": corr.rel_op}
            kernels[name] = k_emp
    k_err = np.linalg.norm(kernels["32"] - kernels["64"]) / np.linalg.norm(
        kernels["64"]
    )
    return out["64"], out["32"], float(k_err)


def _check_precision(width: int) -> None:
    c64, c32, k_err = _relative_corrections(width)
    tol = precision_floor("float32", PRECISION_N)
    assert k_err <= tol, f"{width=}: float32 K_emp error {k_err:.3g} > {tol:.3g}"
    for key in ("rel_fro", "rel_op"):
        err = abs(c32[key] - c64[key])
        assert err <= tol, (
            f"{width=} {key}: float32 {c32[key]:.9g} vs float64 {c64[key]:.9g}, "
            f"|diff|={err:.3g} > eps32*sqrt(N)={tol:.3g}"
        )
        # far above the floor: such a run is not precision-limited
        assert c64[key] > PRECISION_LIMIT_FACTOR * tol


@pytest.mark.parametrize("width", [64, 4096])
def test_float32_matches_float64_correction(width):
    _check_precision(width)


@pytest.mark.slow
@pytest.mark.parametrize("width", [128, 256, 512, 1024, 2048])
def test_float32_matches_float64_correction_full_grid(width):
    _check_precision(width)


def test_precision_limited_flag():
    from nthexp.experiment._task import _precision_metrics

    corr = nx.analysis.correction(np.eye(4) * (1 + 1e-6), np.eye(4))
    assert _precision_metrics("float32", 4, corr)["precision_limited"] is True
    assert _precision_metrics("float64", 4, corr)["precision_limited"] is False
    assert precision_floor("float32", 16) == pytest.approx(4 * EPS32)


@pytest.mark.gpu
def test_gpu_float32_matmul_is_not_tf32():
    """With the app's settings (kernel.matmul_precision=highest) a float32 matmul on
    the GPU has float32 round-off (~1e-7), not TF32's (~1e-3)."""
    a = np.random.default_rng(0).standard_normal((512, 512))
    ref = a @ a.T
    with jax.default_matmul_precision("highest"):
        a32 = jax.device_put(jnp.asarray(a, jnp.float32), jax.devices("gpu")[0])
        got = np.asarray(a32 @ a32.T, dtype=np.float64)
    err = np.max(np.abs(got - ref)) / np.max(np.abs(ref))
    assert err < 1e-5, f"float32 matmul error {err:.3g}: TF32 in use?"


# ------------------------------------------------------------- 2. rank and PSD


def _rank_deficient(dtype: str):
    """A width-1, depth-1 ReLU MLP (P = d_in + 3 = 7 parameters) on N = 20 points:
    its NTK ``J J^T`` has rank <= 7 < 20. Returns (K, rank of J by float64 SVD)."""
    x = nx.data.load("gaussian", 20, d_in=4, seed=3).x
    model = nx.models.MLP(width=1, depth=1, b_std=0.5)
    p64 = nx.models.init(model, jax.random.key(1), 4, dtype="float64")
    flat, unravel = ravel_pytree(p64)
    assert flat.shape == (7,)
    jac = np.asarray(
        jax.jacfwd(lambda f: nx.models.apply(model, unravel(f), x).reshape(-1))(flat)
    )
    sv = np.linalg.svd(jac, compute_uv=False)
    rank = int(np.sum(sv > sv[0] * 20 * np.finfo(np.float64).eps))
    # the nonzero eigenvalues (sv^2) stand clear of float32's tolerance N eps32 lmax
    assert sv[rank - 1] ** 2 > 1e3 * 20 * EPS32 * sv[0] ** 2, sv
    params = jax.tree.map(lambda a: a.astype(dtype), p64)
    k = nx.kernels.ntk(model, params, jnp.asarray(x, dtype=dtype))
    return np.asarray(k), rank


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rank_deficient_ntk_reports_rank(dtype):
    k, rank = _rank_deficient(dtype)
    assert k.dtype == np.dtype(dtype)
    with pytest.warns(UserWarning, match="ill-conditioned"):
        spec = nx.analysis.spectrum(k)
    assert spec.rank == rank, f"{dtype}: rank {spec.rank} != Jacobian rank {rank}"
    assert spec.n_zero == 20 - rank
    assert spec.lambda_min == 0.0
    assert spec.tol == pytest.approx(20 * np.finfo(dtype).eps * spec.lambda_max)
    assert np.count_nonzero(spec.eigenvalues) == rank


def test_negative_eigenvalue_raises_named_error():
    q = np.linalg.qr(np.random.default_rng(0).standard_normal((6, 6)))[0]
    k = q @ np.diag([-0.5, 0.1, 1.0, 2.0, 3.0, 4.0]) @ q.T
    with pytest.raises(
        nx.analysis.NegativeEigenvalueError,
        match=r"not positive semidefinite: lambda_min=-0\.5 < -tol \(lambda_max=4,",
    ):
        nx.analysis.spectrum(k)


# ------------------------------------------------------------- 3. iterative lambda_min


def _relu_ntk(n: int) -> np.ndarray:
    r"""Infinite-width ReLU NTK of a depth-1 MLP (w_std = sqrt(2), no bias) on n
    Gaussian points in d_in = 16, by the arc-cosine closed form in numpy (cheap at
    N = 2000): :math:`\Theta = 2 S_0 \kappa_0(\theta) + 2 \hat S`, checked against
    nx.kernels.infinite_ntk at N = 50."""
    x = nx.data.load("gaussian", n, d_in=16, seed=0).x
    s0 = x @ x.T / 16
    norm = np.sqrt(np.outer(np.diag(s0), np.diag(s0)))
    theta = np.arccos(np.clip(s0 / norm, -1.0, 1.0))
    s_hat = norm * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)
    k0 = (np.pi - theta) / (2 * np.pi)
    ntk = 4 * (s0 * k0 + s_hat)
    return 0.5 * (ntk + ntk.T)


def test_closed_form_ntk_is_the_library_one():
    x = nx.data.load("gaussian", 50, d_in=16, seed=0).x
    model = nx.models.MLP(width=8, depth=1, b_std=0.0)
    ref = np.asarray(nx.kernels.infinite_ntk(model, x))
    np.testing.assert_allclose(_relu_ntk(50), ref, rtol=1e-7, atol=1e-7)


@pytest.fixture(scope="module")
def ntk_2000():
    k = _relu_ntk(2000)
    eigs = np.linalg.eigvalsh(k)
    return k, float(eigs[0]), float(eigs[-1])


@pytest.mark.parametrize("method", ["auto", "lanczos"])
def test_iterative_lambda_min_matches_dense_n2000(ntk_2000, method):
    k, dense_min, dense_max = ntk_2000
    est = nx.analysis.lambda_min(k, method=method)
    assert est.method == "lanczos" and est.failed == ()
    err = abs(est.value - dense_min)
    assert err <= 1e-8 * dense_max, (
        f"{method}: {est.value!r} vs dense {dense_min!r}: {err:.3g} > 1e-8 lmax"
    )
    assert est.lambda_max == pytest.approx(dense_max, rel=1e-10)


@pytest.mark.slow
def test_lobpcg_lambda_min_matches_dense_n2000(ntk_2000):
    k, dense_min, dense_max = ntk_2000
    est = nx.analysis.lambda_min(k, method="lobpcg")
    assert est.method == "lobpcg", est.failed
    assert abs(est.value - dense_min) <= 1e-8 * dense_max


@pytest.fixture(scope="module")
def ntk_300():
    k = _relu_ntk(300)
    return k, float(np.linalg.eigvalsh(k)[0]), float(np.linalg.eigvalsh(k)[-1])


@pytest.mark.parametrize("method", ["lanczos", "lobpcg", "dense"])
def test_every_method_matches_dense(ntk_300, method):
    k, dense_min, dense_max = ntk_300
    est = nx.analysis.lambda_min(k, method=method)
    assert est.method == method, (method, est.failed)
    assert abs(est.value - dense_min) <= 1e-8 * dense_max, method


def test_failing_solvers_fall_back_with_a_log_line(ntk_300, monkeypatch, caplog):
    k, dense_min, dense_max = ntk_300

    def broken(*args, **kwargs):
        raise RuntimeError("ARPACK error -9999: simulated")

    def wrong(k_, lam_max, tol, maxiter):
        return 123.0, np.ones(k_.shape[0])  # fails the residual check

    monkeypatch.setitem(_eig._RUNNERS, "lanczos", broken)
    monkeypatch.setitem(_eig._RUNNERS, "lobpcg", wrong)
    with caplog.at_level(logging.WARNING, logger="nthexp.analysis"):
        est = nx.analysis.lambda_min(k, method="lanczos")
    assert est.method == "dense"
    assert est.chain == "lanczos>lobpcg>dense"
    assert est.value == pytest.approx(dense_min, rel=1e-12)
    lines = [r.getMessage() for r in caplog.records]
    assert any("lanczos failed on N=300 (RuntimeError: ARPACK" in m for m in lines)
    assert any("lobpcg failed on N=300 (_SolverFailed: residual" in m for m in lines)


def test_lambda_min_input_errors():
    with pytest.raises(ValueError, match=r"^method='arpack' is not allowed; must be"):
        nx.analysis.lambda_min(np.eye(3), method="arpack")
    with pytest.raises(ValueError, match=r"^tol=0 is not allowed"):
        nx.analysis.lambda_min(np.eye(3), tol=0)
    with pytest.raises(ValueError, match="non-finite"):
        nx.analysis.lambda_min(np.full((3, 3), np.nan))
    # tiny matrices go dense whatever the method
    assert nx.analysis.lambda_min(np.diag([2.0, 1.0]), method="lanczos").value == 1.0


# ------------------------------------------------------------- 4. thirty bad inputs

# (overrides, the exact one-line message or a regex of it); composed for real and
# validated in-process.
BAD_CONFIGS = [
    (["model.width=abc"], "model.width='abc' is not allowed; must be an integer >= 1"),
    (["model.width=1.5"], "model.width=1.5 is not allowed; must be an integer >= 1"),
    (["model.width=0"], "model.width=0 is not allowed; must be an integer >= 1"),
    (["model.depth=-1"], "model.depth=-1 is not allowed; must be an integer >= 0"),
    (
        ["model=resnet", "model.depth=0"],
        "model.depth=0 is not allowed; must be an integer >= 1",
    ),
    (
        ["model.w_std=abc"],
        "model.w_std='abc' is not allowed; must be a finite number > 0",
    ),
    (["model.w_std=0"], "model.w_std=0 is not allowed; must be a finite number > 0"),
    (["model.b_std=-1"], "model.b_std=-1 is not allowed; must be a finite number >= 0"),
    (
        ["model.w_std=nan"],
        "model.w_std=nan is not allowed; must be a finite number > 0",
    ),
    (
        ["model.use_bias=yes"],
        "model.use_bias='yes' is not allowed; must be true or false",
    ),
    (
        ["model.activation=swish"],
        r"model.activation='swish' is not allowed; must be "
        r"one of \[.*'relu'.*\]",
    ),
    (["model.n_out=0"], "model.n_out=0 is not allowed; must be an integer >= 1"),
    (
        ["kernel.dtype=float16"],
        "kernel.dtype='float16' is not allowed; must be one of "
        r"\['float32', 'float64'\]",
    ),
    (["kernel.method=magic"], r"kernel.method='magic' is not allowed; must be one of"),
    (
        ["kernel.matmul_precision=tf32"],
        "kernel.matmul_precision='tf32' is not allowed"
        r"; must be one of \['default', 'high', 'highest'\]",
    ),
    (["kernel.order=5"], "kernel.order=5 is not allowed; must be 2 .NTK., 3 .O3. or 4"),
    (["data.n=1"], "data.n=1 is not allowed; must be an integer >= 2"),
    (
        ["data.n=1798"],
        "data.n=1798 is not allowed for data.name='digits'; the data "
        "set has 1797 samples",
    ),
    (["data.seed=-3"], "data.seed=-3 is not allowed; must be an integer >= 0"),
    (["data=torus", "data.d_in=7"], "data.d_in=7 is not allowed"),
    (
        ["analysis.level=1.5"],
        "analysis.level=1.5 is not allowed; must be a finite number > 0 and < 1",
    ),
    (["seed=-1"], "seed=-1 is not allowed; must be an integer >= 0"),
    (
        ["+model.foo=1"],
        r"model.foo=1 is not allowed; unknown key; valid keys of "
        r"model: \['activation', 'b_std', 'depth', .*'width'\]",
    ),
    (
        ["+data.bar=x"],
        r"data.bar='x' is not allowed; unknown key; valid keys of "
        r"data: \['d_in', 'n', 'name', 'seed'\]",
    ),
    (["+foo=1"], r"foo=1 is not allowed; unknown key; valid: \[.*'model', 'seed'\]"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_CONFIGS)
def test_bad_config_is_one_named_line(overrides, message):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with pytest.raises(ValueError) as info:
        validate(cfg)
    text = str(info.value)
    assert "\n" not in text
    assert __import__("re").match(message, text), (overrides, text)


_X = nx.data.load("gaussian", 6, d_in=4, seed=0).x
_X_NAN = _X.copy()
_X_NAN[4, 2] = np.nan

BAD_DATA = [
    (lambda: nx.data.load("gaussian", 0, d_in=4), r"^data.n=0 is not allowed"),
    (lambda: nx.data.load("mnist", 10), r"^data.name='mnist' is not allowed"),
    (lambda: nx.data.load("gaussian", 10, d_in=0), r"^data.d_in=0 is not allowed"),
    (
        lambda: nx.data.check_rows(_X_NAN, "custom"),
        r"^data.name='custom': row 4 of x is not finite",
    ),
    (
        lambda: nx.data.check_rows(np.empty((0, 4)), "custom"),
        r"^data.name='custom': x of shape \(0, 4\) is not allowed",
    ),
]


@pytest.mark.parametrize(("call", "message"), BAD_DATA)
def test_bad_data_is_one_named_line(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_thirty_bad_inputs():
    assert len(BAD_CONFIGS) + len(BAD_DATA) >= 30


# A handful through the real app: one line on stderr, exit code 2, no result files.
APP_BAD = [
    (["+model.foo=1"], "model.foo=1"),
    (["model.width=abc"], "model.width='abc'"),
    (["kernel.dtype=float16"], "kernel.dtype='float16'"),
    (["-m", "model.width=8", "model.use_bias=maybe"], "model.use_bias='maybe'"),
]


def test_app_bad_configs_and_a_float32_run(tmp_path):
    """The bad configs and one good float32 run, all started at once: the float32
    run records its dtype, matmul precision "highest" and the precision flag."""
    good = tmp_path / "f32"
    f32 = subprocess.Popen(
        [
            NTHEXP,
            "kernel.dtype=float32",
            "data.n=12",
            "model.width=8",
            "model.depth=1",
            "logger=none",
            f"hydra.run.dir={good}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    procs = []
    for i, (args, start) in enumerate(APP_BAD):
        out = tmp_path / f"case{i}"
        cmd = [NTHEXP, *args, f"hydra.run.dir={out}", f"hydra.sweep.dir={out}"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
        )
        procs.append((args, start, out, proc))
    for args, start, out, proc in procs:
        _, stderr = proc.communicate(timeout=240)
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2, (args, stderr)
        assert lines == [lines[0]] and lines[0].startswith(f"Error: {start} is not "), (
            args,
            stderr,
        )
        assert [p for name in RESULT_FILES for p in out.rglob(name)] == [], args

    _, stderr = f32.communicate(timeout=300)
    assert f32.returncode == 0, stderr[-3000:]
    metrics = json.loads((good / "metrics.json").read_text())
    assert metrics["dtype"] == "float32"
    assert metrics["matmul_precision"] == "highest"
    assert metrics["precision_floor"] == pytest.approx(EPS32 * math.sqrt(12))
    assert metrics["precision_limited"] is False
    assert metrics["lambda_min_method"] == "dense"


# ------------------------------------------------------------- 5. SIGKILL

# A tiny multirun (six points, each a few seconds) per process, killed at a seeded
# random moment; points finished before the kill must be complete, the one in
# progress must leave nothing that reads as a result.
KILL_ARGS = ["-m", "seed=0,1,2,3,4,5", "data.n=12", "model.width=8", "model.depth=1"]
REQUIRED_METRICS = (
    "rel_fro",
    "rel_op",
    "emp_lambda_min",
    "n_params",
    "dtype",
    "matmul_precision",
    "timing",
    "versions",
)


def _check_no_partial_results(sweep_dir: Path) -> int:
    """Assert every result file is complete; returns the number of complete runs."""
    complete = 0
    for path in sweep_dir.rglob("*"):
        if not path.is_file():
            continue
        if path.name.endswith(".tmp"):
            assert path.name.startswith("."), path  # never a result's own name
            continue
        if path.name == "metrics.json":
            metrics = json.loads(path.read_text())
            missing = [k for k in REQUIRED_METRICS if k not in metrics]
            assert missing == [], (path, missing)
            assert "finished_at" in metrics["timing"], path
            # written before metrics.json: present and readable
            assert (path.parent / "resolved_config.yaml").is_file(), path
            assert (path.parent / "spectra.npz").is_file(), path
            complete += 1
        elif path.name == "spectra.npz":
            with np.load(path) as npz:
                assert {"emp", "inf"} <= set(npz.files), path
                assert np.all(np.isfinite(npz["emp"])), path
        elif path.name == "resolved_config.yaml":
            assert isinstance(yaml.safe_load(path.read_text()), dict), path
    return complete


def _sigkill_runs(tmp_path: Path, n_procs: int, deadline_s: float) -> list[tuple]:
    """``n_procs`` sweeps at once; each is killed a seeded random 0-4 s after its
    first point completes (so that the kill lands while later points compute or
    write), or at the deadline. Returns (delay, killed, complete runs) per sweep."""
    delays = np.random.default_rng(8).uniform(0.0, 4.0, size=n_procs)
    procs = []
    for i in range(n_procs):
        sweep = tmp_path / f"kill{i}"
        cmd = [NTHEXP, *KILL_ARGS, "logger=none", f"hydra.sweep.dir={sweep}"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
        )
        procs.append([sweep, proc, None])
    start = time.monotonic()
    while any(p[1].poll() is None for p in procs):
        now = time.monotonic()
        for i, entry in enumerate(procs):
            sweep, proc, kill_at = entry
            if proc.poll() is not None:
                continue
            if kill_at is None and any(sweep.glob("*/metrics.json")):
                entry[2] = kill_at = now + delays[i]
            if (kill_at is not None and now >= kill_at) or now - start > deadline_s:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                entry[2] = -1.0
        time.sleep(0.05)
    return [
        (float(delays[i]), kill_at == -1.0, _check_no_partial_results(sweep))
        for i, (sweep, _, kill_at) in enumerate(procs)
    ]


def test_sigkill_leaves_no_partial_result(tmp_path):
    # On a loaded 2-core machine a sweep may not finish a point within the deadline;
    # then the kill lands in start-up or the first point (still checked, but the
    # write window is covered by the slow variant below).
    results = _sigkill_runs(tmp_path, n_procs=2, deadline_s=45.0)
    print("SIGKILL (delay s, killed, complete runs):", results)
    assert any(killed for _, killed, _ in results)


@pytest.mark.slow
def test_sigkill_leaves_no_partial_result_many(tmp_path):
    results = _sigkill_runs(tmp_path, n_procs=6, deadline_s=300.0)
    print("SIGKILL (delay s, killed, complete runs):", results)
    assert sum(killed for _, killed, _ in results) >= 4, results
    assert sum(complete for *_, complete in results) >= 1, results


# ------------------------------------------------------------- infinite width


def _x(n=6, d_in=4):
    return nx.data.load("gaussian", n, d_in=d_in, seed=0).x


def _finite_or_clear_error(model, x):
    """The NTK, or None when a one-line ValueError/FloatingPointError was raised."""
    try:
        k = np.asarray(nx.kernels.infinite_ntk(model, x))
    except (ValueError, FloatingPointError, OverflowError) as exc:
        assert "\n" not in str(exc) and str(exc), repr(exc)
        return None
    assert np.all(np.isfinite(k)), f"silent non-finite kernel:\n{k}"
    return k


@pytest.mark.parametrize("scale", [1e150, 1e-150])
def test_relu_ntk_is_homogeneous_at_extreme_norms(scale):
    """Bias-free ReLU kernels are 2-homogeneous: K(c x) = c^2 K(x) exactly."""
    model = nx.models.MLP(width=8, depth=2, b_std=0.0)
    k = np.asarray(nx.kernels.infinite_ntk(model, _x()))
    k_scaled = _finite_or_clear_error(model, _x() * scale)
    np.testing.assert_allclose(k_scaled / scale**2, k, rtol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "erf", "tanh"])
@pytest.mark.parametrize("b_std", [0.0, 0.5])
def test_zero_norm_input_is_the_limit_of_small_norms(activation, b_std):
    model = nx.models.MLP(width=8, depth=2, activation=activation, b_std=b_std)
    x = _x()
    x_zero, x_tiny = x.copy(), x.copy()
    x_zero[0] = 0.0
    x_tiny[0] *= 1e-9
    k_zero = _finite_or_clear_error(model, x_zero)
    k_tiny = np.asarray(nx.kernels.infinite_ntk(model, x_tiny))
    scale = np.max(np.abs(k_tiny))
    np.testing.assert_allclose(k_zero, k_tiny, rtol=0, atol=1e-8 * scale)


def test_deep_relu_with_large_weights_matches_closed_form():
    r"""ReLU, no bias, depth 100, w_std = 3: the diagonal is exact,
    :math:`\Theta(x, x) = (L+1)\, \sigma_w^2 (\sigma_w^2/2)^L |x|^2/D_{in}`."""
    depth, w_std = 100, 3.0
    model = nx.models.MLP(width=8, depth=depth, w_std=w_std, b_std=0.0)
    x = _x()
    k = _finite_or_clear_error(model, x)
    s0 = np.sum(x * x, axis=1) / x.shape[1]
    expected = (depth + 1) * w_std**2 * (w_std**2 / 2) ** depth * s0
    np.testing.assert_allclose(np.diag(k), expected, rtol=1e-12)
    assert np.all(np.diag(k) > 1e60)


def test_overflowing_recursion_is_a_clear_error():
    model = nx.models.MLP(width=8, depth=100, w_std=3.0, b_std=0.1)
    assert _finite_or_clear_error(model, _x() * 1e150) is None


def test_erf_kernel_at_huge_norms_is_finite():
    """At huge pre-activation variance erf -> sign: E[phi phi] -> (2/pi) arcsin(rho)."""
    model = nx.models.MLP(width=8, depth=1, activation="erf", b_std=0.0)
    x = _x()
    k = _finite_or_clear_error(model, x * 1e150)
    s0 = x @ x.T / x.shape[1]
    rho = s0 / np.sqrt(np.outer(np.diag(s0), np.diag(s0)))
    nngp = np.asarray(nx.kernels.infinite_nngp(model, x * 1e150))
    np.testing.assert_allclose(nngp, 2 * (2 / np.pi) * np.arcsin(rho), atol=1e-12)
    # T - S = w^2 T_1 E[phi' phi']: off the diagonal it tends to a finite limit,
    # on it it grows like the input scale (E[phi'^2] ~ 1/sqrt(variance))
    big = np.asarray(nx.kernels.infinite_ntk(model, x * 1e8)) - np.asarray(
        nx.kernels.infinite_nngp(model, x * 1e8)
    )
    off = ~np.eye(len(x), dtype=bool)
    np.testing.assert_allclose((k - nngp)[off], big[off], rtol=1e-6)
    np.testing.assert_allclose(np.diag(k - nngp) / 1e150, np.diag(big) / 1e8, rtol=1e-6)
