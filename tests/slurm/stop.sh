#!/usr/bin/env bash
# Stop the single-node Slurm cluster started by tests/slurm/start.sh.
#
#   tests/slurm/stop.sh           # stop slurmd, slurmctld, and munged if start.sh started it
#   tests/slurm/stop.sh --purge   # also cancel all jobs first and delete $VITLAB_SLURM_DIR
#                                 # (job state, spool, logs); packages and conf are kept
#
# Only processes named in start.sh's pid files are stopped.
set -uo pipefail

DIR=${VITLAB_SLURM_DIR:-/tmp/vitlab-slurm}
RUN=$DIR/run
purge=""
[ "${1:-}" = --purge ] && purge=1

pid_alive() {  # pid_alive PIDFILE COMM
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
stop_one() {  # stop_one PIDFILE COMM : SIGTERM, wait up to 20 s, then SIGKILL
    local pid
    pid_alive "$1" "$2" || { rm -f "$1"; return 1; }
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    rm -f "$1"
    return 0
}

if [ -n "$purge" ] && pid_alive "$RUN/slurmctld.pid" slurmctld; then
    # Cancel every job (a throwaway test cluster) and let slurmd clean them up.
    squeue -h -o %i | xargs -r scancel --quiet 2>/dev/null
    for _ in $(seq 60); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
fi

stopped=()
stop_one "$RUN/slurmd.pid" slurmd && stopped+=(slurmd)
stop_one "$RUN/slurmctld.pid" slurmctld && stopped+=(slurmctld)
stop_one "$RUN/munged.pid" munged && stopped+=(munged)

if [ -n "$purge" ]; then
    case "$DIR" in /tmp/vitlab-slurm*) rm -rf "$DIR" ;; *) rm -rf "$DIR/state" "$DIR/spool" "$DIR/run" ;; esac
fi

if ((${#stopped[@]})); then
    echo "slurm: stopped ${stopped[*]}${purge:+ (state purged)}"
else
    echo "slurm: nothing running${purge:+ (state purged)}"
fi
