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
    """The override lists of all points of a basic-sweeper multirun (None if unknown)."""
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
    """Validate each point whose overrides are plain values (group changes are
    validated by the job itself, once Hydra has composed them)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from nthexp.experiment._conf import GROUPS

    parser = OverridesParser.create()
    base = _task_config(config)
    choices = config.hydra.runtime.choices
    seen: set[tuple[str, ...]] = set()
    for job in points:
        relevant = []
        composable = True
        for ov in parser.parse_overrides(job):
            key = ov.key_or_group
            if key in GROUPS or key.startswith("hydra"):
                if key in GROUPS and str(ov.value()) != str(choices.get(key)):
                    composable = False
                continue
            relevant.append((key, ov.value()))
        signature = tuple(f"{k}={v!r}" for k, v in relevant)
        if not composable or signature in seen:
            continue
        seen.add(signature)
        cfg = base.copy()
        with open_dict(cfg):
            for key, value in relevant:
                OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        validate(cfg)


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
        _progress.CURRENT = _progress.Progress(
            len(points) if points is not None else None
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
            fail(f"{len(report.failed)} point(s) failed; see {report.markdown_path}", 1)
