# Sourced by the bench/*.sh drivers: `step SECONDS CMD...` runs CMD with a time limit, its output
# appended to $log; a failed or timed-out step is logged and the driver goes on to the next one.
step() {
    local limit=$1
    shift
    echo "== $(date -u +%T) $*" | tee -a "$log"
    timeout "$limit" "$@" >>"$log" 2>&1 || echo "!! exit $? after ${SECONDS}s: $*" | tee -a "$log"
}
