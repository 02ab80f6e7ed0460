#!/usr/bin/env bash
# start_slurm.sh - a throw-away single-node Slurm cluster (Debian 12 / Slurm 22.05, no systemd needed)
# for dasslab's SLURM test (tests/test_slurm.py) and for trying `hydra/launcher=slurm` on one machine.
# Installs (if needed) munge + slurm-wlm [+ slurmdbd + mariadb-server], writes /etc/slurm/slurm.conf,
# starts munged, [mariadbd, slurmdbd,] slurmctld, slurmd; waits until the node is idle.
# Every daemon started here gets a pid file in $SLURM_LOCAL_DIR/run; stop_slurm.sh kills exactly those.
# Exit status: 0 = cluster up (or a Slurm cluster that this script did not start already answers),
#              2 = Slurm cannot be had here (not root, no apt-get, install failed): callers skip,
#              1 = installed but failed to start (logs are printed).
# Env knobs:
#   SLURM_LOCAL_DIR   state/spool/log/pid dir                     (default /tmp/dasslab-slurm)
#   SLURM_ACCOUNTING  1 = slurmdbd+MariaDB so `sacct` works        (default 1; 0 = no accounting)
#   SLURM_PARTITION   partition name                              (default debug)
#   SLURM_NODE_NAME   node name (default `hostname -s`, or localhost if that name does not resolve)
#   SLURM_MIN_CPUS    advertise at least this many CPUs            (default 2)
#   SLURM_WAIT_S      seconds to wait for each step                (default 60)
set -euo pipefail

D=${SLURM_LOCAL_DIR:-/tmp/dasslab-slurm}
ACCT=${SLURM_ACCOUNTING:-1}
PART=${SLURM_PARTITION:-debug}
MIN_CPUS=${SLURM_MIN_CPUS:-2}
WAIT_S=${SLURM_WAIT_S:-60}
CONF_DIR=/etc/slurm            # compiled-in default of Debian's Slurm: clients need no SLURM_CONF
CLUSTER=localcluster

