#!/usr/bin/env bash
# The GGUF reader's fuzz run (kept for old command lines): tests/fuzz/run_fuzz.sh gguf [SECONDS].
exec "$(dirname "${BASH_SOURCE[0]}")/run_fuzz.sh" gguf "$@"
