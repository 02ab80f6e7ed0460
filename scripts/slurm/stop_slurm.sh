#!/usr/bin/env bash
# stop_slurm.sh - stop exactly the daemons that start_slurm.sh started (pid files in $SLURM_LOCAL_DIR/run).
# A cluster it did not start (no pid files) is left alone.
# Cancels the jobs of this private cluster first so no slurmstepd/job processes outlive slurmd.
set -uo pipefail
D=${SLURM_LOCAL_DIR:-/tmp/dasslab-slurm}
log() { echo "[stop_slurm] $*" >&2; }

pid_of() { # pid_of NAME: print pid if our pid file names a live process called NAME
  local f="$D/run/$1.pid" p
  [ -s "$f" ] || return 1
  p=$(cat "$f")
  [ -d "/proc/$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$1" ] && echo "$p"
}

stop_group() { # stop_group NAME...: SIGTERM all, wait up to 20 s, SIGKILL leftovers
  local name p i left pids=() names=()
  for name in "$@"; do
    if p=$(pid_of "$name"); then kill -TERM "$p" 2>/dev/null; pids+=("$p"); names+=("$name($p)"); fi
    rm -f "$D/run/$name.pid"
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  for i in $(seq 1 80); do
    left=0; for p in "${pids[@]}"; do [ -d "/proc/$p" ] && left=1; done
    [ $left = 0 ] && break; sleep 0.25
  done
  for p in "${pids[@]}"; do
    [ -d "/proc/$p" ] && { log "pid $p ignored SIGTERM; sending SIGKILL"; kill -KILL "$p" 2>/dev/null; }
  done
  log "stopped ${names[*]}"
}

if pid_of slurmctld >/dev/null; then
  jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    for i in $(seq 1 60); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.25; done
  fi
fi
stop_group slurmd slurmctld          # slurmctld flushes accounting to slurmdbd on exit
stop_group slurmdbd mariadbd munged
exit 0
