"""Hydra callback: validate every point before a sweep starts; report when it ends."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from nthexp.experiment import _progress
from nthexp.experiment._validate import validate

log = logging.getLogger("nthexp.experiment")


def fail(message: str, code: int = 2):
    """The app's single error line on stderr, then exit."""
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def _task_config(config: DictConfig) -> DictConfig:
    cfg = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def sweep_points(config: DictConfig) -> list[list[str]] | None:
    """The override lists of the points of a basic-sweeper multirun, or None."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = config.hydra.sweeper.get("params")
        args = [f"{k}={v}" for k, v in params.items()] if params is not None else []
        args += list(config.hydra.overrides.task)
        overrides = OverridesParser.create().parse_overrides(args)
        batches = BasicSweeper.split_arguments(overrides, None)
    except Exception as exc:  # noqa: BLE001 - not the basic sweeper: jobs validate
        log.debug("cannot enumerate the sweep points up front: %s", exc)
        return None
    return [list(job) for batch in batches for job in batch]


def validate_points(config: DictConfig, points: list[list[str]]) -> None:
    """Validate every point of a sweep before it starts.

    Points that change a config group (``model=mlp,resnet``) are composed once per
    distinct group choice; plain values are then set on a copy of that config.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from nthexp.experiment._conf import GROUPS

    parser = OverridesParser.create()
    choices = config.hydra.runtime.choices
    bases: dict[tuple[str, ...], DictConfig | None] = {
        (): _task_config(config),
    }
    seen: set[tuple[str, ...]] = set()
    for job in points:
        groups, values = [], []
        for ov in parser.parse_overrides(job):
            key = ov.key_or_group
            if key.startswith("hydra"):
                continue
            if key in GROUPS:
                if str(ov.value()) != str(choices.get(key)):
                    groups.append(ov.input_line)
                continue
            values.append((key, ov.value()))
        groups_key = tuple(groups)
        signature = groups_key + tuple(f"{k}={v!r}" for k, v in values)
        if signature in seen:
            continue
        seen.add(signature)
        if groups_key not in bases:
            bases[groups_key] = _compose(config, groups)
        base = bases[groups_key]
        if base is None:
            continue  # validated by the job itself once Hydra has composed it
        cfg = base.copy()
        with open_dict(cfg):
            for key, value in values:
                OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        validate(cfg)


def _compose(config: DictConfig, group_overrides: list[str]) -> DictConfig | None:
    try:
        from hydra import compose

        return compose(config.hydra.job.config_name, overrides=group_overrides)
    except Exception as exc:  # noqa: BLE001 - the job validates itself then
        log.debug("cannot compose %s up front: %s", group_overrides, exc)
        return None


#: (path, bytes) of the sweep dir's ``multirun.yaml`` as it was before this launch
#: (Hydra's sweeper overwrites it after ``on_multirun_start``); None when it did not
#: exist. A refused resume puts it back (:func:`restore_multirun_yaml`).
_MULTIRUN_BACKUP: tuple[Path, bytes] | None = None


def _snapshot_multirun_yaml(sweep_dir: Path) -> None:
    global _MULTIRUN_BACKUP
    path = sweep_dir / "multirun.yaml"
    try:
        _MULTIRUN_BACKUP = (path, path.read_bytes())
    except OSError:
        _MULTIRUN_BACKUP = None


def restore_multirun_yaml() -> None:
    """Put back the ``multirun.yaml`` of the sweep dir that a refused resume found."""
    global _MULTIRUN_BACKUP
    if _MULTIRUN_BACKUP is None:
        return
    path, data = _MULTIRUN_BACKUP
    _MULTIRUN_BACKUP = None
    try:
        if not path.is_file() or path.read_bytes() != data:
            from nthexp.experiment._files import write_bytes_atomic

            write_bytes_atomic(path, data)
    except OSError as exc:
        log.warning("could not restore %s: %s", path, exc)


def _count_shapes(config: DictConfig, points: list[list[str]] | None) -> int | None:
    """Distinct (model.width, model.depth) among the points (ETA), or None."""
    if points is None:
        return None
    try:
        model = config.get("model") or {}
        base = (str(model.get("width")), str(model.get("depth")))
        shapes = set()
        for job in points:
            width, depth = base
            for ov in job:
                key, _, value = ov.partition("=")
                key = key.lstrip("+~")
                if key == "model.width":
                    width = value
                elif key == "model.depth":
                    depth = value
            shapes.add((width, depth))
        return len(shapes)
    except Exception:  # noqa: BLE001 - the ETA then leaves compilation out
        return None


class SweepCallback(Callback):
    """``on_*_start``: reject bad input before any directory is made.
    ``on_multirun_end``: aggregate the sweep dir into the report and print a summary."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            validate(_task_config(config))
        except ValueError as exc:
            fail(str(exc))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        points = sweep_points(config)
        try:
            if points is not None:
                validate_points(config, points)
            else:
                validate(_task_config(config))
        except ValueError as exc:
            fail(str(exc))
        sweep_dir = Path(str(config.hydra.sweep.dir))
        _snapshot_multirun_yaml(sweep_dir)
        print(f"sweep dir: {sweep_dir}", flush=True)
        _progress.CURRENT = _progress.Progress(
            len(points) if points is not None else None,
            shapes=_count_shapes(config, points),
        )

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from nthexp.experiment._conf import sweep_id
        from nthexp.report import build_report, log_sweep

        sweep_dir = Path(config.hydra.sweep.dir)
        report = build_report(sweep_dir)
        print(report.summary_text())

        logger = config.logger
        if logger.name == "wandb":
            log_sweep(
                mode=logger.mode,
                project=logger.project,
                sweep_dir=sweep_dir,
                group=sweep_id(sweep_dir),
                fits=report.fits,
                figures=report.figures,
            )
        if report.failed:
            for rel, reason in report.failed:
                overrides = _overrides(sweep_dir / rel)
                sys.stderr.write(
                    f"FAILED {rel} ({overrides}): {reason}; log: {sweep_dir / rel}\n"
                )
            fail(f"{len(report.failed)} point(s) failed; see {report.markdown_path}", 1)


def _overrides(run_dir: Path) -> str:
    try:
        return " ".join(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))
    except Exception:  # noqa: BLE001 - informative only
        return "overrides unknown"
