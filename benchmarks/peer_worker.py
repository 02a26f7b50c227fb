"""Timing worker for neural-tangents (the peer), run inside the peers' venv.

Reads one JSON request per line on stdin, answers one JSON line on stdout. Kept
separate from nthexp's process because the peer needs its own old JAX; the driver
(benchmarks/peers.py) alternates requests to this worker with nthexp timings.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

# neural-tangents 0.6.5 reads two names that newer JAX moved out of ad.
import jax._src.source_info_util as _siu  # noqa: E402
import jax.interpreters.ad as _ad  # noqa: E402

if not hasattr(_ad, "source_info_util"):
    _ad.source_info_util = _siu
if not hasattr(_ad, "config"):
    _ad.config = jax.config

import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

IMPLEMENTATIONS = {
    "jacobian_contraction": nt.NtkImplementation.JACOBIAN_CONTRACTION,
    "ntk_vector_products": nt.NtkImplementation.NTK_VECTOR_PRODUCTS,
    "structured_derivatives": nt.NtkImplementation.STRUCTURED_DERIVATIVES,
}
_CACHE = {}


def _problem(width, depth, n, d_in=16, b_std=0.1):
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(width, W_std=2**0.5, b_std=b_std), stax.Relu()]
    init_fn, apply_fn, _ = stax.serial(
        *layers, stax.Dense(1, W_std=2**0.5, b_std=b_std)
    )
    _, params = init_fn(jax.random.PRNGKey(0), (-1, d_in))
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
    x = jax.random.normal(jax.random.PRNGKey(1), (n, d_in), dtype=jnp.float64)
    return apply_fn, params, x


def _median_time(fn, repeats):
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _ntk_fn(req):
    key = ("ntk", req["width"], req["depth"], req["n"], req["method"])
    if key not in _CACHE:
        apply_fn, params, x = _problem(req["width"], req["depth"], req["n"])
        fn = jax.jit(
            nt.empirical_ntk_fn(
                apply_fn,
                trace_axes=(-1,),
                vmap_axes=0,
                implementation=IMPLEMENTATIONS[req["method"]],
            )
        )
        _CACHE[key] = (fn, params, x)
    return _CACHE[key]


def handle(req):
    kind = req["kind"]
    if kind == "ntk":
        fn, params, x = _ntk_fn(req)
        t = _median_time(lambda: fn(x, None, params), req.get("repeats", 3))
        mem = None
        try:
            m = fn.lower(x, None, params).compile().memory_analysis()
            mem = int(m.temp_size_in_bytes + m.output_size_in_bytes)
        except Exception:  # noqa: BLE001
            pass
        return {"seconds": t, "xla_bytes": mem}
    if kind == "o3":
        # forward-mode derivative of the peer's structured NTK along g_c, looped over c
        fn, params, x = _ntk_fn(dict(req, method="structured_derivatives"))
        apply_fn, _, _ = _problem(req["width"], req["depth"], req["n"])
        grads = jax.jit(
            jax.vmap(lambda xi: jax.grad(lambda p: apply_fn(p, xi[None])[0, 0])(params))
        )(x)
        column = jax.jit(
            lambda t: jax.jvp(lambda p: fn(x, None, p), (params,), (t,))[1]
        )

        def run():
            cols = [
                column(jax.tree_util.tree_map(lambda g, c=c: g[c], grads))
                for c in range(x.shape[0])
            ]
            return jnp.stack(cols, axis=-1)

        return {"seconds": _median_time(run, req.get("repeats", 1))}
    if kind == "version":
        return {"jax": jax.__version__, "neural_tangents": nt.__version__}
    raise ValueError(f"unknown request kind {kind!r}")


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            out = handle(json.loads(line))
        except Exception as e:  # noqa: BLE001 - reported to the driver
            out = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
