#!/usr/bin/env bash
# The CPU kernels have one code path per instruction set (AVX-512 with and without BF16, AVX2, and
# generic x86-64), chosen at compile time by -march=native, so a build only ever compiles its own
# host's path. This compiles the kernel sources for every path (compile only: nothing here can run
# another host's instructions) with the project's warning flags as errors, so a change that breaks
# another host's path fails here, on any x86 host. Usage: kernel_isa_compile.sh [CXX]
set -euo pipefail
cxx=${1:-c++}
cd "$(dirname "$0")/.."
[[ $(uname -m) == x86_64 ]] || { echo "not an x86-64 host: skipped"; exit 77; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
compile() {  # ARCH SRC
  local o="$out/$1_$(basename "$2").o"
  if ! "$cxx" -std=c++20 -O2 -march="$1" -fopenmp -Wall -Wextra -Werror -DEIGEN_DONT_PARALLELIZE \
       -Ikernels -isystem /usr/include/eigen3 -c "$2" -o "$o" > "$o.log" 2>&1; then
    echo "-march=$1 $2: does not compile"; head -20 "$o.log"; return 1
  fi
}
export -f compile
export cxx out
archs=(sapphirerapids skylake-avx512 znver3 haswell x86-64)
if printf '%s\n' "${archs[@]}" | xargs -P "$(nproc)" -I{} \
     bash -c 'for s in kernels/cpu/*.cpp; do compile {} "$s" || exit 1; done'; then
  echo "kernels/cpu/*.cpp compile for -march=${archs[*]}"
else
  exit 1
fi
