#!/usr/bin/env bash
# Start or stop a multi-node Slurm cluster on this one host for the `slurm`-marked tests.
#
#   .ci/slurm.sh start            install slurm-wlm + munge (Debian, as root) if missing; make a bridge and, per
#                                 node, a network namespace joined to it by a veth pair (its own address and
#                                 hostname, as ../shared/ARCHITECTURE.md describes); write slurm.conf (partition
#                                 `debug` over every node, cgroup-free, no accounting) and /etc/hosts entries for
#                                 the nodes; start munged, slurmctld (root namespace, on the bridge address) and one
#                                 slurmd per node; wait until every node is idle. Idempotent: a node whose slurmd is
#                                 gone is started again.
#   .ci/slurm.sh stop             stop every daemon this script started (by the pids it recorded), kill what is
#                                 left in the nodes' namespaces, delete the namespaces, links and hosts entries.
#   .ci/slurm.sh status           print whether every node is up (exit 0) or not (exit 1).
#   .ci/slurm.sh kill-node NAME   lose node NAME as hardware is lost: SIGKILL its slurmd and every process in its
#                                 network namespace (job steps, Parsl workers), nothing else.
#   .ci/slurm.sh revive-node NAME start NAME's slurmd again and wait until the node is back in service.
#   .ci/slurm.sh facts            print the cluster's facts as shell assignments (what the tests read).
#
# Environment: CAMPAIGN_SLURM_STATE (default /tmp/campaign-slurm) holds the pid file, facts, logs and spool
# directories; CAMPAIGN_SLURM_NODES (default 3) the number of nodes; CAMPAIGN_SLURM_CPUS (default 2) the CPUs
# each node advertises (the nodes share this host's cores: Slurm is told to trust the configuration);
# CAMPAIGN_SLURM_NET (default 10.77.0) the /24 the bridge (.1) and the nodes (.11, .12, ...) live on.
set -euo pipefail

STATE=${CAMPAIGN_SLURM_STATE:-/tmp/campaign-slurm}
PIDS="$STATE/pids"
FACTS="$STATE/facts"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
HOST=$(hostname -s)
NNODES=${CAMPAIGN_SLURM_NODES:-3}
CPUS=${CAMPAIGN_SLURM_CPUS:-2}
NET=${CAMPAIGN_SLURM_NET:-10.77.0}
BRIDGE=campaignbr0
CTLD_ADDR="$NET.1"
HOSTS_BEGIN="# campaign-slurm nodes (written by .ci/slurm.sh)"
HOSTS_END="# campaign-slurm end"

log() { echo "slurm.sh: $*" >&2; }

nodes() {  # the node names, cn1 .. cnN
    local i
    for i in $(seq "$NNODES"); do echo "cn$i"; done
}
node_addr() { echo "$NET.$((10 + ${1#cn}))"; }  # node_addr cnI -> its address on the bridge
netns_of() { echo "campaign-$1"; }              # the network namespace of a node
veth_of() { echo "cveth${1#cn}"; }              # the host end of a node's veth pair

