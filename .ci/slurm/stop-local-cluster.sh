#!/usr/bin/env bash
# stop-local-cluster.sh - stop the SLURM cluster started by start-local-cluster.sh (a
# copy of the team's recipe, shared/slurm/stop-local-slurm.sh, plus the namespaced nodes:
# their slurmd, then their network namespaces and bridge, netns-nodes.sh).
#
# Only daemons recorded in /run/local-slurm/started (i.e. started by
# start-local-cluster.sh) are stopped, one by one via their PID files; a PID is
# signalled only if the process still has the expected name. Installed
# packages, configuration, the accounting database and logs are left in place,
# so a later start is fast.
#
# Before the controller goes down, jobs still queued or running on this
# private test cluster are cancelled (set LOCAL_SLURM_CANCEL_JOBS=0 to skip),
# so that no job processes outlive the cluster.
set -euo pipefail

STATE_DIR=/run/local-slurm
STARTED_FILE=$STATE_DIR/started
CANCEL_JOBS=${LOCAL_SLURM_CANCEL_JOBS:-1}

log() { echo "local-slurm: $*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "ERROR: must run as root"; exit 1; }

# shellcheck source=netns-nodes.sh
. "$(dirname "$0")/netns-nodes.sh"
if [ ! -s "$STARTED_FILE" ]; then
    netns_down
    log "nothing to stop (no daemons recorded in $STARTED_FILE)"
    exit 0
fi

# pid_of PIDFILE COMM: print the PID if PIDFILE names a live process COMM.
pid_of() {
    local pidfile=$1 comm=$2 pid
    [ -s "$pidfile" ] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 1
    echo "$pid"
}

# Cancel leftover jobs while slurmctld is still up (only if we started it).
if [ "$CANCEL_JOBS" = 1 ] && grep -q '^slurmctld ' "$STARTED_FILE" \
    && scontrol ping 2>/dev/null | grep -q 'is UP'; then
    jobs=$(squeue -h -o '%i' 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        log "cancelling jobs: $(echo $jobs)"
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 30); do
            [ -z "$(squeue -h -o '%i' 2>/dev/null)" ] && break
            sleep 1
        done
    fi
fi

# Stop in reverse dependency order: compute node, controller, accounting
# daemon, database, authentication.
stopped=()
for name in $(cut -d' ' -f1 "$STARTED_FILE" | grep -E '^slurmd(-|$)') slurmctld slurmdbd mariadb munged; do
    line=$(grep "^$name " "$STARTED_FILE" || true)
    [ -n "$line" ] || continue
    read -r _ pidfile comm <<<"$line"
    if pid=$(pid_of "$pidfile" "$comm"); then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 60); do       # up to 30 s for a clean shutdown
            [ -d "/proc/$pid" ] || break
            sleep 0.5
        done
        if [ -d "/proc/$pid" ]; then
            log "$name (pid $pid) did not exit, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        stopped+=("$name:$pid")
    fi
    # Daemons remove their PID files on a clean exit; tidy up otherwise.
    [ -e "$pidfile" ] && ! pid_of "$pidfile" "$comm" >/dev/null && rm -f "$pidfile"
    grep -v "^$name " "$STARTED_FILE" >"$STARTED_FILE.tmp" || true
    mv "$STARTED_FILE.tmp" "$STARTED_FILE"
done

[ -s "$STARTED_FILE" ] || rm -f "$STARTED_FILE"
netns_down
echo "local-slurm: stopped ${stopped[*]:-nothing (daemons had already exited)}"
