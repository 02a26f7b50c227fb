r"""The Lyapunov stage of a sweep point (``lyapunov=default``): the exponents of
products of the configured MLP's layer-to-layer maps, measured and compared with closed
forms.

With :math:`n` = ``model.width`` and :math:`s` = ``model.w_std``, for each kind in
``cfg.lyapunov.kinds`` :func:`nthexp.analysis.lyapunov_exponents` runs
``cfg.lyapunov.n_samples`` independent chains of ``cfg.lyapunov.steps`` factors:

``gaussian``  :math:`A_t = W_t`, entries :math:`N(0, s^2/n)`: the weights alone. Closed
              form for every :math:`k` (Newman 1986, eq. (3); Cohen & Newman 1984)
              :math:`\lambda_k = \log s + \frac12[\log(2/n) + \psi((n-k+1)/2)]`.
``relu``      :math:`A_t = D_t W_t`, masks from the forward pass of a random input.
              Closed form for :math:`\lambda_1` only, the exact per-factor law
              conditioned on survival (:func:`nthexp.analysis.relu_top_exponent` with
              ``exact=True``; :math:`-5/(4n) + \log(s/\sqrt2)` to leading order,
              Hanin & Nica 2020, Commun. Math. Phys. 376, Thm 1).
``network``   the Jacobians :math:`\partial h_{t+1}/\partial h_t` of the configured
              MLP's hidden layer (width, activation, ``w_std``, ``b_std``,
              parameterisation, biases) at initialisation, along the forward pass of a
              random input, in a copy of the MLP ``steps + 1`` hidden layers deep (its
              own depth does not enter: a network of depth 2 has one such factor);
              ``n_samples`` parameter draws. The Jacobian of
              :math:`h \mapsto \phi(W h + b)` is :math:`\mathrm{diag}(\phi'(z)) W`, so a
              bias-free ReLU layer (``b_std = 0`` or no biases) has the law of
              ``relu`` (same closed form), an ``identity`` one that of ``gaussian``;
              other layers have no closed form here.

All three estimators are exact at every chain length (the QR steps are independent
draws of the same law), so the number of factors ``n_samples * steps`` sets the Monte
Carlo error and short chains are enough. Chains whose forward pass dies (ReLU, every
unit off; a chain survives with probability :math:`(1 - 2^{-n})^{steps}`) are dropped;
a kind with no survivor is recorded with ``lyap_<kind>_n_survived = 0`` and no
exponents.

Per kind, with :math:`\hat\lambda_k` and its standard error :math:`se_k`
(:math:`\mathrm{std}/\sqrt{S}` over the :math:`S` surviving chains) compared with the
closed form :math:`\lambda_k` where one exists (every :math:`k` for ``gaussian``,
:math:`k = 1` for ``relu``):

``lyap_<kind>_top``, ``_top_stderr``, ``_top_closed``  :math:`\hat\lambda_1`, its
                                                       error, the closed form (null if
                                                       none)
``lyap_<kind>_sum``, ``_sum_closed``  :math:`\sum_k \hat\lambda_k` (null when some
                                      :math:`\hat\lambda_k = -\infty`), closed form
``lyap_<kind>_n_finite``              number of finite :math:`\hat\lambda_k`
``lyap_<kind>_max_abs_err``           :math:`\max_k |\hat\lambda_k - \lambda_k|`
``lyap_<kind>_max_z``                 :math:`\max_k |\hat\lambda_k - \lambda_k| / se_k`
``lyap_<kind>_n_survived``            surviving chains

and ``spectra.npz`` keeps ``lyap_<kind>`` ``(n,)`` (descending, ``-inf`` past the rank
of a masked product), ``lyap_<kind>_stderr`` ``(n,)`` and, where the whole spectrum has
a closed form, ``lyap_<kind>_closed`` ``(n,)``.

Log-norm growth (kinds ``gaussian`` and ``relu`` among ``kinds``, when
``cfg.lyapunov.log_norm_depths`` is not empty):
:func:`nthexp.analysis.log_norm_variance` of :math:`\log|P_L x|^2` at those depths
over ``cfg.lyapunov.log_norm_samples`` inputs. It is a sum of :math:`L` independent
terms, so its variance is :math:`L v` with the per-factor rate :math:`v = \psi_1(n/2)`
for Gaussian factors and :func:`relu_log_norm_rate` for masked ones (:math:`5/n` to
leading order). Metrics ``lyap_lognorm_<kind>_rate`` (the variance at the largest
depth over that depth), ``_rate_stderr``, ``_rate_closed``, ``_z`` (their difference
in standard errors), ``_slope`` (least squares through 0 over all depths),
``_n_survived``; arrays ``lyap_lognorm_depths``, ``lyap_lognorm_<kind>_var`` and
``_var_stderr`` ``(D,)``.
"""

