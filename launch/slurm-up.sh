#!/usr/bin/env bash
# Start a throw-away single-node SLURM 22.05 cluster on this machine, for CI and for the
# tests marked `slurm`: munged + mariadb + slurmdbd (accounting: sacct) + slurmctld +
# slurmd, every file under one state root. Run as root; installs the Debian packages
# when they are missing (about 20 s), then starts in about 10 s.
#
#   make slurm-up                      # or: bash launch/slurm-up.sh
#   source .slurm-ci/env.sh            # exports SLURM_CONF
#   make slurm-down                    # cancel the jobs, stop the daemons
#
# Settings (environment):
#   SLURM_CI_ROOT        state root (default $PWD/.slurm-ci; keep it short: the munge
#                        socket path under it must stay below 107 characters)
#   SLURM_CI_ACCOUNTING  1 (default): mariadb + slurmdbd, so sacct works. submitit needs
#                        sacct to see cancelled or killed jobs; without it the driver of
#                        a sweep with such a job waits forever.
#   SLURM_CI_CPUS        CPUs the node advertises (default 4; may exceed the real cores)
#   SLURM_CI_GPUS        fake GPUs (default 4): gres on /dev/tty*, so --gpus-per-node is
#                        scheduled and CUDA_VISIBLE_DEVICES set, with no device behind it
#   SLURM_CI_MAX_ARRAY   MaxArraySize (default 3, far below SLURM's 1001, so the tests
#                        can check that sweeps larger than one array are split)
#   SLURM_CI_WAIT_S      readiness timeout per daemon (default 60)
# Full notes: docs/slurm.md.
set -euo pipefail
ROOT=${SLURM_CI_ROOT:-$PWD/.slurm-ci}
ACCOUNTING=${SLURM_CI_ACCOUNTING:-1}
NCPU=${SLURM_CI_CPUS:-4}
NGPU=${SLURM_CI_GPUS:-4}
MAX_ARRAY=${SLURM_CI_MAX_ARRAY:-3}
WAIT=${SLURM_CI_WAIT_S:-60}
NODE=$(hostname -s)

