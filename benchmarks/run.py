"""`make bench`: side-by-side timings of nthexp's kernels, ratios, fraction of peak.

For each problem the structured method and the Jacobian reference are timed in
alternation in this one process (median of repeats after a warm-up call that
compiles), next to the machine's matmul rate measured in the same run. FLOP counts
come from XLA's cost analysis of the compiled structured program; memory from XLA's
compiled memory analysis (temporaries + output), printed beside the planner's
estimate for the hierarchy kernels.

    python -m benchmarks.run [--quick] [--dtype float64|float32] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp


def _timeit(fn, repeats, warmup=1):
    """Median of ``repeats`` timed calls after ``warmup`` untimed ones (the first
    compiles; on CPUs the next few of a fast kernel are still slower, up to 1.4x)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _timeit_pair(f, g, repeats):
    """Medians of ``f`` and ``g`` timed in alternation (drifts of a busy machine hit
    both alike); for cost ratios of fast kernels."""
    jax.block_until_ready(f())
    jax.block_until_ready(g())
    tf, tg = [], []
    for _ in range(repeats):
        for fn, out in ((f, tf), (g, tg)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            out.append(time.perf_counter() - t0)
    return statistics.median(tf), statistics.median(tg)


def matmul_rate(dtype, n=2048, repeats=10) -> float:
    """Measured FLOP/s of dense matmuls: the best of ``repeats`` calls, over an
    ``n x n x n`` product and an ``n/4 x n/2 x n/2`` one (the machine's practical
    peak: a median is pulled down by whatever else shares the cores, and on CPUs the
    smaller product, the shape of the benchmarked layers, is sometimes the faster)."""
    best = 0.0
    for m, k in ((n, n), (n // 4, n // 2)):
        a = jax.random.normal(jax.random.key(0), (m, k), dtype=dtype)
        b = jax.random.normal(jax.random.key(1), (k, k), dtype=dtype)
        f = jax.jit(lambda a, b: a @ b)
        with jax.default_matmul_precision("highest"):
            jax.block_until_ready(f(a, b))
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(f(a, b))
                times.append(time.perf_counter() - t0)
        best = max(best, 2 * m * k * k / min(times))
    return best


def _compiled_stats(jitted, *args, **kwargs):
    compiled = jitted.lower(*args, **kwargs).compile()
    flops = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost.get("flops", 0.0)) or None
    except Exception:  # noqa: BLE001 - not every backend reports costs
        pass
    mem = None
    try:
        m = compiled.memory_analysis()
        mem = int(m.temp_size_in_bytes + m.output_size_in_bytes)
    except Exception:  # noqa: BLE001
        pass
    return flops, mem


def ntk_problem_flops(model, params, x) -> float | None:
    """FLOPs of the structured NTK problem on ``x`` (x2 = None): XLA's count for
    the unblocked algorithm. XLA counts a loop's body once, so the count of the
    blocked CPU path (``lax.scan`` over layers) would be far too low; that path does
    the same work or less (it skips the blocks below the diagonal), so the fraction
    of peak computed from this count is what the problem needs, not an overcount."""
    from nthexp.kernels import _empirical

    return _compiled_stats(
        jax.jit(lambda p, x: _empirical._ntk_structured(model, p, x, None, None)),
        params,
        x,
    )[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small problems (smoke)")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--out", default="benchmarks/out/results.json")
    args = parser.parse_args(argv)

    jax.config.update("jax_enable_x64", True)
    import nthexp as nx
    from nthexp.kernels import _empirical, _hierarchy

    dtype = jnp.dtype(args.dtype)
    peak = matmul_rate(dtype, n=1024 if args.quick else 2048)
    rows = []
    scale = 4 if args.quick else 1

    def problem(width, depth, n, seed=0):
        model = nx.models.MLP(width=width // scale, depth=depth, b_std=0.1)
        params = nx.models.init(model, jax.random.key(seed), 16, dtype=dtype.name)
        x = jax.random.normal(jax.random.key(seed + 1), (n // scale, 16), dtype=dtype)
        return model, params, x

    # NTK at (N=256, width 512, depth 8)
    model, params, x = problem(512, 8, 256)
    t_s = _timeit(lambda: nx.kernels.ntk(model, params, x), 20, warmup=5)
    t_j = _timeit(lambda: nx.kernels.ntk(model, params, x, method="jacobian"), 2)
    _, mem = _compiled_stats(
        _empirical._ntk, model, params, x, None, method="structured", trace=False
    )
    flops = ntk_problem_flops(model, params, x)
    _, mem_j = _compiled_stats(
        _empirical._ntk, model, params, x, None, method="jacobian", trace=False
    )
    t_ntk = t_s
    rows.append(
        dict(
            kernel="ntk",
            problem=f"N={x.shape[0]} n={model.width} L=8",
            structured_s=t_s,
            jacobian_s=t_j,
            speedup=t_j / t_s,
            flops=flops,
            frac_peak=flops / t_s / peak if flops else None,
            xla_bytes=mem,
            xla_bytes_jacobian=mem_j,
        )
    )

    # O3 and o3_contract at (N=128, width 256, depth 4)
    model, params, x = problem(256, 4, 128)
    t_s = _timeit(lambda: nx.kernels.o3(model, params, x), 3)
    t_j = _timeit(lambda: nx.kernels.o3(model, params, x, method="jacobian"), 1)
    plan = nx.kernels.plan(3, x.shape[0], params)
    xc = x[: plan.chunk]
    flops_chunk, mem = _compiled_stats(
        _hierarchy._o3_chunk, model, params, x, xc, method="structured"
    )
    flops = flops_chunk * plan.n_chunks if flops_chunk else None
    rows.append(
        dict(
            kernel="o3",
            problem=f"N={x.shape[0]} n={model.width} L=4",
            structured_s=t_s,
            jacobian_s=t_j,
            speedup=t_j / t_s,
            flops=flops,
            frac_peak=flops / t_s / peak if flops else None,
            xla_bytes=(mem or 0) + plan.output_bytes if mem else None,
            planner_bytes=plan.peak_bytes,
            plan=plan.describe(),
        )
    )
    v = jax.random.normal(jax.random.key(7), (x.shape[0],), dtype=dtype)

    def ntk3():
        return nx.kernels.ntk(model, params, x)

    for name, fn in (
        ("o3_contract", lambda: nx.kernels.o3_contract(model, params, x, v)),
        ("o4_contract", lambda: nx.kernels.o4_contract(model, params, x, v, v)),
    ):
        t_n, t_c = _timeit_pair(ntk3, fn, 40)  # alternated: a ratio of fast kernels
        rows.append(
            dict(
                kernel=name,
                problem=f"N={x.shape[0]} n={model.width} L=4",
                structured_s=t_c,
                ntk_s=t_n,
                cost_in_ntks=t_c / t_n,
            )
        )

    # O4 at a small size
    model, params, x = problem(128, 2, 32)
    t_s = _timeit(lambda: nx.kernels.o4(model, params, x), 2)
    t_j = _timeit(lambda: nx.kernels.o4(model, params, x, method="jacobian"), 1)
    plan4 = nx.kernels.plan(4, x.shape[0], params)
    rows.append(
        dict(
            kernel="o4",
            problem=f"N={x.shape[0]} n={model.width} L=2",
            structured_s=t_s,
            jacobian_s=t_j,
            speedup=t_j / t_s,
            planner_bytes=plan4.peak_bytes,
            plan=plan4.describe(),
        )
    )

    result = dict(
        date=datetime.date.today().isoformat(),
        device=str(jax.devices()[0].device_kind),
        platform=jax.devices()[0].platform,
        machine=platform.processor() or platform.machine(),
        jax=jax.__version__,
        dtype=dtype.name,
        matmul_precision="highest",
        matmul_flops_per_s=peak,
        quick=args.quick,
        ntk_reference_s=t_ntk,
        rows=rows,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    print(
        f"device {result['device']} ({result['platform']}), {dtype.name}, "
        f"measured matmul rate {peak / 1e9:.1f} GFLOP/s"
    )
    header = f"{'kernel':<12} {'problem':<22} {'structured':>11} {'reference':>10} "
    header += f"{'ratio':>7} {'GFLOP':>8} {'% peak':>7} {'XLA MB':>8} {'plan MB':>8}"
    print(header)
    for r in rows:
        ref = r.get("jacobian_s", r.get("ntk_s"))
        ratio = r.get("speedup", r.get("cost_in_ntks"))
        fmt = lambda v, f: f.format(v) if v is not None else "-"  # noqa: E731
        print(
            f"{r['kernel']:<12} {r['problem']:<22} {r['structured_s']:>10.4f}s "
            f"{fmt(ref, '{:>9.4f}s')} {fmt(ratio, '{:>7.1f}')} "
            f"{fmt(r.get('flops') and r['flops'] / 1e9, '{:>8.2f}')} "
            f"{fmt(r.get('frac_peak') and 100 * r['frac_peak'], '{:>6.1f}%')} "
            f"{fmt(r.get('xla_bytes') and r['xla_bytes'] / 2**20, '{:>8.1f}')} "
            f"{fmt(r.get('planner_bytes') and r['planner_bytes'] / 2**20, '{:>8.1f}')}"
        )
    print("ratio: reference/structured time (speed-up), or o*_contract time in NTKs")
    print(f"written {out}")


if __name__ == "__main__":
    main()
