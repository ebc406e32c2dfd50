#!/usr/bin/env bash
# A single-node Slurm cluster (Debian's slurm-wlm and munge) on this machine, in a scratch folder,
# for tests. Source it, then:
#   cluster_start DIR     # writes DIR/slurm.conf, starts munged (unless one runs), slurmctld, slurmd;
#                         # exports SLURM_CONF; waits until the node is idle
#   cluster_stop          # stops exactly the daemons cluster_start started (by pid)
# Needs root (SlurmUser=root) and the packages .ci/setup installs (slurm-wlm, munge).

_cluster_pids=()

cluster_stop() {
  local pid
  for pid in "${_cluster_pids[@]}"; do
    kill "$pid" 2>/dev/null
  done
  for pid in "${_cluster_pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  done
  _cluster_pids=()
}

cluster_start() {
  local dir=$1 host cpus mem port
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024) - 2048}' /proc/meminfo)
  port=$((20000 + RANDOM % 20000))
  mkdir -p "$dir/state" "$dir/spool"
  cat > "$dir/slurm.conf" <<CONF
ClusterName=ablatetest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
SchedulerParameters=defer
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF=$dir/slurm.conf
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged --foreground > "$dir/munged.log" 2>&1 &
    _cluster_pids+=($!)
    for _ in $(seq 50); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.1; done
  fi
  /usr/sbin/slurmctld -D -f "$SLURM_CONF" > "$dir/slurmctld.out" 2>&1 &
  _cluster_pids+=($!)
  sleep 1
  /usr/sbin/slurmd -D -f "$SLURM_CONF" > "$dir/slurmd.out" 2>&1 &
  _cluster_pids+=($!)
  for _ in $(seq 100); do
    if sinfo -h -o %t 2>/dev/null | grep -qx idle; then return 0; fi
    sleep 0.2
  done
  echo "local Slurm cluster did not come up; logs in $dir" >&2
  tail -5 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 2>/dev/null
  return 1
}
