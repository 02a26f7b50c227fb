r"""Lyapunov exponents of products of random matrices and of network Jacobians.

For a product :math:`P_L = A_L \cdots A_1` of :math:`n \times n` matrices the Lyapunov
exponents are :math:`\lambda_k = \lim_{L\to\infty} L^{-1} \log \sigma_k(P_L)`. They are
computed by repeated QR (Benettin et al. 1980; Eckmann & Ruelle 1985): with
:math:`Q_0 = I`, :math:`A_t Q_{t-1} = Q_t R_t`, and

.. math:: \hat\lambda_k = \frac{1}{L} \sum_{t=1}^{L} \log |(R_t)_{kk}|,

which never forms the product, so it neither overflows nor loses the small directions.

Closed form for Gaussian entries :math:`N(0, s^2/n)` (Newman 1986, Commun. Math. Phys.
103, eq. (3); Cohen & Newman 1984, Ann. Probab. 12):

.. math::

    \lambda_k = \log s + \tfrac12\left[\log\frac{2}{n}
        + \psi\!\left(\frac{n-k+1}{2}\right)\right], \qquad k = 1, \dots, n,

exact at every depth for the QR estimator started at :math:`Q_0 = I`: by rotation
invariance :math:`W_t Q_{t-1}` is again Gaussian, and :math:`(R_t)_{kk}^2 n / s^2` is
:math:`\chi^2_{n-k+1}`. For ReLU-masked products, :math:`A_t = D_t W_t` with
:math:`D_t = \mathrm{diag}(1[z_t > 0])` from the forward pass :math:`z_t = W_t
h_{t-1}`, :math:`h_t = \mathrm{relu}(z_t)`, the top exponent at He scaling
:math:`s^2 = 2` is :math:`-5/(4n) + O(n^{-2})` (Hanin & Nica 2020, Commun. Math. Phys.
376, Thm 1: :math:`\mathrm{Var} \log |P_L x|^2 \approx 5L/n` and mean :math:`-5L/(2n)`),
shifted by :math:`\log(s/\sqrt 2)` otherwise. A masked factor has rank
:math:`K_t = \#\{z_t > 0\}`, so exponents :math:`k > \min_t K_t` are :math:`-\infty`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from nthexp._config import resolve_dtype

Kind = Literal["gaussian", "relu", "network"]
KINDS = ("gaussian", "relu", "network")

#: A diagonal entry of R at most this many machine epsilons times the largest one (and
#: times n) counts as an exact zero, i.e. a rank-deficient factor (masked ReLU rows).
_ZERO_DIAGONAL_ULPS = 1.0


class NoSurvivorsError(ValueError):
    """Too few ReLU chains survived (every unit of some layer off) to estimate
    anything; raised by :func:`lyapunov_exponents` and :func:`log_norm_variance`."""


@dataclass(frozen=True)
class LyapunovSpectrum:
    r"""Result of :func:`lyapunov_exponents`.

    Attributes:
        exponents: ``(n,)`` descending, the mean over surviving samples of the
            per-sample estimates (each sorted descending); ``-inf`` where a sample's
            product lost rank (masked products).
        stderr: ``(n,)`` Monte Carlo standard errors, ``std_{ddof=1} / sqrt(S)`` over
            the ``S`` surviving samples; ``nan`` where the exponent is ``-inf`` or
            ``S = 1``.
        samples: ``(S, n)`` per-sample estimates.
        closed_form: ``(n,)`` the Gaussian closed form (kind ``"gaussian"``), else None.
        top_closed_form: :math:`\lambda_1` predicted: the Gaussian closed form or
            :math:`-5/(4n) + \log(s/\sqrt2)` for ``"relu"``; None for ``"network"``
            with an activation other than relu or identity.
        kind, width, depth, s: the arguments (``depth`` = number of factors).
        n_samples: samples drawn; n_survived: those whose forward pass never died.
    """

    exponents: np.ndarray
    stderr: np.ndarray
    samples: np.ndarray
    closed_form: np.ndarray | None
    top_closed_form: float | None
    kind: str
    width: int
    depth: int
    s: float
    n_samples: int
    n_survived: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (``-inf``/``nan`` kept as floats)."""
        return {
            "kind": self.kind,
            "width": self.width,
            "depth": self.depth,
            "s": self.s,
            "n_samples": self.n_samples,
            "n_survived": self.n_survived,
            "exponents": [float(v) for v in self.exponents],
            "stderr": [float(v) for v in self.stderr],
            "closed_form": None
            if self.closed_form is None
            else [float(v) for v in self.closed_form],
            "top_closed_form": self.top_closed_form,
        }


