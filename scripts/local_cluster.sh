#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the cluster tests and for trying the cluster
# path before a real cluster (docs/clusters.md):
#   scripts/local_cluster.sh start         # as root: munge, slurmctld, slurmd; prints the export line
#   eval "$(scripts/local_cluster.sh env)" # SLURM_CONF for sbatch, squeue, scancel, srun
#   scripts/local_cluster.sh status        # running or not, and sinfo
#   scripts/local_cluster.sh stop          # as root
# The config is generated into $FMNIST_CLUSTER_DIR (default /tmp/fmnist-cluster): one node,
# this machine, with its CPU count and 90 % of its memory, in one partition named "local".
# Start and stop are idempotent. A start with the daemons stopped begins an empty cluster: jobs
# that an earlier one left queued or running (a killed test, a reboot) are dropped with its state,
# since their processes are gone. SLURM's daemons run as root here, as on a real cluster.
# Packages (Debian/Ubuntu): slurmctld slurmd slurm-client munge (scripts/setup.sh --cluster).
set -euo pipefail

dir=${FMNIST_CLUSTER_DIR:-/tmp/fmnist-cluster}
partition=local
conf=$dir/slurm.conf
command=${1:-}

fail() { echo "local_cluster: $*" >&2; exit 1; }

require_root() {
  [ "$(id -u)" -eq 0 ] || fail "$command needs root, since slurmctld, slurmd and munged run as root;" \
    "run it as root, e.g. sudo $0 $command"
}

require_packages() {
  local missing=()
  for program in munged slurmctld slurmd sbatch sinfo; do
    command -v "$program" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$program" >/dev/null 2>&1 \
      || missing+=("$program")
  done
  [ ${#missing[@]} -eq 0 ] || fail "missing ${missing[*]}; install them with" \
    "'sudo apt-get install -y slurmctld slurmd slurm-client munge' (or: scripts/setup.sh --cluster)"
}

pid_alive() {  # pid_alive FILE: the daemon whose PID FILE holds is running
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

write_config() {
  local host cpus memory_mb
  host=$(hostname -s)
  cpus=$(nproc --all)
  memory_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  cat >"$conf" <<EOF
# Written by scripts/local_cluster.sh: a one-node cluster on $host.
ClusterName=fmnist-local
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmdSpoolDir=$dir/spool
StateSaveLocation=$dir/state
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# Completed jobs stay visible to squeue and scontrol for 10 minutes.
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=$partition Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  require_root
  require_packages
  export PATH="$PATH:/usr/sbin"
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -f /etc/munge/munge.key ] || fail "no /etc/munge/munge.key; reinstall munge (it creates the key)"
    mkdir -p /run/munge
    munged --force
  fi
  if pid_alive "$dir/slurmctld.pid" && pid_alive "$dir/slurmd.pid"; then
    echo "local_cluster: already running ($conf)"
  else
    stop_daemons
    rm -rf "$dir/state" "$dir/spool"
    write_config
    slurmctld -f "$conf"
    slurmd -f "$conf"
  fi
  export SLURM_CONF=$conf
  for _ in $(seq 60); do
    if sinfo --noheader --states=idle,mixed,allocated -o %N 2>/dev/null | grep -q .; then
      echo "local_cluster: partition '$partition' is up; to use it, run:"
      echo "export SLURM_CONF=$conf"
      return 0
    fi
    sleep 0.5
  done
  sinfo >&2 || true
  fail "the node did not come up within 30 s; see $dir/log/slurmctld.log and $dir/log/slurmd.log"
}

stop_daemons() {
  local file
  for file in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    if pid_alive "$file"; then
      kill "$(cat "$file")"
      for _ in $(seq 50); do pid_alive "$file" || break; sleep 0.2; done
    fi
    rm -f "$file"
  done
}

case "$command" in
  start) start ;;
  stop)
    require_root
    stop_daemons
    echo "local_cluster: stopped (munged keeps running; its key is the system's)"
    ;;
  status)
    if pid_alive "$dir/slurmctld.pid" && pid_alive "$dir/slurmd.pid"; then
      echo "local_cluster: running ($conf)"
      SLURM_CONF=$conf sinfo
    else
      echo "local_cluster: not running"
      exit 3
    fi
    ;;
  env) echo "export SLURM_CONF=$conf" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
