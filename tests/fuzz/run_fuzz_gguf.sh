#!/usr/bin/env bash
# Builds the GGUF reader's libFuzzer target with clang (Debian: clang-14, libclang-rt-14-dev)
# under ASan + UBSan, and fuzzes it for SECONDS (default 60).
#   tests/fuzz/run_fuzz_gguf.sh [SECONDS]      e.g. 600 for the 10-minute run
# Output: build/fuzz-gguf/ (binary, corpus/, crash-* files on failure). Exit status 0 = no crash.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SECONDS_TO_RUN="${1:-60}"
OUT="$ROOT/build/fuzz-gguf"
CXX="${FUZZ_CXX:-$(command -v clang++-14 || command -v clang++)}"
mkdir -p "$OUT/corpus"
FLAGS=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -I"$ROOT/core")
"$CXX" "${FLAGS[@]}" "$ROOT/tests/fuzz/fuzz_gguf.cpp" "$ROOT/core/model/gguf.cpp" "$ROOT/core/model/bpe_tokenizer.cpp" \
  "$ROOT/core/model/tokenizer.cpp" "$ROOT/core/model/weights.cpp" "$ROOT/core/model/shape.cpp" \
  "$ROOT/core/config/paths.cpp" -DABLATE_SOURCE_DIR="\"$ROOT\"" -lfmt -o "$OUT/fuzz_gguf"
python3 "$ROOT/tests/fuzz/make_seeds.py" "$OUT/seeds"
cd "$OUT"
exec ./fuzz_gguf -max_total_time="$SECONDS_TO_RUN" -max_len=16384 -rss_limit_mb=2048 -timeout=10 \
  -print_final_stats=1 corpus seeds
