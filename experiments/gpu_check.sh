#!/usr/bin/env bash
# On a machine with a GPU: configure and build the portable `gpu` preset, run the CUDA tests
# (kernels and the CUDA backend against the CPU), every experiments/bench_* program and the
# GPU-scale ablation configs (configs/gpu/*.yaml: Llama-2-7B shape, bf16, synthetic), and write
# all logs and results into OUTDIR (ablation CSVs under OUTDIR/results/).
# No network use. Exit status: 0 only if the build succeeded and the CUDA tests ran and passed
# (a skip for want of a device counts as a failure here).
#   experiments/gpu_check.sh OUTDIR
#   BENCH_ARGS='--benchmark_filter=Cuda' experiments/gpu_check.sh OUTDIR   # extra benchmark flags
#   BENCHES='bench_cuda_decode' experiments/gpu_check.sh OUTDIR   # only these benchmark programs
#   ABLATIONS='kv attention' experiments/gpu_check.sh OUTDIR   # only these configs/gpu/*.yaml ("" = none)
#   STEP_TIMEOUT=120 experiments/gpu_check.sh OUTDIR   # seconds any one step may run (default 600)
#   DEADLINE=400 experiments/gpu_check.sh OUTDIR   # no step runs past 400 s from the start (those left are skipped)
#   SDPA_ARGS='--kinds prefill' experiments/gpu_check.sh OUTDIR   # arguments of experiments/sdpa_compare.py
#   SDPA=0 experiments/gpu_check.sh OUTDIR   # without the PyTorch SDPA comparison
#   HIDDEN_TESTS='v6' experiments/gpu_check.sh OUTDIR   # hidden CUDA test tags to run, each alone
#   NCU=1 / NCU_STEP=1 / NCU_PREFILL=1 / NCU_GEMV=1 experiments/gpu_check.sh OUTDIR   # Nsight Compute:
#       decode attention's speed of light / every kernel of one decode step (NCU_STEP_ARGS: more
#       `ablate run` flags) / the prefill versions' stalls / the GEMV versions' memory behaviour
#   ABLATE_BUILD=build/gpu-carry ABLATE_PREBUILT=1 experiments/gpu_check.sh OUTDIR
#       # use the programs experiments/gpu_bundle.sh built here and copied to build/gpu-carry
# A GPU machine without a package registry (CMake, nvcc and PyTorch only) can run a build made on
# another machine: experiments/gpu_bundle.sh builds build/gpu and copies it, with the shared
# libraries such a machine lacks (lib/), to build/gpu-carry; copy that folder over.
set -uo pipefail

out=${1:?usage: experiments/gpu_check.sh OUTDIR}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$root" || exit 1
build=${ABLATE_BUILD:-build/gpu}  # build/gpu-carry: the lean copy experiments/gpu_bundle.sh makes
export PATH=$PATH:/usr/local/cuda/bin

{
  date -u
  git rev-parse HEAD 2>/dev/null
  nvidia-smi 2>&1 || echo "nvidia-smi failed"
  nvcc --version 2>&1
  echo "nproc: $(nproc)  OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}"
} > "$out/device.txt"

status=0
if [[ -z ${ABLATE_SHARED:-} && ! -d ../shared && -d $build/shared ]]; then
  export ABLATE_SHARED=$root/$build/shared  # the copy experiments/gpu_bundle.sh made
fi
export LD_LIBRARY_PATH="$root/$build/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Each step runs under `timeout`: STEP_TIMEOUT seconds, or less where DEADLINE (seconds from the
# start) comes first; a step with under 10 s left is skipped.
step_ok() {
  local cap=${STEP_TIMEOUT:-600}
  if [[ -n ${DEADLINE:-} ]]; then
    local left=$((DEADLINE - SECONDS))
    ((left < cap)) && cap=$left
  fi
  if ((cap < 10)); then echo "gpu_check [${SECONDS}s]: $1 SKIPPED: the deadline is near"; status=1; return 1; fi
  step=(timeout "$cap")
}
if [[ ${ABLATE_PREBUILT:-0} == 1 ]]; then
  echo "gpu_check [${SECONDS}s]: using the prebuilt $build"
