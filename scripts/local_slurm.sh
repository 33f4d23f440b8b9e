#!/usr/bin/env bash
# A one-node Slurm on this machine, for the tests and for trying the cluster path locally.
#
#   scripts/local_slurm.sh start    # install slurm-wlm + munge if missing, write the config, start
#                                   # munged, slurmctld and slurmd; the LAST line printed is the partition
#   scripts/local_slurm.sh status   # which of the daemons run (exit 0: all three, 3: not)
#   scripts/local_slurm.sh stop     # cancel the cluster's jobs, stop the daemons this script started
#                                   # (and only those: their pids are in $VGGT_SLURM_DIR/run)
#
# Needs root (it installs Debian packages and starts slurmd, which runs jobs as their user).
# Everything lives in $VGGT_SLURM_DIR (default /tmp/vggt-slurm): slurm.conf, the munge key and
# socket, state and spool directories, pid files and logs. No systemd needed: the daemons are
# started directly with explicit paths. No accounting (accounting_storage/none), so `sacct`
# does not work here; vggt_bench then reads job states from squeue.
# Client commands (sbatch, squeue, ...) find the config through /etc/slurm/slurm.conf, which
# `start` links to ours when that path is free (else: export SLURM_CONF=$VGGT_SLURM_DIR/slurm.conf).
set -euo pipefail

DIR=${VGGT_SLURM_DIR:-/tmp/vggt-slurm}
PARTITION=${VGGT_SLURM_PARTITION:-debug}
CONF=$DIR/slurm.conf
SYSTEM_CONF=/etc/slurm/slurm.conf
DAEMONS=(munged slurmctld slurmd)

die() { # one line on stderr, exit code $2 (default 1)
    echo "local_slurm: error: $1" >&2
    exit "${2:-1}"
}

