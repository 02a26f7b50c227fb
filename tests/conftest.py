"""Strict test set-up: x64 and rank-promotion checks are set once and restored."""

from __future__ import annotations

import os

import jax
import pytest

# Four fake CPU devices for the sharding tests; must be set before jax initialises.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")


@pytest.fixture(scope="session", autouse=True)
def _strict_jax():
    """float64 everywhere and rank promotion as an error, restored at the end."""
    names = ("jax_enable_x64", "jax_numpy_rank_promotion")
    saved = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


@pytest.fixture(autouse=True)
def _bounded_compiled_code():
    """A whole session compiles thousands of shapes: drop JAX's caches before the
    process's memory mappings reach the kernel's limit (a segfault, not an error)."""
    yield
    from nthexp._compiled import release_compiled

    release_compiled()


def pytest_collection_modifyitems(config, items):
    """Skip slurm/gpu tests where their resources are missing (never when CI=true)."""
    import shutil

    on_ci = os.environ.get("CI") == "true"
    has_gpu = any(d.platform == "gpu" for d in jax.devices())
    has_slurm = shutil.which("scontrol") is not None and bool(
        os.environ.get("SLURM_CONF")
    )
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="no GPU on this machine"))
        if "slurm" in item.keywords and not has_slurm and not on_ci:
            item.add_marker(pytest.mark.skip(reason="no SLURM cluster (make slurm-up)"))
