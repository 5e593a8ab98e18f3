#!/usr/bin/env bash
# Stop the one-node SLURM cluster that scripts/slurm/start-local.sh started: exactly the daemons
# whose PIDs it recorded in $SIMATTR_SLURM_STATE (default /var/lib/simattr-slurm), slurmd first and
# munged last. SIGTERM, wait up to $SIMATTR_SLURM_STOP_WAIT seconds (default 30), then SIGKILL.
# A PID is signalled only while it still belongs to the daemon named by its file (a reused PID is
# left alone); pid files are removed. Nothing else is killed (not by name, not job processes);
# packages, configuration, the munge key and the accounting database stay. Exits 0 if nothing runs.
#
#   sudo bash scripts/slurm/stop-local.sh
set -euo pipefail

STATE=${SIMATTR_SLURM_STATE:-/var/lib/simattr-slurm}
WAIT_S=${SIMATTR_SLURM_STOP_WAIT:-30}
DAEMONS=(slurmd slurmctld slurmdbd mariadbd munged)   # reverse start order

say() { echo "stop-local: $*"; }

# owned NAME PID: PID is running (not a zombie) and is the daemon NAME
owned() {
    [[ -r /proc/$2/comm ]] && [[ $(<"/proc/$2/comm") == "$1" ]] || return 1
    local stat
    stat=$(<"/proc/$2/stat") 2>/dev/null || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

stopped=0
for d in "${DAEMONS[@]}"; do
    f="$STATE/$d.pid"
    rm -f "$STATE/$d.external"
    [[ -e $f ]] || continue
    pid=$(<"$f")
    if [[ ! $pid =~ ^[0-9]+$ ]] || ! owned "$d" "$pid"; then
        say "$d (pid ${pid:-?}) not running; removing its stale pid file"
        rm -f "$f"
        continue
    fi
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(( $(date +%s) + WAIT_S ))
    while owned "$d" "$pid" && (( $(date +%s) < deadline )); do sleep 0.2; done
    if owned "$d" "$pid"; then
        say "$d (pid $pid) still running after ${WAIT_S} s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for _ in {1..50}; do owned "$d" "$pid" || break; sleep 0.2; done
    fi
    say "stopped $d (pid $pid)"
    rm -f "$f"
    stopped=$(( stopped + 1 ))
done
(( stopped )) || say "nothing to stop (no running daemon recorded in $STATE)"
exit 0
