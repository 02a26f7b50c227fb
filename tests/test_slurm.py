"""Sweeps through the SLURM launcher presets against a real single-node cluster.

The cluster comes from ``make slurm-up`` (launch/slurm-up.sh; .ci/run starts it and
exports ``SLURM_CONF``). It advertises 4 CPUs, 4 fake GPUs and ``MaxArraySize=3``, so
a 4-point sweep goes out as two job arrays. Each test is one acceptance item of
issue 7; every sweep runs under ``timeout`` so a hang fails instead of blocking CI.
Points are tiny (8 digits, width 8, depth 1): the cost is process start-up and jit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent
NTHEXP = str(BIN / "nthexp")

# One tiny point; every sweep below varies seed or model.w_std on top of it.
POINT = ["data.n=8", "model.width=8", "model.depth=1", "logger=none"]
# What the 4-CPU test node can run four of at once.
LAUNCHER = [
    "hydra/launcher=slurm_gpu",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=5",
]
SWEEP_TIMEOUT_S = 240
#: Seconds a requeued job stays held before the time-limit test releases it.
REQUEUE_RELEASE_S = 5.0

pytestmark = pytest.mark.slurm


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_ERROR_REPORTING="false")
    # compiled kernels are shared by the jobs of a test session (same shapes)
    # (kept next to the cluster's state, which slurm-up.sh creates afresh)
    state_root = Path(os.environ.get("SLURM_CONF", "/tmp/etc/x")).parents[1]
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(state_root / "jax-cache"))
    env.update(extra)
    return env


def _cmd(*args: str, timeout: int = SWEEP_TIMEOUT_S) -> list[str]:
    return ["timeout", str(timeout), NTHEXP, "-m", *LAUNCHER, *POINT, *args]


def _sweep(sweep_dir: Path, *args: str, env: dict | None = None, cwd=None):
    """Run a sweep into ``sweep_dir``; returns the finished process."""
    proc = subprocess.run(
        _cmd(f"hydra.sweep.dir={sweep_dir}", *args),
        capture_output=True,
        text=True,
        env=env or _env(),
        cwd=cwd or sweep_dir.parent,
        check=False,
    )
    assert proc.returncode != 124, f"sweep timed out:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _out(proc) -> str:
    return proc.stdout + proc.stderr


def _array_ids(sweep_dir: Path) -> list[str]:
    """The SLURM job ids of a sweep (arrays or single jobs), from submitit's
    folders."""
    folders = (sweep_dir / ".submitit").iterdir()
    # an array task has <array>_<i>; a chunk of one point is a plain job <id>
    ids = {p.name.split("_")[0] for p in folders if re.fullmatch(r"\d+(_\d+)?", p.name)}
    return sorted(ids, key=int)


def _sacct(job_ids: list[str]) -> dict[str, str]:
    """``{array task id: state}``; sacct lags a job's end by up to a second."""
    args = ["sacct", "-n", "-X", "-P", "-o", "JobID,State"]
    for jid in job_ids:
        args += ["-j", jid]
    states: dict[str, str] = {}
    for _ in range(20):
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        states = dict(line.split("|", 1) for line in out.split() if "|" in line)
        if states and not any(s in ("RUNNING", "PENDING") for s in states.values()):
            break
        time.sleep(0.5)
    return states


def _complete(sweep_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in sweep_dir.glob("*/metrics.json"))


# --- wandb's offline run files -----------------------------------------------------