@dataclass(frozen=True)
class LogNormVariance:
    r"""Result of :func:`log_norm_variance`.

    Attributes:
        depths: ``(D,)`` the depths L.
        mean: ``(D,)`` mean of :math:`\log |P_L x|^2` over surviving samples.
        variance: ``(D,)`` its variance (ddof=1).
        stderr: ``(D,)`` standard error of ``variance``,
            :math:`\sqrt{(m_4 - \hat\sigma^4)/S}` with :math:`m_4` the fourth central
            moment.
        slope: least-squares slope of ``variance`` against ``depths`` through 0.
        closed_form: ``(D,)`` the prediction: :math:`L\,\psi_1(n/2)` (exact) for
            ``"gaussian"``, :math:`5L/n` (leading order) for ``"relu"``.
        kind, width, s, n_samples, n_survived: as in :class:`LyapunovSpectrum`.
    """

    depths: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    stderr: np.ndarray
    slope: float
    closed_form: np.ndarray
    kind: str
    width: int
    s: float
    n_samples: int
    n_survived: int


def _check_positive_int(name: str, value, low: int = 1) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or value < low
    ):
        raise ValueError(
            f"{name}={value!r} is not allowed; must be an integer >= {low}"
        )
    return int(value)


def _numpy_dtype(dtype) -> np.dtype:
    """float64 or float32 for the numpy chains (no jax x64 needed)."""
    dt = np.dtype(dtype)
    if dt.name not in ("float64", "float32"):
        raise ValueError(
            f"dtype={dt.name!r} is not supported; allowed: ['float64', 'float32']"
        )
    return dt


def _check_scale(s, kind: str) -> float:
    if s is None:
        return math.sqrt(2.0) if kind == "relu" else 1.0
    if (
        isinstance(s, bool)
        or not isinstance(s, int | float)
        or not (math.isfinite(s) and s > 0)
    ):
        raise ValueError(f"s={s!r} is not allowed; must be a finite number > 0")
    return float(s)


def lyapunov_closed_form(width: int, s: float = 1.0) -> np.ndarray:
    r"""Gaussian-product exponents :math:`\lambda_k`, ``(n,)`` descending (module doc).

    :math:`\lambda_k = \log s + \frac12[\log(2/n) + \psi((n-k+1)/2)]` (Newman 1986).
    """
    from scipy.special import digamma

    n = _check_positive_int("width", width)
    s = _check_scale(s, "gaussian")
    k = np.arange(1, n + 1)
    return math.log(s) + 0.5 * (math.log(2.0 / n) + digamma((n - k + 1) / 2.0))


def relu_top_exponent(
    width: int, s: float = math.sqrt(2.0), *, exact: bool = False
) -> float:
    r"""Top exponent of ReLU-masked products (module doc), conditioned on survival.

    ``exact=False``: the leading order :math:`-5/(4n) + \log(s/\sqrt 2)` (Hanin &
    Nica 2020). ``exact=True``: the per-factor law. Flipping the signs of the rows of
    :math:`W_t` (which leaves its law unchanged) makes the mask independent of
    :math:`W_t v` for any :math:`v` fixed by the past (the argument of Hanin 2018,
    NeurIPS, Sec. 3), so :math:`|D_t W_t v|^2 = (s^2/n)\,|v|^2 \chi^2_{K}` with
    :math:`K \sim \mathrm{Bin}(n, 1/2)`, conditioned on :math:`K \ge 1` by survival:

    .. math:: \lambda_1 = \tfrac12\left[\log\frac{2 s^2}{n}
        + \mathbb{E}\,\psi(K/2) \,\middle|\, K \ge 1\right],

    exact at every depth for the QR estimator; it is :math:`-5/(4n) - 2.1/n^2 + \dots`
    at :math:`s^2 = 2`.
    """
    n = _check_positive_int("width", width)
    s = _check_scale(s, "relu")
    if not exact:
        return -5.0 / (4.0 * n) + math.log(s / math.sqrt(2.0))
    from scipy.special import digamma
    from scipy.stats import binom

    k = np.arange(1, n + 1)
    p = binom.pmf(k, n, 0.5)
    return 0.5 * (math.log(2.0 * s**2 / n) + float(p @ digamma(k / 2.0) / p.sum()))