alive() {  # alive PID -> 0 when the process exists
    [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null
}

recorded_pid() {  # recorded_pid NAME -> the pid recorded for NAME, if any
    [[ -f "$PIDS" ]] && awk -v n="$1" '$1 == n {print $2}' "$PIDS" | tail -n 1
}

node_state() {  # node_state NAME -> Slurm's short state of the node (idle, alloc, down*, ...)
    sinfo -h -N -n "$1" -o '%t' 2>/dev/null | head -n 1
}

node_up() { node_state "$1" | grep -Eq '^(idle|mix|alloc)$'; }

all_up() {
    local n
    for n in $(nodes); do node_up "$n" || return 1; done
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

make_network() {  # the bridge, and per node a namespace with lo and eth0 (its address) up
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        ip addr add "$CTLD_ADDR/24" dev "$BRIDGE"
        ip link set "$BRIDGE" up
    fi
    local n ns veth
    for n in $(nodes); do
        ns=$(netns_of "$n"); veth=$(veth_of "$n")
        [[ -e /var/run/netns/$ns ]] || ip netns add "$ns"
        if ! ip link show "$veth" >/dev/null 2>&1; then
            ip link add "$veth" type veth peer name eth0 netns "$ns"
            ip link set "$veth" master "$BRIDGE"
            ip link set "$veth" up
            nsenter --net="/var/run/netns/$ns" sh -c \
                "ip addr add $(node_addr "$n")/24 dev eth0 && ip link set eth0 up && ip link set lo up"
        fi
    done
}

write_hosts() {  # /etc/hosts entries for the nodes (ranks find rank 0's host by name); rewritten in place
    local body
    body=$(awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" '$0 == b {skip=1} !skip {print} $0 == e {skip=0}' /etc/hosts)
    {
        printf '%s\n%s\n' "$body" "$HOSTS_BEGIN"
        local n
        for n in $(nodes); do printf '%s %s\n' "$(node_addr "$n")" "$n"; done
        printf '%s\n' "$HOSTS_END"
    } >"$STATE/hosts.new"
    cat "$STATE/hosts.new" >/etc/hosts  # in place: /etc/hosts may be a bind mount that cannot be replaced
    rm -f "$STATE/hosts.new"
}

remove_hosts() {
    grep -qF "$HOSTS_BEGIN" /etc/hosts || return 0
    awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" '$0 == b {skip=1} !skip {print} $0 == e {skip=0}' /etc/hosts \
        >"$STATE/hosts.new"
    cat "$STATE/hosts.new" >/etc/hosts
    rm -f "$STATE/hosts.new"
}

write_conf() {
    mkdir -p "$CONF_DIR" "$STATE/ctld" /var/log/slurm
    local tmp n
    for n in $(nodes); do mkdir -p "$STATE/d/$n"; done
    tmp=$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")
    cat >"$tmp" <<CONF
# $NNODES-node Slurm for the campaign's CI (written by .ci/slurm.sh): every node a network namespace on $BRIDGE.
ClusterName=campaignci
SlurmctldHost=$HOST($CTLD_ADDR)
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
SlurmdParameters=config_overrides
ReturnToService=2
# a lost node is noticed within ~SlurmdTimeout (slurmctld pings every SlurmdTimeout/3 s)
SlurmctldTimeout=30
SlurmdTimeout=10
MessageTimeout=5
InactiveLimit=0
# a finished job stays known for 5 min (Slurm's default): Parsl's SlurmProvider polls every 60 s and, once one
# of its job ids is unknown, \`squeue --job ids\` fails for all of them and it never sees a block end again
MinJobAge=300
KillWait=5
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.%n.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.%n.log
CONF
    for n in $(nodes); do
        echo "NodeName=$n NodeAddr=$(node_addr "$n") CPUs=$CPUS State=UNKNOWN" >>"$tmp"
    done
    echo "PartitionName=debug Nodes=$(nodes | paste -sd,) Default=YES MaxTime=INFINITE State=UP" >>"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$CONF"
}

write_facts() {  # what tests need to know: the address compute nodes reach this host on, and the nodes
    cat >"$FACTS.tmp" <<FACTS
CAMPAIGN_SLURM_ADDRESS=$CTLD_ADDR
CAMPAIGN_SLURM_NODES="$(nodes | paste -sd' ')"
CAMPAIGN_SLURM_CPUS_PER_NODE=$CPUS
FACTS
    mv -f "$FACTS.tmp" "$FACTS"
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

wait_pidfile() {  # wait_pidfile FILE LOG -> the pid written to FILE, or exit with LOG's tail
    for _ in $(seq 100); do [[ -s "$1" ]] && { cat "$1"; return; }; sleep 0.1; done
    log "daemon did not start; see $2"; tail -n 20 "$2" >&2 || true; exit 1
}

start_ctld() {
    alive "$(recorded_pid slurmctld)" && return
    rm -f "$STATE/slurmctld.pid"
    slurmctld
    echo "slurmctld $(wait_pidfile "$STATE/slurmctld.pid" "$STATE/slurmctld.log")" >>"$PIDS"
}

start_node() {  # start_node NAME -> slurmd -N NAME in the node's network namespace, with its own hostname
    local n=$1
    alive "$(recorded_pid "slurmd:$n")" && return
    rm -f "$STATE/slurmd.$n.pid"
    # nsenter, not `ip netns exec` (which remounts /sys and hides the cgroup mounts slurmd needs); unshare --uts
    # gives the node its own hostname, so every process of a job step sees the node it runs on
    nsenter --net="/var/run/netns/$(netns_of "$n")" unshare --uts sh -c "hostname $n; exec slurmd -N $n"
    echo "slurmd:$n $(wait_pidfile "$STATE/slurmd.$n.pid" "$STATE/slurmd.$n.log")" >>"$PIDS"
}

wait_node() {  # wait_node NAME -> until Slurm has NAME in service (a node back after a loss is resumed)
    local n=$1
    for _ in $(seq 300); do
        node_up "$n" && return
        if node_state "$n" | grep -Eq '^(down|drain|fail)'; then
            scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true
        fi
        sleep 0.2
    done
    log "node $n did not become idle"; sinfo -N >&2 || true; exit 1
}

start() {
    mkdir -p "$STATE"
    touch "$PIDS"
    install_packages
    make_network
    write_hosts
    write_conf
    write_facts
    start_munge
    start_ctld
    local n
    for n in $(nodes); do start_node "$n"; done
    for n in $(nodes); do wait_node "$n"; done
    log "up: $(sinfo -h -N -o '%N %P %t %c' | paste -sd';')"
}

kill_node() {  # lose a node: SIGKILL everything in its network namespace (slurmd, slurmstepd, job processes)
    local n=$1 ns pid
    ns=$(netns_of "$n")
    [[ -e /var/run/netns/$ns ]] || { log "no node $n"; exit 2; }
    for _ in 1 2 3; do  # processes forked while the first pass ran are caught by the next
        for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
        sleep 0.2
    done
    log "node $n lost"
}

stop() {
    local name pid n ns
    if [[ -f "$PIDS" ]]; then
        # reverse order: slurmd, slurmctld, munged
        for name in $(awk '$1 ~ /^slurmd:/ {print $1}' "$PIDS" | sort -u) slurmctld munged; do
            for pid in $(awk -v n="$name" '$1 == n {print $2}' "$PIDS"); do
                if alive "$pid"; then
                    kill "$pid" 2>/dev/null || true
                    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
                    alive "$pid" && kill -9 "$pid" 2>/dev/null || true
                fi
            done
        done
        rm -f "$PIDS"
    fi
    for n in $(nodes); do
        ns=$(netns_of "$n")
        if [[ -e /var/run/netns/$ns ]]; then
            for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
            ip link del "$(veth_of "$n")" 2>/dev/null || true
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    remove_hosts
    rm -f "$FACTS"
    log "stopped"
}

status() {
    if alive "$(recorded_pid slurmctld)" && all_up; then
        echo "up"; return 0
    fi
    echo "down"; return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    kill-node) kill_node "${2:?usage: $0 kill-node NAME}" ;;
    revive-node)
        mkdir -p "$STATE"; touch "$PIDS"
        start_node "${2:?usage: $0 revive-node NAME}"; wait_node "$2" ;;
    facts) cat "$FACTS" ;;
    *) echo "usage: $0 start|stop|status|kill-node NAME|revive-node NAME|facts" >&2; exit 2 ;;
esac
