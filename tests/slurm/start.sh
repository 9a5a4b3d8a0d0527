#!/usr/bin/env bash
# Start a real single-node Slurm cluster on this host, for tests and CI.
#
#   sudo tests/slurm/start.sh      # idempotent; prints one line, exit 0 when usable
#   sudo tests/slurm/stop.sh       # stops what this script started
#
# What it does (Debian/Ubuntu, root, no systemd needed):
#   1. apt-get installs slurmctld slurmd slurm-client munge if missing;
#   2. writes /etc/slurm/slurm.conf (one node = `hostname -s`, partition `debug`);
#   3. creates /etc/munge/munge.key if missing and starts munged;
#   4. starts slurmctld and slurmd directly (no systemd);
#   5. waits until the node is idle and `srun hostname` works.
#
# Environment knobs:
#   VITLAB_SLURM_DIR      state/spool/log/pid dir   (default /tmp/vitlab-slurm)
#   VITLAB_SLURM_TIMEOUT  overall limit in seconds  (default 180)
#   SLURM_CONF            where to write slurm.conf (default: slurm's own default,
#                         /etc/slurm/slurm.conf on Debian 11+; tests then need no env)
#
# Logs: $VITLAB_SLURM_DIR/log/{install,start,slurmctld,slurmd}.log and
#       /var/log/munge/munged.log
set -uo pipefail

DIR=${VITLAB_SLURM_DIR:-/tmp/vitlab-slurm}
TIMEOUT=${VITLAB_SLURM_TIMEOUT:-180}
CLUSTER=vitlab-test
PARTITION=debug
NODE=$(hostname -s)
LOG=$DIR/log
RUN=$DIR/run
START_LOG=$LOG/start.log
T0=$(date +%s)
DEADLINE=$((T0 + TIMEOUT))
MARKER="# Managed by vitlab tests/slurm/start.sh"

if [ "$(id -u)" != 0 ]; then
    echo "slurm: FAILED: must run as root (installs packages, starts munged/slurmd as root)"; exit 1
fi
mkdir -p "$LOG" "$RUN" "$DIR/state" "$DIR/spool/slurmd" || {
    echo "slurm: FAILED: cannot create $DIR (set VITLAB_SLURM_DIR)"; exit 1; }
chmod 755 "$DIR" "$LOG" "$RUN"

