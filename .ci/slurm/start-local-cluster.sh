#!/usr/bin/env bash
# start-local-cluster.sh - bring up a real SLURM cluster on this host, for the tests that
# run the workflow with `--profile profiles/slurm` (tests/test_slurm.py: one node, this
# host; tests/test_slurm_multinode.py: LOCAL_SLURM_NS_NODES more nodes, each slurmd in a
# network namespace of its own, see netns-nodes.sh). .ci/run calls it as root; stop it
# with stop-local-cluster.sh.
# A copy of the team's tested recipe (shared/slurm/start-local-slurm.sh), kept in
# the repo so that CI does not depend on files outside the clone.
#
# Intended for CI / tests on a fresh Debian 12 (bookworm) machine, run as root,
# without systemd, cgroups or GPUs. It:
#   1. installs Debian's SLURM packages if missing (slurmctld, slurmd,
#      slurm-client, munge; plus slurmdbd + MariaDB when accounting is on),
#   2. writes /etc/slurm/slurm.conf, gres.conf (and slurmdbd.conf) for one node
#      named after this host, sized from `slurmd -C`, with partitions
#      `cpu` (default) and `gpu`, and count-only GPUs backed by dummy device
#      nodes (no real GPU is needed or used),
#   3. starts munged, [mariadbd, slurmdbd,] slurmctld and slurmd as plain
#      background daemons with PID files, recording the ones it started in
#      /run/local-slurm/started so that stop-local-cluster.sh stops only those,
#   4. waits until the node is idle and prints one status line.
#
# Idempotent: a second run while the cluster is up only verifies it; if the
# generated configuration changed, the SLURM daemons started by this script
# are restarted.
#
# Environment knobs (all optional):
#   LOCAL_SLURM_ACCOUNTING=1  1 = slurmdbd + MariaDB, so `sacct` works (the
#                             snakemake SLURM executor polls job status with
#                             sacct by default); 0 = no accounting (then run
#                             snakemake with `--slurm-status-command squeue`).
#   LOCAL_SLURM_CLUSTER=localcluster   ClusterName
#   LOCAL_SLURM_GPU_TYPE=a100          GPU type (gres gpu:<type>:<count>)
#   LOCAL_SLURM_GPU_COUNT=4            number of fake GPUs on the node
#   LOCAL_SLURM_CPUS=<detected>        CPUs advertised for the node (may
#                                      exceed the real count; see
#                                      SlurmdParameters=config_overrides)
#   LOCAL_SLURM_MEM_MB=<detected*95%>  RealMemory advertised for the node
#   LOCAL_SLURM_TIMEOUT=120            seconds to wait for each daemon
#   LOCAL_SLURM_SKIP_INSTALL=0         1 = never call apt-get
#   LOCAL_SLURM_NS_NODES=0             extra nodes rlnode1..N, each in its own network
#                                      namespace (address 10.199.77.<10+i>, netns-nodes.sh),
#                                      in partition `multi` with one fake GPU each
#   LOCAL_SLURM_NS_CPUS=2              CPUs advertised for each of those nodes
set -euo pipefail

ACCOUNTING=${LOCAL_SLURM_ACCOUNTING:-1}
CLUSTER=${LOCAL_SLURM_CLUSTER:-localcluster}
GPU_TYPE=${LOCAL_SLURM_GPU_TYPE:-a100}
GPU_COUNT=${LOCAL_SLURM_GPU_COUNT:-4}
TIMEOUT=${LOCAL_SLURM_TIMEOUT:-120}
SKIP_INSTALL=${LOCAL_SLURM_SKIP_INSTALL:-0}
NS_NODES=${LOCAL_SLURM_NS_NODES:-0}
NS_CPUS=${LOCAL_SLURM_NS_CPUS:-2}
# shellcheck source=netns-nodes.sh
. "$(dirname "$0")/netns-nodes.sh"

# Fixed locations (standard system paths only).
STATE_DIR=/run/local-slurm              # bookkeeping of daemons we started
STARTED_FILE=$STATE_DIR/started
SLURM_ETC=/etc/slurm
SLURM_RUN=/run/slurm                    # PID files of the SLURM daemons
SLURM_LOG=/var/log/slurm
SLURM_LIB=/var/lib/slurm
FAKE_GPU_DIR=$SLURM_LIB/fake-gpu
MUNGE_PID=/run/munge/munged.pid
MYSQL_RUN=/run/mysqld
MYSQL_PID=$MYSQL_RUN/mysqld.pid
MYSQL_SOCK=$MYSQL_RUN/mysqld.sock
MYSQL_LOG=/var/log/mysql/error.log

