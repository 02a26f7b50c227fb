"""Where the Hydra configs live, and the sweep/run identifiers derived from Hydra."""

from __future__ import annotations

import os
from pathlib import Path

CONF_ENV = "NTHEXP_CONF_DIR"
GROUPS = (
    "model",
    "data",
    "kernel",
    "analysis",
    "dynamics",
    "logger",
    "lyapunov",
    "experiment",
)


def find_conf_dir() -> Path:
    """``$NTHEXP_CONF_DIR``, else the ``conf/`` found walking up from this package.

    The walk finds the repository's ``conf/`` for an editable install, whatever the
    working directory; ``./conf`` is the last resort.
    """
    env = os.environ.get(CONF_ENV)
    if env is not None:
        return Path(env).resolve()
    for parent in Path(__file__).resolve().parents:
        if (parent / "conf" / "config.yaml").is_file():
            return parent / "conf"
    return (Path.cwd() / "conf").resolve()


def group_options(conf_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def sweep_id(sweep_dir: str | Path) -> str:
    """wandb group of a sweep: the last two parts of its dir (date and time)."""
    parts = Path(sweep_dir).resolve().parts
    return "_".join(parts[-2:])
