"""The ``nthexp`` console script: a Hydra app whose job is one sweep point.

nthexp                                          # one point, the defaults in conf/
nthexp -m model.width=64,256 model.depth=1,2 seed=0,1
nthexp -m experiment=quickstart
nthexp -m experiment=quickstart hydra.sweep.dir=multirun/<old>   # resume
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nthexp._compiled import release_compiled
from nthexp.experiment import _progress
from nthexp.experiment._callback import fail, restore_multirun_yaml
from nthexp.experiment._conf import GROUPS, find_conf_dir, group_options, sweep_id
from nthexp.experiment._task import (
    RunMismatchError,
    clear_stages,
    compute_point,
    configure_jax,
    existing_run_matches,
    write_error,
    write_point,
)
from nthexp.experiment._validate import validate

log = logging.getLogger("nthexp.experiment")

CONF_DIR = find_conf_dir()


class _NoTpuProbe(logging.Filter):
    """Drops jax's "Unable to initialize backend 'tpu'" notice: libtpu is installed
    with jax[tpu]-style wheels but there is no TPU here, and jax then falls back to the
    other backends by itself. Every other record of that logger passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - keep records we cannot format
            return True
        return not message.startswith("Unable to initialize backend 'tpu'")


# Attached before jax initialises its backends (on first use, inside the job); a
# filter on the logger survives Hydra's logging configuration.
logging.getLogger("jax._src.xla_bridge").addFilter(_NoTpuProbe())


def run_point(cfg: DictConfig) -> dict | None:
    """Compute one sweep point into its Hydra job dir; returns its metrics.

    Returns None when the point was already complete (resume) or failed inside a
    multirun (recorded in ``error.txt`` so that the sweep goes on and the report
    lists it).
    """
    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    job_num = hc.job.num if multirun else 0

    try:
        validate(cfg)
    except ValueError as exc:
        fail(str(exc))

    try:
        complete = existing_run_matches(job_dir, cfg)
    except RunMismatchError as exc:
        restore_multirun_yaml()
        fail(str(exc))
    if complete:
        log.info("skipping %s: metrics.json exists (complete point)", job_dir)
        if _progress.CURRENT is not None:
            _progress.CURRENT.point_done(job_num, None, "skipped (complete)")
        return None

    configure_jax(cfg)
    # A local multirun computes every point in this one process: compiled functions of
    # earlier shapes are dropped before they exhaust the process's memory mappings.
    release_compiled()
    started = datetime.now(UTC).isoformat()
    tic = time.perf_counter()
    try:
        metrics, spectra = compute_point(cfg, job_dir, job_num)
    except Exception as exc:
        write_error(job_dir, traceback.format_exc())
        # the traceback also goes to the point's own log (<job dir>/<task>.log)
        log.error(
            "point %s failed: %s: %s", job_dir, type(exc).__name__, exc, exc_info=True
        )
        if _progress.CURRENT is not None:
            _progress.CURRENT.point_done(job_num, None, "FAILED")
        if multirun and os.environ.get("SUBMITIT_EXECUTOR") is not None:
            # A submitit job (SLURM or local): re-raised, so that the job itself
            # fails (sacct: FAILED); the launcher waits for the other points and
            # the sweep callback then reports every failure.
            raise
        if multirun:
            return None
        fail(f"{type(exc).__name__}: {exc} (traceback in {job_dir / 'error.txt'})", 1)

    config = OmegaConf.to_container(cfg, resolve=True)
    # wandb shows each run's own overrides next to its config (tags cap at 64 chars).
    config["overrides"] = hc.job.override_dirname
    if cfg.logger.name == "wandb":
        from nthexp.report import log_point

        group = sweep_id(hc.sweep.dir) if multirun else None
        name = f"{group}-{job_num}" if multirun else sweep_id(job_dir)
        wandb_tic = time.perf_counter()
        log_point(
            mode=cfg.logger.mode,
            project=cfg.logger.project,
            run_dir=job_dir,
            group=group,
            name=name,
            config=config,
            metrics=metrics,
            spectra=spectra if cfg.logger.log_spectra else None,
        )
        metrics["timing"]["wandb"] = time.perf_counter() - wandb_tic

    metrics["timing"]["started_at"] = started
    metrics["timing"]["finished_at"] = datetime.now(UTC).isoformat()
    write_point(job_dir, cfg, metrics, spectra)
    clear_stages(job_dir)

    seconds = time.perf_counter() - tic
    note = f"done in {seconds:.2f}s: rel_fro={metrics.get('rel_fro', float('nan')):.4g}"
    if _progress.CURRENT is not None:
        _progress.CURRENT.point_done(job_num, seconds, note, shape=_shape(cfg))
    else:
        log.info("job %d %s -> %s", job_num, note, job_dir)
    return metrics