say() { printf '%s %s\n' "$(date +%T)" "$*" >>"$START_LOG"; }
fail() {  # fail "what failed" [log]
    local where=${2:-$START_LOG}
    say "FAILED: $1"
    echo "slurm: FAILED: $1 (log: $where)"
    exit 1
}
left() { local l=$((DEADLINE - $(date +%s))); ((l > 0)) && echo "$l" || echo 0; }
timed_out() { (($(date +%s) >= DEADLINE)); }
pid_alive() {  # pid_alive PIDFILE COMM
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# One start.sh at a time (CI jobs sharing a host, or a user running it twice).
exec 9>"$RUN/start.lock" || { echo "slurm: FAILED: cannot open $RUN/start.lock"; exit 1; }
flock -w "$TIMEOUT" 9 || fail "another start.sh holds $RUN/start.lock"

say "---- start.sh (timeout ${TIMEOUT}s, node $NODE, dir $DIR)"

# ---------------------------------------------------------------- 1. packages
missing=()
for p in slurmctld slurmd slurm-client munge; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    # Keep dpkg's maintainer scripts from starting services themselves.
    ours_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
        ours_policy=1
    fi
    apt_install() {
        timeout "$(left)" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends -o DPkg::Lock::Timeout=60 \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "${missing[@]}" >>"$LOG/install.log" 2>&1
    }
    ok=""
    apt_install && ok=1
    if [ -z "$ok" ] && ! timed_out; then  # stale package lists: refresh once, retry
        timeout "$(left)" apt-get update -q >>"$LOG/install.log" 2>&1
        apt_install && ok=1
    fi
    [ -n "$ours_policy" ] && rm -f /usr/sbin/policy-rc.d
    [ -n "$ok" ] || fail "apt-get install ${missing[*]}" "$LOG/install.log"
    say "installed"
fi
for b in slurmctld slurmd munged sinfo srun scontrol; do
    command -v "$b" >/dev/null || fail "$b not on PATH after install" "$LOG/install.log"
done

# A slurmctld/slurmd that is not ours (other pid files, another VITLAB_SLURM_DIR, a
# system service): refuse before touching slurm.conf under it.
for d in slurmctld slurmd; do
    if ! pid_alive "$RUN/$d.pid" "$d" && pgrep -x "$d" >/dev/null; then
        fail "a $d not started by this script (pid files in $RUN) is running: pid $(pgrep -x "$d" | tr '\n' ' ')- stop it first"
    fi
done

# ----------------------------------------------------------- 2. slurm.conf
if [ -z "${SLURM_CONF:-}" ]; then
    # Debian >= 11 builds slurm with sysconfdir /etc/slurm; older ones used /etc/slurm-llnl.
    SLURM_CONF=/etc/slurm/slurm.conf
    if [ ! -d /etc/slurm ] && [ -d /etc/slurm-llnl ]; then SLURM_CONF=/etc/slurm-llnl/slurm.conf; fi
fi
export SLURM_CONF
mkdir -p "$(dirname "$SLURM_CONF")"
if [ -s "$SLURM_CONF" ] && ! grep -qF "$MARKER" "$SLURM_CONF"; then
    fail "$SLURM_CONF exists and was not written by this script; move it away first"
fi

# Hardware: `slurmd -C` prints what slurmd will detect (sockets/cores/threads);
# configuring exactly that avoids the node being drained for a mismatch.
hw=$(slurmd -C 2>>"$START_LOG" | head -1)
get() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
cpus=$(get CPUs); sockets=$(get SocketsPerBoard); cores=$(get CoresPerSocket); threads=$(get ThreadsPerCore)
[ -n "$cpus" ] || cpus=$(nproc)
mem_mb=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
real_mem=$((mem_mb * 90 / 100))          # a bit below what slurmd will measure
def_mem=$((real_mem / cpus))             # default memory per CPU for jobs without --mem
topo="CPUs=$cpus"
[ -n "$sockets" ] && [ -n "$cores" ] && [ -n "$threads" ] &&
    topo="CPUs=$cpus Boards=1 SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads"

new_conf=$(mktemp "$RUN/slurm.conf.XXXXXX")
cat >"$new_conf" <<EOF
$MARKER -- regenerated on every start; edit the script, not this file.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again
# (default 120 s); 30 s keeps requeue tests short.
AuthInfo=cred_expire=30
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
# A container/VM without systemd: no cgroups anywhere.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Scheduling passes every few seconds (defaults 60/30 s): requeued jobs restart sooner.
SchedulerParameters=sched_interval=10,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
ReturnToService=2
# Requeue: jobs are requeueable by default, so 'scontrol requeue' and preemption work.
JobRequeue=1
# Preemption: a job in partition 'urgent' requeues jobs in 'debug'. The user signal of
# 'sbatch --signal=SIG@T' (submitit: USR2@90) is sent at preemption time, then
# GraceTime seconds later SIGTERM/SIGKILL.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
KillWait=30
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=120
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 $topo RealMemory=$real_mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=60
PartitionName=urgent Nodes=$NODE Default=NO MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
conf_changed=""
if ! cmp -s "$new_conf" "$SLURM_CONF"; then
    mv -f "$new_conf" "$SLURM_CONF" && chmod 644 "$SLURM_CONF" || fail "cannot write $SLURM_CONF"
    conf_changed=1
    say "wrote $SLURM_CONF"
else
    rm -f "$new_conf"
fi

# ------------------------------------------------------------------ 3. munge
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
daemon() {  # daemon LOGFILE CMD... : start a self-forking daemon detached from us:
    # new session, stdio to its log, and every other inherited fd closed (our lock fd,
    # CI runners' pipes), so that nothing waits on the daemon after start.sh exits.
    local logf=$1; shift
    (
        for fd in /proc/$BASHPID/fd/*; do
            fd=${fd##*/}
            ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
        done
        exec setsid "$@" </dev/null >>"$logf" 2>&1
    )
}

mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
chown munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 700 /etc/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force >>"$START_LOG" 2>&1
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi || fail "cannot create /etc/munge/munge.key"
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key

