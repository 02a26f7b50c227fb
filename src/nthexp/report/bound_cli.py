r"""``nthexp-bound``: the width and depth that maximise the certified Weyl bound.

Example (about 15 s on a laptop CPU, most of it the default laws' kernels)::

    nthexp-bound --params 100000 --d-in 64 --n 128 --out bound/

prints the optimum (width, depth, bound), the laws used and where they came from, and
writes ``bound/bound_curve.png`` (the bound along the curve of constant parameter
count) and ``bound/bound.json``. ``--laws fits.json`` reads laws fitted on a sweep
(the layout of :meth:`nthexp.analysis.BoundLaws.to_dict`, at the top level or under a
``"bound_laws"`` key). An impossible budget exits with status 2 and a one-line error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: Default constant C of the assumed correction law ||dK||_op / ||K_inf||_op =
#: C sqrt(depth / width) (order one; see nthexp.analysis.digits_relu_laws).
DEFAULT_CONSTANT = 1.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nthexp-bound",
        description=(
            "For a parameter budget P, input dimension D_in and data set size N, find "
            "the MLP width and depth that maximise the certified lower bound "
            "lambda_min(K_inf) - ||K_emp - K_inf||_op on lambda_min(K_emp)."
        ),
    )
    p.add_argument("--params", type=int, required=True, help="parameter budget P")
    p.add_argument("--d-in", type=int, required=True, help="input dimension D_in")
    p.add_argument("--n", type=int, required=True, help="data set size N")
    p.add_argument(
        "--laws",
        type=Path,
        default=None,
        help="JSON file of fitted laws (default: derived from the infinite-width "
        "ReLU NTK on the digits data, see the printed source)",
    )
    p.add_argument(
        "--constant",
        type=float,
        default=DEFAULT_CONSTANT,
        help="C of the default correction law C sqrt(depth/width) (default "
        f"{DEFAULT_CONSTANT}); ignored with --laws",
    )
    p.add_argument(
        "--out", type=Path, default=Path("."), help="directory for the figure and JSON"
    )
    p.add_argument("--no-bias", action="store_true", help="layers without biases")
    return p


def _figure(arch, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Show depths up to 10x the optimum (at least 20): further out the width shrinks
    # to a few units and the curve says nothing new.
    shown = arch.curve["depth"] <= max(10 * arch.depth, 20)
    curve = {k: v[shown] for k, v in arch.curve.items()}
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(curve["depth"], curve["bound"], color="C0", label="certified bound")
    ax.plot(
        curve["depth"],
        curve["lambda_min_inf"],
        color="C2",
        ls="--",
        label=r"$\lambda_{min}(K_\infty)$",
    )
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.plot([arch.depth], [arch.bound], "o", color="C3", label="optimum")
    ax.set_xscale("log")
    ax.set_xlabel("depth L (width: the widest within the budget)")
    ax.set_ylabel("lower bound on lambda_min(K_emp)")
    ax.set_title(
        f"P={arch.budget}, D_in={arch.d_in}, N={arch.n}: "
        f"width={arch.width}, depth={arch.depth}"
    )
    low = float(curve["bound"].min())
    high = float(max(curve["lambda_min_inf"].max(), arch.bound))
    pad = 0.05 * (high - low) + 1e-12
    ax.set_ylim(max(low, arch.bound - 10 * (high - arch.bound + 1.0)) - pad, high + pad)
    width_axis = ax.twinx()
    width_axis.plot(curve["depth"], curve["width"], color="0.6", lw=0.8, ls=":")
    width_axis.set_yscale("log")
    width_axis.set_ylabel("width (dotted)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _signed(v: float) -> str:
    return f"{'-' if v < 0 else '+'} {abs(v):.4g}"


def _laws_text(laws) -> str:
    """The laws in one line: ``lambda_min(K_inf) = (0.79 L - 0.8) (N/6)^0, ...``."""
    return (
        f"lambda_min(K_inf) = ({laws.a:.4g} L {_signed(laws.b)}) "
        f"(N/{laws.n_ref:g})^{laws.m:.4g}, ||dK||_op = {laws.c:.4g} width^{laws.p:.4g} "
        f"L^{laws.q:.4g} (N/{laws.n_ref:g})^{laws.r:.4g}"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0, or 2 for a refused budget)."""
    args = _parser().parse_args(argv)
    try:
        import nthexp as nx

        for name in ("params", "d_in", "n"):
            value = getattr(args, name)
            if value <= 0:
                raise ValueError(
                    f"--{name.replace('_', '-')}={value} is not allowed; must be a "
                    "positive integer"
                )
        if args.laws is not None:
            try:
                laws = nx.analysis.BoundLaws.from_dict(
                    json.loads(args.laws.read_text())
                )
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(
                    f"--laws={str(args.laws)!r} is unreadable: {err}"
                ) from None
            if laws.source == nx.analysis._bound.UNKNOWN_SOURCE:
                laws = type(laws)(**{**laws.__dict__, "source": f"file {args.laws}"})
        else:
            # Checked before the kernels are computed, so a refusal is immediate.
            smallest = nx.analysis.mlp_param_count(
                1, 1, args.d_in, bias=not args.no_bias
            )
            if args.params < smallest:
                raise ValueError(
                    f"--params={args.params} is not allowed; one hidden layer of width "
                    f"1 on d_in={args.d_in} inputs needs {smallest}; must be >= "
                    f"{smallest}"
                )
            import jax

            jax.config.update("jax_enable_x64", True)
            laws = nx.analysis.digits_relu_laws(args.n, constant=args.constant)
        arch = nx.analysis.optimal_architecture(
            args.params, args.d_in, args.n, laws, bias=not args.no_bias
        )
    except ValueError as err:
        print(f"nthexp-bound: error: {err}", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    figure = args.out / "bound_curve.png"
    _figure(arch, figure)
    (args.out / "bound.json").write_text(json.dumps(arch.to_dict(), indent=2) + "\n")

    print(f"laws: {laws.source}" + (f" (file {args.laws})" if args.laws else ""))
    print("  " + _laws_text(laws))
    print(
        f"optimum for P={arch.budget}, D_in={arch.d_in}, N={arch.n}: "
        f"width={arch.width}, depth={arch.depth}, bound={arch.bound:.6g} "
        f"({arch.params} parameters)"
    )
    if arch.bound <= 0:
        hint = (
            "a larger P may" if args.laws else "a larger P, or laws from a sweep, may"
        )
        print(
            "note: the bound is not positive anywhere on the curve, so it certifies "
            f"nothing at this budget ({hint})"
        )
    if arch.extrapolated:
        print("note: the optimum lies outside the ranges the laws were fitted on")
    print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
