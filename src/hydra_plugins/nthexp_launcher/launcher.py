"""Hydra's submitit launchers, made safe for sweeps of hundreds of points.

What this adds to ``hydra_submitit_launcher`` (whose ``launch`` returns at the first
failed job while the others still run, and whose jobs always end COMPLETED):

- a point that raises makes its SLURM job FAILED (the traceback goes to the job's own
  log and to ``.submitit/<id>/*_log.err``); the driver waits for *every* job, records
  each failed, cancelled or killed one in ``<job dir>/error.txt``, logs one line per
  failure (overrides, reason, log path), and lets the sweep end normally, so the
  sweep callback still builds the partial report and then exits non-zero;
- points whose ``metrics.json`` exists (a relaunch into the same sweep dir) are not
  submitted at all;
- sweeps larger than the cluster's ``MaxArraySize`` go out as several job arrays;
- ``SLURM_*`` variables inherited from an allocation are not passed to the jobs
  (``SLURM_CONF`` is kept);
- the pickled job is checked before anything is submitted; what cannot be pickled is
  named (``ValueError``);
- one driver per sweep dir (``.driver.lock``).

Requeue after a time limit or preemption is submitit's: ``checkpoint`` resubmits the
same call, and the task resumes from the stages it saved.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _base
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

# Environment variable prefixes that describe the *current* allocation; sbatch and the
# srun inside a job read them as defaults, so a driver started inside salloc/sbatch
# would pass its own allocation's settings on (e.g. SLURM_MEM_PER_CPU next to the
# job's SLURM_MEM_PER_NODE makes srun refuse to start).
_ALLOCATION_PREFIXES = ("SLURM_", "SLURMD_", "SRUN_", "SUBMITIT_")
_KEEP = frozenset({"SLURM_CONF"})

# How often the driver asks sacct about unfinished jobs (one call for all of them).
POLL_S = 2.0
LOCK_NAME = ".driver.lock"
ERROR_NAME = "error.txt"
METRICS_NAME = "metrics.json"


class _Mixin:
    """Overrides shared by the SLURM and the local launcher."""

    _EXECUTOR: str

    # --- inside the job ---------------------------------------------------------

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[Any, Any],
    ) -> JobReturn:
        ret = super().__call__(  # type: ignore[misc]
            sweep_overrides, job_dir_key, job_num, job_id, singleton_state
        )
        if ret.status == JobStatus.FAILED:
            exc = ret._return_value
            logging.getLogger("nthexp.experiment").error(
                "point #%d (%s) failed",
                job_num,
                " ".join(sweep_overrides),
                exc_info=exc,
            )
            # submitit records it as the job's error, prints it to the job's stderr
            # and exits non-zero: the SLURM job ends FAILED, not COMPLETED.
            raise exc
        return ret

    # --- in the driver ----------------------------------------------------------

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None  # type: ignore[attr-defined]
        assert len(job_overrides) > 0
        sweep_dir = Path(str(self.config.hydra.sweep.dir))  # type: ignore[attr-defined]
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:  # type: ignore[attr-defined]
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))  # type: ignore[attr-defined]
        _claim(sweep_dir)
        self._check_picklable()
        executor = self._executor(submitit)
        log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, sweep_dir)

        returns: list[JobReturn | None] = [None] * len(job_overrides)
        todo: list[tuple[int, tuple]] = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            job_dir = self._job_dir(overrides, idx)
            if self._complete(job_dir, overrides, idx):
                log.info("\t#%d : %s (complete, not submitted)", idx, _fmt(overrides))
                returns[i] = _done(overrides)
                continue
            log.info("\t#%d : %s", idx, _fmt(overrides))
            args = (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}")
            todo.append((i, args + (Singleton.get_state(),)))
        if not todo:
            return returns  # type: ignore[return-value]

        chunk = self._max_array_size() or len(todo)
        jobs = []
        started = time.time()
        with _without_allocation_env():
            for lo in range(0, len(todo), chunk):
                part = [args for _, args in todo[lo : lo + chunk]]
                jobs += executor.map_array(self, *zip(*part, strict=True))
        arrays = sorted({str(j.job_id).split("_")[0] for j in jobs})
        log.info("submitted %d point(s) as job(s) %s", len(jobs), ", ".join(arrays))

        failures = []
        for (i, args), job, outcome in zip(todo, jobs, _wait_all(jobs), strict=True):
            overrides, _, idx = args[0], args[1], args[2]
            if isinstance(outcome, BaseException):
                job_dir = self._job_dir(overrides, idx)
                reason = _record_failure(job_dir, overrides, job, outcome, started)
                failures.append((idx, overrides, reason, job, job_dir))
                returns[i] = _done(overrides)
            else:
                returns[i] = outcome
        for idx, overrides, reason, job, job_dir in failures:
            log.error(
                "point #%d (%s) FAILED: %s; logs: %s, %s",
                idx,
                _fmt(overrides),
                reason,
                job_dir,
                job.paths.stderr,
            )
        return returns  # type: ignore[return-value]

    def _executor(self, submitit):
        """The executor of the base class, built from ``hydra.launcher``."""
        params = self.params  # type: ignore[attr-defined]
        init_keys = {"max_num_timeout", "submitit_folder"}
        init = {"folder": params["submitit_folder"]}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                (k if k in base else f"{self._EXECUTOR}_{k}"): v
                for k, v in params.items()
                if k not in init_keys
            }
        )
        return executor

    def _max_array_size(self) -> int | None:
        return None

    def _job_dir(self, overrides: Sequence[str], idx: int) -> Path:
        """``hydra.sweep.dir/hydra.sweep.subdir`` of one point, as the job computes
        it."""
        sweep = self.config.hydra.sweep  # type: ignore[attr-defined]
        if OmegaConf.to_container(sweep)["subdir"] == "${hydra.job.num}":
            return Path(str(sweep.dir)) / str(idx)  # conf/config.yaml: no compose
        cfg = self._sweep_config(overrides, idx)
        return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)

    def _sweep_config(self, overrides: Sequence[str], idx: int) -> DictConfig:
        loader = self.hydra_context.config_loader  # type: ignore[attr-defined]
        cfg = loader.load_sweep_config(self.config, list(overrides))  # type: ignore[attr-defined]
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = idx
        return cfg

    def _complete(self, job_dir: Path, overrides: Sequence[str], idx: int) -> bool:
        """True when ``job_dir`` holds a complete run of this very point."""
        if not (job_dir / METRICS_NAME).is_file():
            return False
        from nthexp.experiment._task import RunMismatchError

        try:
            from nthexp.experiment._task import existing_run_matches

            cfg = self._sweep_config(overrides, idx)
            with open_dict(cfg):
                del cfg["hydra"]
            return existing_run_matches(job_dir, cfg)
        except RunMismatchError as exc:
            # Refused before anything is submitted; multirun.yaml as it was.
            from nthexp.experiment._callback import fail, restore_multirun_yaml

            restore_multirun_yaml()
            fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - the job itself reports a mismatch
            log.debug("submitting %s anyway: %s", job_dir, exc)
            return False

    def _check_picklable(self) -> None:
        """Raise ``ValueError`` naming what in the job cannot be pickled."""
        import cloudpickle

        try:
            cloudpickle.dumps(self)
            cloudpickle.dumps(Singleton.get_state())
            return
        except Exception as exc:  # noqa: BLE001 - reported below, with names
            first = exc
        culprits = []
        ctx = self.hydra_context  # type: ignore[attr-defined]
        names = list(self.config.hydra.get("callbacks") or {})  # type: ignore[attr-defined]
        for i, cb in enumerate(getattr(ctx.callbacks, "callbacks", [])):
            name = names[i] if i < len(names) else str(i)
            _try(culprits, f"hydra.callbacks.{name} ({type(cb).__name__})", cb)
        for key, value in self.params.items():  # type: ignore[attr-defined]
            _try(culprits, f"hydra.launcher.{key}", value)
        _try(culprits, "the task function", self.task_function)  # type: ignore[attr-defined]
        _try(culprits, "the config", self.config)  # type: ignore[attr-defined]
        if not culprits:
            culprits = [f"the launcher state ({type(first).__name__}: {first})"]
        raise ValueError(
            "cannot send the sweep to the jobs: only plain configs and paths may cross "
            "the pickle boundary, and these cannot be pickled: " + "; ".join(culprits)
        )


class SlurmLauncher(_Mixin, _base.SlurmLauncher):
    """``hydra/launcher=slurm_gpu`` / ``slurm_cpu``."""

    def _max_array_size(self) -> int | None:
        """``MaxArraySize`` of the cluster (array indices run 0..MaxArraySize-1)."""
        try:
            out = subprocess.run(
                ["scontrol", "show", "config"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("cannot read MaxArraySize (%s); one array per sweep", exc)
            return None
        match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
        return int(match.group(1)) if match and int(match.group(1)) > 0 else None


class LocalLauncher(_Mixin, _base.LocalLauncher):
    """submitit's local executor with the same failure handling."""