def _log_abs_diagonal(r):
    """``log |diag R|`` ``(..., n)`` with round-off zeros (rank loss) as ``-inf``.

    Works on numpy and jax arrays alike.
    """
    xp = jnp if isinstance(r, jax.Array) else np
    d = xp.abs(xp.diagonal(r, axis1=-2, axis2=-1))
    n = r.shape[-1]
    tol = _ZERO_DIAGONAL_ULPS * n * xp.finfo(r.dtype).eps
    tol = tol * xp.max(d, axis=-1, keepdims=True)
    return xp.where(d > tol, xp.log(xp.where(d > 0, d, 1.0)), -xp.inf)


def _numpy_rng(key: jax.Array) -> np.random.Generator:
    """A numpy generator seeded by the bits of a JAX PRNG key (new or raw style)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, dtype=np.uint32).ravel().tolist())


def _random_chains(
    rng: np.random.Generator, n_samples: int, n: int, depth: int, kind: str, dtype, s
) -> tuple[np.ndarray, np.ndarray]:
    """QR chains; returns ``(S, n)`` summed ``log|R_kk|`` and ``(S,)`` survival.

    Plain numpy with batched QR: these chains are small and sequential, and numpy
    runs them without the per-shape compilation a ``lax.scan`` would need.
    """
    q = np.broadcast_to(np.eye(n, dtype=dtype), (n_samples, n, n))
    h = rng.standard_normal((n_samples, n)).astype(dtype)
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    acc = np.zeros((n_samples, n), dtype)
    alive = np.ones(n_samples, dtype=bool)
    for _ in range(depth):
        w = (s / math.sqrt(n)) * rng.standard_normal((n_samples, n, n)).astype(dtype)
        m = w @ q
        if kind == "relu":
            z = np.einsum("sij,sj->si", w, h)
            mask = (z > 0).astype(dtype)
            m = mask[:, :, None] * m
            h = mask * z
            norm = np.linalg.norm(h, axis=1, keepdims=True)
            alive &= norm[:, 0] > 0
            h = h / np.where(norm > 0, norm, 1.0)
        q, r = np.linalg.qr(m)
        with np.errstate(divide="ignore"):
            acc = acc + _log_abs_diagonal(r)
    return acc, alive


def _layer_spec(model) -> tuple:
    """The fields that define one hidden layer map (hashable, depth-free)."""
    return (
        model.width,
        float(model.w_std),
        float(model.b_std),
        model.parameterization,
        bool(model.use_bias),
        model.activation,
    )


def _layer_map(spec: tuple, layer_params):
    """``h -> phi(dense(h))``, the MLP's hidden layer with the given parameters."""
    from nthexp.models import NTKDense
    from nthexp.models._modules import ACTIVATIONS

    width, w_std, b_std, parameterization, use_bias, activation = spec
    dense = NTKDense(width, w_std, b_std, parameterization, use_bias)
    phi = ACTIVATIONS[activation]
    return lambda h: phi(dense.apply({"params": layer_params}, h))


@functools.partial(jax.jit, static_argnums=0)
def _network_step(spec: tuple, layer_params, h, q, acc):
    """One hidden-to-hidden factor: Jacobian by ``jax.jacfwd``, then QR."""
    layer = _layer_map(spec, layer_params)
    q, r = jnp.linalg.qr(jax.jacfwd(layer)(h) @ q)
    return layer(h), q, acc + _log_abs_diagonal(r)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _layer_init(dense, key, fan_in: int, dtype: str):
    return dense.init(key, jnp.zeros((1, fan_in), dtype=dtype))["params"]


