#!/usr/bin/env bash
# A one-node Slurm cluster on localhost for ngt's tests and CI (root, no systemd needed).
#
#   scripts/local_slurm.sh start|stop|status|clean      (idempotent; default: start)
#   source "${NGT_SLURM_BASE:-/tmp/ngt-slurm}/env.sh"    # exports SLURM_CONF for sbatch/submitit
#
# Slurm, munge and (by default) MariaDB come from Debian's packages, installed on first
# start. Everything else (config, state, logs, pid files, munge key, database) lives under
# $BASE; daemons are stopped by their own pid files, never by name. Partitions: `low`
# (default, preemptible: PreemptMode=REQUEUE, the job gets its --signal (submitit: USR2),
# then GraceTime s) and `high` (preempts `low`).
#
# Env: NGT_SLURM_BASE=/tmp/ngt-slurm
#      NGT_SLURM_ACCOUNTING=1  slurmdbd + MariaDB. submitit learns that a job ended without a
#                              result (failed, cancelled, killed) only from `sacct`; without
#                              accounting such a job stays UNKNOWN and its sweep waits forever.
#      NGT_SLURM_PORT=6817     slurmctld; slurmd, slurmdbd and MariaDB use the next three ports
# Exit status: 0 done, 3 (status) not running, 4 (start) the packages cannot be installed.
set -euo pipefail
BASE=${NGT_SLURM_BASE:-/tmp/ngt-slurm}
ACCT=${NGT_SLURM_ACCOUNTING:-1}
PORT=${NGT_SLURM_PORT:-6817}
NODE=$(hostname -s)
export SLURM_CONF=$BASE/etc/slurm.conf
MSOCK=$BASE/run/munge.socket
DBSOCK=$BASE/run/mysqld.sock
PIDS=(munged:run/munged.pid mariadbd:run/mysqld.pid slurmdbd:run/slurmdbd.pid
      slurmctld:run/slurmctld.pid slurmd:run/slurmd.pid)

