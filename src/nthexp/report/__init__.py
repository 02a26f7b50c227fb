"""Sweep aggregation (table, fits, figures, markdown report) and the wandb sink."""

from nthexp.report._build import Report, build_report
from nthexp.report._collect import SweepRuns, collect
from nthexp.report._fits import fit_table
from nthexp.report._wandb import log_point, log_sweep

__all__ = [
    "Report",
    "SweepRuns",
    "build_report",
    "collect",
    "fit_table",
    "log_point",
    "log_sweep",
]