from __future__ import annotations

import logging
import math
import time

import jax
import numpy as np
from omegaconf import DictConfig

import nthexp as nx
from nthexp.analysis._lyapunov import KINDS

log = logging.getLogger(__name__)

#: Salt of the stage's PRNG key, ``fold_in(key(seed), salt)``: the chains never reuse
#: the bits that draw the point's own parameters from ``key(seed)``.
_KEY_SALT = 0x4C59

#: The kinds that :func:`nthexp.analysis.log_norm_variance` supports.
LOG_NORM_KINDS = ("gaussian", "relu")


def relu_log_norm_rate(width: int) -> float:
    r"""Per-factor variance of :math:`\log |P_L x|^2` for ReLU-masked products, exact.

    A masked factor maps a vector :math:`v` fixed by the past to
    :math:`|D_t W_t v|^2 = (s^2/n)\,|v|^2 \chi^2_K` with :math:`K \sim \mathrm{Bin}(n,
    1/2)` independent of the :math:`\chi^2` (the sign-flip argument of Hanin 2018,
    NeurIPS, Sec. 3), independently across factors. With :math:`\mathrm{Var}\log
    \chi^2_k = \psi_1(k/2)` and :math:`E \log \chi^2_k = \log 2 + \psi(k/2)`, and
    conditioning on survival (:math:`K \ge 1`):

    .. math:: v = E[\psi_1(K/2)] + \mathrm{Var}[\psi(K/2)] \,\big|\, K \ge 1,

    which is :math:`5/n + O(n^{-2})` (Hanin & Nica 2020, Thm 1), independent of
    :math:`s`.
    """
    from scipy.special import digamma, polygamma
    from scipy.stats import binom

    k = np.arange(1, width + 1)
    p = binom.pmf(k, width, 0.5)
    p = p / p.sum()
    psi = digamma(k / 2.0)
    mean = p @ psi
    return float(p @ polygamma(1, k / 2.0) + p @ (psi - mean) ** 2)


def _layer_law(model) -> str | None:
    """The random-product kind whose law the MLP's layer Jacobians share, or None."""
    bias_free = (not model.use_bias) or float(model.b_std) == 0.0
    if model.activation == "identity":
        return "gaussian"  # the Jacobian of h -> W h + b is W, whatever the bias
    if model.activation == "relu" and bias_free:
        return "relu"
    return None


def _closed_forms(kind: str, model, n: int, s: float):
    """``(full (n,) or None, top or None)``: the closed forms of the module doc."""
    law = _layer_law(model) if kind == "network" else kind
    if law == "gaussian":
        full = nx.analysis.lyapunov_closed_form(n, s)
        return full, float(full[0])
    if law == "relu":
        return None, nx.analysis.relu_top_exponent(n, s, exact=True)
    return None, None


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _compare(res, full, top) -> tuple[dict, dict]:
    """Metrics and arrays of one kind (module doc) from a ``LyapunovSpectrum``."""
    exponents, stderr = res.exponents, res.stderr
    prefix = f"lyap_{res.kind}"
    if full is not None:
        measured, closed, se = exponents, full, stderr
    elif top is not None:
        measured, closed, se = exponents[:1], np.array([top]), stderr[:1]
    else:
        measured = closed = se = np.zeros(0)
    err = np.abs(measured - closed)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = err / se
    finite = np.isfinite(exponents)
    metrics = {
        f"{prefix}_top": _finite_or_none(exponents[0]),
        f"{prefix}_top_stderr": _finite_or_none(stderr[0]),
        f"{prefix}_top_closed": top,
        f"{prefix}_sum": float(np.sum(exponents)) if finite.all() else None,
        f"{prefix}_sum_closed": None if full is None else float(np.sum(full)),
        f"{prefix}_n_finite": int(np.count_nonzero(finite)),
        f"{prefix}_max_abs_err": float(err.max()) if err.size else None,
        f"{prefix}_max_z": float(z.max()) if z.size and np.isfinite(z).all() else None,
        f"{prefix}_n_survived": res.n_survived,
    }
    arrays = {prefix: exponents, f"{prefix}_stderr": stderr}
    if full is not None:
        arrays[f"{prefix}_closed"] = np.asarray(full, dtype=np.float64)
    return metrics, arrays