elif ! cmake --preset gpu > "$out/configure.log" 2>&1; then
  echo "gpu_check [${SECONDS}s]: configure failed (see $out/configure.log)"; exit 1
elif ! cmake --build --preset gpu -j "$(nproc)" > "$out/build.log" 2>&1; then
  # Still check what can be built: the CUDA tests and the benchmarks, each on its own.
  echo "gpu_check [${SECONDS}s]: full build failed (see $out/build.log); building the check targets alone"; status=1
  for src in tests/cuda/test_cuda_kernels.cpp experiments/bench_*.cpp; do
    target=$(basename "$src" .cpp)
    [ "$target" = test_cuda_kernels ] && target=ablate_cuda_tests
    cmake --build --preset gpu -j "$(nproc)" --target "$target" >> "$out/build_targets.log" 2>&1 ||
      echo "gpu_check [${SECONDS}s]: target $target failed to build (see $out/build_targets.log)"
  done
fi
[ -x "$build/tests/ablate_cuda_tests" ] || { echo "gpu_check [${SECONDS}s]: no CUDA test binary"; exit 1; }

step_ok "CUDA tests"
"${step[@]}" "$build/tests/ablate_cuda_tests" --durations yes > "$out/cuda_tests.txt" 2>&1
rc=$?
# Kernels not yet run on a GPU can be hidden from the default run ("[.]" and a tag); HIDDEN_TESTS
# names the tags to run here, each on its own, so that a fault in one cannot stop the verified
# tests. Hidden at present (written without a GPU, 2026-12-06): kv.dtype apart from dtype, the
# prefix cache's device copies, Q/K/V biases and scaled RoPE; unhide each once it has passed.
for tag in ${HIDDEN_TESTS-kv_dtype prefix_cache qwen2 llama3}; do
  step_ok "CUDA tests [$tag]" || continue
  if "${step[@]}" "$build/tests/ablate_cuda_tests" "[$tag]" > "$out/cuda_tests_$tag.txt" 2>&1; then
    echo "gpu_check [${SECONDS}s]: CUDA tests [$tag] passed"
  else
    echo "gpu_check [${SECONDS}s]: CUDA tests [$tag] FAILED (see $out/cuda_tests_$tag.txt; not a default kernel)"
  fi
done
case $rc in
  0) echo "gpu_check [${SECONDS}s]: CUDA tests passed" ;;
  77) echo "gpu_check [${SECONDS}s]: CUDA tests $(head -1 "$out/cuda_tests.txt")"; status=1 ;;
  *) echo "gpu_check [${SECONDS}s]: CUDA tests FAILED (rc=$rc, see $out/cuda_tests.txt)"; status=1 ;;
esac

# The CUDA benchmarks (the CPU ones, bench_attention/bench_forward/bench_kernels, say nothing
# about the GPU).
for name in ${BENCHES-bench_cuda_decode bench_attention_cuda}; do
  bench=$build/experiments/$name
  [ -x "$bench" ] || { echo "gpu_check [${SECONDS}s]: no $bench"; status=1; continue; }
  step_ok "$name" || continue
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
  if "${step[@]}" "$bench" --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
      --benchmark_out="$out/$name.json" --benchmark_out_format=json ${BENCH_ARGS:-} > "$out/$name.txt" 2>&1; then
    if grep -q "SKIPPED" "$out/$name.txt"; then  # no device: the program ran nothing
      echo "gpu_check [${SECONDS}s]: $name $(grep -m1 -o 'SKIPPED.*' "$out/$name.txt")"; status=1
    else
      echo "gpu_check [${SECONDS}s]: $name done"
    fi
  else
    echo "gpu_check [${SECONDS}s]: $name FAILED (see $out/$name.txt)"; status=1
  fi
