#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the launcher's integration test (and for trying it out).
#
#   bash scripts/slurm_local.sh start     install (apt, root) if needed, configure, start munged, slurmctld, slurmd
#   bash scripts/slurm_local.sh status    daemons and the node's state
#   bash scripts/slurm_local.sh env       the environment clients need: eval "$(bash scripts/slurm_local.sh env)"
#   bash scripts/slurm_local.sh stop      cancel every job, stop the daemons, leave no job step behind
#
# Everything lives under $BKD_SLURM_DIR (default /tmp/bkd-slurm). $BKD_SLURM_CPUS (default 8) CPUs are
# advertised, more than the machine has, so that several single-CPU array tasks run at once.
# No accounting database: $BKD_SLURM_DIR/bin/sacct stands in for the one query submitit makes.
# Settings and their reasons: the comments beside them below, and docs/grid.md.
set -euo pipefail

DIR=${BKD_SLURM_DIR:-/tmp/bkd-slurm}
CPUS=${BKD_SLURM_CPUS:-8}
CONF=$DIR/slurm.conf
SOCKET=$DIR/munge/munge.socket
HERE=$(cd "$(dirname "$0")" && pwd)

say() { echo "slurm_local: $*" >&2; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && command -v sinfo >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then say "SLURM is not installed and installing it needs root"; return 3; fi
  if ! command -v apt-get >/dev/null; then say "SLURM is not installed and there is no apt-get"; return 3; fi
  say "installing slurmctld slurmd slurm-client munge (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
         slurmctld slurmd slurm-client munge >/dev/null; } || { say "apt-get install failed"; return 3; }
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
  local host mem
  host=$(hostname -s)
  mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  cat > "$CONF" <<EOF
ClusterName=bkdlocal
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmctldPort=${BKD_SLURM_PORT:-16817}
SlurmdPort=$(( ${BKD_SLURM_PORT:-16817} + 1 ))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET,cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
SchedulerParameters=bf_interval=2,sched_interval=2
KillWait=5
JobRequeue=1
ReturnToService=2
MinJobAge=1800
SlurmdParameters=config_overrides
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName=$host NodeAddr=127.0.0.1 CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=${mem:-4000} State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=urgent Nodes=$host Default=NO MaxTime=INFINITE State=UP PriorityTier=2
EOF
}

start() {
  install_packages
  if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then say "already running ($CONF)"; return 0; fi
  stop >/dev/null 2>&1 || true
  mkdir -p "$DIR"/{munge,spool,state,log,bin}
  chmod 0711 "$DIR/munge"  # 0700 fails with "Socket is inaccessible"
  [ -f "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key" >/dev/null 2>&1 \
    || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 2>/dev/null
  chmod 0400 "$DIR/munge/munge.key"
  munged --force --socket="$SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munge/munged.pid" \
    --seed-file="$DIR/munge/munged.seed" --log-file="$DIR/log/munged.log"
  for _ in $(seq 50); do munge -S "$SOCKET" -n 2>/dev/null | unmunge -S "$SOCKET" >/dev/null 2>&1 && break; sleep 0.1; done
  write_conf
  install -m 0755 "$HERE/sacct_standin" "$DIR/bin/sacct"
  export SLURM_CONF=$CONF
  setsid slurmctld -D -i -f "$CONF" >>"$DIR/log/slurmctld.out" 2>&1 < /dev/null &
  echo $! > "$DIR/slurmctld.pid"
  setsid slurmd -D -N "$(hostname -s)" -f "$CONF" >>"$DIR/log/slurmd.out" 2>&1 < /dev/null &
  echo $! > "$DIR/slurmd.pid"
  for _ in $(seq 150); do
    state=$(sinfo -h -n "$(hostname -s)" -o %T 2>/dev/null | head -n1 || true)
    case "$state" in idle*|mixed*|allocated*) say "up: node $(hostname -s) $state, $CPUS CPUs ($CONF)"; return 0 ;; esac
    sleep 0.2
  done
  say "the node did not become idle; logs in $DIR/log"
  return 4
}

stop() {
  export SLURM_CONF=$CONF
  if [ -f "$CONF" ] && alive "$DIR/slurmctld.pid"; then
    scancel --quiet --full $(squeue -h -o %A 2>/dev/null | sort -u) 2>/dev/null || true
    for _ in $(seq 100); do [ -z "$(squeue -h -t running,completing,pending 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  for name in slurmd slurmctld munge/munged; do
    if alive "$DIR/$name.pid"; then kill "$(cat "$DIR/$name.pid")" 2>/dev/null || true; fi
  done
  for name in slurmd slurmctld munge/munged; do
    for _ in $(seq 50); do alive "$DIR/$name.pid" || break; sleep 0.1; done
    if alive "$DIR/$name.pid"; then kill -9 "$(cat "$DIR/$name.pid")" 2>/dev/null || true; fi
    rm -f "$DIR/$name.pid"
  done
  # job steps outlive slurmd: make sure none of ours is left, with the processes they run
  pkill -9 -f "slurmstepd.*" 2>/dev/null || true
  say "stopped"
}

status() {
  export SLURM_CONF=$CONF
  for name in munge/munged slurmctld slurmd; do
    if alive "$DIR/$name.pid"; then echo "$name: running (pid $(cat "$DIR/$name.pid"))"; else echo "$name: stopped"; fi
  done
  if alive "$DIR/slurmctld.pid"; then sinfo; squeue; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF PATH=$DIR/bin:\$PATH" ;;
  *) echo "usage: bash scripts/slurm_local.sh start|stop|status|env" >&2; exit 2 ;;
esac
