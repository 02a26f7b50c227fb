"""Checks of a composed config before any result file is written.

Every problem is reported as one line, ``<field>=<value> is not allowed; <allowed>``,
which the app prints as ``Error: ...`` on stderr before exiting non-zero.
"""

from __future__ import annotations

from numbers import Integral, Real

from omegaconf import DictConfig

import nthexp as nx

MODEL_NAMES = ("mlp", "resnet", "narrow_deep")
DTYPES = ("float64", "float32")
MATMUL_PRECISIONS = ("default", "high", "highest")
WANDB_MODES = ("online", "offline", "disabled", "shared")
LOGGER_NAMES = ("wandb", "none")


class ConfigError(ValueError):
    """A config value outside its allowed set; ``str()`` is the one-line message."""

    def __init__(self, field: str, value, allowed: str):
        self.field = field
        self.value = value
        super().__init__(f"{field}={value!r} is not allowed; {allowed}")


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_int(field: str, value, low: int) -> None:
    if not _is_int(value) or value < low:
        raise ConfigError(field, value, f"must be an integer >= {low}")


def _check_choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(field, value, f"must be one of {sorted(allowed)}")


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` (or the library's one-line ``ValueError``).

    Cheap: it builds the model (no parameters) and checks the data arguments, but
    computes nothing.
    """
    # the typed schema first: unknown keys, types and ranges of every field
    from nthexp.experiment._schema import check_schema

    check_schema(cfg)
    _check_int("seed", cfg.seed, 0)

    m = cfg.model
    _check_choice("model.name", m.name, MODEL_NAMES)
    _check_int("model.width", m.width, 1)
    _check_int("model.depth", m.depth, 1 if m.name == "resnet" else 0)
    _check_choice("model.activation", m.activation, tuple(nx.models.ACTIVATIONS))
    _check_choice(
        "model.parameterization", m.parameterization, nx.models.PARAMETERIZATIONS
    )
    _check_int("model.n_out", m.n_out, 1)

    d = cfg.data
    _check_choice("data.name", d.name, nx.data.NAMES)
    _check_int("data.n", d.n, 2)
    _check_int("data.seed", d.seed, 0)
    if d.d_in is not None:
        _check_int("data.d_in", d.d_in, 1)
    if cfg.analysis.eig_align_k > d.n:
        raise ConfigError(
            "analysis.eig_align_k",
            cfg.analysis.eig_align_k,
            f"must be an integer in [1, data.n={d.n}] (the kernels are N x N)",
        )

    k = cfg.kernel
    _check_choice("kernel.dtype", k.dtype, DTYPES)
    _check_choice("kernel.method", k.method, tuple(nx.kernels.METHODS))
    _check_choice("kernel.matmul_precision", k.matmul_precision, MATMUL_PRECISIONS)
    _check_int("kernel.order", k.order, 2)
    if k.order > 4:
        raise ConfigError("kernel.order", k.order, "must be 2 (NTK), 3 (O3) or 4 (O4)")
    budget = k.get("memory_budget")
    if budget is not None:
        _check_int("kernel.memory_budget", budget, 1)
    if k.order >= 3 and m.n_out != 1:
        raise ConfigError(
            "model.n_out",
            m.n_out,
            "must be 1 with kernel.order >= 3 (O3/O4 are defined for scalar outputs)",
        )

    if cfg.dynamics.enabled:
        _validate_dynamics(cfg)
    if cfg.lyapunov.enabled:
        _validate_lyapunov(cfg)

    _check_choice("logger.name", cfg.logger.name, LOGGER_NAMES)
    _check_choice("logger.mode", cfg.logger.mode, WANDB_MODES)

    # The model and data modules hold the remaining rules (torus needs an even d_in,
    # digits has 1797 points, ...); their messages are one line in the same form.
    build_model(cfg)
    check_data_args(cfg)


def _validate_dynamics(cfg: DictConfig) -> None:
    """The training stage (``dynamics=late_time``): nx.dynamics.train's arguments."""
    dyn = cfg.dynamics
    _check_choice("dynamics.optimizer", dyn.optimizer, nx.dynamics.OPTIMIZERS)
    _check_choice("dynamics.solver", dyn.solver, nx.dynamics.SOLVERS)
    _check_choice(
        "dynamics.loss_normalization",
        dyn.loss_normalization,
        nx.dynamics.LOSS_NORMALIZATIONS,
    )
    _check_int("dynamics.n_eval", dyn.n_eval, 0)
    if cfg.data.n - dyn.n_eval < 2:
        raise ConfigError(
            "dynamics.n_eval",
            dyn.n_eval,
            f"must leave >= 2 of data.n={cfg.data.n} points for training",
        )
    _check_int("dynamics.n_log", dyn.n_log, 2)
    _check_int("dynamics.max_solver_steps", dyn.max_solver_steps, 1)
    for name in ("t_max", "rtol", "atol", "identity_rel_step"):
        if not _is_number(dyn[name]) or dyn[name] <= 0:
            raise ConfigError(f"dynamics.{name}", dyn[name], "must be a number > 0")
    if not _is_number(dyn.tol) or dyn.tol < 0:
        raise ConfigError("dynamics.tol", dyn.tol, "must be a number >= 0")
    lr = dyn.learning_rate
    if dyn.optimizer != "flow" and (not _is_number(lr) or lr <= 0):
        raise ConfigError(
            "dynamics.learning_rate",
            lr,
            f"must be a number > 0 with dynamics.optimizer={dyn.optimizer!r}",
        )
    if cfg.model.n_out != 1:
        raise ConfigError(
            "model.n_out",
            cfg.model.n_out,
            "must be 1 with dynamics.enabled=true "
            "(the late-time predictions are for scalar outputs)",
        )


def _validate_lyapunov(cfg: DictConfig) -> None:
    """The Lyapunov stage (``lyapunov=default``); types and ranges are the schema's."""
    kinds = list(cfg.lyapunov.kinds)
    if "network" in kinds and cfg.model.name == "resnet":
        raise ConfigError(
            "lyapunov.kinds",
            kinds,
            "may hold 'network' only with an MLP (model.name 'mlp' or 'narrow_deep'); "
            "got model.name='resnet', whose blocks are not layer-to-layer maps",
        )


def build_model(cfg: DictConfig):
    """The Flax module described by ``cfg.model`` (no parameters drawn)."""
    kwargs = {k: v for k, v in cfg.model.items() if k != "name"}
    name = cfg.model.name
    if name == "mlp":
        return nx.models.MLP(**kwargs)
    if name == "resnet":
        return nx.models.ResNet(**kwargs)
    if name == "narrow_deep":
        return nx.models.narrow_deep(**kwargs)
    raise ConfigError("model.name", name, f"must be one of {sorted(MODEL_NAMES)}")


_DATA_CHECKED: set[tuple] = set()


def check_data_args(cfg: DictConfig) -> None:
    """Load the data once per distinct (name, n, d_in, seed) to run its own checks."""
    d = cfg.data
    key = (d.name, d.n, d.d_in, d.seed)
    if key in _DATA_CHECKED:
        return
    nx.data.load(d.name, d.n, d_in=d.d_in, seed=d.seed)
    _DATA_CHECKED.add(key)
