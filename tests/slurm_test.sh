#!/usr/bin/env bash
# ablate on a real Slurm: a single-node cluster started for the test (tests/slurm/local_cluster.sh).
#  1. A sweep as a 3-task array (`ablate slurm --shards 3 --submit`), merged by the dependent job,
#     has the units and per-request lengths of a one-process run.
#  2. A task sent SIGTERM mid-run (`scancel --signal=TERM`, as at a time limit or a preemption)
#     stops cleanly, requeues itself and resumes: the merged result has every unit exactly once.
# Skipped (77) without slurm-wlm or without root. Stops exactly the daemons it started.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ablate=${1:-$root/build/default/ablate}
command -v slurmctld >/dev/null && command -v munged >/dev/null || { echo "SKIPPED: slurm-wlm/munge not installed (.ci/setup installs them)"; exit 77; }
[ "$(id -u)" = 0 ] || { echo "SKIPPED: the local cluster runs its daemons as root"; exit 77; }
scratch=$(mktemp -d)
# shellcheck source=slurm/local_cluster.sh
source "$root/tests/slurm/local_cluster.sh"
trap 'cluster_stop; rm -rf "$scratch"' EXIT
cluster_start "$scratch/cluster" || exit 1
fail() {
  echo "FAILED: $*"
  for f in "$scratch"/results/*/*/slurm/*.out; do echo "== $f"; tail -20 "$f"; done
  for f in slurmctld slurmd; do echo "== $f.log"; grep -v "^\s*$" "$scratch/cluster/$f.log" | tail -40; done
  exit 1
}

# Waits until the jobs have left the queue (requeues included), at most $2 seconds.
wait_jobs() {
  for _ in $(seq $(($2 * 5))); do
    [ -z "$(squeue -h -j "$1" 2>/dev/null)" ] && return 0
    sleep 0.2
  done
  squeue; fail "jobs $1 still queued after $2 s"
}

# Compares two run folders' units (summary keys) and per-request lengths.
same_units() {
  /usr/bin/python3 - "$1" "$2" <<'PY' || fail "merged run differs from the one-process run ($1 vs $2)"
import sys, pandas as pd
a, b = sys.argv[1], sys.argv[2]
for f, keys, cols in [("summary.csv", ["point", "repeat"], ["round", "run_index", "completed"]),
                      ("requests.csv", ["point", "repeat", "request_id"], ["prompt_len", "output_len"])]:
    x = pd.read_csv(f"{a}/{f}")[keys + cols].sort_values(keys).reset_index(drop=True)
    y = pd.read_csv(f"{b}/{f}")[keys + cols].sort_values(keys).reset_index(drop=True)
    assert not y.duplicated(keys).any(), f"{f}: duplicate units"
    assert x.equals(y), f"{f}: {len(x)} vs {len(y)} rows\n{x.compare(y) if len(x) == len(y) else ''}"
    print(f"{f}: {len(y)} rows, the same units as the one-process run")
PY
}

out=$scratch/results
cat > "$scratch/sweep.yaml" <<'YAML'
experiment: slurm_sweep
model: {source: synthetic, preset: tiny}
max_seq_len: 64
kv: {memory_mb: 1}
threads: 1
repeat: 2
workload: {requests: 4, prompt_len: 8, output_len: 8}
sweep:
  scheduler.max_batch: [1, 2, 4]
  batching: [static, continuous]
YAML
"$ablate" run "$scratch/sweep.yaml" --quiet --out "$out" --run-id local > /dev/null 2>&1 || fail "local run"
sub=$("$ablate" slurm "$scratch/sweep.yaml" --shards 3 --run-id array --out "$out" --submit) || fail "ablate slurm --submit"
echo "$sub"
jobs=$(echo "$sub" | sed -n 's/^watch: *squeue -j //p')
wait_jobs "$jobs" 120
[ -f "$out/slurm_sweep/array/summary.csv" ] || fail "no merged summary.csv"
same_units "$out/slurm_sweep/local" "$out/slurm_sweep/array"
echo "1. 3-shard array + merge: OK"

# 2. A task stopped by SIGTERM requeues itself and resumes (each unit about 1.5 s here).
cat > "$scratch/long.yaml" <<'YAML'
experiment: slurm_requeue
model: {source: llama2c, path: "${shared}/models/stories260K.bin", tokenizer: "${shared}/models/tok512.bin"}
threads: 1
repeat: 3
sampling: {temperature: 1, stop_at_eos: true}
kv: {memory_mb: 8}
workload: {requests: 40, prompt_len: 4, output_len: 400}
sweep:
  scheduler.max_batch: [1, 4]
YAML
"$ablate" run "$scratch/long.yaml" --quiet --out "$out" --run-id local > /dev/null 2>&1 || fail "local run (long)"
sub=$("$ablate" slurm "$scratch/long.yaml" --shards 2 --run-id requeue --out "$out" --submit) || fail "ablate slurm --submit"
array=$(echo "$sub" | sed -n 's/^submitted: array \([0-9]*\).*/\1/p')
jobs=$(echo "$sub" | sed -n 's/^watch: *squeue -j //p')
partial=$out/slurm_requeue/requeue/shards/0.partial
for _ in $(seq 300); do  # until shard 0 has finished a unit
  [ -f "$partial/summary.csv" ] && [ "$(wc -l < "$partial/summary.csv")" -ge 2 ] && break
  sleep 0.1
done
[ -f "$partial/summary.csv" ] || fail "shard 0 never started"
scancel --signal=TERM "${array}_0" || fail "scancel"
echo "sent SIGTERM to ${array}_0 at ${SECONDS} s"
# Slurm holds a requeued job for about two minutes (Reason=BeginTime); the test lifts that, once the
# first run's batch script has ended on the node (released at once, its relaunch can race the cleanup).
for _ in $(seq 600); do
  case "$(squeue -h -j "${array}_0" -o '%T %r' 2>/dev/null)" in
    "PENDING BeginTime"*) sleep 2; scontrol update JobId="${array}_0" StartTime=now && echo "requeued; released at ${SECONDS} s"; break ;;
  esac
  sleep 0.1
done
wait_jobs "$jobs" 240
echo "jobs done at ${SECONDS} s"
grep -q "requeueing" "$out/slurm_requeue/requeue/slurm/shard-0.out" || fail "shard 0 was not requeued"
grep -q "resuming" "$out/slurm_requeue/requeue/slurm/shard-0.out" || fail "shard 0 did not resume"
[ -f "$out/slurm_requeue/requeue/summary.csv" ] || fail "no merged summary.csv after the requeue"
same_units "$out/slurm_requeue/local" "$out/slurm_requeue/requeue"
echo "2. SIGTERM, requeue, resume, merge: OK"