T_START=$SECONDS
log() { echo "local-slurm: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

# ---------------------------------------------------------------- helpers ---

# pid_alive PIDFILE COMM: true if PIDFILE names a live process called COMM
# (COMM check protects against stale PID files and PID reuse).
pid_alive() {
    local pidfile=$1 comm=$2 pid
    [ -s "$pidfile" ] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]
}

# wait_until DESCRIPTION COMMAND...: poll COMMAND until it succeeds.
wait_until() {
    local what=$1; shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "timed out after ${TIMEOUT}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}

# record NAME PIDFILE COMM: remember that this script started a daemon.
record() {
    mkdir -p "$STATE_DIR"
    touch "$STARTED_FILE"
    grep -v "^$1 " "$STARTED_FILE" >"$STARTED_FILE.tmp" || true
    echo "$1 $2 $3" >>"$STARTED_FILE.tmp"
    mv "$STARTED_FILE.tmp" "$STARTED_FILE"
}

# started_by_us NAME: true if NAME was recorded by a previous run.
started_by_us() { [ -f "$STARTED_FILE" ] && grep -q "^$1 " "$STARTED_FILE"; }

# stop_ours NAME: stop a daemon this script started (used on config change).
stop_ours() {
    local name=$1 pidfile comm pid i
    started_by_us "$name" || return 0
    read -r _ pidfile comm < <(grep "^$name " "$STARTED_FILE")
    if pid_alive "$pidfile" "$comm"; then
        pid=$(tr -dc '0-9' <"$pidfile")
        kill -TERM "$pid"
        for i in $(seq 1 60); do [ -d "/proc/$pid" ] || break; sleep 0.5; done
        [ -d "/proc/$pid" ] && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
    grep -v "^$name " "$STARTED_FILE" >"$STARTED_FILE.tmp" || true
    mv "$STARTED_FILE.tmp" "$STARTED_FILE"
}

show_log() { [ -f "$1" ] && { log "--- last lines of $1:"; tail -n 20 "$1" >&2; }; return 0; }

# --------------------------------------------------------- 1. packages ------

pkgs=(slurmctld slurmd slurm-client munge)
[ "$ACCOUNTING" = 1 ] && pkgs+=(slurmdbd mariadb-server mariadb-client)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$SKIP_INSTALL" = 1 ] && die "missing packages: ${missing[*]}"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Keep package maintainer scripts from starting the services themselves
    # (we start them below, with our own PID files). Only add a policy-rc.d
    # if the image has none, and remove it again afterwards.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    t0=$SECONDS
    apt_opts=(-o DPkg::Lock::Timeout=300)
    for attempt in 1 2 3; do
        apt-get "${apt_opts[@]}" update -qq </dev/null && break
        [ "$attempt" = 3 ] && die "apt-get update failed"
        sleep 5
    done
    apt_log=/var/log/local-slurm-apt.log
    if ! apt-get "${apt_opts[@]}" install -y --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" </dev/null >"$apt_log" 2>&1; then
        show_log "$apt_log"
        die "apt-get install failed"
    fi
    log "packages installed in $((SECONDS - t0))s"
fi

# --------------------------------------------------- 2. configuration -------

# Node name = short host name; the node is always reached via 127.0.0.1.
NODE=$(hostname -s 2>/dev/null || uname -n)
NODE=${NODE%%.*}
NODE=${NODE:-localhost}

# Hardware as slurmd sees it, e.g.
# "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
hw=$(slurmd -C 2>/dev/null | head -n 1 || true)
hwval() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
det_cpus=$(hwval CPUs); det_cpus=${det_cpus:-$(nproc)}
det_mem=$(hwval RealMemory)
det_mem=${det_mem:-$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)}
CPUS=${LOCAL_SLURM_CPUS:-$det_cpus}
MEM_MB=${LOCAL_SLURM_MEM_MB:-$((det_mem * 95 / 100))}   # leave some headroom
if [ -z "${LOCAL_SLURM_CPUS:-}" ] && [ -n "$(hwval CoresPerSocket)" ]; then
    # real topology, so slurmd's registration matches exactly
    CPU_SPEC="CPUs=$CPUS Boards=$(hwval Boards) SocketsPerBoard=$(hwval SocketsPerBoard) CoresPerSocket=$(hwval CoresPerSocket) ThreadsPerCore=$(hwval ThreadsPerCore)"
