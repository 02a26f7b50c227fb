"""The typed schema of the app's config: every field's type and range, and the keys
each config group may hold.

:func:`check_schema` runs first in :func:`nthexp.experiment.validate`, on the composed
config, before anything is computed or written. Hydra itself rejects an override of a
key that no config file defines (``model.foo=1``), but ``+model.foo=1`` appends one;
that is rejected here with the list of valid keys. The valid keys of a group are
read from its option files under ``conf/`` (``conf/model/<model.name>.yaml`` for the
model and data groups, whose ``name`` is the option's file name; the union of the
options' keys otherwise), so a field added to a config file is known here at once.
Fields without a :data:`FIELDS` entry (a group added since) are checked for
membership only.

Messages are one line in the form of :class:`ConfigError`:
``<field>=<value> is not allowed; <what is allowed>``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

import nthexp as nx
from nthexp.analysis._lyapunov import KINDS as LYAPUNOV_KINDS
from nthexp.experiment._conf import find_conf_dir
from nthexp.experiment._validate import (
    DTYPES,
    LOGGER_NAMES,
    MATMUL_PRECISIONS,
    MODEL_NAMES,
    WANDB_MODES,
    ConfigError,
)

# Top-level entries of config.yaml that are not config fields.
_NOT_FIELDS = ("defaults", "hydra")
# Config groups that never create a key of their own (``@package _global_``).
_GLOBAL_GROUPS = ("experiment", "hydra")


@dataclass(frozen=True)
class Int:
    """An integer (not a bool) >= ``low``; ``None`` too when ``optional``."""

    low: int
    optional: bool = False

    def check(self, field: str, value) -> None:
        if value is None and self.optional:
            return
        ok = isinstance(value, Integral) and not isinstance(value, bool)
        if not ok or value < self.low:
            extra = " or null" if self.optional else ""
            raise ConfigError(field, value, f"must be an integer >= {self.low}{extra}")


@dataclass(frozen=True)
class Float:
    """A finite real number (ints accepted) in the stated range."""

    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    optional: bool = False

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        text = "must be a finite number" + (" " + " and ".join(parts) if parts else "")
        return text + (" or null" if self.optional else "")

    def check(self, field: str, value) -> None:
        if value is None and self.optional:
            return
        ok = isinstance(value, Real) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if not ok:
            raise ConfigError(field, value, self.describe())


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of strings."""

    allowed: tuple

    def check(self, field: str, value) -> None:
        if value not in self.allowed:
            raise ConfigError(field, value, f"must be one of {sorted(self.allowed)}")


@dataclass(frozen=True)
class Bool:
    def check(self, field: str, value) -> None:
        if not isinstance(value, bool):
            raise ConfigError(field, value, "must be true or false")


@dataclass(frozen=True)
class Str:
    def check(self, field: str, value) -> None:
        if not isinstance(value, str) or not value:
            raise ConfigError(field, value, "must be a non-empty string")


@dataclass(frozen=True)
class ChoiceList:
    """A non-empty list of distinct strings from a fixed set."""

    allowed: tuple

    def check(self, field: str, value) -> None:
        value = _plain(value)
        ok = isinstance(value, list) and len(value) > 0
        ok = ok and all(isinstance(v, str) and v in self.allowed for v in value)
        if not ok or len(set(value)) != len(value):
            raise ConfigError(
                field,
                value,
                f"must be a non-empty list of distinct values from "
                f"{sorted(self.allowed)}",
            )


@dataclass(frozen=True)
class IntList:
    """A list of strictly increasing integers >= ``low``, possibly empty."""

    low: int

    def check(self, field: str, value) -> None:
        value = _plain(value)
        ok = isinstance(value, list) and all(
            isinstance(v, Integral) and not isinstance(v, bool) and v >= self.low
            for v in value
        )
        if not ok or any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ConfigError(
                field,
                value,
                f"must be a list of increasing integers >= {self.low} (empty: none)",
            )


@dataclass(frozen=True)
class Any_:
    """Checked by the module that uses it (e.g. ResNet's ``alpha``)."""

    def check(self, field: str, value) -> None:
        return


