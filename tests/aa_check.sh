#!/usr/bin/env bash
# A/A self-check: two arms with the same engine config (they differ only in slo.e2el_ms, which
# the engine never reads), 10 interleaved repeats each on the tiny model, compared by
# plots/compare.py: the ratio's 95 % interval must contain 1. Under the null a 95 % interval
# misses 1 about 5 % of the time, so a miss is retried once with another seed (a false alarm
# then has odds of about 1 in 400); two misses mean the harness (run order, statistics) is biased.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ablate=${1:-$root/build/default/ablate}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/aa.yaml" <<'YAML'
experiment: aa
model: {source: synthetic, preset: tiny}
max_seq_len: 128
kv: {memory_mb: 1}
threads: 1
repeat: 10
workload: {requests: 8, prompt_len: 32, output_len: 64}
sweep:
  slo.e2el_ms: [0, 1000000]
YAML
for seed in 1 2; do
  "$ablate" run "$tmp/aa.yaml" --set seed=$seed --quiet --out "$tmp/r" --run-id "s$seed" > /dev/null 2>&1
  row=$(/usr/bin/python3 "$root/plots/compare.py" "$tmp/r/aa/s$seed" --baseline slo.e2el_ms=0 \
        --metrics output_throughput --format csv | awk -F, 'NR > 1 && $1 == "1000000"')
  IFS=, read -r _ n _ _ _ _ _ _ _ _ _ _ _ ratio lo hi _ excludes <<< "$row"
  echo "A/A seed $seed: ratio $ratio [$lo, $hi], n $n per arm, excludes 1: $excludes"
  [[ -n $lo && -n $hi ]] || { echo "no interval"; exit 1; }
  [[ $excludes == False ]] && exit 0
done
echo "A/A check failed twice: the interval excluded 1 with identical arms"
exit 1