# --- helpers ------------------------------------------------------------------------


def _fmt(overrides: Sequence[str]) -> str:
    return " ".join(filter_overrides(overrides))


def _done(overrides: Sequence[str]) -> JobReturn:
    """A finished point without a value: the sweep goes on; the report counts it."""
    return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)


def _try(culprits: list[str], name: str, obj: Any) -> None:
    import cloudpickle

    try:
        cloudpickle.dumps(obj)
    except Exception as exc:  # noqa: BLE001
        culprits.append(f"{name}: {type(exc).__name__}: {exc}")


class _without_allocation_env:
    """Hide ``SLURM_*`` (but ``SLURM_CONF``) and friends while submitting."""

    def __enter__(self):
        self.saved = {
            k: os.environ.pop(k)
            for k in list(os.environ)
            if k.startswith(_ALLOCATION_PREFIXES) and k not in _KEEP
        }
        if self.saved:
            log.info("not passed on to the jobs: %s", ", ".join(sorted(self.saved)))
        return self

    def __exit__(self, *exc):
        os.environ.update(self.saved)
        return False


def _claim(sweep_dir: Path) -> None:
    """One driver per sweep dir: two sweeps started at the same moment, or a resume
    while the first driver still runs, must not write into the same dir."""
    lock = sweep_dir / LOCK_NAME
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock.read_text().strip() if lock.exists() else ""
            if holder == me:
                return
            host, _, pid = holder.partition(" ")
            if host == socket.gethostname() and pid.isdigit() and _alive(int(pid)):
                raise ValueError(
                    f"sweep_dir={str(sweep_dir)!r} is not allowed; another sweep "
                    f"(pid {pid}) is writing into it"
                ) from None
            lock.unlink(missing_ok=True)  # left by a driver that has ended
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        atexit.register(lock.unlink, missing_ok=True)
        return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_all(jobs: list) -> list:
    """Wait for every job (not just up to the first failure); for each, its JobReturn
    or the exception that stands for its failure.

    A job is finished when its result file exists or sacct says it has ended;
    one sacct call covers all jobs every ``POLL_S`` seconds, so a cancelled or killed
    job is noticed within seconds (submitit alone backs off to minutes).
    """
    outcomes: list = [None] * len(jobs)
    pending = set(range(len(jobs)))
    from submitit.slurm.slurm import SlurmJob

    slurm = bool(jobs) and isinstance(jobs[0], SlurmJob)
    while pending:
        if slurm:
            SlurmJob.watcher.update()
        for i in sorted(pending):
            job = jobs[i]
            if slurm:
                ended = job.paths.result_pickle.exists() or job.watcher.is_done(
                    job.job_id, mode="cache"
                )
            else:
                ended = job.done()
            if not ended:
                continue
            pending.discard(i)
            job._results_timeout_s = 5  # a job that ended without a result
            try:
                outcomes[i] = job.results()[0]
            except Exception as exc:  # noqa: BLE001 - reported per point
                outcomes[i] = exc
        if pending:
            time.sleep(POLL_S)
    return outcomes


