#!/usr/bin/env bash
# Start a real one-node SLURM cluster on this machine, as root, for tests and CI (Debian/Ubuntu):
# munged, MariaDB (bound to 127.0.0.1) + slurmdbd for accounting (so `sacct` works), slurmctld and
# slurmd, with one partition `debug` (the default) and fake GPUs (char devices, copies of /dev/null).
#
#   sudo bash scripts/slurm/start-local.sh      # start (or: already up -> exit 0)
#   sudo bash scripts/slurm/stop-local.sh       # stop exactly what this script started
#
# - Installs only the missing packages among slurmctld slurmd slurm-client munge slurmdbd
#   mariadb-server (apt-get; services are kept from auto-starting during the install).
# - Writes /etc/slurm/{slurm,gres,slurmdbd}.conf, each with a marker first line; refuses to touch an
#   /etc/slurm written by anyone else. Creates the munge key only if it is missing.
# - Starts each daemon itself (no systemd) and records its PID in $SIMATTR_SLURM_STATE (default
#   /var/lib/simattr-slurm), one <daemon>.pid file each, with the logs beside them (<daemon>.log;
#   <daemon>.out holds what the daemon wrote to stdout/stderr).
# - Idempotent: if the daemons it started are alive and the node is idle/mixed/allocated, it says so
#   and exits 0; a half-up cluster of its own is stopped and started again.
# - Waits (bounded) until `sinfo` shows the node idle and `sacct` answers; otherwise prints the tail
#   of the relevant log and exits non-zero.
#
# Environment: SIMATTR_SLURM_STATE (state dir), SIMATTR_SLURM_CPUS (CPUs the node claims, default 8,
# more than the machine has: jobs share cores), SIMATTR_SLURM_GPUS (fake GPUs, default 2),
# SIMATTR_SLURM_WAIT (seconds to wait for the cluster, default 60).
set -euo pipefail

STATE=${SIMATTR_SLURM_STATE:-/var/lib/simattr-slurm}
NCPUS=${SIMATTR_SLURM_CPUS:-8}
NGPUS=${SIMATTR_SLURM_GPUS:-2}
WAIT_S=${SIMATTR_SLURM_WAIT:-60}
MARKER="# written by simattr scripts/slurm/start-local.sh"
ETC=/etc/slurm
CLUSTER=simattr
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
MYSQL_SOCK=/run/mysqld/mysqld.sock
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T0=$(date +%s.%N)