log() { echo "[start_slurm] $*" >&2; }
die() {
  log "ERROR: $*"
  for f in "$D"/log/*.log; do [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 25 "$f" >&2; }; done
  exit 1
}
unavailable() { log "UNAVAILABLE: $*"; exit 2; }
alive() { # alive NAME: our pid file exists and names a live process called NAME
  local f="$D/run/$1.pid" p
  [ -s "$f" ] || return 1
  p=$(cat "$f")
  [ -d "/proc/$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$1" ]
}
wait_for() { # wait_for DESCRIPTION CMD...: retry CMD every 0.25 s for WAIT_S seconds
  local what=$1; shift
  local end=$((SECONDS + WAIT_S))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "timed out after ${WAIT_S}s waiting for: $what"
    sleep 0.25
  done
}
[ "$(id -u)" = 0 ] || unavailable "must run as root to install and start Slurm"

DAEMONS=(munged slurmctld slurmd)
[ "$ACCT" = 1 ] && DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

# ---- already running? ------------------------------------------------------------------------
n_alive=0
for d in slurmctld slurmd slurmdbd mariadbd; do alive "$d" && n_alive=$((n_alive + 1)); done
if [ "$n_alive" -gt 0 ]; then
  if alive slurmctld && alive slurmd && [ "$(sinfo -h -o %t 2>/dev/null | head -1)" = idle ]; then
    log "cluster already running (pid files in $D/run); nothing to do"; exit 0
  fi
  die "some daemons from a previous start are still running; run stop_slurm.sh first"
fi
if command -v scontrol >/dev/null && timeout 5 scontrol ping >/dev/null 2>&1; then
  log "a Slurm cluster that this script did not start is running; using it (stop_slurm.sh leaves it alone)"
  exit 0
fi

# ---- install ---------------------------------------------------------------------------------
pkgs=()
for b in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
  command -v "${b%%:*}" >/dev/null || pkgs+=("${b#*:}")
done
if [ "$ACCT" = 1 ]; then
  command -v slurmdbd >/dev/null || pkgs+=(slurmdbd)
  [ -x /usr/sbin/mariadbd ] || pkgs+=(mariadb-server)
fi
if [ ${#pkgs[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || unavailable "Slurm is not installed and there is no apt-get to install ${pkgs[*]}"
  log "installing: ${pkgs[*]}"
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then   # keep postinst scripts from starting daemons themselves
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2 ||
    { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2; } ||
    { [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d; unavailable "apt-get install ${pkgs[*]} failed"; }
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# ---- fresh dirs ------------------------------------------------------------------------------
rm -rf "$D/state" "$D/spool" "$D/log" "$D/mysql" "$D/run"
mkdir -p "$D/state" "$D/spool" "$D/log" "$D/run"

# ---- config ----------------------------------------------------------------------------------
NODE=${SLURM_NODE_NAME:-$(hostname -s)}
getent hosts "$NODE" >/dev/null || { log "'$NODE' does not resolve; using node name localhost"; NODE=localhost; }
CPUS=$(nproc); [ "$CPUS" -ge "$MIN_CPUS" ] || CPUS=$MIN_CPUS
# state is wiped on every start, so job ids would restart at 1 and collide with old submitit
# folders (.../%j) holding stale *_result.pkl files: start ids at a time-based value instead.
FIRST_JOB_ID=$(( $(date +%s) % 50000000 + 1000 ))
MEM_MB=$(awk '/^MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p "$CONF_DIR"
if [ "$ACCT" = 1 ]; then
  ACCT_CONF="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT_CONF="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
cat > "$CONF_DIR/slurm.conf" <<EOF
# written by start_slurm.sh
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
$ACCT_CONF
JobCompType=jobcomp/none
SwitchType=switch/none
InactiveLimit=0
KillWait=5
MinJobAge=300
FirstJobId=$FIRST_JOB_ID
SlurmctldTimeout=30
SlurmdTimeout=60
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PART Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
if [ "$ACCT" = 1 ]; then
  umask_old=$(umask); umask 077
  cat > "$CONF_DIR/slurmdbd.conf" <<EOF
# written by start_slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$D/log/slurmdbd.log
PidFile=$D/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOF
  umask "$umask_old"; chmod 600 "$CONF_DIR/slurmdbd.conf"
fi

# ---- munge -----------------------------------------------------------------------------------
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "a munged is already running; reusing it (stop_slurm.sh will leave it alone)"
else
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged || die "munged failed to start"
  wait_for "munged pid file" test -s /run/munge/munged.pid
  cp /run/munge/munged.pid "$D/run/munged.pid"
  wait_for "munge round trip" bash -c 'munge -n | unmunge'
fi

# ---- accounting: private MariaDB on 127.0.0.1:3307 + slurmdbd ---------------------------------
if [ "$ACCT" = 1 ]; then
  SOCK=$D/run/mysqld.sock
  mariadb-install-db --no-defaults --user=root --datadir="$D/mysql" \
    --auth-root-authentication-method=socket > "$D/log/mariadb-install.log" 2>&1 ||
    die "mariadb-install-db failed (see $D/log/mariadb-install.log)"
  /usr/sbin/mariadbd --no-defaults --user=root --datadir="$D/mysql" --socket="$SOCK" \
    --pid-file="$D/run/mariadbd.pid" --bind-address=127.0.0.1 --port=3307 --skip-name-resolve \
    --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
    --log-error="$D/log/mariadbd.log" </dev/null >/dev/null 2>&1 &
  wait_for "mariadbd" mariadb-admin --no-defaults --socket="$SOCK" ping
  wait_for "mariadbd pid file" test -s "$D/run/mariadbd.pid"
  mariadb --no-defaults --socket="$SOCK" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;" || die "creating DB user failed"
  slurmdbd || die "slurmdbd failed to start"
  wait_for "slurmdbd" sacctmgr -n -P list cluster
  wait_for "slurmdbd pid file" test -s "$D/run/slurmdbd.pid"
fi

# ---- slurmctld + slurmd ----------------------------------------------------------------------
slurmctld || die "slurmctld failed to start"
wait_for "slurmctld" scontrol ping
slurmd -N "$NODE" || die "slurmd failed to start"
end=$((SECONDS + WAIT_S))
while :; do
  st=$(sinfo -h -n "$NODE" -o %t 2>/dev/null | head -1)
  [ "$st" = idle ] && break
  case "$st" in down*|drain*|drng*|fail*)
    scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;; esac
  [ $SECONDS -lt $end ] || die "node $NODE not idle after ${WAIT_S}s (state '$st')"
  sleep 0.25
done
if [ "$ACCT" = 1 ]; then
  wait_for "cluster registered in slurmdbd" bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER"
fi
for d in "${DAEMONS[@]}"; do [ "$d" = munged ] && [ ! -s "$D/run/munged.pid" ] && continue
  alive "$d" || die "$d is not running"; done
log "cluster up: node $NODE idle, partition $PART, CPUs=$CPUS, accounting=$ACCT; pids in $D/run"
sinfo >&2