else
    CPU_SPEC="CPUs=$CPUS"
fi

# Fake GPUs: SLURM 22.05 drops GPUs that have no File=, so give each one a
# device node. They are copies of /dev/null (char 1:3) - harmless. If mknod is
# not permitted, plain files still work (slurmd then logs a warning per file).
mkdir -p "$FAKE_GPU_DIR"
for ((i = 0; i < GPU_COUNT; i++)); do
    f=$FAKE_GPU_DIR/gpu$i
    [ -c "$f" ] && continue
    rm -f "$f"
    mknod -m 0666 "$f" c 1 3 2>/dev/null || : >"$f"
done
if [ "$GPU_COUNT" -gt 1 ]; then GPU_FILES="$FAKE_GPU_DIR/gpu[0-$((GPU_COUNT - 1))]"
else GPU_FILES="$FAKE_GPU_DIR/gpu0"; fi
if [ "$GPU_COUNT" -gt 0 ]; then NODE_GRES="Gres=gpu:$GPU_TYPE:$GPU_COUNT"; else NODE_GRES=""; fi

# The namespaced nodes reach the controller at the bridge's address, not at localhost (their own).
CTL_HOST=localhost NS_NODE_LINES="" NS_GRES_LINES="" NS_PARTITION=""
if [ "$NS_NODES" -gt 0 ]; then
    CTL_HOST="$NODE($NS_CTL_ADDR)"
    for ((i = 1; i <= NS_NODES; i++)); do
        NS_NODE_LINES+="NodeName=$(ns_node "$i") NodeHostname=$(ns_node "$i") NodeAddr=$(ns_addr "$i") CPUs=$NS_CPUS RealMemory=$((MEM_MB / 2)) Gres=gpu:$GPU_TYPE:1 State=UNKNOWN
"
        NS_GRES_LINES+="NodeName=$(ns_node "$i") Name=gpu Type=$GPU_TYPE File=$FAKE_GPU_DIR/gpu0
"
    done
    NS_PARTITION="PartitionName=multi Nodes=rlnode[1-$NS_NODES] Default=NO MaxTime=INFINITE State=UP"
fi

if [ "$ACCOUNTING" = 1 ]; then
    ACCT_CONF="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu,gres/gpu:$GPU_TYPE
# Keep the job comment (the SLURM executor plugin writes rule and wildcards there).
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none"
else
    ACCT_CONF="AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$SLURM_LOG/jobcomp.log"
fi

install -d -o slurm -g slurm -m 0755 "$SLURM_RUN" "$SLURM_LOG" "$SLURM_LIB" \
    "$SLURM_LIB/slurmctld"
install -d -m 0755 "$SLURM_ETC" "$STATE_DIR"

CHANGED_CTL=0   # slurm.conf / gres.conf changed
CHANGED_DBD=0   # slurmdbd.conf changed

# put_file DEST MODE OWNER FLAGVAR: install stdin as DEST if content differs.
put_file() {
    local dest=$1 mode=$2 owner=$3 flag=$4 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if ! cmp -s "$tmp" "$dest" 2>/dev/null; then
        install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$tmp" "$dest"
        printf -v "$flag" 1
    fi
    rm -f "$tmp"
}

put_file "$SLURM_ETC/slurm.conf" 0644 root:root CHANGED_CTL <<EOF
# Generated by .ci/slurm/start-local-cluster.sh: test cluster on this host (+ $NS_NODES namespaced nodes).
ClusterName=$CLUSTER
SlurmctldHost=$CTL_HOST
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SLURM_LIB/slurmctld
# %n: one spool, PID file and log per node (several slurmd share this file system).
SlurmdSpoolDir=$SLURM_LIB/slurmd-%n
SlurmctldPidFile=$SLURM_RUN/slurmctld.pid
SlurmdPidFile=$SLURM_RUN/slurmd-%n.pid
SlurmctldLogFile=$SLURM_LOG/slurmctld.log
SlurmdLogFile=$SLURM_LOG/slurmd-%n.log
# No systemd/cgroups here: track processes via /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
MpiDefault=none
# Accept the node's configured CPUs/memory even if they exceed the hardware.
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job without --mem would take the whole node's memory.
DefMemPerCPU=1000
ReturnToService=2
# Keep finished jobs visible to squeue for 5 min (needed if the status
# command is squeue instead of sacct).
MinJobAge=300
KillWait=5
# No mail transport in CI; silences "Configured MailProg is invalid".
MailProg=/usr/bin/true
$ACCT_CONF
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 $CPU_SPEC RealMemory=$MEM_MB $NODE_GRES State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
$NS_NODE_LINES$NS_PARTITION
EOF