say() { echo "start-local: $*"; }
die() { echo "start-local: $*" >&2; exit 1; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# alive NAME: the PID recorded for NAME is running (not a zombie) and is that daemon (not a reused PID)
alive() {
    local f="$STATE/$1.pid" pid stat
    [[ -s $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/comm ]] && [[ $(<"/proc/$pid/comm") == "$1" ]] || return 1
    stat=$(<"/proc/$pid/stat") 2>/dev/null || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# show_log NAME...: the tail of each daemon's log, for a failure message
show_log() {
    local n
    for n in "$@"; do
        for f in "$STATE/$n.log" "$STATE/$n.out"; do
            if [[ -s $f ]]; then
                echo "---- tail of $f" >&2
                tail -n 25 "$f" >&2
            fi
        done
    done
}

fail() {
    echo "start-local: FAILED after $(elapsed) s: $1" >&2; shift
    show_log "$@"
    echo "start-local: daemons started so far stay up: stop them with scripts/slurm/stop-local.sh" >&2
    exit 1
}

# wait_for SECONDS COMMAND...: poll COMMAND every 0.5 s until it succeeds
wait_for() {
    local deadline=$(( $(date +%s) + $1 )); shift
    until "$@" >/dev/null 2>&1; do
        (( $(date +%s) < deadline )) || return 1
        sleep 0.5
    done
}

# spawn NAME COMMAND...: start a daemon in the foreground of its own session, detached from this
# script's stdin/stdout (so CI logs do not hang on it); record its PID
spawn() {
    local name=$1; shift
    setsid "$@" </dev/null >>"$STATE/$name.out" 2>&1 &
    echo $! >"$STATE/$name.pid"
    sleep 0.3
    alive "$name" || fail "$name exited at once" "$name"
}

node_state() { sinfo -h -o %t 2>/dev/null | head -n 1 | tr -d '*~#!%$@^-'; }
node_ready() { [[ $(node_state) == idle ]]; }

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
whole() { [[ $2 =~ ^[0-9]+$ ]] || die "$1 must be a whole number, not '$2'"; }
whole SIMATTR_SLURM_CPUS "$NCPUS"
whole SIMATTR_SLURM_GPUS "$NGPUS"
whole SIMATTR_SLURM_WAIT "$WAIT_S"
(( NCPUS >= 1 )) || die "SIMATTR_SLURM_CPUS must be at least 1"

# ---- an /etc/slurm this script did not write is left alone
for f in slurm.conf gres.conf slurmdbd.conf; do
    if [[ -e $ETC/$f ]] && [[ $(head -n 1 "$ETC/$f") != "$MARKER" ]]; then
        die "refusing: $ETC/$f exists and was not written by this script; not overwriting it"
    fi
done

# ---- already up?
all_alive=1
any_alive=0
for d in "${DAEMONS[@]}"; do
    if alive "$d"; then any_alive=1
    elif [[ -e $STATE/$d.external ]]; then :   # munged/mariadbd run by someone else: reused
    else all_alive=0
    fi
done
if (( all_alive )) && [[ -e $ETC/slurm.conf ]]; then
    st=$(node_state || true)
    if [[ $st == idle || $st == mix || $st == alloc ]]; then
        say "already running (node $st; state in $STATE); nothing to do ($(elapsed) s)"
        exit 0
    fi
fi
if (( any_alive )); then
    say "a partly running cluster of this script's: stopping it first"
    SIMATTR_SLURM_STATE=$STATE bash "$HERE/stop-local.sh"
fi
rm -f "$STATE"/*.external

# ---- packages (only the missing ones; no service may start during the install)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
    say "installing ${missing[*]}"
    made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    rc=0
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } || rc=$?
    (( made_policy )) && rm -f /usr/sbin/policy-rc.d
    (( rc == 0 )) || die "apt-get install ${missing[*]} failed"
    say "installed in $(elapsed) s"
fi
# the packages may have created one without the marker
for f in slurm.conf gres.conf slurmdbd.conf; do
    if [[ -e $ETC/$f ]] && [[ $(head -n 1 "$ETC/$f") != "$MARKER" ]]; then
        die "refusing: $ETC/$f exists and was not written by this script; not overwriting it"
    fi
done

# ---- state dir, fake GPUs
mkdir -p "$STATE" "$STATE/slurmctld" "$STATE/slurmd" "$STATE/run" "$STATE/gpu" "$ETC"
chmod 755 "$STATE"
chown slurm:slurm "$STATE/slurmctld" "$STATE/run"
for (( i = 0; i < NGPUS; i++ )); do
    [[ -c $STATE/gpu/nvidia$i ]] || { rm -f "$STATE/gpu/nvidia$i"; mknod "$STATE/gpu/nvidia$i" c 1 3; }
    chmod 666 "$STATE/gpu/nvidia$i"
done
for n in slurmdbd slurmctld; do touch "$STATE/$n.log"; chown slurm:slurm "$STATE/$n.log"; done

# ---- munge
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 755 /run/munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munged already running (not started by this script): using it"
    touch "$STATE/munged.external"
else
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    touch "$STATE/munged.log"; chown munge:munge "$STATE/munged.log"
    spawn munged setpriv --reuid=munge --regid=munge --init-groups \
        /usr/sbin/munged --foreground --log-file="$STATE/munged.log"
    wait_for 15 bash -c 'munge -n | unmunge' || fail "munge does not answer" munged
fi

# ---- MariaDB on 127.0.0.1 and the accounting DB user
mkdir -p /run/mysqld
chown mysql:mysql /run/mysqld
if [[ ! -d /var/lib/mysql/mysql ]]; then
    say "initialising MariaDB data dir"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$STATE/mariadbd.log" 2>&1 \
        || fail "mariadb-install-db failed" mariadbd
fi
if mariadb-admin --socket="$MYSQL_SOCK" ping >/dev/null 2>&1; then
    say "MariaDB already running (not started by this script): using it"
    touch "$STATE/mariadbd.external"
else
    touch "$STATE/mariadbd.log"; chown mysql:mysql "$STATE/mariadbd.log"
    spawn mariadbd /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --socket="$MYSQL_SOCK" \
        --bind-address=127.0.0.1 --port=3306 --innodb-lock-wait-timeout=900 --innodb-buffer-pool-size=512M \
        --log-error="$STATE/mariadbd.log"
    wait_for 30 mariadb-admin --socket="$MYSQL_SOCK" ping || fail "MariaDB does not answer" mariadbd
fi
if [[ ! -s $STATE/dbpass ]]; then
    (umask 077; head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/dbpass")
fi
DBPASS=$(<"$STATE/dbpass")
mariadb --socket="$MYSQL_SOCK" -u root <<SQL || fail "could not create the accounting DB user" mariadbd
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

# ---- SLURM configuration
read -r NODE MEM < <(slurmd -C 2>/dev/null | awk '/^NodeName=/ {
    for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    print v["NodeName"], v["RealMemory"] }')
[[ -n ${NODE:-} && -n ${MEM:-} ]] || die "could not read the node from 'slurmd -C'"
MEM=$(( MEM * 95 / 100 ))   # a little headroom for the daemons

cat >"$ETC/slurm.conf" <<EOF
$MARKER
# One-node test cluster on localhost; regenerated on every start. Do not edit by hand.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after 10 s instead of 120 s
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# no systemd/cgroups here
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
# several jobs per node, by cores and memory; without DefMemPerCPU a job takes the node's memory
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
# the node claims more CPUs than the machine has, so that several jobs run at once
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MinJobAge=300
InactiveLimit=0
OverTimeLimit=0
# batch jobs may be requeued (scontrol requeue, submitit's checkpoint/preemption)
JobRequeue=1
# accounting: sacct (submitit and Snakemake's SLURM executor read job states from it)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
# fake GPUs (gres.conf)
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NCPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$NCPUS ThreadsPerCore=1 RealMemory=$MEM Gres=gpu:$NGPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

{
    echo "$MARKER"
    echo "# fake GPUs: character devices like /dev/null (plain files are rejected)"
    if (( NGPUS > 0 )); then
        echo "NodeName=$NODE Name=gpu File=$STATE/gpu/nvidia[0-$(( NGPUS - 1 ))]"
    fi
} >"$ETC/gres.conf"
if (( NGPUS == 0 )); then
    sed -i -e 's/ Gres=gpu:0//' "$ETC/slurm.conf"
fi

(
    umask 077
    cat >"$ETC/slurmdbd.conf" <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
LogFile=$STATE/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
)
chown slurm:slurm "$ETC/slurmdbd.conf"
chmod 600 "$ETC/slurmdbd.conf"
chmod 644 "$ETC/slurm.conf" "$ETC/gres.conf"

# ---- slurmdbd, the cluster record, slurmctld, slurmd
spawn slurmdbd /usr/sbin/slurmdbd -D
wait_for 30 sacctmgr -n list cluster || fail "slurmdbd does not answer" slurmdbd mariadbd
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr add cluster failed" slurmdbd
fi
spawn slurmctld /usr/sbin/slurmctld -D -i
spawn slurmd /usr/sbin/slurmd -D

wait_for "$WAIT_S" node_ready \
    || fail "node not idle within ${WAIT_S} s (sinfo: $(node_state || true))" slurmctld slurmd
wait_for 20 sacct -n -X -S now-1minutes || fail "sacct does not work" slurmdbd slurmctld

say "cluster '$CLUSTER' up: node $NODE, partition debug, ${NCPUS} CPUs, ${NGPUS} fake GPUs," \
    "state and logs in $STATE; took $(elapsed) s"
