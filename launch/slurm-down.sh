#!/usr/bin/env bash
# Stop the cluster started by launch/slurm-up.sh: cancel all jobs, wait for the queue
# to drain (a job's processes outlive slurmd otherwise), then stop each daemon by the
# pid in its pid file. Safe to run when nothing is up. SLURM_CI_ROOT as for slurm-up.
ROOT=${SLURM_CI_ROOT:-$PWD/.slurm-ci}
export SLURM_CONF=$ROOT/etc/slurm.conf
if [ -f "$SLURM_CONF" ] && timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; then
  scancel --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 50); do
    [ -z "$(squeue -h 2>/dev/null)" ] && break
    sleep 0.2
  done
fi
stop() {
  local name=$1 pf=$2 pid
  [ -f "$pf" ] || return 0
  pid=$(cat "$pf")
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid"
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || { echo "[slurm-down] stopped $name ($pid)"; return 0; }
    sleep 0.1
  done
  echo "[slurm-down] $name ($pid) ignored SIGTERM; sending SIGKILL"
  kill -9 "$pid" 2>/dev/null || true
}
stop slurmd "$ROOT/state/slurmd.pid"
stop slurmctld "$ROOT/state/slurmctld.pid"
stop slurmdbd "$ROOT/state/slurmdbd.pid"
stop mariadbd "$ROOT/mysql/mysqld.pid"
stop munged "$ROOT/munge/munged.pid"
exit 0
