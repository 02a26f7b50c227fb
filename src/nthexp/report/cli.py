"""``nthexp-report DIR``: rebuild the table, fits, figures and report of a sweep."""

from __future__ import annotations

import argparse
import logging
import sys

from nthexp.report._build import build_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nthexp-report",
        description="Aggregate a sweep dir into results.parquet, fits.json, "
        "figures/*.png and report.md (nothing is recomputed or deleted).",
    )
    parser.add_argument("sweep_dir", help="a multirun directory made by nthexp -m")
    parser.add_argument(
        "--response",
        default=None,
        help="metric to fit (default: analysis.response of the runs)",
    )
    parser.add_argument(
        "--max-depth-over-width",
        type=float,
        default=None,
        help="small-ratio regime of the width fits (default: the "
        "runs' analysis.max_depth_over_width)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname)s] %(message)s", stream=sys.stderr
    )

    overrides = {
        "response": args.response,
        "max_depth_over_width": args.max_depth_over_width,
    }
    try:
        report = build_report(args.sweep_dir, overrides)
    except ValueError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        return 2
    print(report.summary_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