done
# PyTorch's SDPA on the attention benchmark's shapes, for the side-by-side comparison.
if [[ ${SDPA:-1} == 0 ]]; then
  echo "gpu_check [${SECONDS}s]: sdpa_compare skipped (SDPA=0)"
elif python3 -c 'import torch; assert torch.cuda.is_available()' 2> /dev/null; then
  # shellcheck disable=SC2086  # SDPA_ARGS is a list of flags
  if step_ok sdpa_compare && "${step[@]}" python3 experiments/sdpa_compare.py ${SDPA_ARGS:-} > "$out/sdpa.csv" 2> "$out/sdpa.err"; then
    echo "gpu_check [${SECONDS}s]: sdpa_compare done"
  else
    echo "gpu_check [${SECONDS}s]: sdpa_compare FAILED (see $out/sdpa.err)"; status=1
  fi
else
  echo "gpu_check [${SECONDS}s]: sdpa_compare skipped: no python3 with CUDA torch"
fi
# GPU-scale ablations: the same engine and configs as on the CPU, backend cuda. Before the
# Nsight Compute runs, which only diagnose: a DEADLINE cuts those first.
for name in ${ABLATIONS-batching decode decode_kernels attention kv speculative}; do
  cfg=configs/gpu/$name.yaml
  step_ok "ablation $name" || continue
  if "${step[@]}" "$build/ablate" run "$cfg" --out "$out/results" --run-id "$name" --quiet > "$out/ablation_$name.txt" 2>&1; then
    echo "gpu_check [${SECONDS}s]: ablation $name done"
  else
    echo "gpu_check [${SECONDS}s]: ablation $name FAILED (see $out/ablation_$name.txt)"; status=1
  fi
done
# NCU=1: the README's Nsight Compute command line on a short decode run (the capture window of
# steps [5, 7), the attention kernels inside the ablate@attention NVTX range).
if [[ ${NCU:-0} == 1 ]]; then
  if ! command -v ncu > /dev/null; then
    echo "gpu_check [${SECONDS}s]: ncu SKIPPED: not on the PATH"
  elif step_ok ncu && "${step[@]}" ncu --profile-from-start off --nvtx --nvtx-include "ablate@attention/" --section SpeedOfLight \
      -k regex:decode -c 10 "$build/ablate" run configs/gpu/decode.yaml --set attention=flash --set cuda_graphs=false --set cuda_pdl=false \
      --set profile.start_step=5 --set profile.end_step=7 --out "$out/ncu_results" --quiet > "$out/ncu.txt" 2>&1; then
    echo "gpu_check [${SECONDS}s]: ncu done ($(grep -c 'flash_decode' "$out/ncu.txt") kernel reports)"
  else
    echo "gpu_check [${SECONDS}s]: ncu FAILED (see $out/ncu.txt)"; status=1
  fi
fi
# NCU_STEP=1: every kernel of one batch-1 decode step of configs/gpu/decode.yaml (graphs off, the
# capture window of step 5), its GPU time only: where the step's time goes, kernel by kernel.
# Caches are not flushed and clocks not locked between kernels (--cache-control none
# --clock-control none), so each kernel meets the L2 its predecessors left, as in a real step;
# ncu still serialises them (no pdl overlap). NCU_STEP_ARGS: more `ablate run` flags, e.g.
# NCU_STEP_ARGS='--set cuda_l2_prefetch=true' (the output projection then reads from L2).
if [[ ${NCU_STEP:-0} == 1 ]] && command -v ncu > /dev/null; then
  # shellcheck disable=SC2086  # NCU_STEP_ARGS is a list of flags
  if step_ok "ncu step" && "${step[@]}" ncu --profile-from-start off --cache-control none --clock-control none \
      --metrics gpu__time_duration.sum --print-summary per-kernel \
      "$build/ablate" run configs/gpu/decode.yaml --set attention=flash --set cuda_graphs=false --set cuda_pdl=false \
      --set cuda_l2_prefetch=false --set profile.start_step=5 --set profile.end_step=6 ${NCU_STEP_ARGS:-} \
      --out "$out/ncu_step_results" --quiet > "$out/ncu_step.txt" 2>&1; then
    echo "gpu_check [${SECONDS}s]: ncu step done"
  else
    echo "gpu_check [${SECONDS}s]: ncu step FAILED (see $out/ncu_step.txt)"
  fi
