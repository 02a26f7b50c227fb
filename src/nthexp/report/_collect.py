"""Read a sweep directory into one table (one row per complete run) and a run census.

Nothing here writes or deletes anything; unreadable runs are skipped with a warning
naming the file and listed in the census.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from nthexp.experiment._files import ERROR, METRICS, RESOLVED_CONFIG, SPECTRA

log = logging.getLogger(__name__)

_PRUNE = {".hydra", "wandb", "figures"}


@dataclass
class SweepRuns:
    """A sweep directory as read from disk.

    ``table``: one row per complete run, columns ``run_dir`` (relative to the sweep
    dir), the flattened resolved config (``model.width``, ``seed``, ...) and the
    flattened metrics (``rel_fro``, ``timing.total``, ``versions.jax``, ...).
    """

    sweep_dir: Path
    table: pd.DataFrame
    missing: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    expected: int | None = None
    overrides: list[str] = field(default_factory=list)
    sweeper_params: dict[str, str] = field(default_factory=dict)

    @property
    def n_complete(self) -> int:
        return len(self.table)

    def spectra(self, run_dir: str) -> dict[str, np.ndarray] | None:
        path = self.sweep_dir / run_dir / SPECTRA
        try:
            with np.load(path) as npz:
                return {k: np.asarray(npz[k]) for k in npz.files}
        except (OSError, ValueError, KeyError) as exc:
            log.warning(
                "cannot read %s (%s); left out of the spectra figure", path, exc
            )
            return None


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (list, tuple)):
            out[prefix + key] = json.dumps(value)
        else:
            out[prefix + key] = value
    return out


def _run_dirs(sweep_dir: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(sweep_dir):
        here = Path(root)
        is_run = ".hydra" in dirs or METRICS in files or RESOLVED_CONFIG in files
        if is_run and here != sweep_dir:
            found.append(here)
        dirs[:] = sorted(d for d in dirs if d not in _PRUNE and not d.startswith("."))
    return sorted(found, key=_sort_key(sweep_dir))


def _sort_key(sweep_dir: Path):
    def key(p: Path):
        rel = p.relative_to(sweep_dir).parts
        return tuple((0, int(s), "") if s.isdigit() else (1, 0, s) for s in rel)

    return key


def _sweep_plan(sweep_dir: Path) -> tuple[int | None, list[str], dict[str, str]]:
    """Planned point count and overrides, from Hydra's ``multirun.yaml``."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None, [], {}
    try:
        from omegaconf import OmegaConf

        from nthexp.experiment._callback import sweep_points

        config = OmegaConf.load(path)
        overrides = [str(o) for o in config.hydra.overrides.task]
        params = config.hydra.sweeper.get("params")
        params = {str(k): str(v) for k, v in params.items()} if params else {}
        points = sweep_points(config)
    except Exception as exc:  # noqa: BLE001 - the plan is informative only
        log.warning("cannot read the sweep plan from %s (%s)", path, exc)
        return None, [], {}
    return (len(points) if points is not None else None), overrides, params


def collect(sweep_dir: str | Path) -> SweepRuns:
    """Read every run directory under ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ValueError(
            f"sweep_dir={str(sweep_dir)!r} is not allowed; must be an "
            "existing sweep directory"
        )
    expected, overrides, params = _sweep_plan(sweep_dir)
    runs = SweepRuns(
        sweep_dir,
        pd.DataFrame(),
        expected=expected,
        overrides=overrides,
        sweeper_params=params,
    )
    rows = []
    for run in _run_dirs(sweep_dir):
        rel = str(run.relative_to(sweep_dir))
        metrics_path = run / METRICS
        if not metrics_path.is_file():
            if (run / ERROR).is_file():
                runs.failed.append((rel, _last_line(run / ERROR)))
            else:
                runs.missing.append(rel)
            continue
        try:
            metrics = json.loads(metrics_path.read_text())
            config = yaml.safe_load((run / RESOLVED_CONFIG).read_text())
            if not isinstance(metrics, dict) or not isinstance(config, dict):
                raise ValueError("not a mapping")
        except (OSError, ValueError, yaml.YAMLError) as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            log.warning("skipping %s: unreadable (%s)", metrics_path, reason)
            runs.unreadable.append((rel, reason))
            continue
        rows.append({"run_dir": rel, **flatten(config), **flatten(metrics)})
    runs.table = pd.DataFrame(rows)
    return runs


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError as exc:
        return f"unreadable error file ({exc})"
    return lines[-1] if lines else ""