def _draw_hidden_params(model, key: jax.Array, d_in: int, dtype: str) -> dict:
    """The hidden layers' parameters as ``nthexp.models.init`` draws them.

    Layer by layer with the model's own :class:`~nthexp.models.NTKDense` initialisers,
    so that one compilation serves every hidden layer (``init`` of a deep MLP compiles
    the whole network); the readout is not needed here.
    """
    from nthexp.models import NTKDense

    dense = NTKDense(
        model.width, model.w_std, model.b_std, model.parameterization, model.use_bias
    )
    keys = jax.random.split(key, model.depth)
    return {
        f"dense_{i}": _layer_init(
            dense, keys[i], d_in if i == 0 else model.width, dtype
        )
        for i in range(model.depth)
    }


def _network_chain(model, params, x, dtype) -> np.ndarray:
    """Summed ``log|R_kk|`` over the ``depth - 1`` hidden-to-hidden Jacobians."""
    spec = _layer_spec(model)
    h = _layer_map(spec, params["dense_0"])(jnp.asarray(x, dtype))
    q = jnp.eye(model.width, dtype=dtype)
    acc = jnp.zeros(model.width, dtype)
    for index in range(1, model.depth):
        h, q, acc = _network_step(spec, params[f"dense_{index}"], h, q, acc)
    return np.asarray(acc)


def _summarise(total: np.ndarray, depth: int) -> tuple[np.ndarray, ...]:
    """Per-sample exponents ``(S, n)`` in QR order, mean and standard error, sorted.

    Samples are averaged in QR order (the Gaussian estimator is then unbiased at every
    depth; sorting each sample first would bias nearly equal exponents apart) and the
    means are sorted descending, their errors permuted with them.
    """
    samples = total / depth
    with np.errstate(invalid="ignore"):
        exponents = np.mean(samples, axis=0)
    finite = np.all(np.isfinite(samples), axis=0)
    stderr = np.full(samples.shape[1], np.nan)
    if samples.shape[0] >= 2:
        spread = np.std(np.where(finite, samples, 0.0), axis=0, ddof=1)
        stderr = np.where(finite, spread / math.sqrt(samples.shape[0]), np.nan)
    order = np.argsort(-exponents, kind="stable")
    return samples[:, order], exponents[order], stderr[order]


