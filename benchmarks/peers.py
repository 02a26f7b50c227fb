"""`make bench-peers`: nthexp against neural-tangents (the peer), side by side.

The peer runs in its own virtual environment (.venv-peers, old JAX) as a worker
process (benchmarks/peer_worker.py); this driver alternates timing rounds between
nthexp (in this process) and the peer's structured method, so drifts of the machine
hit both alike, and prints peer/nthexp ratios with their range over the rounds; the
peer's two slow methods are timed once. float64, ReLU MLP, input dimension 16, trace
over the output.

    python -m benchmarks.peers [--rounds 5] [--repeats 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

PROBLEMS = [
    (512, 4, 256),
    (256, 16, 256),
    (1024, 3, 512),
    (64, 32, 512),
]  # width, depth, N
O3_PROBLEM = (256, 4, 128)
PEER_METHODS = ("structured_derivatives", "ntk_vector_products", "jacobian_contraction")
JACOBIAN_LIMIT_BYTES = 3 * 2**30  # the peer's Jacobian method needs N x P floats


class Peer:
    def __init__(self, python):
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).with_name("peer_worker.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def ask(self, **req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        out = json.loads(self.proc.stdout.readline())
        if "error" in out:
            raise RuntimeError(f"peer failed on {req}: {out['error']}")
        return out

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _ratio_summary(ours, theirs):
    """Peer/nthexp from the medians over rounds, and the range of the per-round
    ratios (each round times both back to back, so a slow spell of the machine
    shows as a spread here rather than as a bias)."""
    per_round = [t / o for o, t in zip(ours, theirs, strict=True)]
    return dict(
        ratio=statistics.median(theirs) / statistics.median(ours),
        per_round=per_round,
        low=min(per_round),
        high=max(per_round),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=".venv-peers/bin/python")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--repeats", type=int, default=10, help="timed calls per round (NTK)"
    )
    parser.add_argument("--out", default="benchmarks/out/peers.json")
    args = parser.parse_args(argv)

    jax.config.update("jax_enable_x64", True)
    import nthexp as nx
    from benchmarks.run import _compiled_stats, _timeit, matmul_rate, ntk_problem_flops
    from nthexp.kernels import _empirical

    peer = Peer(args.python)
    versions = peer.ask(kind="version")
    peak = matmul_rate(jnp.float64)
    rows = []
    for width, depth, n in PROBLEMS:
        model = nx.models.MLP(width=width, depth=depth, b_std=0.1)
        params = nx.models.init(model, jax.random.key(0), 16)
        x = jax.random.normal(jax.random.key(1), (n, 16))
        p_count = nx.models.param_count(params)
        times = {"nthexp": [], "structured_derivatives": []}
        for _ in range(args.rounds):  # alternate nthexp and the peer's closest method
            times["nthexp"].append(
                _timeit(
                    lambda m=model, p=params, x=x: nx.kernels.ntk(m, p, x), args.repeats
                )
            )
            r = peer.ask(
                kind="ntk",
                width=width,
                depth=depth,
                n=n,
                method="structured_derivatives",
                repeats=args.repeats,
            )
            times["structured_derivatives"].append(r["seconds"])
            peer_bytes = r["xla_bytes"]
        # The peer's other two methods are 20-500x slower: one timed call each.
        for method in PEER_METHODS[1:]:
            if (
                method == "jacobian_contraction"
                and n * p_count * 8 > JACOBIAN_LIMIT_BYTES
            ):
                continue
            r = peer.ask(
                kind="ntk", width=width, depth=depth, n=n, method=method, repeats=1
            )
            times[method] = [r["seconds"]]
        best = {k: statistics.median(v) for k, v in times.items()}
        _, mem = _compiled_stats(
            _empirical._ntk, model, params, x, None, method="structured", trace=False
        )
        flops = ntk_problem_flops(model, params, x)
        rows.append(
            dict(
                problem=dict(width=width, depth=depth, n=n),
                params=p_count,
                seconds=best,
                seconds_per_round=times,
                nthexp_xla_bytes=mem,
                peer_structured_xla_bytes=peer_bytes,
                nthexp_frac_peak=flops / best["nthexp"] / peak if flops else None,
                speedup_vs_peer={
                    k: v / best["nthexp"] for k, v in best.items() if k != "nthexp"
                },
                structured_ratio=_ratio_summary(
                    times["nthexp"], times["structured_derivatives"]
                ),
            )
        )

    width, depth, n = O3_PROBLEM
    model = nx.models.MLP(width=width, depth=depth, b_std=0.1)
    params = nx.models.init(model, jax.random.key(0), 16)
    x = jax.random.normal(jax.random.key(1), (n, 16))
    ours, theirs = [], []
    for _ in range(args.rounds):  # alternate, as for the NTK
        ours.append(_timeit(lambda: nx.kernels.o3(model, params, x), 2))
        theirs.append(
            peer.ask(kind="o3", width=width, depth=depth, n=n, repeats=2)["seconds"]
        )
    t_ours, t_peer = statistics.median(ours), statistics.median(theirs)
    o3_row = dict(
        problem=dict(width=width, depth=depth, n=n),
        nthexp_s=t_ours,
        peer_s=t_peer,
        speedup=t_peer / t_ours,
        ratio=_ratio_summary(ours, theirs),
    )
    peer.close()

    result = dict(
        device=str(jax.devices()[0].device_kind),
        jax=jax.__version__,
        peer=versions,
        matmul_flops_per_s=peak,
        ntk=rows,
        o3=o3_row,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    print(
        f"nthexp on jax {jax.__version__} vs neural-tangents "
        f"{versions['neural_tangents']} on jax {versions['jax']}; "
        f"float64 matmul rate {peak / 1e9:.1f} GFLOP/s"
    )
    print(
        f"{'(width, depth, N)':<18} {'nthexp s':>9} {'% peak':>7} "
        + " ".join(f"{m[:10]:>11}" for m in PEER_METHODS)
        + "   XLA MiB ours/peer"
    )
    for r in rows:
        p = r["problem"]
        cells = []
        for m in PEER_METHODS:
            s = r["speedup_vs_peer"].get(m)
            cells.append(f"{s:>10.2f}x" if s is not None else f"{'skipped':>11}")
        mem = (
            f"{(r['nthexp_xla_bytes'] or 0) / 2**20:.1f}/"
            f"{(r['peer_structured_xla_bytes'] or 0) / 2**20:.1f}"
        )
        frac = r["nthexp_frac_peak"]
        print(
            f"{str((p['width'], p['depth'], p['n'])):<18} "
            f"{r['seconds']['nthexp']:>9.4f} "
            f"{100 * frac if frac else float('nan'):>6.1f}% "
            + " ".join(cells)
            + f"   {mem}"
        )
    print(
        "columns: peer time / nthexp time for each of the peer's methods "
        f"({', '.join(PEER_METHODS)}); 'skipped': its N x P Jacobian would exceed "
        f"{JACOBIAN_LIMIT_BYTES / 2**30:g} GiB; XLA MiB: compiled temporaries plus "
        "output of nthexp's and of the peer's structured NTK"
    )
    print(
        "% peak: XLA's FLOP count of the unblocked structured algorithm over nthexp's "
        "time and the measured matmul rate; above 100% where the symmetric kernel's "
        "skipped Gram blocks save more than the remaining overheads cost"
    )
    for r in rows:
        q = r["structured_ratio"]
        p = r["problem"]
        print(
            f"  structured {(p['width'], p['depth'], p['n'])}: per-round ratios "
            f"{q['low']:.2f}x-{q['high']:.2f}x over {len(q['per_round'])} rounds"
        )
    print(
        f"O3 {O3_PROBLEM}: nthexp {t_ours:.3f}s, peer jvp-of-structured looped over c "
        f"{t_peer:.3f}s, speed-up {o3_row['speedup']:.2f}x (per round "
        f"{o3_row['ratio']['low']:.2f}x-{o3_row['ratio']['high']:.2f}x)"
    )
    print(f"written {out}")


if __name__ == "__main__":
    sys.exit(main())
