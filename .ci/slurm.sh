#!/usr/bin/env bash
# Start or stop a one-node Slurm cluster on this host for the `slurm`-marked tests.
#
#   .ci/slurm.sh start   install slurm-wlm + munge (Debian, as root) if missing, write a one-node slurm.conf
#                        (partition `debug`, cgroup-free, no accounting), start munged, slurmctld, slurmd,
#                        record their pids and wait until `sinfo` shows the node idle. Idempotent.
#   .ci/slurm.sh stop    stop the daemons this script started, by the pids it recorded.
#   .ci/slurm.sh status  print whether the cluster is up (exit 0) or not (exit 1).
#
# Environment: CAMPAIGN_SLURM_STATE (default /tmp/campaign-slurm) holds the pid file, logs and spool
# directories; CAMPAIGN_SLURM_CPUS (default: nproc) the CPUs the node advertises.
set -euo pipefail

STATE=${CAMPAIGN_SLURM_STATE:-/tmp/campaign-slurm}
PIDS="$STATE/pids"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
NODE=$(hostname -s)
CPUS=${CAMPAIGN_SLURM_CPUS:-$(nproc)}

log() { echo "slurm.sh: $*" >&2; }

alive() {  # alive PID -> 0 when the process exists
    [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null
}

recorded_pid() {  # recorded_pid NAME -> the pid recorded for NAME, if any
    [[ -f "$PIDS" ]] && awk -v n="$1" '$1 == n {print $2}' "$PIDS" | tail -n 1
}

node_idle() {
    sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null | grep -Eq '^(idle|mix|alloc)'
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return
    fi
    if [[ $(id -u) -ne 0 ]]; then
        log "slurm-wlm/munge are missing and installing them needs root"; exit 1
    fi
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    # The packages' own service units are not used (no systemd in containers); make sure none is running.
}

write_conf() {
    mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" /var/log/slurm
    local tmp
    tmp=$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")
    cat >"$tmp" <<EOF
# One-node Slurm for the campaign's CI (written by .ci/slurm.sh).
ClusterName=campaignci
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=5
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
NodeName=$NODE CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 0644 "$tmp"
    mv -f "$tmp" "$CONF"
}

start_munge() {
    local pid
    pid=$(recorded_pid munged)
    if alive "$pid"; then return; fi
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        fi
    fi
    local owner=root
    if id munge >/dev/null 2>&1; then owner=munge; fi
    chown "$owner:$owner" /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    chmod 0400 /etc/munge/munge.key
    rm -f /run/munge/munged.pid
    if [[ $owner == munge ]]; then
        runuser -u munge -- munged
    else
        munged --force
    fi
    for _ in $(seq 50); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.1; done
    echo "munged $(cat /run/munge/munged.pid)" >>"$PIDS"
}

start_daemon() {  # start_daemon NAME -> start slurmctld / slurmd unless the recorded one is alive
    local name=$1 pid
    pid=$(recorded_pid "$name")
    if alive "$pid"; then return; fi
    rm -f "$STATE/$name.pid"
    "$name"
    for _ in $(seq 100); do [[ -s "$STATE/$name.pid" ]] && break; sleep 0.1; done
    if [[ ! -s "$STATE/$name.pid" ]]; then
        log "$name did not start; see $STATE/$name.log"; tail -n 20 "$STATE/$name.log" >&2 || true; exit 1
    fi
    echo "$name $(cat "$STATE/$name.pid")" >>"$PIDS"
}

start() {
    mkdir -p "$STATE"
    touch "$PIDS"
    if alive "$(recorded_pid slurmctld)" && alive "$(recorded_pid slurmd)" && node_idle; then
        log "already up"; return
    fi
    install_packages
    write_conf
    start_munge
    start_daemon slurmctld
    start_daemon slurmd
    for _ in $(seq 150); do
        if node_idle; then
            log "up: $(sinfo -h -N -o '%N %P %t %c')"; return
        fi
        # a node that comes back DOWN after a previous run is returned to service
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        sleep 0.2
    done
    log "node $NODE did not become idle"; sinfo >&2 || true; exit 1
}

stop() {
    [[ -f "$PIDS" ]] || { log "nothing recorded in $PIDS"; return; }
    local name pid
    # reverse order: slurmd, slurmctld, munged
    for name in slurmd slurmctld munged; do
        for pid in $(awk -v n="$name" '$1 == n {print $2}' "$PIDS"); do
            if alive "$pid"; then
                kill "$pid" 2>/dev/null || true
                for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
                alive "$pid" && kill -9 "$pid" 2>/dev/null || true
            fi
        done
    done
    rm -f "$PIDS"
    log "stopped"
}

status() {
    if alive "$(recorded_pid slurmctld)" && alive "$(recorded_pid slurmd)" && node_idle; then
        echo "up"; return 0
    fi
    echo "down"; return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