def lyapunov_exponents(
    width: int,
    depth: int,
    kind: Kind = "gaussian",
    *,
    key: jax.Array,
    s: float | None = None,
    n_samples: int = 8,
    model=None,
    params=None,
    x=None,
    dtype: str = "float64",
) -> LyapunovSpectrum:
    r"""Full Lyapunov spectrum by repeated QR (module doc), with Monte Carlo errors.

    Kinds (cost per sample: ``depth`` QR factorisations of ``n x n``,
    :math:`O(L n^3)` time, :math:`O(n^2)` memory):

    * ``"gaussian"``: :math:`A_t = W_t`, entries :math:`N(0, s^2/n)`; ``s`` defaults
      to 1. Compare with :func:`lyapunov_closed_form`.
    * ``"relu"``: :math:`A_t = D_t W_t`, masks from the forward pass of a random input
      through the same :math:`W_t`; ``s`` defaults to :math:`\sqrt 2` (He). Samples
      whose forward pass dies (:math:`h_t = 0`) are dropped: the estimate is
      conditioned on survival, which matters only at small ``n``.
    * ``"network"``: :math:`A_t = \partial h_{t+1} / \partial h_t`, the Jacobians
      (``jax.jacfwd``) of the hidden-layer maps
      :math:`h \mapsto \phi(\mathrm{dense}(h))` of an nthexp
      :class:`~nthexp.models.MLP` at initialisation, evaluated along the forward pass
      of ``x``; ``depth`` is the MLP's number of hidden layers, so there
      are ``depth - 1`` square factors (the input layer is :math:`n \times D_{in}`).
      ``model`` defaults to ``MLP(width, depth)`` (ReLU, :math:`\sigma_w = \sqrt 2`),
      ``params`` to ``n_samples`` draws of the hidden layers with the initialisers
      ``nthexp.models.init`` uses (``d_in = width``; one compilation for all layers),
      ``x`` to a Gaussian input on the sphere of radius :math:`\sqrt{D_{in}}`; the
      entries of a Jacobian's weight are :math:`N(0, \sigma_w^2/n)`, so ``s`` is the
      model's ``w_std`` and may not be given.

    Args:
        width: ``n``.
        depth: number of factors ``L`` (``"network"``: hidden layers, >= 2).
        kind: one of ``"gaussian"``, ``"relu"``, ``"network"``.
        key: JAX PRNG key.
        s: standard-deviation scale (above).
        n_samples: independent samples ``S`` (chains, or parameter draws); with given
            ``params`` it must be 1.
        model, params, x: for ``"network"`` only (above); ``x`` has shape ``(D_in,)``.
        dtype: ``"float64"`` (needs jax x64) or ``"float32"``.

    Returns:
        A :class:`LyapunovSpectrum`; exponents are per factor (natural log).

    Raises:
        ValueError: one line naming the bad argument and the allowed values, or when no
            sample survives.
        NotImplementedError: ``"network"`` with a model other than an MLP.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not allowed; allowed: {list(KINDS)}")
    n = _check_positive_int("width", width)
    depth = _check_positive_int("depth", depth, 2 if kind == "network" else 1)
    n_samples = _check_positive_int("n_samples", n_samples)
    dt = resolve_dtype(dtype) if kind == "network" else _numpy_dtype(dtype)
    if kind != "network" and not (model is None and params is None and x is None):
        raise ValueError(
            f"model, params and x are for kind='network' only; got kind={kind!r}"
        )

    if kind == "network":
        from nthexp.models import MLP

        if s is not None:
            raise ValueError(
                "s is not allowed with kind='network'; the scale is the model's w_std"
            )
        if model is None:
            model = MLP(width=n, depth=depth)
        if type(model) is not MLP:
            raise NotImplementedError(
                f"lyapunov_exponents(kind='network') supports nthexp.models.MLP only; "
                f"got {type(model).__name__} (its blocks are not layer-to-layer maps)"
            )
        if getattr(model, "width", None) != n or getattr(model, "depth", None) != depth:
            raise ValueError(
                f"model has width={getattr(model, 'width', None)!r}, "
                f"depth={getattr(model, 'depth', None)!r}; must match {width=}, "
                f"{depth=}"
            )
        if params is not None and n_samples != 1:
            raise ValueError(
                f"n_samples={n_samples} is not allowed with given params; must be 1"
            )
        s_value = float(model.w_std)
        keys = jax.random.split(key, n_samples)
        totals = []
        for sample_key in keys:
            key_p, key_x = jax.random.split(sample_key)
            p = params
            if p is None:
                p = _draw_hidden_params(model, key_p, n, dt.name)
            d_in = int(p["dense_0"]["weight"].shape[0])
            xi = x
            if xi is None:
                xi = jax.random.normal(key_x, (d_in,), dt)
                xi = xi * math.sqrt(d_in) / jnp.linalg.norm(xi)
            xi = jnp.asarray(xi, dt)
            if xi.shape != (d_in,):
                raise ValueError(
                    f"x has shape {tuple(xi.shape)}; must be ({d_in},), one input"
                )
            totals.append(_network_chain(model, p, xi, dt))
        total = np.stack(totals)
        alive = np.isfinite(total[:, 0])
        n_factors = depth - 1
        top = None
        if model.activation == "relu":
            top = relu_top_exponent(n, s_value)
        elif model.activation == "identity":
            top = float(lyapunov_closed_form(n, s_value)[0])
        closed = None
    else:
        s_value = _check_scale(s, kind)
        total, alive = _random_chains(
            _numpy_rng(key), n_samples, n, depth, kind, dt, s_value
        )
        n_factors = depth
        closed = lyapunov_closed_form(n, s_value) if kind == "gaussian" else None
        top = float(closed[0]) if closed is not None else relu_top_exponent(n, s_value)

    if not np.any(alive):
        raise NoSurvivorsError(
            f"no sample survived: every one of the {n_samples} forward passes died "
            f"(all units off) at {width=}, {depth=}; increase width or n_samples"
        )
    samples, exponents, stderr = _summarise(total[alive], n_factors)
    return LyapunovSpectrum(
        exponents=exponents,
        stderr=stderr,
        samples=samples,
        closed_form=closed,
        top_closed_form=top,
        kind=kind,
        width=n,
        depth=n_factors,
        s=s_value,
        n_samples=n_samples,
        n_survived=int(np.count_nonzero(alive)),
    )


def _log_norm_chains(
    rng: np.random.Generator, n_samples: int, n: int, depth: int, kind: str, dtype, s
) -> tuple[np.ndarray, np.ndarray]:
    """``(S, depth)`` cumulative :math:`\\log |P_t x|^2`, and ``(S,)`` survival."""
    h = rng.standard_normal((n_samples, n)).astype(dtype)
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    total = np.zeros(n_samples, dtype)
    alive = np.ones(n_samples, dtype=bool)
    totals = np.empty((n_samples, depth), dtype)
    for t in range(depth):
        w = (s / math.sqrt(n)) * rng.standard_normal((n_samples, n, n)).astype(dtype)
        z = np.einsum("sij,sj->si", w, h)
        if kind == "relu":
            # relu(z) = D z: the forward pass is the masked product applied to x.
            z = np.maximum(z, 0.0)
        norm = np.linalg.norm(z, axis=1)
        alive &= norm > 0
        safe = np.where(norm > 0, norm, 1.0)
        total = total + 2.0 * np.log(safe)
        totals[:, t] = total
        h = z / safe[:, None]
    return totals, alive


def log_norm_variance(
    width: int,
    depths: Sequence[int],
    kind: Literal["gaussian", "relu"] = "gaussian",
    *,
    key: jax.Array,
    s: float | None = None,
    n_samples: int = 1000,
    dtype: str = "float64",
) -> LogNormVariance:
    r"""Variance of :math:`\log |P_L x|^2` against depth, for a unit vector ``x``.

    For Gaussian factors :math:`\log |P_L x|^2 = \sum_t \log(s^2 \chi^2_{n,t} / n)`
    with independent terms, so the variance is exactly :math:`L\,\psi_1(n/2) \approx
    2L/n`; for ReLU-masked factors at He scaling it is :math:`5L/n` to leading order
    (Hanin & Nica 2020, Thm 1): linear in :math:`L/n`. Dead forward passes are
    dropped (conditioning on survival). Cost :math:`O(S\, L_{max} n^2)`.

    Args:
        width: ``n``.
        depths: the depths ``L`` (positive integers); one chain of length
            ``max(depths)`` per sample is read at each of them.
        kind: ``"gaussian"`` or ``"relu"``.
        key: JAX PRNG key.
        s: as in :func:`lyapunov_exponents`.
        n_samples: independent samples ``S`` (>= 2).
        dtype: ``"float64"`` or ``"float32"``.

    Returns:
        A :class:`LogNormVariance`.
    """
    from scipy.special import polygamma

    if kind not in ("gaussian", "relu"):
        raise ValueError(f"kind={kind!r} is not allowed; allowed: ['gaussian', 'relu']")
    n = _check_positive_int("width", width)
    n_samples = _check_positive_int("n_samples", n_samples, 2)
    depths = np.asarray(
        [
            _check_positive_int("depths", int(d) if isinstance(d, np.integer) else d)
            for d in depths
        ],
        dtype=np.int64,
    )
    if depths.shape[0] == 0:
        raise ValueError("depths=[] is not allowed; give at least one depth")
    s_value = _check_scale(s, kind)
    dt = _numpy_dtype(dtype)

    totals, alive = _log_norm_chains(
        _numpy_rng(key), n_samples, n, int(depths.max()), kind, dt, s_value
    )
    if np.count_nonzero(alive) < 2:
        raise NoSurvivorsError(
            f"{np.count_nonzero(alive)} of {n_samples} samples survived at {width=}; "
            "need at least 2; increase width or n_samples"
        )
    values = totals[alive][:, depths - 1]
    n_alive = values.shape[0]
    variance = np.var(values, axis=0, ddof=1)
    m4 = np.mean((values - values.mean(axis=0)) ** 4, axis=0)
    stderr = np.sqrt(np.maximum(m4 - variance**2, 0.0) / n_alive)
    d = depths.astype(np.float64)
    slope = float(d @ variance / (d @ d))
    if kind == "gaussian":
        closed = d * float(polygamma(1, n / 2.0))
    else:
        closed = 5.0 * d / n
    return LogNormVariance(
        depths=depths,
        mean=values.mean(axis=0),
        variance=variance,
        stderr=stderr,
        slope=slope,
        closed_form=closed,
        kind=kind,
        width=n,
        s=s_value,
        n_samples=n_samples,
        n_survived=int(n_alive),
    )
