#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/CMakeLists.txt: clang, ASan + UBSan) and fuzzes one
# reader for SECONDS (default 60).
#   tests/fuzz/run_fuzz.sh NAME [SECONDS] [libFuzzer options...]
#   NAME: gguf | config | llama2c | llama2c_tokenizer | trace | prompts | bpe | safetensors | all (each in turn, SECONDS each)
#   e.g. tests/fuzz/run_fuzz.sh config 600            the 10-minute run
#        tests/fuzz/run_fuzz.sh trace 600 -fork=1 -ignore_crashes=1   keep going past crashes
# Build: build/fuzz-cmake (FUZZ_JOBS parallel jobs, default 2). Run: build/fuzz-NAME/ (corpus/ grows
# there; crash-*, timeout-*, oom-* files on failure); seeds from tests/fuzz/corpus/NAME/ (config: also
# configs/; gguf: written by make_seeds.py). Exit status 0 = no crash, hang or leak.
# A saved input replays with: build/fuzz-cmake/fuzz_NAME FILE
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ALL=(gguf config llama2c llama2c_tokenizer trace prompts bpe safetensors)
NAME="${1:-}"
SECONDS_TO_RUN="${2:-60}"
shift $(($# < 2 ? $# : 2))
if [[ "$NAME" == all ]]; then
  for n in "${ALL[@]}"; do "$0" "$n" "$SECONDS_TO_RUN" "$@"; done
  exit 0
fi
case " ${ALL[*]} " in *" $NAME "*) ;; *) echo "usage: $0 {${ALL[*]// /|}|all} [SECONDS] [libFuzzer options]" >&2; exit 2 ;; esac

CXX="${FUZZ_CXX:-$(command -v clang++-14 || command -v clang++)}"
BUILD="$ROOT/build/fuzz-cmake"
if [[ ! -f "$BUILD/build.ninja" ]]; then
  cmake -S "$ROOT/tests/fuzz" -B "$BUILD" -G Ninja -DCMAKE_CXX_COMPILER="$CXX" -DCMAKE_BUILD_TYPE= >&2
fi
cmake --build "$BUILD" -j "${FUZZ_JOBS:-2}" --target "fuzz_$NAME" >&2

OUT="$ROOT/build/fuzz-$NAME"
mkdir -p "$OUT/corpus"
seeds=()
[[ -d "$ROOT/tests/fuzz/corpus/$NAME" ]] && seeds+=("$ROOT/tests/fuzz/corpus/$NAME")
opts=(-timeout=10 -max_len=4096)
case "$NAME" in
  gguf)   python3 "$ROOT/tests/fuzz/make_seeds.py" "$OUT/seeds"; seeds+=("$OUT/seeds"); opts=(-timeout=10 -max_len=16384) ;;
  config) seeds+=("$ROOT/configs"); opts=(-timeout=20 -max_len=8192 -dict="$ROOT/tests/fuzz/config.dict") ;;
  llama2c) opts=(-timeout=10 -max_len=8192) ;;
  llama2c_tokenizer) opts=(-timeout=10 -max_len=12288) ;;
  safetensors)  # one seed: an F32 [2] and a BF16 [2] tensor
    mkdir -p "$OUT/seeds"; seeds+=("$OUT/seeds")
    h='{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},"__metadata__":{"format":"pt"}}'
    { printf "\\x$(printf %02x ${#h})\\x00\\x00\\x00\\x00\\x00\\x00\\x00"; printf '%s' "$h"; printf '\x00\x00\x80\x3f\x00\x00\x00\xc0\xc0\x3f\x00\xbf'; } >"$OUT/seeds/seed.safetensors" ;;
esac
cd "$OUT"
# Leaks are checked (ASan's default); a reader that leaks on every bad input would exhaust a long run.
exec "$BUILD/fuzz_$NAME" -max_total_time="$SECONDS_TO_RUN" -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$OUT/" "${opts[@]}" "$@" corpus "${seeds[@]}"