if [ "$GPU_COUNT" -gt 0 ]; then
    put_file "$SLURM_ETC/gres.conf" 0644 root:root CHANGED_CTL <<EOF
# Generated by .ci/slurm/start-local-cluster.sh: fake GPUs (device nodes are /dev/null copies).
NodeName=$NODE Name=gpu Type=$GPU_TYPE File=$GPU_FILES
$NS_GRES_LINES
EOF
else
    put_file "$SLURM_ETC/gres.conf" 0644 root:root CHANGED_CTL </dev/null
fi

if [ "$ACCOUNTING" = 1 ]; then
    # slurmdbd refuses a config readable by others; it must belong to SlurmUser.
    # The database user authenticates via the unix socket: no password needed.
    put_file "$SLURM_ETC/slurmdbd.conf" 0600 slurm:slurm CHANGED_DBD <<EOF
# Generated by .ci/slurm/start-local-cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
PidFile=$SLURM_RUN/slurmdbd.pid
LogFile=$SLURM_LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StorageLoc=slurm_acct_db
EOF
fi

# ------------------------------------------------------- 3. daemons ---------

# munge: authentication for all SLURM daemons and clients.
munge_ok() { munge -n </dev/null | unmunge >/dev/null; }
if ! munge_ok 2>/dev/null; then
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge
    install -d -o munge -g munge -m 0711 /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        install -d -o munge -g munge -m 0700 /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    # munged forks into the background and writes its PID file.
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID" </dev/null >/dev/null 2>&1 \
        || { show_log /var/log/munge/munged.log; die "munged failed to start"; }
    record munged "$MUNGE_PID" munged
    wait_until "munged" munge_ok || { show_log /var/log/munge/munged.log; die "munge not working"; }
fi

if [ "$ACCOUNTING" = 1 ]; then
    # MariaDB for slurmdbd: local socket only (no TCP port), no systemd.
    mysql_ok() { mysql --socket="$MYSQL_SOCK" -e 'SELECT 1'; }
    if ! pid_alive "$MYSQL_PID" mariadbd; then
        install -d -o mysql -g mysql -m 0755 "$MYSQL_RUN"
        install -d -o mysql -g adm -m 2750 /var/log/mysql
        if [ ! -d /var/lib/mysql/mysql ]; then
            install -d -o mysql -g mysql -m 0755 /var/lib/mysql
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql \
                --skip-test-db >/dev/null
        fi
        # mariadbd stays in the foreground: detach it with setsid and close
        # all inherited descriptors so the caller's pipes are not held open.
        setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql \
            --pid-file="$MYSQL_PID" --socket="$MYSQL_SOCK" --skip-networking \
            --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
            --log-error="$MYSQL_LOG" </dev/null >/dev/null 2>&1 &
        wait_until "MariaDB" mysql_ok || { show_log "$MYSQL_LOG"; die "MariaDB did not start"; }
        wait_until "MariaDB PID file" pid_alive "$MYSQL_PID" mariadbd
        record mariadb "$MYSQL_PID" mariadbd
    fi
    mysql --socket="$MYSQL_SOCK" -e "
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
        GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';"

    # slurmdbd: accounting daemon (lets sacct answer).
    [ "$CHANGED_DBD" = 1 ] && stop_ours slurmdbd
    if ! pid_alive "$SLURM_RUN/slurmdbd.pid" slurmdbd; then
        /usr/sbin/slurmdbd </dev/null >/dev/null 2>&1 \
            || { show_log "$SLURM_LOG/slurmdbd.log"; die "slurmdbd failed to start"; }
        record slurmdbd "$SLURM_RUN/slurmdbd.pid" slurmdbd
        wait_until "slurmdbd" bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819' \
            || { show_log "$SLURM_LOG/slurmdbd.log"; die "slurmdbd not listening"; }
    fi
