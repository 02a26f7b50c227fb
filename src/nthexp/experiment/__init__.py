"""The Hydra task (one sweep point -> files) and the multirun callback (-> report)."""

from nthexp.experiment._callback import SweepCallback
from nthexp.experiment._conf import find_conf_dir
from nthexp.experiment._files import METRICS, RESOLVED_CONFIG, RESULT_FILES, SPECTRA
from nthexp.experiment._task import compute_point
from nthexp.experiment._validate import ConfigError, build_model, validate

__all__ = [
    "METRICS",
    "RESOLVED_CONFIG",
    "RESULT_FILES",
    "SPECTRA",
    "ConfigError",
    "SweepCallback",
    "build_model",
    "compute_point",
    "find_conf_dir",
    "validate",
]