#: Type and range of every field of the app's config (dotted names).
FIELDS = {
    "seed": Int(0),
    "model.name": Choice(MODEL_NAMES),
    "model.width": Int(1),
    "model.depth": Int(0),  # resnet: >= 1, checked by validate()
    "model.activation": Choice(tuple(nx.models.ACTIVATIONS)),
    "model.w_std": Float(low=0.0, low_open=True),
    "model.b_std": Float(low=0.0),
    "model.parameterization": Choice(tuple(nx.models.PARAMETERIZATIONS)),
    "model.use_bias": Bool(),
    "model.n_out": Int(1),
    "model.readout_w_std": Float(low=0.0, low_open=True, optional=True),
    "model.readout_b_std": Float(low=0.0, optional=True),
    "model.alpha": Any_(),  # a number or "1", "1/sqrt(depth)", "1/depth": ResNet's
    "model.branch_layers": Int(1),
    "data.name": Choice(tuple(nx.data.NAMES)),
    "data.n": Int(2),
    "data.d_in": Int(1, optional=True),
    "data.seed": Int(0),
    "kernel.order": Int(2),  # <= 4, checked by validate()
    "kernel.method": Choice(tuple(nx.kernels.METHODS)),
    "kernel.dtype": Choice(DTYPES),
    "kernel.matmul_precision": Choice(MATMUL_PRECISIONS),
    "kernel.memory_budget": Int(1, optional=True),
    "kernel.quadrature_nodes": Int(2),
    "kernel.quadrature_rule": Choice(tuple(nx.kernels.QUADRATURE_RULES)),
    "analysis.response": Str(),
    "analysis.level": Float(low=0.0, low_open=True, high=1.0, high_open=True),
    "analysis.max_depth_over_width": Float(low=0.0, low_open=True),
    "analysis.eig_align_k": Int(1),  # <= data.n, checked by validate()
    "logger.name": Choice(LOGGER_NAMES),
    "logger.mode": Choice(WANDB_MODES),
    "logger.project": Str(),
    "logger.log_spectra": Bool(),
    "dynamics.enabled": Bool(),
    "lyapunov.enabled": Bool(),
    "lyapunov.kinds": ChoiceList(LYAPUNOV_KINDS),
    "lyapunov.steps": Int(1),
    "lyapunov.n_samples": Int(2),
    "lyapunov.log_norm_depths": IntList(1),
    "lyapunov.log_norm_samples": Int(2),
}


def _yaml_keys(path: Path) -> set[str]:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        return set()
    return {str(k) for k in data if k not in _NOT_FIELDS}


@functools.cache
def _conf_keys(conf_dir: Path) -> tuple[tuple[str, ...], dict[str, dict[str, set]]]:
    """(top-level field names, {group: {option: keys}}) from the files under conf/."""
    groups = {}
    for sub in sorted(p for p in conf_dir.iterdir() if p.is_dir()):
        if sub.name in _GLOBAL_GROUPS:
            continue
        groups[sub.name] = {p.stem: _yaml_keys(p) for p in sub.glob("*.yaml")}
    top = _yaml_keys(conf_dir / "config.yaml") | set(groups)
    return tuple(sorted(top)), groups


def valid_keys(group: str, cfg_group, conf_dir: Path | None = None) -> list[str]:
    """The keys ``cfg.<group>`` may hold, sorted."""
    _, groups = _conf_keys(conf_dir or find_conf_dir())
    options = groups.get(group, {})
    name = cfg_group.get("name") if isinstance(cfg_group, DictConfig) else None
    if group in ("model", "data") and isinstance(name, str) and name in options:
        return sorted(options[name])
    return sorted(set().union(*options.values())) if options else []


def check_schema(cfg: DictConfig, conf_dir: Path | None = None) -> None:
    """Raise :class:`ConfigError` for an unknown key or a field of the wrong type or
    out of range (the first found, in config order)."""
    conf_dir = conf_dir or find_conf_dir()
    top, groups = _conf_keys(conf_dir)
    for key in cfg:
        if key not in top:
            value = OmegaConf.select(cfg, str(key))
            raise ConfigError(
                str(key), _plain(value), f"unknown key; valid: {list(top)}"
            )

    for key in cfg:
        key = str(key)
        node = cfg[key]
        if key in groups and isinstance(node, DictConfig):
            allowed = valid_keys(key, node, conf_dir)
            for sub in node:
                field = f"{key}.{sub}"
                if str(sub) not in allowed:
                    raise ConfigError(
                        field,
                        _plain(node[sub]),
                        f"unknown key; valid keys of {key}: {allowed}",
                    )
                spec = FIELDS.get(field)
                if spec is not None:
                    spec.check(field, node[sub])
        elif key in FIELDS:
            FIELDS[key].check(key, node)


def _plain(value):
    """A config node as plain Python, for the message."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value