if ! munge_ok; then
    if pgrep -x munged >/dev/null; then
        fail "a munged is running but 'munge -n | unmunge' fails" /var/log/munge/munged.log
    fi
    say "starting munged"
    rm -f /run/munge/munged.pid
    daemon "$START_LOG" runuser -u munge -- /usr/sbin/munged ||
        fail "munged did not start" /var/log/munge/munged.log
    cp /run/munge/munged.pid "$RUN/munged.pid" 2>/dev/null  # stop.sh only stops what we started
    for _ in $(seq 50); do munge_ok && break; sleep 0.2; done
    munge_ok || fail "munge -n | unmunge fails after starting munged" /var/log/munge/munged.log
fi

# ------------------------------------------------------- 4. slurm daemons
stop_ours() {  # stop_ours NAME : SIGTERM a daemon we started (pidfile), wait
    local pf=$RUN/$1.pid pid
    pid_alive "$pf" "$1" || return 0
    pid=$(cat "$pf")
    kill "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null
}
if [ -n "$conf_changed" ] && { pid_alive "$RUN/slurmctld.pid" slurmctld || pid_alive "$RUN/slurmd.pid" slurmd; }; then
    say "slurm.conf changed: restarting daemons"
    stop_ours slurmd
    stop_ours slurmctld
fi

for d in slurmctld slurmd; do
    if pid_alive "$RUN/$d.pid" "$d"; then
        say "$d already running (pid $(cat "$RUN/$d.pid"))"
        continue
    fi
    say "starting $d"
    args=(-f "$SLURM_CONF")
    [ "$d" = slurmd ] && args+=(-N "$NODE")
    daemon "$LOG/$d.log" "$d" "${args[@]}" || fail "$d exited at start" "$LOG/$d.log"
    for _ in $(seq 50); do pid_alive "$RUN/$d.pid" "$d" && break; sleep 0.2; done
    pid_alive "$RUN/$d.pid" "$d" || fail "$d did not stay up" "$LOG/$d.log"
    if [ "$d" = slurmctld ]; then
        until scontrol ping 2>/dev/null | grep -q 'is UP'; do
            timed_out && fail "slurmctld does not answer 'scontrol ping'" "$LOG/slurmctld.log"
            pid_alive "$RUN/slurmctld.pid" slurmctld || fail "slurmctld died" "$LOG/slurmctld.log"
            sleep 0.5
        done
    fi
done

# ------------------------------------------------------------- 5. readiness
resumed=""
while :; do
    state=$(sinfo -h -N -n "$NODE" -p "$PARTITION" -o %T 2>/dev/null | head -1)
    case "$state" in
        idle | mixed | allocated | completing) break ;;
        *drain* | down) # slurmd is up and answering, but an old reason sticks: clear it once
            if [ -z "$resumed" ] && [ "${state%\*}" = "$state" ]; then
                say "node state '$state' ($(sinfo -h -N -n "$NODE" -o %E | head -1)): resuming"
                scontrol update NodeName="$NODE" State=RESUME >>"$START_LOG" 2>&1
                resumed=1
            fi ;;
    esac
    pid_alive "$RUN/slurmd.pid" slurmd || fail "slurmd died" "$LOG/slurmd.log"
    timed_out && fail "node $NODE not idle (state '$state', reason '$(sinfo -h -N -n "$NODE" -o %E | head -1)')" "$LOG/slurmd.log"
    sleep 0.5
done
say "node $NODE is $state"

if [ "$state" = idle ]; then
    rem=$(left); ((rem > 5)) || fail "no time left for the srun smoke test"
    out=$(timeout "$rem" srun -N1 -n1 -p "$PARTITION" -t 1 --mem=64 hostname 2>>"$START_LOG")
    rc=$?
    [ $rc = 0 ] && [ -n "$out" ] || fail "srun -N1 hostname (rc $rc)" "$LOG/slurmd.log"
    say "srun hostname -> $out"
else
    say "node busy ($state): skipping the srun smoke test"
fi

say "ready in $(($(date +%s) - T0))s"
echo "slurm: ready (partition $PARTITION, node $NODE)"
