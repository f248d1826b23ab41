#!/usr/bin/env bash
# A bench part that outlasts one 10-minute device call: started in its own process session, then polled
# by the calls after it (back to back: the machine goes back 30 s after a call ends, and the run with it).
#
#   bash bench/background.sh start eval4          # copies the tree to /tmp/bench-bg/repo, starts run_all.sh eval4
#   bash bench/background.sh poll 540             # waits up to 540 s; prints RUNNING or DONE, and the log's tail;
#                                                 # copies the results so far into $OUT (every poll: a call that
#                                                 # turns out to be the last one still brings them back)
#   bash bench/background.sh collect              # copies the part's results into $OUT
#
# The run's own process id is kept in a file: `pgrep -f "run_all.sh eval4"` also matches the shell of the
# device call whose command line names it, and would never report the run as finished.
set -uo pipefail
HOME_DIR=/tmp/bench-bg
case ${1:?usage: bash bench/background.sh start PART [ENV=VALUE...] | poll SECONDS | collect} in
start)
    part=${2:?the run_all.sh part}
    rm -rf "$HOME_DIR" && mkdir -p "$HOME_DIR/results" && cp -r . "$HOME_DIR/repo" && cd "$HOME_DIR/repo" || exit 1
    echo "$part" >"$HOME_DIR/part" && date -u +%s >"$HOME_DIR/start"
    OUT=$HOME_DIR/results setsid nohup bash bench/run_all.sh "$part" >"$HOME_DIR/nohup.log" 2>&1 </dev/null &
    echo $! >"$HOME_DIR/pid"
    sleep 20 && tail -3 "$HOME_DIR/results/log.txt"
    ;;
poll)
    limit=${2:-540}
    while kill -0 "$(cat "$HOME_DIR/pid")" 2>/dev/null && ((SECONDS < limit)); do
        sleep 15
        ((SECONDS % 120 < 15)) && echo "$(date -u +%T) $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader)"
    done
    kill -0 "$(cat "$HOME_DIR/pid")" 2>/dev/null && echo "RUNNING" ||
        echo "DONE after $(($(date -u +%s) - $(cat "$HOME_DIR/start"))) s"
    grep -v '^{' "$HOME_DIR/results/log.txt" | tail -5
    if [[ -n ${OUT:-} ]]; then cp "$HOME_DIR"/results/* "$OUT/" 2>/dev/null || echo "(no results to copy yet)"; fi
    ;;
collect)
    cp "$HOME_DIR"/results/* "${OUT:?}/" && ls -la "$OUT"
    ;;
*)
    echo "unknown command '$1': start, poll or collect" >&2
    exit 2
    ;;
esac