log() { echo "[local_slurm $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

alive() { # NAME PIDFILE: the daemon we started is running (pid alive and really NAME)
  local p; p=$(cat "$BASE/$2" 2>/dev/null) || return 1
  [[ -n $p && $(cat "/proc/$p/comm" 2>/dev/null) == "$1" ]]
}

wait_for() { # SECONDS CMD...: poll CMD every 0.2 s
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || { log "timed out waiting for: $*"; return 1; }
    sleep 0.2
  done
}

stop_daemons() { # last started first, so none loses the one it reports to while it shuts down
  local i d p
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    d=${PIDS[i]}
    if alive "${d%%:*}" "${d#*:}"; then
      p=$(cat "$BASE/${d#*:}"); log "stopping ${d%%:*} (pid $p)"; kill "$p"
      wait_for 30 test ! -e "/proc/$p" || { log "pid $p still alive: SIGKILL"; kill -9 "$p" || true; }
    fi
    rm -f "$BASE/${d#*:}"
  done
}

install_packages() {
  local want=(munge slurmctld slurmd slurm-client) missing=() p
  ((ACCT)) && want+=(slurmdbd mariadb-server)
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null || { log "cannot install ${missing[*]}: needs root and apt-get"; exit 4; }
  log "installing ${missing[*]} (log: $BASE/log/apt.log)"
  # Keep the packages' maintainer scripts from starting services (we start our own).
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  local apt=(apt-get -o DPkg::Lock::Timeout=300 -y -q)
  { DEBIAN_FRONTEND=noninteractive "${apt[@]}" update &&
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends "${missing[@]}"
  } >"$BASE/log/apt.log" 2>&1 || { tail -20 "$BASE/log/apt.log" >&2; log "apt-get failed"; exit 4; }
}

start_munge() {
  local key=$BASE/etc/munge.key
  if [[ ! -s $key ]]; then
    dd if=/dev/urandom of="$key" bs=1024 count=1 status=none; chmod 400 "$key"
  fi
  alive munged run/munged.pid && return 0
  log "starting munged"
  rm -f "$MSOCK" "$MSOCK.lock"
  munged --key-file="$key" --socket="$MSOCK" --pid-file="$BASE/run/munged.pid" \
    --log-file="$BASE/log/munged.log" --seed-file="$BASE/state/munged.seed"
  wait_for 20 bash -c "munge -S '$MSOCK' -n | unmunge -S '$MSOCK'"
}

start_mariadb() {
  if [[ ! -d $BASE/state/db/mysql ]]; then
    log "initialising MariaDB in $BASE/state/db"
    mariadb-install-db --no-defaults --user=root --datadir="$BASE/state/db" --skip-test-db \
      --auth-root-authentication-method=socket >"$BASE/log/mariadb-install.log" 2>&1
  fi
  if ! alive mariadbd run/mysqld.pid; then
    log "starting mariadbd"
    rm -f "$DBSOCK"
    setsid mariadbd --no-defaults --user=root --datadir="$BASE/state/db" --socket="$DBSOCK" \
      --pid-file="$BASE/run/mysqld.pid" --bind-address=127.0.0.1 --port=$((PORT + 3)) \
      --log-error="$BASE/log/mariadb.log" --innodb-buffer-pool-size=64M \
      --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadb-admin --no-defaults -S "$DBSOCK" -u root ping
    wait_for 10 alive mariadbd run/mysqld.pid
  fi
  mariadb --no-defaults -S "$DBSOCK" -u root -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

write_config() { # prints "changed" if slurm.conf differs from the running one
  # the node as slurmd sees it; RealMemory at 90 % so the node is never drained for low memory
  local hw mem
  hw=$(slurmd -C | head -1 | grep -oE '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' | tr '\n' ' ')
  mem=$(slurmd -C | grep -oE 'RealMemory=[0-9]+' | cut -d= -f2)
  local acct="AccountingStorageType=accounting_storage/none"
  if ((ACCT)); then
    # the slurmdbd connection ignores AuthInfo: its munge socket goes in AccountingStoragePass
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((PORT + 2))
AccountingStoragePass=$MSOCK"
    cat >"$BASE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MSOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
SlurmUser=root
LogFile=$BASE/log/slurmdbd.log
PidFile=$BASE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$BASE/etc/slurmdbd.conf" # slurmdbd refuses a readable one
  fi
  cat >"$SLURM_CONF.new" <<EOF
# generated by ngt scripts/local_slurm.sh; edits are overwritten
ClusterName=ngt
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$MSOCK,cred_expire=10
StateSaveLocation=$BASE/state/ctld
SlurmdSpoolDir=$BASE/state/d
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
$acct
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/linux
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=300
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 ${hw}RealMemory=$((mem * 9 / 10)) State=UNKNOWN
PartitionName=low Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=20
PartitionName=high Nodes=$NODE MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
  if cmp -s "$SLURM_CONF.new" "$SLURM_CONF"; then rm "$SLURM_CONF.new"
  else mv "$SLURM_CONF.new" "$SLURM_CONF"; echo changed; fi
  echo "export SLURM_CONF=$SLURM_CONF" >"$BASE/env.sh"
}

node_ready() { # a node drained by an earlier run of the cluster (e.g. a killed slurmd) comes back
  local state; state=$(sinfo -h -n "$NODE" -o %t)
  [[ $state == drain* || $state == drng ]] && scontrol update NodeName="$NODE" State=RESUME
  [[ $state =~ ^(idle|mix|alloc)$ ]]
}

do_start() {
  mkdir -p "$BASE"/{etc,log,run,state/ctld,state/d}
  install_packages
  start_munge
  local changed; changed=$(write_config)
  if ((ACCT)); then
    start_mariadb
    if ! alive slurmdbd run/slurmdbd.pid; then
      log "starting slurmdbd"; slurmdbd # reads slurmdbd.conf beside $SLURM_CONF
      wait_for 60 sacctmgr -n list cluster
    fi
  fi
  if ! alive slurmctld run/slurmctld.pid; then
    log "starting slurmctld"; slurmctld
    wait_for 60 bash -c 'scontrol ping | grep -q UP'
  elif [[ -n $changed ]]; then
    log "slurm.conf changed: scontrol reconfigure"; scontrol reconfigure
  fi
  if ! alive slurmd run/slurmd.pid; then log "starting slurmd"; slurmd; fi
  wait_for 60 node_ready || { tail -n 20 "$BASE"/log/slurm{ctld,d}.log >&2; die "node not ready"; }
  log "up: $(sinfo -h -o '%P:%t' | tr '\n' ' ')-> source $BASE/env.sh"
}

do_stop() {
  local ids=()
  alive slurmctld run/slurmctld.pid && mapfile -t ids < <(squeue -h -o %A)
  if ((${#ids[@]})); then
    log "cancelling jobs ${ids[*]}"; scancel "${ids[@]}" || true # so that no slurmstepd outlives slurmd
    # shellcheck disable=SC2016 # expanded by the inner bash
    wait_for 30 bash -c '[[ -z $(squeue -h -t R,CG -o %A) ]]' || true
  fi
  stop_daemons
}

do_status() {
  local d rc=0
  for d in "${PIDS[@]}"; do
    [[ $d == mariadbd:* || $d == slurmdbd:* ]] && ((!ACCT)) && continue
    if alive "${d%%:*}" "${d#*:}"; then echo "${d%%:*}: running (pid $(cat "$BASE/${d#*:}"))"
    else echo "${d%%:*}: stopped"; rc=3; fi
  done
  ((rc)) || sinfo
  return $rc
}

# One start/stop at a time (parallel test workers). `flock -o` keeps the lock in flock
# itself, so the daemons started below do not inherit it.
if [[ -z ${NGT_SLURM_LOCKED:-} ]]; then
  mkdir -p "$BASE"; NGT_SLURM_LOCKED=1 exec flock -o "$BASE/.lock" bash "${BASH_SOURCE[0]}" "$@"
fi
case ${1:-start} in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  clean) do_stop; rm -rf "${BASE:?}"/{etc,log,run,state,env.sh,.lock}; rmdir "$BASE" 2>/dev/null || true
         log "removed $BASE" ;;
  *) echo "usage: $0 start|stop|status|clean" >&2; exit 2 ;;
esac
