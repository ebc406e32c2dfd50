#!/usr/bin/env bash
# Here (no GPU needed): build the portable `gpu` preset (sm_90, no -march=native) and copy the
# shared libraries its programs need that a stock Ubuntu GPU machine lacks (yaml-cpp, fmt, Google
# Benchmark, libgomp) into build/gpu/lib, so that build/gpu can travel to a GPU machine with no
# package registry and run there:
#   experiments/gpu_bundle.sh                    # then copy build/gpu-carry to the GPU machine and, there:
#   ABLATE_BUILD=build/gpu-carry ABLATE_PREBUILT=1 experiments/gpu_check.sh OUTDIR
# Only the programs gpu_check.sh runs are built (tests, benchmarks, the ablate binary).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -f build/gpu/CMakeCache.txt ]]; then
  cmake --preset gpu -G Ninja >&2
fi
cmake --build --preset gpu -j "$(nproc)" >&2
mkdir -p build/gpu/lib
for bin in build/gpu/ablate build/gpu/tests/ablate_tests build/gpu/tests/ablate_cuda_tests build/gpu/experiments/bench_*; do
  [[ -x $bin ]] || continue
  ldd "$bin" | awk '/=> \// {print $3}' | grep -E 'yaml-cpp|libfmt|libbenchmark|libgomp' || true
done | sort -u | while read -r lib; do cp -L "$lib" build/gpu/lib/; done
# The reference data (traces, stories260K: about 2 MB) travels inside build/gpu too: a GPU
# machine gets the checkout only, not the ../shared beside it. gpu_check.sh points
# ABLATE_SHARED there when it finds no ../shared.
shared=${ABLATE_SHARED:-../shared}
if [[ -d $shared ]]; then
  mkdir -p build/gpu/shared
  cp -r "$shared/traces" "$shared/models" build/gpu/shared/
fi
# What travels: the programs gpu_check.sh runs, their libraries and the data, in build/gpu's
# layout but without object files and static libraries (the device tool carries 64 MiB at most).
rm -rf build/gpu-carry
mkdir -p build/gpu-carry/tests build/gpu-carry/experiments
cp build/gpu/ablate build/gpu-carry/
cp build/gpu/tests/ablate_cuda_tests build/gpu-carry/tests/
cp build/gpu/experiments/bench_* build/gpu-carry/experiments/ 2>/dev/null || true
cp -r build/gpu/lib build/gpu-carry/
[[ -d build/gpu/shared ]] && cp -r build/gpu/shared build/gpu-carry/
du -sh build/gpu-carry >&2
# There:  ABLATE_BUILD=build/gpu-carry ABLATE_PREBUILT=1 experiments/gpu_check.sh OUTDIR