log() { echo "[slurm-up $(date +%T)] $*"; }
die() {
  echo "[slurm-up] FATAL: $*" >&2
  for f in "$ROOT"/log/*.log; do
    [ -s "$f" ] && { echo "--- last lines of $f" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
}
# wait_for <seconds> <what> <command...>: poll every 0.2 s until the command succeeds.
wait_for() {
  local t=$1 what=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge "$end" ] && die "$what not ready after ${t}s"
    sleep 0.2
  done
  log "$what ready (${SECONDS}s since start)"
}
alive() { kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

[ "$(id -u)" = 0 ] || die "run as root (the daemons run as root in this test cluster)"
SOCK=$ROOT/munge/munge.socket.2
[ ${#SOCK} -lt 100 ] || die "SLURM_CI_ROOT=$ROOT is too long for a UNIX socket path; use a shorter one"
[ "$MAX_ARRAY" -ge 2 ] || die "SLURM_CI_MAX_ARRAY=$MAX_ARRAY is not allowed; must be >= 2"

# --- packages ---------------------------------------------------------------------
pkgs="slurm-wlm munge"
[ "$ACCOUNTING" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
need=0
for b in slurmctld slurmd munged mungekey; do command -v $b >/dev/null || need=1; done
if [ "$ACCOUNTING" = 1 ]; then
  for b in slurmdbd mariadbd mariadb-install-db; do command -v $b >/dev/null || need=1; done
fi
if [ $need = 1 ]; then
  log "installing $pkgs"
  # exit 101 keeps the packages' scripts from starting daemons of their own
  [ -e /usr/sbin/policy-rc.d ] || printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq || die "apt-get update failed"
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs \
    >/dev/null || die "apt-get install $pkgs failed"
  log "installed (${SECONDS}s)"
fi

if [ -e "$ROOT/state/slurmctld.pid" ] && alive "$ROOT/state/slurmctld.pid"; then
  echo "[slurm-up] FATAL: a cluster is already running under $ROOT (make slurm-down first)" >&2
  exit 1
fi
ports="6817 6818"
[ "$ACCOUNTING" = 1 ] && ports="$ports 6819 3307"
for port in $ports; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "[slurm-up] FATAL: port $port on 127.0.0.1 is in use (another cluster or database?)" >&2
    exit 1
  fi
done
rm -rf "$ROOT"
mkdir -p "$ROOT"/{etc,munge,state/ctld,state/d,log,mysql}
chmod 755 "$ROOT/munge"

# --- configuration ----------------------------------------------------------------
cat > "$ROOT/etc/slurm.conf" <<CONF
ClusterName=ci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
StateSaveLocation=$ROOT/state/ctld
SlurmdSpoolDir=$ROOT/state/d
SlurmctldPidFile=$ROOT/state/slurmctld.pid
SlurmdPidFile=$ROOT/state/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
# lets CPUs= exceed the real cores, so a 4-point sweep runs at once on 2 cores
SlurmdParameters=config_overrides
ReturnToService=2
GresTypes=gpu
MessageTimeout=10
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=600
KillWait=5
Waittime=0
# without it a job gets all the node's memory and jobs run one at a time
DefMemPerCPU=1000
MaxArraySize=${MAX_ARRAY}
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${NCPU} RealMemory=$((NCPU * 2000)) Gres=gpu:${NGPU} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
CONF
if [ "$ACCOUNTING" = 1 ]; then
  cat >> "$ROOT/etc/slurm.conf" <<CONF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
# the munge socket for slurmdbd connections (AuthInfo does not cover them)
AccountingStoragePass=$SOCK
CONF
else
  echo "AccountingStorageType=accounting_storage/none" >> "$ROOT/etc/slurm.conf"
fi
echo "NodeName=${NODE} Name=gpu File=/dev/tty[0-$((NGPU - 1))]" > "$ROOT/etc/gres.conf"
export SLURM_CONF=$ROOT/etc/slurm.conf
printf 'export SLURM_CONF=%s\n' "$SLURM_CONF" > "$ROOT/env.sh"

# --- daemons ----------------------------------------------------------------------
log "munged"
mungekey -c -k "$ROOT/munge/munge.key" -b 1024 || die "mungekey failed"
munged --force --key-file="$ROOT/munge/munge.key" --socket="$SOCK" \
  --pid-file="$ROOT/munge/munged.pid" --log-file="$ROOT/log/munged.log" \
  --seed-file="$ROOT/munge/munged.seed" || die "munged failed to start"
wait_for 10 munge bash -c "munge -n -S '$SOCK' | unmunge -S '$SOCK'"

if [ "$ACCOUNTING" = 1 ]; then
  log "mariadb"
  mariadb-install-db --no-defaults --datadir="$ROOT/mysql/data" --user=root \
    --auth-root-authentication-method=normal --skip-test-db \
    > "$ROOT/log/mysql-install.log" 2>&1 || die "mariadb-install-db failed"
  setsid mariadbd --no-defaults --datadir="$ROOT/mysql/data" --user=root \
    --bind-address=127.0.0.1 --port=3307 --socket="$ROOT/mysql/mysqld.sock" \
    --pid-file="$ROOT/mysql/mysqld.pid" --log-error="$ROOT/log/mysqld.log" \
    --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 --skip-log-bin \
    </dev/null >/dev/null 2>&1 &
  wait_for "$WAIT" mariadb mariadb-admin --no-defaults -S "$ROOT/mysql/mysqld.sock" -uroot ping
  mariadb --no-defaults -S "$ROOT/mysql/mysqld.sock" -uroot -e "
    CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmci';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || die "mariadb user setup failed"
  cat > "$ROOT/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurmci
StorageLoc=slurm_acct_db
PidFile=$ROOT/state/slurmdbd.pid
LogFile=$ROOT/log/slurmdbd.log
DebugLevel=info
CONF
  chmod 600 "$ROOT/etc/slurmdbd.conf"
  log "slurmdbd"  # no -f: it reads slurmdbd.conf next to $SLURM_CONF
  slurmdbd || die "slurmdbd failed to start"
  wait_for "$WAIT" slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/6819"
fi

log "slurmctld"
slurmctld || die "slurmctld failed to start"
wait_for "$WAIT" slurmctld bash -c "scontrol ping | grep -q 'is UP'"
log "slurmd"
slurmd || die "slurmd failed to start"
wait_for "$WAIT" "node $NODE idle" bash -c "sinfo -h -n $NODE -o %T | grep -qx idle"
if [ "$ACCOUNTING" = 1 ]; then
  wait_for "$WAIT" "accounting (sacctmgr)" \
    bash -c "sacctmgr -n -P show cluster format=cluster | grep -qx ci"
fi

log "smoke job"
jid=$(sbatch --parsable -o /dev/null --wrap true) || die "sbatch failed"
wait_for "$WAIT" "smoke job $jid" bash -c "scontrol show job $jid | grep -q JobState=COMPLETED"
if [ "$ACCOUNTING" = 1 ]; then
  wait_for 30 "sacct sees job $jid" bash -c "sacct -n -X -j $jid -o State | grep -q COMPLETED"
fi
log "cluster up in ${SECONDS}s (MaxArraySize=$MAX_ARRAY); now: source $ROOT/env.sh"
