"""One sweep point: config -> data + model -> params -> kernels -> analysis -> files.

Files written into the job directory, in this order, each atomically:
``spectra.npz``, ``resolved_config.yaml``, then ``metrics.json`` (its existence marks a
complete run). All wall-clock values live under ``metrics["timing"]``, so two identical
runs give equal ``metrics.json`` apart from that key.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import jax
import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf

import nthexp as nx
from nthexp.analysis._eig import DENSE_MAX_N
from nthexp.experiment._depth_width import diag_metrics
from nthexp.experiment._files import (
    ERROR,
    METRICS,
    RESOLVED_CONFIG,
    SPECTRA,
    STAGES,
    STAGES_DIR,
    write_bytes_atomic,
    write_json_atomic,
    write_npz_atomic,
    write_text_atomic,
)
from nthexp.experiment._late_time import late_time_metrics
from nthexp.experiment._lyapunov import lyapunov_metrics
from nthexp.experiment._validate import build_model

log = logging.getLogger(__name__)

# Config keys that only choose where results are sent, not what is computed.
SINK_KEYS = ("logger",)

_VERSIONED = ("jax", "jaxlib", "flax", "nthexp", "numpy")


class RunMismatchError(RuntimeError):
    """A job directory already holds a complete run of a different config."""


def configure_jax(cfg: DictConfig) -> None:
    """Process-wide precision switches, set before any array of the point is made."""
    jax.config.update("jax_enable_x64", cfg.kernel.dtype == "float64")
    jax.config.update("jax_default_matmul_precision", cfg.kernel.matmul_precision)
    # jax reports at INFO which accelerator backends it did not find; not news here.
    logging.getLogger("jax").setLevel(logging.WARNING)


@functools.cache
def provenance() -> dict:
    """Versions, device and git revision: the same for every point of a process."""
    versions = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    dev = jax.devices()[0]
    out = {
        "versions": versions,
        "device": {
            "platform": dev.platform,
            "kind": dev.device_kind,
            "count": jax.device_count(),
        },
    }
    revision = _git_revision()
    if revision is not None:
        out["git_revision"] = revision
    return out


def _git_revision() -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(nx.__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else None


def resolved_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def _scalars(d: dict, prefix: str = "") -> dict:
    """The scalar entries of a ``to_dict()`` result, non-finite floats as None."""
    out = {}
    for key, value in d.items():
        if isinstance(value, (bool, np.bool_)):
            out[prefix + key] = bool(value)
        elif isinstance(value, (int, np.integer)):
            out[prefix + key] = int(value)
        elif isinstance(value, (float, np.floating)):
            value = float(value)
            # strict JSON has no inf (e.g. cond of a singular kernel): stored as null
            out[prefix + key] = value if math.isfinite(value) else None
        elif isinstance(value, str):
            out[prefix + key] = value
    return out


def _check_finite(name: str, k: np.ndarray, hint: str) -> None:
    if not np.all(np.isfinite(k)):
        bad = int(np.size(k) - np.count_nonzero(np.isfinite(k)))
        raise FloatingPointError(
            f"{name} has {bad} non-finite entries; {hint}; nothing was written"
        )


#: A run is flagged ``precision_limited`` when its correction (rel_fro or rel_op) is
#: below this factor times the round-off floor ``eps(dtype) * sqrt(N)``
#: (docs/numerics.md: float32 K_emp and K_inf measured 1e-7..2e-7 relative to float64
#: at widths 64..4096, under the floor 5.8e-7 at N = 24).
PRECISION_LIMIT_FACTOR = 100.0

#: Above this N, lambda_min is also estimated iteratively (nthexp.analysis.lambda_min)
#: and compared with the dense value; the same threshold as lambda_min's "auto".
LAMBDA_MIN_ITERATIVE_N = DENSE_MAX_N


def precision_floor(dtype: str, n: int) -> float:
    """Relative Frobenius round-off floor of an ``(n, n)`` kernel in ``dtype``."""
    return float(np.finfo(np.dtype(dtype)).eps) * math.sqrt(n)


def _precision_metrics(dtype: str, n: int, corr) -> dict:
    floor = precision_floor(dtype, n)
    smallest = min(corr.rel_fro, corr.rel_op)
    return {
        "precision_floor": floor,
        "precision_limited": bool(smallest < PRECISION_LIMIT_FACTOR * floor),
    }


def _lambda_min_metrics(k_emp, k_inf, spec_emp, spec_inf) -> dict:
    """``lambda_min_method``; above LAMBDA_MIN_ITERATIVE_N also the iterative
    estimates, checked against the dense spectra (a log line when they disagree)."""
    n = k_emp.shape[0]
    if n <= LAMBDA_MIN_ITERATIVE_N:
        return {"lambda_min_method": "dense"}
    out = {}
    for name, k, spec in (("emp", k_emp, spec_emp), ("inf", k_inf, spec_inf)):
        est = nx.analysis.lambda_min(k, method="auto")
        out[f"{name}_lambda_min_iterative"] = est.value
        out[f"{name}_lambda_min_method"] = est.chain
        gap = abs(est.value - spec.lambda_min)
        if gap > 1e-8 * max(spec.lambda_max, 0.0) + spec.tol:
            log.warning(
                "%s lambda_min: iterative %.10g (%s) and dense %.10g differ by %.3g",
                name,
                est.value,
                est.chain,
                spec.lambda_min,
                gap,
            )
    out["lambda_min_method"] = out["emp_lambda_min_method"]
    return out


def _eig_align_metrics(k_emp, k_inf, k: int) -> dict:
    """Top-1 and top-k eigenspace alignment of K_emp and K_inf (one decomposition of
    each: the top-1 values are the first cluster of the top-k result)."""
    res = nx.analysis.eigenspace_alignment(k_emp, k_inf, k=k)
    if res.extended:
        log.info("eigenspace alignment: %s", res.note)
    return {
        "eig_align_top1": res.cluster_overlaps[0],
        "eig_align_top1_dim": res.cluster_sizes[0],
        "eig_align_topk": res.alignment,
        "eig_align_topk_dim": res.dim,
        "eig_align_topk_max_angle": res.max_angle,
    }


def _computed_part(config: dict) -> dict:
    """The config without the sinks (``logger``): what determines the results."""
    return {k: v for k, v in config.items() if k not in SINK_KEYS}


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _config_diff(old: dict, new: dict, limit: int = 5) -> str:
    """``model.width: 256 (stored) vs 512 (new), ...`` (at most ``limit`` keys)."""
    a, b = _flatten(old), _flatten(new)
    missing = object()
    keys = sorted(
        k for k in a.keys() | b.keys() if a.get(k, missing) != b.get(k, missing)
    )
    parts = [
        f"{k}: {a.get(k, '<absent>')} (stored) vs {b.get(k, '<absent>')} (new)"
        for k in keys[:limit]
    ]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return ", ".join(parts).replace("\n", " ") or "no differing keys"


def existing_run_matches(job_dir: Path, cfg: DictConfig) -> bool:
    """True when ``job_dir`` holds a complete run of this config (sinks aside).

    Raises :class:`RunMismatchError` when it holds a complete run of another config,
    e.g. a sweep relaunched into an old dir with a different list of points.
    """
    if not (job_dir / METRICS).is_file():
        return False
    stored = job_dir / RESOLVED_CONFIG
    if stored.is_file():
        old = yaml.safe_load(stored.read_text())
        new = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(old, dict) or _computed_part(old) != _computed_part(new):
            diff = (
                _config_diff(_computed_part(old), _computed_part(new))
                if isinstance(old, dict)
                else "unreadable stored config"
            )
            raise RunMismatchError(
                f"job_dir={str(job_dir)!r} is not allowed; it already holds a complete "
                f"run of a different config ({stored}: {diff}); launch into a new "
                "sweep dir"
            )
    return True


class _Stages:
    """Saved kernel stages of one point, so that a job requeued after its time limit
    or a preemption resumes where it stopped.

    ``<job dir>/stages/<name>.npy`` holds a finished stage's array and
    ``<job dir>/stages.json`` its record: ``started_at``/``finished_at`` (UTC, ISO),
    ``seconds`` and ``attempt`` (``SLURM_RESTART_COUNT``: 0 for the first run, 1 after
    the first requeue, ...). A stage is reused only when ``config_sha`` matches the
    point's config. The arrays are deleted once ``metrics.json`` is written; the
    records stay. Without a job dir (``stage_dir=None``) nothing is saved.
    """

    def __init__(self, job_dir: Path | None, cfg: DictConfig, job_num: int | None):
        self.job_dir = job_dir
        self.job_num = job_num
        self.attempt = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        computed = _computed_part(OmegaConf.to_container(cfg, resolve=True))
        blob = json.dumps(computed, sort_keys=True, default=str).encode()
        self.sha = hashlib.sha256(blob).hexdigest()[:16]
        self.records: dict = {}
        if job_dir is not None and (job_dir / STAGES).is_file():
            try:
                saved = json.loads((job_dir / STAGES).read_text())
            except (OSError, ValueError):
                saved = {}
            if saved.get("config_sha") == self.sha:
                self.records = saved.get("stages", {})

    def run(self, name: str, timing: dict, compute) -> np.ndarray:
        """``compute()`` unless a saved result of stage ``name`` exists."""
        path = (
            None if self.job_dir is None else self.job_dir / STAGES_DIR / f"{name}.npy"
        )
        if path is not None and name in self.records and path.is_file():
            log.info(
                "stage %s: reusing the result of attempt %s (%s)",
                name,
                self.records[name]["attempt"],
                path,
            )
            timing[name] = self.records[name]["seconds"]
            return np.load(path)
        _debug_sleep(self.job_num, name, self.attempt)
        started = datetime.now(UTC).isoformat()
        tic = time.perf_counter()
        value = compute()
        timing[name] = time.perf_counter() - tic
        if path is not None:
            path.parent.mkdir(exist_ok=True)
            buf = io.BytesIO()
            np.save(buf, value)
            write_bytes_atomic(path, buf.getvalue())
            self.records[name] = {
                "started_at": started,
                "finished_at": datetime.now(UTC).isoformat(),
                "seconds": timing[name],
                "attempt": self.attempt,
            }
            write_json_atomic(
                self.job_dir / STAGES, {"config_sha": self.sha, "stages": self.records}
            )
        return value


def _debug_sleep(job_num: int | None, stage: str, attempt: int) -> None:
    """Test hook for the requeue and cancel tests (tests/test_slurm.py):
    ``NTHEXP_DEBUG_SLEEP=<job num>:<stage>:<seconds>`` sleeps before that stage of
    that point, on its first attempt only."""
    spec = os.environ.get("NTHEXP_DEBUG_SLEEP")
    if spec is None or attempt != 0:
        return
    num, name, seconds = spec.split(":")
    if name == stage and job_num is not None and int(num) == job_num:
        log.warning("NTHEXP_DEBUG_SLEEP: sleeping %ss before stage %s", seconds, stage)
        time.sleep(float(seconds))


def compute_point(
    cfg: DictConfig, job_dir: Path | None = None, job_num: int | None = None
) -> tuple[dict, dict[str, np.ndarray]]:
    """Run one point; returns ``(metrics, spectra)``.

    With ``job_dir``, the kernel stages are saved as they finish (see
    :class:`_Stages`) and reused by a rerun of the same point; nothing else is
    written.
    """
    timing: dict[str, float] = {}
    t_start = time.perf_counter()
    dtype = cfg.kernel.dtype
    stages = _Stages(job_dir, cfg, job_num)

    tic = time.perf_counter()
    d = cfg.data
    ds = nx.data.load(d.name, d.n, d_in=d.d_in, seed=d.seed)
    x = jax.numpy.asarray(ds.x, dtype=dtype)
    timing["data"] = time.perf_counter() - tic

    tic = time.perf_counter()
    model = build_model(cfg)
    params = nx.models.init(model, jax.random.key(cfg.seed), x.shape[1], dtype=dtype)
    params = jax.block_until_ready(params)
    timing["init"] = time.perf_counter() - tic

    def empirical():
        k = nx.kernels.ntk(model, params, x, method=cfg.kernel.method)
        k = np.asarray(jax.block_until_ready(k), dtype=np.float64)
        if k.ndim == 4:
            # n_out > 1: K_inf is K (x) I_O, so K_emp is reduced to the mean of its
            # diagonal output blocks; output_offdiag_rel reports the rest.
            k = np.asarray(nx.kernels.reduce_outputs(k)[0], dtype=np.float64)
        _check_finite(
            "K_emp",
            k,
            "the network output overflowed; lower model.w_std or model.depth",
        )
        return k

    k_emp = stages.run("ntk", timing, empirical)

    def infinite():
        k = nx.kernels.infinite_ntk(
            model,
            x,
            dtype=dtype,
            quadrature_nodes=cfg.kernel.quadrature_nodes,
            quadrature_rule=cfg.kernel.quadrature_rule,
        )
        k = np.asarray(jax.block_until_ready(k), dtype=np.float64)
        _check_finite(
            "K_inf", k, "the infinite-width recursion overflowed; lower model.w_std"
        )
        return k

    k_inf = stages.run("infinite", timing, infinite)

    outputs = {}
    if model.n_out > 1:
        k_full = np.asarray(nx.kernels.ntk(model, params, x, method=cfg.kernel.method))
        outputs = {
            "output_reduction": "mean of the diagonal output blocks",
            "output_offdiag_rel": float(nx.kernels.reduce_outputs(k_full)[1]),
        }

    hierarchy, hierarchy_spectra = {}, {}
    if cfg.kernel.order >= 3:
        tic = time.perf_counter()
        hierarchy, hierarchy_spectra = _hierarchy_metrics(
            cfg, model, params, x, ds.y, k_emp
        )
        timing["hierarchy"] = time.perf_counter() - tic

    late_time, late_time_arrays = {}, {}
    if cfg.dynamics.enabled:
        late_time, late_time_arrays, late_time_timing = late_time_metrics(
            cfg, model, params, x, ds.y
        )
        timing.update(late_time_timing)

    lyapunov, lyapunov_arrays = {}, {}
    if cfg.lyapunov.enabled:
        lyapunov, lyapunov_arrays, lyapunov_timing = lyapunov_metrics(cfg, model)
        timing.update(lyapunov_timing)

    tic = time.perf_counter()
    spec_emp = nx.analysis.spectrum(k_emp)
    spec_inf = nx.analysis.spectrum(k_inf)
    corr = nx.analysis.correction(k_emp, k_inf)
    lambda_min_extra = _lambda_min_metrics(k_emp, k_inf, spec_emp, spec_inf)
    eig_align = _eig_align_metrics(k_emp, k_inf, cfg.analysis.eig_align_k)
    diag, diag_arrays = diag_metrics(k_emp)
    timing["analysis"] = time.perf_counter() - tic
    timing["total"] = time.perf_counter() - t_start

    metrics = {
        **_scalars(corr.to_dict()),
        **_scalars(spec_emp.to_dict(), "emp_"),
        **_scalars(spec_inf.to_dict(), "inf_"),
        **hierarchy,
        **outputs,
        **late_time,
        **lyapunov,
        **diag,
        "n_params": nx.models.param_count(params),
        "n": int(x.shape[0]),
        "d_in": int(x.shape[1]),
        "dtype": dtype,
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        **lambda_min_extra,
        **eig_align,
        **_precision_metrics(dtype, int(x.shape[0]), corr),
        **provenance(),
        "timing": timing,
    }
    spectra = {
        "emp": np.asarray(spec_emp.eigenvalues, dtype=np.float64),
        "inf": np.asarray(spec_inf.eigenvalues, dtype=np.float64),
        **hierarchy_spectra,
        **late_time_arrays,
        **lyapunov_arrays,
        **diag_arrays,
    }
    return metrics, spectra


def _hierarchy_metrics(cfg, model, params, x, y, k_emp):
    r"""O3 (and O4) at initialisation: norms, their size relative to the NTK, the NTK
    velocity :math:`\dot K_2 = -(1/N) O_3 \cdot r_0` and the end-of-training change
    :math:`-O_3 \cdot v + O_4 : M` of docs/theory.md (the O4 term for order 4)."""
    method, budget = cfg.kernel.method, cfg.kernel.memory_budget
    n = x.shape[0]
    k_fro = float(np.linalg.norm(k_emp))
    y = jax.numpy.asarray(y, dtype=x.dtype)
    r0 = np.asarray(nx.models.apply(model, params, x) - y, dtype=np.float64)

    o3 = np.asarray(nx.kernels.o3(model, params, x, method, memory_budget=budget))
    _check_finite("O3", o3, "the network output overflowed; lower model.w_std")
    velocity = -np.asarray(nx.kernels.o3_contract(model, params, x, r0, method)) / n
    velocity_eigs = np.linalg.eigvalsh(0.5 * (velocity + velocity.T))
    v, m, _ = nx.dynamics.late_time_weights(k_emp, r0)
    dk_o3 = -o3 @ v
    out = {
        "o3_fro": float(np.linalg.norm(o3)),
        "o3_rel": float(np.linalg.norm(o3)) / k_fro,
        "velocity_fro": float(np.linalg.norm(velocity)),
        "velocity_rel": float(np.linalg.norm(velocity)) / k_fro,
        "velocity_lambda_min": float(velocity_eigs[0]),
        "velocity_lambda_max": float(velocity_eigs[-1]),
        "latetime_dk_o3_rel": float(np.linalg.norm(dk_o3)) / k_fro,
    }
    if cfg.kernel.order >= 4:
        o4 = np.asarray(nx.kernels.o4(model, params, x, method, memory_budget=budget))
        _check_finite("O4", o4, "the network output overflowed; lower model.w_std")
        dk_o4 = np.einsum("abcd,cd->ab", o4, m)
        out.update(
            {
                "o4_fro": float(np.linalg.norm(o4)),
                "o4_rel": float(np.linalg.norm(o4)) / k_fro,
                "latetime_dk_o4_rel": float(np.linalg.norm(dk_o4)) / k_fro,
                "latetime_dk_rel": float(np.linalg.norm(dk_o3 + dk_o4)) / k_fro,
            }
        )
    return out, {"velocity": velocity_eigs}


def write_point(job_dir: Path, cfg: DictConfig, metrics: dict, spectra: dict) -> None:
    """Write the result files; ``metrics.json`` last."""
    write_npz_atomic(job_dir / SPECTRA, **spectra)
    write_text_atomic(job_dir / RESOLVED_CONFIG, resolved_yaml(cfg))
    write_json_atomic(job_dir / METRICS, metrics)


def clear_stages(job_dir: Path) -> None:
    """Delete the saved stage arrays of a complete point (``stages.json`` stays)."""
    shutil.rmtree(job_dir / STAGES_DIR, ignore_errors=True)


def write_error(job_dir: Path, text: str) -> None:
    """Record a failed point (not a result file: the report lists it as failed)."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    write_text_atomic(job_dir / ERROR, f"{stamp}\n{text}")