pid_of() { # the pid of daemon $1 if it runs, from our pid file; nothing otherwise
    local file=$DIR/run/$1.pid pid
    [ -s "$file" ] || return 0
    pid=$(tr -dc 0-9 <"$file")
    [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && echo "$pid"
    return 0
}

all_running() {
    local d
    for d in "${DAEMONS[@]}"; do [ -n "$(pid_of "$d")" ] || return 1; done
}

install_packages() {
    local missing=() cmd
    for cmd in munged mungekey slurmctld slurmd sbatch squeue scontrol sinfo; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null ||
        die "${missing[*]} not found and apt-get is not available; install Slurm (slurmctld, slurmd, client) and munge yourself"
    echo "local_slurm: installing slurm-wlm and munge (apt-get; log: $DIR/apt.log)"
    # Keep the packages' init scripts from starting system daemons with Debian's default config.
    local policy=/usr/sbin/policy-rc.d added_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added_policy=1
    fi
    local ok=""
    for attempt in 1 2; do
        if [ "$attempt" = 2 ]; then apt-get update -q >>"$DIR/apt.log" 2>&1 || true; fi
        if DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge \
            >>"$DIR/apt.log" 2>&1; then
            ok=1
            break
        fi
    done
    [ -n "$added_policy" ] && rm -f "$policy"
    [ -n "$ok" ] || die "apt-get install slurm-wlm munge failed; see $DIR/apt.log"
}

write_config() {
    local node_line node cpus_line
    # slurmd -C reports this node as Slurm sees it (CPUs, sockets, cores, threads, RealMemory):
    # a node configured with more than it has would be drained.
    node_line=$(slurmd -C | head -n 1)
    node=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$node_line")
    [ -n "$node" ] || die "could not read this node's resources from 'slurmd -C' ($node_line)"
    cpus_line=${node_line#NodeName=$node }
    cat >"$CONF" <<EOF
# Written by scripts/local_slurm.sh: a one-node Slurm for tests; no accounting.
ClusterName=vggt-local
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (containers without systemd): track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Fast turnaround for tests: jobs past their limit are signalled, then killed 5 s later;
# finished jobs stay visible to squeue/scontrol for 10 minutes (there is no accounting database).
KillWait=5
OverTimeLimit=0
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$node NodeAddr=127.0.0.1 $cpus_line State=UNKNOWN
# Up to two jobs per core: a grid submitted at once runs concurrently even on 2 cores (timings of
# concurrent points share the CPU: this cluster is for trying the path, not for measuring).
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=60 OverSubscribe=FORCE:2 State=UP
EOF
}

port_taken() { # something listens on 127.0.0.1:$1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start_daemons() {
    local pair port daemon
    for pair in 6817:slurmctld 6818:slurmd; do # Slurm's default ports
        port=${pair%%:*} daemon=${pair#*:}
        if [ -z "$(pid_of "$daemon")" ] && port_taken "$port"; then
            die "port $port ($daemon) is in use (another Slurm on this machine?); stop it, then run $0 start again"
        fi
    done
    if [ -z "$(pid_of munged)" ]; then
        [ -s "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key" ||
            die "could not create the munge key in $DIR/munge"
        chmod 400 "$DIR/munge/munge.key"
        munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
            --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
            2>>"$DIR/log/munged.log" || die "munged did not start; see $DIR/log/munged.log"
    fi
    if [ -z "$(pid_of slurmctld)" ]; then
        # -c: start with no jobs from an earlier run; -i: ignore state files it cannot read
        slurmctld -c -i -f "$CONF" 2>>"$DIR/log/slurmctld.log" ||
            die "slurmctld did not start; see $DIR/log/slurmctld.log"
    fi
    if [ -z "$(pid_of slurmd)" ]; then
        slurmd -f "$CONF" 2>>"$DIR/log/slurmd.log" || die "slurmd did not start; see $DIR/log/slurmd.log"
    fi
}

wait_until_idle() {
    local state="" i
    for i in $(seq 1 60); do
        for d in "${DAEMONS[@]}"; do
            [ -n "$(pid_of "$d")" ] || [ "$i" -lt 5 ] || die "$d exited; see $DIR/log/$d.log"
        done
        state=$(SLURM_CONF=$CONF sinfo -h -p "$PARTITION" -o %T 2>/dev/null | head -n 1 || true)
        case "$state" in
            idle | mixed | allocated | completing) all_running && return 0 ;;
            down* | drain* | fail*)
                SLURM_CONF=$CONF scontrol update NodeName="$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' "$CONF")" \
                    State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    die "the node did not become idle within 30 s (state: ${state:-none}); see $DIR/log/slurmctld.log and slurmd.log"
}

link_system_conf() {
    if [ ! -e "$SYSTEM_CONF" ] && [ ! -L "$SYSTEM_CONF" ]; then
        mkdir -p "$(dirname "$SYSTEM_CONF")"
        ln -s "$CONF" "$SYSTEM_CONF"
    elif [ "$(readlink "$SYSTEM_CONF" || true)" != "$CONF" ]; then
        echo "local_slurm: $SYSTEM_CONF is not ours; use: export SLURM_CONF=$CONF"
    fi
}

start() {
    if all_running; then
        echo "$PARTITION"
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "start needs root (it installs packages and starts slurmd); run: sudo $0 start" 2
    mkdir -p "$DIR"/{munge,state,spool,run,log}
    install_packages
    [ -s "$CONF" ] && [ -n "$(pid_of slurmctld)" ] || write_config
    start_daemons
    wait_until_idle
    link_system_conf
    echo "local_slurm: one node ($(sed -n 's/^NodeName=[^ ]* NodeAddr=[^ ]* \(CPUs=[0-9]*\).*\(RealMemory=[0-9]*\).*/\1 \2 MB/p' "$CONF")), config $CONF"
    echo "$PARTITION"
}

stop() {
    local d pid stopped=()
    if [ -n "$(pid_of slurmctld)" ]; then
        # End this cluster's jobs first: their processes would outlive slurmd.
        SLURM_CONF=$CONF scancel --partition="$PARTITION" >/dev/null 2>&1 || true
        for _ in $(seq 1 40); do
            [ -z "$(SLURM_CONF=$CONF squeue -h -t pending,running,completing 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    for d in slurmd slurmctld munged; do # reverse order of start
        pid=$(pid_of "$d")
        [ -n "$pid" ] || continue
        kill "$pid"
        for _ in $(seq 1 50); do
            [ -d "/proc/$pid" ] || break
            sleep 0.2
        done
        [ -d "/proc/$pid" ] && die "$d (pid $pid) did not stop within 10 s"
        rm -f "$DIR/run/$d.pid"
        stopped+=("$d")
    done
    if [ -L "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" = "$CONF" ]; then rm -f "$SYSTEM_CONF"; fi
    echo "local_slurm: stopped ${stopped[*]:-nothing (no daemon of ours was running)}"
}

status() {
    local d pid rc=0
    for d in "${DAEMONS[@]}"; do
        pid=$(pid_of "$d")
        if [ -n "$pid" ]; then echo "$d: running (pid $pid)"; else echo "$d: stopped"; rc=3; fi
    done
    if [ "$rc" = 0 ]; then SLURM_CONF=$CONF sinfo -p "$PARTITION" || true; fi
    return "$rc"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" 2 ;;
esac
