"""One sweep point: config -> data + model -> params -> kernels -> analysis -> files.

Files written into the job directory, in this order, each atomically:
``spectra.npz``, ``resolved_config.yaml``, then ``metrics.json`` (its existence marks a
complete run). All wall-clock values live under ``metrics["timing"]``, so two identical
runs give equal ``metrics.json`` apart from that key.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import math
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import jax
import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf

import nthexp as nx
from nthexp.experiment._files import (
    ERROR,
    METRICS,
    RESOLVED_CONFIG,
    SPECTRA,
    write_json_atomic,
    write_npz_atomic,
    write_text_atomic,
)
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


def _computed_part(config: dict) -> dict:
    """The config without the sinks (``logger``): what determines the results."""
    return {k: v for k, v in config.items() if k not in SINK_KEYS}


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
            raise RunMismatchError(
                f"job_dir={str(job_dir)!r} is not allowed; it already holds a complete "
                f"run of a different config ({stored}); launch into a new sweep dir"
            )
    return True


def compute_point(cfg: DictConfig) -> tuple[dict, dict[str, np.ndarray]]:
    """Run one point; returns ``(metrics, spectra)`` and writes nothing."""
    timing: dict[str, float] = {}
    t_start = time.perf_counter()
    dtype = cfg.kernel.dtype

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

    tic = time.perf_counter()
    k_emp = nx.kernels.ntk(model, params, x, method=cfg.kernel.method)
    k_emp = np.asarray(jax.block_until_ready(k_emp), dtype=np.float64)
    timing["ntk"] = time.perf_counter() - tic
    _check_finite(
        "K_emp",
        k_emp,
        "the network output overflowed; lower model.w_std or model.depth",
    )

    tic = time.perf_counter()
    k_inf = nx.kernels.infinite_ntk(model, x, dtype=dtype)
    k_inf = np.asarray(jax.block_until_ready(k_inf), dtype=np.float64)
    timing["infinite"] = time.perf_counter() - tic
    _check_finite(
        "K_inf", k_inf, "the infinite-width recursion overflowed; lower model.w_std"
    )

    tic = time.perf_counter()
    spec_emp = nx.analysis.spectrum(k_emp)
    spec_inf = nx.analysis.spectrum(k_inf)
    corr = nx.analysis.correction(k_emp, k_inf)
    timing["analysis"] = time.perf_counter() - tic
    timing["total"] = time.perf_counter() - t_start

    metrics = {
        **_scalars(corr.to_dict()),
        **_scalars(spec_emp.to_dict(), "emp_"),
        **_scalars(spec_inf.to_dict(), "inf_"),
        "n_params": nx.models.param_count(params),
        "n": int(x.shape[0]),
        "d_in": int(x.shape[1]),
        "dtype": dtype,
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        **provenance(),
        "timing": timing,
    }
    spectra = {
        "emp": np.asarray(spec_emp.eigenvalues, dtype=np.float64),
        "inf": np.asarray(spec_inf.eigenvalues, dtype=np.float64),
    }
    return metrics, spectra


def write_point(job_dir: Path, cfg: DictConfig, metrics: dict, spectra: dict) -> None:
    """Write the result files; ``metrics.json`` last."""
    write_npz_atomic(job_dir / SPECTRA, **spectra)
    write_text_atomic(job_dir / RESOLVED_CONFIG, resolved_yaml(cfg))
    write_json_atomic(job_dir / METRICS, metrics)


def write_error(job_dir: Path, text: str) -> None:
    """Record a failed point (not a result file: the report lists it as failed)."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    write_text_atomic(job_dir / ERROR, f"{stamp}\n{text}")
