r"""Weyl's bound on :math:`\lambda_{min}(K_{emp})` and the MLP that maximises it.

Weyl's inequality (Horn & Johnson, Matrix Analysis 2nd ed. 2013, Thm 4.3.1) for the
symmetric :math:`K_{emp} = K_{inf} + \Delta K`:

.. math:: \lambda_{min}(K_{emp}) \ge \lambda_{min}(K_{inf}) - \|\Delta K\|_{op}.

Across a sweep both terms are replaced by fitted laws (:class:`BoundLaws`),

.. math::

    \lambda_{min}(K_{inf}) \approx (a L + b)\,(N / N_{ref})^{m}, \qquad
    \|\Delta K\|_{op} \approx c\, n^{p} L^{q} (N / N_{ref})^{r},

so the certified bound :math:`B(n, L, N)` is their difference, and for a parameter
budget :math:`P` the budget tool maximises :math:`B` along the curve
:math:`P(n, L) \le P` of an MLP with ``d_in`` inputs and one output,
:math:`P(n, L) = D_{in} n + (L - 1) n^2 + n + [L n + 1]_{biases}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The ``source`` of laws that the caller did not describe.
UNKNOWN_SOURCE = "given by the caller"


def _check_number(name: str, value, *, low: float, strict: bool) -> float:
    """A finite real > low (strict) or >= low; one-line ValueError otherwise."""
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool
    )
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        relation = ">" if strict else ">="
        raise ValueError(
            f"{name}={value!r} is not allowed; must be a finite number "
            f"{relation} {low:g}"
        )
    return value


def _check_int(name: str, value, low: int) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or value < low
    ):
        raise ValueError(
            f"{name}={value!r} is not allowed; must be an integer >= {low}"
        )
    return int(value)


def weyl_bound(lambda_min_inf, op_norm):
    r"""Weyl's lower bound :math:`\lambda_{min}(K_{inf}) - \|\Delta K\|_{op}`.

    Args:
        lambda_min_inf: :math:`\lambda_{min}(K_{inf})`, finite (>= 0 for a PSD kernel;
            the inequality holds for any symmetric pair), scalar or array.
        op_norm: :math:`\|K_{emp} - K_{inf}\|_{op} \ge 0`, broadcastable with it.

    Returns:
        The bound (a float for scalar inputs, else an array); it may be negative, in
        which case it certifies nothing.

    Raises:
        ValueError: for a negative ``op_norm`` or non-finite inputs.
    """
    lam = np.asarray(lambda_min_inf, dtype=np.float64)
    op = np.asarray(op_norm, dtype=np.float64)
    bad = ~np.isfinite(lam)
    if np.any(bad):
        raise ValueError(
            f"lambda_min_inf={float(lam[bad].ravel()[0])!r} is not allowed; must be "
            "finite"
        )
    bad = ~np.isfinite(op) | (op < 0)
    if np.any(bad):
        raise ValueError(
            f"op_norm={float(op[bad].ravel()[0])!r} is not allowed; must be a finite "
            "number >= 0"
        )
    out = lam - op
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class BoundLaws:
    r"""Fitted laws for the two terms of Weyl's bound (module doc).

    Attributes:
        a, b: :math:`\lambda_{min}(K_{inf}) \approx (aL + b)(N/N_{ref})^m`.
        c, p, q, r: :math:`\|\Delta K\|_{op} \approx c\, n^p L^q (N/N_{ref})^r`.
        m: N exponent of :math:`\lambda_{min}(K_{inf})` (0: fitted at one N).
        n_ref: the reference data set size :math:`N_{ref}`.
        source: where the laws come from, in words (printed by ``nthexp-bound``).
        ranges: ``{"width"|"depth"|"n": (min, max)}`` the laws were fitted on;
            outside them the bound is an extrapolation.
    """

    a: float
    b: float
    c: float
    p: float
    q: float
    r: float = 0.0
    m: float = 0.0
    n_ref: float = 1.0
    source: str = UNKNOWN_SOURCE
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("a", "b", "p", "q", "r", "m"):
            _check_number(name, getattr(self, name), low=-math.inf, strict=True)
        _check_number("c", self.c, low=0.0, strict=False)
        _check_number("n_ref", self.n_ref, low=0.0, strict=True)

    def lambda_min_inf(self, depth, n):
        """:math:`(aL + b)(N/N_{ref})^m`."""
        depth = np.asarray(depth, dtype=np.float64)
        return (self.a * depth + self.b) * (np.asarray(n, float) / self.n_ref) ** self.m

    def op_norm(self, width, depth, n):
        r""":math:`c\, n^p L^q (N/N_{ref})^r`."""
        width = np.asarray(width, dtype=np.float64)
        depth = np.asarray(depth, dtype=np.float64)
        scale = (np.asarray(n, dtype=np.float64) / self.n_ref) ** self.r
        return self.c * width**self.p * depth**self.q * scale

    def extrapolates(self, width=None, depth=None, n=None) -> bool:
        """Whether any given value lies outside ``ranges``."""
        given = {"width": width, "depth": depth, "n": n}
        for name, (low, high) in self.ranges.items():
            v = given.get(name)
            if v is not None and np.any((np.asarray(v) < low) | (np.asarray(v) > high)):
                return True
        return False

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable; :meth:`from_dict` reads it back."""
        return {
            "lambda_min_inf": {"a": self.a, "b": self.b, "m": self.m},
            "op_norm": {"c": self.c, "p": self.p, "q": self.q, "r": self.r},
            "n_ref": self.n_ref,
            "source": self.source,
            "ranges": {
                k: [float(lo), float(hi)] for k, (lo, hi) in self.ranges.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BoundLaws:
        """Inverse of :meth:`to_dict`; a ``"bound_laws"`` key is looked into first."""
        d = d.get("bound_laws", d)
        try:
            lam, op = d["lambda_min_inf"], d["op_norm"]
            return cls(
                a=lam["a"],
                b=lam["b"],
                m=lam.get("m", 0.0),
                c=op["c"],
                p=op["p"],
                q=op["q"],
                r=op.get("r", 0.0),
                n_ref=d.get("n_ref", 1.0),
                source=d.get("source", UNKNOWN_SOURCE),
                ranges={k: (v[0], v[1]) for k, v in d.get("ranges", {}).items()},
            )
        except (KeyError, TypeError) as err:
            raise ValueError(
                f"bound laws need keys lambda_min_inf.{{a,b}} and op_norm.{{c,p,q}}; "
                f"missing or malformed: {err}"
            ) from None


def certified_bound(width, depth, n, laws: BoundLaws):
    r"""The bound :math:`B = \lambda_{min}(K_{inf})(L, N) - \|\Delta K\|_{op}(n, L, N)`.

    Args:
        width, depth, n: positive values (arrays broadcast).
        laws: the fitted :class:`BoundLaws`.

    Returns:
        :math:`B`, a float for scalar inputs, else an array. A negative value certifies
        nothing.
    """
    for name, v in (("width", width), ("depth", depth), ("n", n)):
        v = np.asarray(v, dtype=np.float64)
        bad = ~np.isfinite(v) | (v <= 0)
        if np.any(bad):
            raise ValueError(
                f"{name}={float(v[bad].ravel()[0])!r} is not allowed; must be a "
                "finite number > 0"
            )
    out = laws.lambda_min_inf(depth, n) - laws.op_norm(width, depth, n)
    return float(out) if np.ndim(out) == 0 else out


def mlp_param_count(width, depth, d_in: int, *, bias: bool = True, n_out: int = 1):
    r""":math:`P = D_{in} n + (L-1) n^2 + n\, n_{out} + [L n + n_{out}]_{bias}`.

    The count of ``nthexp.models.MLP(width, depth)`` on ``d_in`` inputs (``depth``
    hidden layers; the dense readout included). Arrays broadcast.
    """
    width = np.asarray(width, dtype=np.int64)
    depth = np.asarray(depth, dtype=np.int64)
    p = d_in * width + (depth - 1) * width**2 + width * n_out
    if bias:
        p = p + depth * width + n_out
    return int(p) if p.ndim == 0 else p


@dataclass(frozen=True)
class Architecture:
    r"""Result of :func:`optimal_architecture`.

    Attributes:
        width, depth: the maximiser of the certified bound on the curve.
        bound: the bound there; params: its parameter count (<= the budget).
        curve: ``{"depth", "width", "params", "bound", "lambda_min_inf", "op_norm"}``,
            each ``(D,)``: for every depth ``L = 1..L_max`` the widest MLP within the
            budget, for the figure.
        budget, d_in, n: the arguments; laws: the laws used.
        extrapolated: the optimum lies outside the ranges the laws were fitted on.
    """

    width: int
    depth: int
    bound: float
    params: int
    curve: dict[str, np.ndarray]
    budget: int
    d_in: int
    n: int
    laws: BoundLaws
    extrapolated: bool

    def to_dict(self) -> dict[str, Any]:
        """Python scalars (the curve left out)."""
        return {
            "width": self.width,
            "depth": self.depth,
            "bound": self.bound,
            "params": self.params,
            "budget": self.budget,
            "d_in": self.d_in,
            "n": self.n,
            "extrapolated": self.extrapolated,
            "laws": self.laws.to_dict(),
        }


def optimal_architecture(
    params: int,
    d_in: int,
    n: int,
    laws: BoundLaws,
    *,
    bias: bool = True,
    max_depth: int | None = None,
) -> Architecture:
    r"""The MLP of at most ``params`` parameters that maximises the certified bound.

    For each depth :math:`L = 1, 2, \dots` the width is the largest integer with
    :math:`P(n, L) \le P` (:func:`mlp_param_count`, the positive root of the quadratic
    in :math:`n`), down to width 1; the bound :func:`certified_bound` is evaluated on
    that curve and its maximum returned. Cost :math:`O(L_{max})`.

    Args:
        params: the budget :math:`P`, an integer at least one hidden layer of width 1.
        d_in: input dimension (>= 1); n: data set size N (>= 1).
        laws: the fitted :class:`BoundLaws`.
        bias: whether the layers have biases (nthexp's default).
        max_depth: largest depth tried (default: the largest with width >= 1).

    Returns:
        An :class:`Architecture`.

    Raises:
        ValueError: for a non-positive ``params``, ``d_in`` or ``n``, or a budget below
            one hidden layer of width 1.
    """
    budget = _check_int("params", params, 1)
    d_in = _check_int("d_in", d_in, 1)
    n = _check_int("n", n, 1)
    smallest = mlp_param_count(1, 1, d_in, bias=bias)
    if budget < smallest:
        raise ValueError(
            f"params={budget} is not allowed; one hidden layer of width 1 on "
            f"d_in={d_in} inputs already needs {smallest} parameters; must be "
            f">= {smallest}"
        )
    # Width 1: P(1, L) = d_in + L - 1 + 1 (+ L + 1), increasing in L.
    per_layer = 2 if bias else 1
    deepest = 1 + (budget - smallest) // per_layer
    if max_depth is not None:
        deepest = min(deepest, _check_int("max_depth", max_depth, 1))

    depth = np.arange(1, deepest + 1, dtype=np.int64)
    # Largest width with (L-1) w^2 + (d_in + 1 + [L]) w + [1] <= P.
    quad = (depth - 1).astype(np.float64)
    lin = d_in + 1 + (depth if bias else 0)
    const = 1 if bias else 0
    with np.errstate(divide="ignore", invalid="ignore"):
        root = np.where(
            quad > 0,
            (-lin + np.sqrt(lin**2 + 4 * quad * (budget - const)))
            / (2 * np.maximum(quad, 1.0)),
            (budget - const) / lin,
        )
    width = np.floor(root + 1e-9).astype(np.int64)
    # Round-off guard: step down while over budget, up while the next still fits.
    over = mlp_param_count(width, depth, d_in, bias=bias) > budget
    width = np.where(over, width - 1, width)
    fits = mlp_param_count(width + 1, depth, d_in, bias=bias) <= budget
    width = np.maximum(np.where(fits, width + 1, width), 1)

    lam = laws.lambda_min_inf(depth, n)
    op = laws.op_norm(width, depth, n)
    bound = lam - op
    best = int(np.argmax(bound))
    return Architecture(
        width=int(width[best]),
        depth=int(depth[best]),
        bound=float(bound[best]),
        params=int(mlp_param_count(width[best], depth[best], d_in, bias=bias)),
        curve={
            "depth": depth,
            "width": width,
            "params": mlp_param_count(width, depth, d_in, bias=bias),
            "bound": bound,
            "lambda_min_inf": np.broadcast_to(lam, bound.shape).copy(),
            "op_norm": op,
        },
        budget=budget,
        d_in=d_in,
        n=n,
        laws=laws,
        extrapolated=laws.extrapolates(width[best], depth[best], n),
    )


def digits_relu_laws(
    n: int,
    *,
    depths=(1, 2, 3, 4, 6, 8),
    constant: float = 1.0,
    data_seed: int = 0,
) -> BoundLaws:
    r"""Default laws from the infinite-width ReLU NTK on ``n`` digits points.

    :math:`\lambda_{min}(K_{inf})` is computed for a ReLU MLP (NTK parameterisation,
    :math:`\sigma_w^2 = 2`, :math:`\sigma_b = 0`) at each depth and fitted linearly,
    :math:`aL + b`. The correction uses the finite-width scaling
    :math:`\|\Delta K\|_{op} / \|K_{inf}\|_{op} \approx C \sqrt{L / n}` (Hanin & Nica
    2020, fluctuations of order :math:`L/n` in variance), with
    :math:`\|K_{inf}\|_{op} = \lambda_{max}(K_{inf})` fitted as a power law
    :math:`e^{c_0} L^{q_0}`, giving :math:`c = C e^{c_0}`, :math:`p = -1/2`,
    :math:`q = q_0 + 1/2`. :math:`C` (``constant``) is an assumed order-one constant,
    not a measurement: pass fitted laws from a sweep for a certified statement. Valid
    at this ``n`` only (:math:`m = r = 0`, :math:`N_{ref} = n`).

    Needs jax x64 (the kernel is computed in float64).
    """
    import nthexp as nx

    n = _check_int("n", n, 2)
    constant = _check_number("constant", constant, low=0.0, strict=True)
    x = nx.data.load("digits", n, seed=data_seed).x
    depth = np.asarray(depths, dtype=np.float64)
    lam_min, lam_max = [], []
    for d in depths:
        model = nx.models.MLP(width=1, depth=int(d), activation="relu")
        eig = np.linalg.eigvalsh(np.asarray(nx.kernels.infinite_ntk(model, x)))
        lam_min.append(eig[0])
        lam_max.append(eig[-1])
    a, b = np.polyfit(depth, np.asarray(lam_min), 1)
    q0, c0 = np.polyfit(np.log(depth), np.log(np.asarray(lam_max)), 1)
    source = (
        f"default laws: lambda_min(K_inf) = {a:.4g} L {'-' if b < 0 else '+'} "
        f"{abs(b):.4g}, a linear fit of the "
        f"infinite-width ReLU NTK (NTK param., w_std^2=2, b_std=0) on {n} digits "
        f"points (data.seed={data_seed}) at depths {list(map(int, depths))}; "
        f"||dK||_op = C sqrt(L/width) lambda_max(K_inf), lambda_max(K_inf) = "
        f"{math.exp(c0):.4g} L^{q0:.3f} (power-law fit, same kernels), C = "
        f"{constant:g} assumed (order one, not measured); valid at N={n} only"
    )
    return BoundLaws(
        a=float(a),
        b=float(b),
        c=float(constant * math.exp(c0)),
        p=-0.5,
        q=float(q0 + 0.5),
        n_ref=float(n),
        source=source,
        ranges={"depth": (float(min(depths)), float(max(depths))), "n": (n, n)},
    )