def _wandb_records(path: Path, block: int = 32768):
    """Records of a ``run-<id>.wandb`` file (LevelDB-log framing of protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL or LAST chunk
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def _wandb_run(run_dir: Path) -> dict:
    """group, config and summary of the one offline run under ``run_dir/wandb``."""
    runs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs
    out: dict = {"group": None, "config": {}, "summary": {}}
    for r in _wandb_records(runs[0]):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["group"] = r.run.run_group
            for item in r.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in r.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in r.summary.update:
                key = item.key or "/".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
    return out


# --- the acceptance tests ----------------------------------------------------------


def test_sweep_completes_split_into_arrays_with_wandb_offline(tmp_path):
    """Acceptance 1, 6 (offline), 7 and the SLURM_* hygiene: 4 points on a cluster
    whose MaxArraySize is 3, started as if from inside an allocation."""
    sweep = tmp_path / "sweep"
    inherited = dict(
        SLURM_JOB_ID="999999",
        SLURM_MEM_PER_CPU="100",  # with the job's SLURM_MEM_PER_NODE, srun would refuse
        SLURM_NTHEXP_PROBE="inherited",
    )
    dump = "env | grep -E '^(SLURM_|WANDB_MODE)' | sort > env_$SLURM_JOB_ID.txt"
    proc = _sweep(
        sweep,
        "seed=0,1,2,3",
        "logger=wandb",
        f'hydra.launcher.setup=["{dump}"]',
        env=_env(**inherited),
    )
    assert proc.returncode == 0, _out(proc)

    assert _complete(sweep) == ["0", "1", "2", "3"]
    for name in ("report.md", "results.parquet", "fits.json"):
        assert (sweep / name).is_file(), name
    arrays = _array_ids(sweep)
    assert len(arrays) == 2, arrays  # 3 + 1: split at MaxArraySize
    states = _sacct(arrays)
    assert len(states) == 4 and set(states.values()) == {"COMPLETED"}, states

    dumps = list(tmp_path.glob("env_*.txt"))
    assert len(dumps) == 4
    for path in dumps:
        env = dict(line.split("=", 1) for line in path.read_text().splitlines())
        assert env["SLURM_CONF"] == os.environ["SLURM_CONF"]
        assert "SLURM_NTHEXP_PROBE" not in env and "SLURM_MEM_PER_CPU" not in env
        assert env["SLURM_JOB_ID"] != "999999"
        assert env["WANDB_MODE"] == "offline"

    groups = set()
    for num in range(4):
        run = _wandb_run(sweep / str(num))
        groups.add(run["group"])
        metrics = json.loads((sweep / str(num) / "metrics.json").read_text())
        assert run["config"]["seed"] == num
        assert run["config"]["model"]["width"] == 8  # nested and resolved
        assert run["config"]["logger"]["mode"] == "offline"  # ${oc.env:...} resolved
        assert run["summary"]["rel_fro"] == pytest.approx(metrics["rel_fro"])
    assert len(groups) == 1 and None not in groups, groups


def test_failing_point_fails_its_job_and_the_sweep(tmp_path):
    """Acceptance 2: w_std=1e200 overflows the empirical NTK of that point only."""
    sweep = tmp_path / "sweep"
    proc = _sweep(sweep, "model.w_std=1.4142135623730951,1e200")
    out = _out(proc)
    assert proc.returncode != 0, out
    assert re.search(
        r"#1 \(.*model\.w_std=1e\+?200.*\) FAILED: FloatingPointError", out
    ), out
    assert "1 point(s) failed" in out

    states = _sacct(_array_ids(sweep))
    assert sorted(states.values()) == ["COMPLETED", "FAILED"], states
    failed = [k for k, v in states.items() if v == "FAILED"]
    assert failed[0].endswith("_1"), states

    assert _complete(sweep) == ["0"]
    assert "FloatingPointError" in (sweep / "1" / "error.txt").read_text()
    point_log = (sweep / "1" / "app.log").read_text()
    assert "Traceback" in point_log and "FloatingPointError" in point_log
    report = (sweep / "report.md").read_text()
    assert (sweep / "results.parquet").is_file()
    assert "1 failed" in report or "failed" in report.lower()


def test_cancelled_job_is_reported_and_resumed(tmp_path):
    """Acceptance 3: scancel one point; the driver ends within a bounded time, and a
    relaunch into the same dir computes that point only."""
    sweep = tmp_path / "sweep"
    # point 1 sleeps before its infinite-width kernel until it is cancelled
    env = _env(NTHEXP_DEBUG_SLEEP="1:infinite:600")
    driver = subprocess.Popen(
        _cmd(f"hydra.sweep.dir={sweep}", "seed=0,1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if (sweep / "0" / "metrics.json").is_file() and (
                sweep / "1" / "stages.json"
            ).is_file():
                break
            assert driver.poll() is None, driver.stdout.read()
            time.sleep(0.5)
        else:
            pytest.fail("point 1 never reached its sleeping stage")
        (array,) = _array_ids(sweep)
        subprocess.run(["scancel", f"{array}_1"], check=True)
        cancelled_at = time.monotonic()
        out, _ = driver.communicate(timeout=90)
        reported_after = time.monotonic() - cancelled_at
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode != 0, out
    assert reported_after < 60, reported_after
    assert re.search(r"#1 \(.*seed=1.*\) FAILED: .*CANCELLED", out), out
    assert _sacct([array])[f"{array}_1"].startswith("CANCELLED")
    done_0 = (sweep / "0" / "metrics.json").stat().st_mtime_ns

    proc = _sweep(sweep, "seed=0,1")
    assert proc.returncode == 0, _out(proc)
    assert _complete(sweep) == ["0", "1"]
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == done_0
    (new,) = set(_array_ids(sweep)) - {array}
    assert list(_sacct([new])) == [new]  # one plain job: the cancelled point


def test_time_limit_requeues_and_resumes_stages(tmp_path):
    """Acceptance 4: the point runs past its 1-minute limit in its infinite-width
    stage; submitit checkpoints, SLURM requeues, and the rerun keeps the finished
    stages (their timestamps predate the requeue)."""
    sweep = tmp_path / "sweep"
    driver = subprocess.Popen(
        _cmd(
            f"hydra.sweep.dir={sweep}",
            "seed=0",
            "hydra.launcher.timeout_min=1",
            # USR2 about 40 s after the start: the job has loaded (submitit's handler
            # is installed) and sleeps in its infinite-width stage by then
            "hydra.launcher.signal_delay_s=20",
            "hydra.launcher.max_num_timeout=2",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(NTHEXP_DEBUG_SLEEP="0:infinite:600"),
        cwd=tmp_path,
    )
    try:
        # SLURM holds a requeued job for about 2 minutes (Reason=BeginTime) while
        # the node forgets the revoked credential of its first run; the test lets
        # it start after a few seconds, which changes nothing else. Released within
        # the second of the requeue, the job can be killed at launch ("Job
        # credential revoked") and end FAILED.
        held_since: dict[str, float] = {}
        while driver.poll() is None:
            out = subprocess.run(
                ["squeue", "-h", "-t", "PENDING", "-o", "%i %r"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            for line in out.splitlines():
                job_id, reason = line.split()
                if reason != "BeginTime":
                    continue
                since = held_since.setdefault(job_id, time.monotonic())
                if time.monotonic() - since >= REQUEUE_RELEASE_S:
                    subprocess.run(
                        ["scontrol", "update", f"JobId={job_id}", "StartTime=now"],
                        check=False,
                    )
                    del held_since[job_id]
            time.sleep(1)
        out, _ = driver.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, out
    assert _complete(sweep) == ["0"]
    stages = json.loads((sweep / "0" / "stages.json").read_text())["stages"]
    assert stages["ntk"]["attempt"] == 0, stages
    assert stages["infinite"]["attempt"] >= 1, stages
    assert stages["ntk"]["finished_at"] < stages["infinite"]["started_at"], stages
    (job_id,) = _array_ids(sweep)
    show = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"Restarts=[1-9]", show), show
    assert not (sweep / "0" / "stages").exists()  # arrays dropped once complete


def test_same_second_sweeps_get_their_own_dirs_and_disabled_wandb_writes_nothing(
    tmp_path,
):
    """Acceptance 5 and 6 (disabled): two sweeps with the default sweep dir, started
    together, each with logger=wandb and WANDB_MODE=disabled."""
    env = _env(WANDB_MODE="disabled")
    drivers = [
        subprocess.Popen(
            _cmd(f"seed={seed}", "logger=wandb"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for seed in (0, 1)
    ]
    outs = [d.communicate(timeout=SWEEP_TIMEOUT_S + 10)[0] for d in drivers]
    for d, out in zip(drivers, outs, strict=True):
        assert d.returncode == 0, out
    sweeps = sorted(p.parent for p in tmp_path.glob("multirun/*/*/multirun.yaml"))
    assert len(sweeps) == 2, sweeps
    seeds = set()
    for sweep in sweeps:
        assert _complete(sweep) == ["0"]
        cfg = yaml.safe_load((sweep / "0" / "resolved_config.yaml").read_text())
        seeds.add(cfg["seed"])
    assert seeds == {0, 1}
    assert not [p for p in tmp_path.rglob("wandb") if p.is_dir()]


def test_unpicklable_launcher_state_is_named_before_submission(tmp_path):
    """Hygiene: only plain configs and paths cross the pickle boundary; a callback
    holding a lock is named at submit time and nothing is submitted."""
    proc = subprocess.run(
        _cmd(
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "seed=0,1",
            "+hydra.callbacks.holds_a_lock._target_=logging.StreamHandler",
        ),
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        check=False,
    )
    out = _out(proc)
    assert proc.returncode != 0, out
    assert "cannot be pickled" in out and "hydra.callbacks.holds_a_lock" in out, out
    assert not (tmp_path / "sweep" / ".submitit").exists()


def test_cluster_is_the_ci_one():
    """The tests above assume the cluster of launch/slurm-up.sh."""
    assert shutil.which("sacct") is not None
    out = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"^MaxArraySize\s*=\s*3$", out, re.MULTILINE), (
        "start the cluster with SLURM_CI_MAX_ARRAY=3 (launch/slurm-up.sh default)"
    )
