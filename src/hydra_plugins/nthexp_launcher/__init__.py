"""nthexp's submitit launchers (Hydra only instantiates plugins from ``hydra_plugins``).

Selected by the presets in conf/hydra/launcher/ (``slurm_gpu``, ``slurm_cpu``); the
code lives in :mod:`hydra_plugins.nthexp_launcher.launcher`.
"""

from hydra_plugins.nthexp_launcher.launcher import LocalLauncher, SlurmLauncher

__all__ = ["LocalLauncher", "SlurmLauncher"]