fi
# NCU_GEMV=1: Nsight Compute's memory sections on the down projection's GEMV (in 11008, out 4096)
# per version (NCU_GEMV_VERSIONS): where the small matrices lose bandwidth.
if [[ ${NCU_GEMV:-0} == 1 ]] && command -v ncu > /dev/null; then
  for v in ${NCU_GEMV_VERSIONS-2 8 10 11}; do
    step_ok "ncu gemv v$v" || continue
    "${step[@]}" ncu --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats \
      -k regex:gemv -c 1 "$build/experiments/bench_cuda_decode" \
      --benchmark_filter="BM_GemvBf16/in:11008/out:4096/version:$v/" --benchmark_min_time=0.001 \
      > "$out/ncu_gemv_v$v.txt" 2>&1 &&
      echo "gpu_check [${SECONDS}s]: ncu gemv v$v done" || echo "gpu_check [${SECONDS}s]: ncu gemv v$v FAILED"
  done
fi
# NCU_PREFILL=1: Nsight Compute's occupancy, warp-stall and pipe sections on one 4096-token
# llama2-7b prefill per kernel version (NCU_PREFILL_VERSIONS), for the issue-order diagnosis.
if [[ ${NCU_PREFILL:-0} == 1 ]] && command -v ncu > /dev/null; then
  for v in ${NCU_PREFILL_VERSIONS-2 4 5}; do
    step_ok "ncu prefill v$v" || continue
    "${step[@]}" ncu --section SpeedOfLight --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis \
      --section LaunchStats -k regex:flash_prefill -c 1 "$build/experiments/bench_attention_cuda" \
      --benchmark_filter="BM_CudaFlashPrefill/shape:1/ctx:4096/page:0/bf16:1/version:$v/" --benchmark_min_time=0.001 \
      > "$out/ncu_prefill_v$v.txt" 2>&1 &&
      echo "gpu_check [${SECONDS}s]: ncu prefill v$v done" || echo "gpu_check [${SECONDS}s]: ncu prefill v$v FAILED"
  done
fi
# A compact summary on stdout (a device tool may return only the end of the output): test
# verdicts, benchmark medians, the ablation tables.
{
  echo "== summary"
  grep -hE "^(PASS|FAIL)|All tests passed|test cases:|FAILED" "$out"/cuda_tests*.txt 2> /dev/null | cut -c1-140
  for f in "$out"/bench_*.txt; do
    [ -f "$f" ] && grep -E "_median" "$f" | sed -E 's/manual_time_median//; s/ +/ /g' | cut -d' ' -f1,2,3
  done
  [ -f "$out/ncu_step.txt" ] && { echo "-- ncu_step.txt"; grep -E "^ +[a-z_0-9:<>, ]+\(|gpu__time_duration|Invocations" "$out/ncu_step.txt" | sed -E 's/ +/ /g' | cut -c1-150 | head -60; }
  for f in "$out"/ncu_prefill_v*.txt "$out"/ncu_gemv_v*.txt; do
    [ -f "$f" ] && { echo "-- $(basename "$f")"; grep -E "Duration|DRAM Throughput|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Issue Slots Busy|stalled|One or More" "$f" | sed -E 's/ +/ /g' | cut -c1-220 | head -16; }
  done
  for f in "$out"/ablation_*.txt; do
    [ -f "$f" ] && { echo "-- $(basename "$f")"; grep -m1 "cuda backend: gemv" "$f" | cut -c1-700; grep -E "^\|" "$f" | cut -c1-160; }
  done
} 2> /dev/null
exit $status