def _record_failure(
    job_dir: Path, overrides: Sequence[str], job, exc: BaseException, started: float
) -> str:
    """Make the failed point visible to the report: ``error.txt`` (unless the job
    wrote one itself) and ``.hydra/overrides.yaml`` (a job that never started has no
    dir yet). Returns a one-line reason."""
    text = str(exc).strip()
    error = job_dir / ERROR_NAME
    if error.is_file() and error.stat().st_mtime >= started:
        # written by the point itself: its last line is the exception
        lines = [ln for ln in error.read_text().splitlines() if ln.strip()]
        reason = lines[-1] if lines else type(exc).__name__
    elif "has not produced any output" in text:
        reason = f"SLURM job {job.job_id} ended {_state(job)} without a result"
    else:
        # submitit's FailedJobError quotes the job's traceback between dashed lines
        parts = [p for p in re.split(r"\n-{10,}\n", text) if p.strip()]
        trace = parts[1] if len(parts) > 1 else text
        lines = [ln for ln in trace.splitlines() if ln.strip()]
        reason = lines[-1].strip() if lines else type(exc).__name__
    job_dir.mkdir(parents=True, exist_ok=True)
    if not error.is_file() or error.stat().st_mtime < started:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        error.write_text(
            f"{stamp}\nlogs: {job.paths.stdout} {job.paths.stderr}\n{text}\n{reason}\n"
        )
    hydra_dir = job_dir / ".hydra"
    if not (hydra_dir / "overrides.yaml").is_file():
        hydra_dir.mkdir(exist_ok=True)
        OmegaConf.save(OmegaConf.create(list(overrides)), hydra_dir / "overrides.yaml")
    return reason


def _state(job) -> str:
    try:
        return str(job.watcher.get_state(job.job_id, mode="cache"))
    except Exception:  # noqa: BLE001
        return "UNKNOWN"