fi

# On configuration change, restart the SLURM daemons we own (or ask
# daemons we do not own to re-read their configuration).
if [ "$CHANGED_CTL" = 1 ]; then
    for name in $(cut -d' ' -f1 "$STARTED_FILE" 2>/dev/null | grep -E '^slurmd(-|$)'); do stop_ours "$name"; done
    stop_ours slurmctld
    if pid_alive "$SLURM_RUN/slurmctld.pid" slurmctld; then
        scontrol reconfigure >/dev/null 2>&1 || true
    fi
fi

[ "$NS_NODES" -gt 0 ] && netns_up "$NS_NODES"

# slurmctld: the controller (forks into the background itself).
if ! pid_alive "$SLURM_RUN/slurmctld.pid" slurmctld; then
    /usr/sbin/slurmctld </dev/null >/dev/null 2>&1 \
        || { show_log "$SLURM_LOG/slurmctld.log"; die "slurmctld failed to start"; }
    record slurmctld "$SLURM_RUN/slurmctld.pid" slurmctld
fi
ctld_up() { scontrol ping | grep -q 'is UP'; }
wait_until "slurmctld" ctld_up || { show_log "$SLURM_LOG/slurmctld.log"; die "slurmctld not responding"; }

# slurmd: the compute node daemon (forks into the background itself), one spool per node.
install -d -o slurm -g slurm -m 0755 "$SLURM_LIB/slurmd-$NODE"
for ((i = 1; i <= NS_NODES; i++)); do install -d -o slurm -g slurm -m 0755 "$SLURM_LIB/slurmd-$(ns_node "$i")"; done
if ! pid_alive "$SLURM_RUN/slurmd-$NODE.pid" slurmd; then
    /usr/sbin/slurmd -N "$NODE" </dev/null >/dev/null 2>&1 \
        || { show_log "$SLURM_LOG/slurmd-$NODE.log"; die "slurmd failed to start"; }
    record slurmd "$SLURM_RUN/slurmd-$NODE.pid" slurmd
fi
for ((i = 1; i <= NS_NODES; i++)); do
    ns_node=$(ns_node "$i")
    if ! pid_alive "$SLURM_RUN/slurmd-$ns_node.pid" slurmd; then
        ns_slurmd "$i" || { show_log "$SLURM_LOG/slurmd-$ns_node.log"; die "slurmd of $ns_node failed to start"; }
        record "slurmd-$ns_node" "$SLURM_RUN/slurmd-$ns_node.pid" slurmd
    fi
done

# ------------------------------------------------ 4. wait for the nodes -----

node_state() { sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -n 1; }
node_usable() { case "$(node_state "$1")" in idle | mixed | allocated | completing) return 0 ;; esac; return 1; }
# wait_node NAME: until NAME is usable; a node drained/down from an earlier configuration is put back.
wait_node() {
    local name=$1 resumed=0 state deadline=$((SECONDS + TIMEOUT))
    until node_usable "$name"; do
        state=$(node_state "$name")
        case "$state" in
        *drain* | *down* | *inval* | *fail*)
            if [ "$resumed" = 0 ]; then
                scontrol update NodeName="$name" State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi ;;
        esac
        if [ "$SECONDS" -ge "$deadline" ]; then
            scontrol show node "$name" >&2 || true
            show_log "$SLURM_LOG/slurmd-$name.log"
            show_log "$SLURM_LOG/slurmctld.log"
            die "node $name not usable (state: ${state:-unknown})"
        fi
        sleep 0.5
    done
}
wait_node "$NODE"
ns_list=""
for ((i = 1; i <= NS_NODES; i++)); do wait_node "$(ns_node "$i")"; ns_list+=" $(ns_node "$i")@$(ns_addr "$i")"; done

acct=none; [ "$ACCOUNTING" = 1 ] && acct=slurmdbd
echo "local-slurm: UP $(scontrol --version) cluster=$CLUSTER node=$NODE" \
    "state=$(node_state "$NODE") cpus=$CPUS mem=${MEM_MB}MB gres=${NODE_GRES#Gres=}" \
    "partitions=cpu(default),gpu${NS_PARTITION:+,multi(${ns_list# })} accounting=$acct ready_in=$((SECONDS - T_START))s"