def _shape(cfg: DictConfig) -> tuple | None:
    """(width, depth) of a point: a new one means a new compilation."""
    model = cfg.get("model")
    if model is None:
        return None
    return (str(model.get("width")), str(model.get("depth")))


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    run_point(cfg)


def _check_group_overrides(argv: list[str]) -> None:
    """Reject an unknown option of a config group (``model=foo``) in one line,
    before Hydra composes anything (its own message comes with a traceback)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    args = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except HydraException as exc:
        fail(f"overrides={args!r} is not allowed; {exc}".replace("\n", " "))
    selected = _selected_options(overrides)
    for ov in overrides:
        _check_override_key(ov, selected)
        group = ov.key_or_group
        if group not in GROUPS or ov.is_delete():
            continue
        allowed = group_options(CONF_DIR, group)
        values = list(ov.sweep_iterator()) if ov.is_sweep_override() else [ov.value()]
        for value in values:
            if str(value) not in allowed and not (
                group == "experiment" and value is None
            ):
                fail(f"{group}={value} is not allowed; must be one of {allowed}")


def _selected_options(overrides) -> dict[str, list[str]]:
    """The option(s) of each config group this command line composes: its own
    ``group=...`` (every value of a sweep), else the chosen experiment preset's
    ``override /group: ...``, else conf/config.yaml's default."""
    chosen: dict[str, list[str]] = {}

    def take(defaults, prefix: str = "") -> None:
        for item in defaults or []:
            if isinstance(item, dict) or OmegaConf.is_dict(item):
                for k, v in item.items():
                    group = str(k).removeprefix(prefix).lstrip("/")
                    if isinstance(v, str) and group in GROUPS:
                        chosen[group] = [v]

    take(OmegaConf.load(CONF_DIR / "config.yaml").get("defaults"))
    given = {}
    for ov in overrides:
        if ov.is_delete() or ov.key_or_group not in GROUPS:
            continue
        values = list(ov.sweep_iterator()) if ov.is_sweep_override() else [ov.value()]
        given[ov.key_or_group] = [str(v) for v in values if v is not None]
    for name in given.pop("experiment", []):
        path = CONF_DIR / "experiment" / f"{name}.yaml"
        if path.is_file():
            take(OmegaConf.load(path).get("defaults"), prefix="override ")
    chosen.update({g: v for g, v in given.items() if v})
    return chosen


def _check_override_key(ov, selected: dict[str, list[str]]) -> None:
    """A misspelt key (``model.widht=64``, ``sed=0``), or a key of another option
    of its group (``model.alpha`` with ``model=mlp``), in one line naming the valid
    keys; Hydra's own message runs over several lines and suggests ``+key``. Keys
    added with ``+`` are checked after composition by the schema."""
    from nthexp.experiment._schema import _conf_keys

    key = ov.key_or_group
    root = key.split(".")[0].split("/")[0]
    if ov.is_add() or ov.is_force_add() or ov.is_delete() or "/" in key:
        return  # added keys, deletions, group paths (hydra/launcher=...)
    if root in ("hydra", "experiment"):
        return
    top, groups = _conf_keys(CONF_DIR)
    group, _, field = key.partition(".")
    value = ov.input_line.partition("=")[2]
    if group not in top:
        close = difflib.get_close_matches(group, top, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        fail(f"{key}={value} is not allowed; unknown key{hint}; valid: {list(top)}")
    if not field:
        return
    if group not in groups:
        fail(f"{key}={value} is not allowed; {group} holds a value, not keys")
    name = field.split(".")[0]
    options = [o for o in selected.get(group, []) if o in groups[group]]
    if name not in set().union(*groups[group].values()):
        where = group if len(options) != 1 else f"{group}={options[0]}"
        keys = sorted(
            set().union(*(groups[group][o] for o in options or groups[group]))
        )
        close = difflib.get_close_matches(name, keys, n=1)
        hint = f" (did you mean {group}.{close[0]}?)" if close else ""
        fail(
            f"{key}={value} is not allowed; unknown key{hint}; valid keys of "
            f"{where}: {keys}"
        )
    lacking = [o for o in options if name not in groups[group][o]]
    if lacking:
        owners = sorted(o for o, keys in groups[group].items() if name in keys)
        fail(
            f"{key}={value} is not allowed; {name} is a key of "
            f"{' and '.join(f'{group}={o}' for o in owners)} only, and this run has "
            f"{group}={lacking[0]}, whose keys are {sorted(groups[group][lacking[0]])}"
        )


def main() -> None:
    """Console entry point (``nthexp``)."""
    # Numerical caveats (warnings.warn in the library) go to the job logs.
    logging.captureWarnings(True)
    _check_group_overrides(sys.argv[1:])
    _hydra_main()