def _spectrum_kind(cfg, kind: str, model, key, s: float, dtype: str):
    """``lyapunov_exponents`` of one kind, or None when no chain survived."""
    lyap, n = cfg.lyapunov, model.width
    kwargs = {"key": key, "n_samples": lyap.n_samples, "dtype": dtype}
    if kind == "network":
        # A copy of the configured MLP, deep enough for `steps` hidden-to-hidden maps.
        kwargs["model"] = model.clone(depth=lyap.steps + 1)
        depth = lyap.steps + 1
    else:
        kwargs["s"] = s
        depth = lyap.steps
    try:
        return nx.analysis.lyapunov_exponents(n, depth, kind, **kwargs)
    except nx.analysis.NoSurvivorsError as exc:
        log.warning("lyapunov %s at width %d: %s", kind, n, exc)
        return None


def _log_norm(cfg, kind: str, n: int, key, s: float, dtype: str):
    """Metrics and arrays of the log-norm variance of one kind (module doc)."""
    lyap = cfg.lyapunov
    depths = [int(d) for d in lyap.log_norm_depths]
    prefix = f"lyap_lognorm_{kind}"
    closed = float(_psi1(n / 2.0)) if kind == "gaussian" else relu_log_norm_rate(n)
    try:
        res = nx.analysis.log_norm_variance(
            n, depths, kind, key=key, s=s, n_samples=lyap.log_norm_samples, dtype=dtype
        )
    except nx.analysis.NoSurvivorsError as exc:
        log.warning("lyapunov log-norm %s at width %d: %s", kind, n, exc)
        return {f"{prefix}_rate_closed": closed, f"{prefix}_n_survived": 0}, {}
    depth = float(res.depths[-1])
    rate, rate_se = float(res.variance[-1]) / depth, float(res.stderr[-1]) / depth
    metrics = {
        f"{prefix}_rate": rate,
        f"{prefix}_rate_stderr": rate_se,
        f"{prefix}_rate_closed": closed,
        f"{prefix}_z": (rate - closed) / rate_se if rate_se > 0 else None,
        f"{prefix}_slope": res.slope,
        f"{prefix}_n_survived": res.n_survived,
    }
    arrays = {f"{prefix}_var": res.variance, f"{prefix}_var_stderr": res.stderr}
    return metrics, arrays


def _psi1(x: float) -> float:
    from scipy.special import polygamma

    return float(polygamma(1, x))


def lyapunov_metrics(cfg: DictConfig, model) -> tuple[dict, dict, dict]:
    """``(metrics, arrays, timing)`` of the stage for the configured ``model``.

    Keys as in the module doc, plus ``lyap_steps``, ``lyap_n_samples`` and ``lyap_s``;
    ``timing["lyapunov"]`` in seconds.
    """
    tic = time.perf_counter()
    lyap = cfg.lyapunov
    n, s, dtype = model.width, float(model.w_std), cfg.kernel.dtype
    key = jax.random.fold_in(jax.random.key(cfg.seed), _KEY_SALT)
    metrics: dict = {
        "lyap_steps": int(lyap.steps),
        "lyap_n_samples": int(lyap.n_samples),
        "lyap_s": s,
    }
    arrays: dict[str, np.ndarray] = {}

    for kind in lyap.kinds:
        # one key per kind (by its place in KINDS): dropping a kind changes no other
        kind_key = jax.random.fold_in(key, KINDS.index(kind))
        res = _spectrum_kind(cfg, kind, model, kind_key, s, dtype)
        if res is None:
            metrics[f"lyap_{kind}_n_survived"] = 0
            metrics[f"lyap_{kind}_top_closed"] = _closed_forms(kind, model, n, s)[1]
            continue
        m, a = _compare(res, *_closed_forms(kind, model, n, s))
        metrics.update(m)
        arrays.update(a)
        log.info(
            "lyapunov %s (width %d, %d of %d chains x %d factors): lambda_1 = %.4g "
            "+- %.2g, closed form %s",
            kind,
            n,
            res.n_survived,
            res.n_samples,
            res.depth,
            res.exponents[0],
            res.stderr[0],
            "none"
            if m[f"lyap_{kind}_top_closed"] is None
            else f"{m[f'lyap_{kind}_top_closed']:.4g}",
        )

    log_norm_kinds = [k for k in LOG_NORM_KINDS if k in lyap.kinds]
    if len(lyap.log_norm_depths) and log_norm_kinds:
        arrays["lyap_lognorm_depths"] = np.asarray(lyap.log_norm_depths, np.int64)
        for kind in log_norm_kinds:
            kind_key = jax.random.fold_in(key, 16 + LOG_NORM_KINDS.index(kind))
            m, a = _log_norm(cfg, kind, n, kind_key, s, dtype)
            metrics.update(m)
            arrays.update(a)
    return metrics, arrays, {"lyapunov": time.perf_counter() - tic}
