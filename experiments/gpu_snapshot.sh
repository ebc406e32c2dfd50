#!/usr/bin/env bash
# For GPU jobs that may be cut off at a time limit (a batch system's wall time, a short lease):
# what a killed job leaves is only what it already wrote, so run
# experiments/gpu_check.sh into a scratch folder and copy that folder, packed, into DEST every
# 20 s (atomically: DEST/out.tgz is always a whole archive) and once more at the end.
#   experiments/gpu_snapshot.sh "$OUT"            # with gpu_check.sh's variables in the environment
#   ABLATE_BUILD=build/gpu-carry ABLATE_PREBUILT=1 DEADLINE=540 experiments/gpu_snapshot.sh "$OUT"
# Exit status: gpu_check.sh's.
set -uo pipefail
dest=${1:?usage: experiments/gpu_snapshot.sh DEST}
mkdir -p "$dest"
work=$(mktemp -d)
snapshot() { tar czf "$dest/.out.tgz" -C "$work" gpu_check && mv "$dest/.out.tgz" "$dest/out.tgz"; }
(while sleep 20; do snapshot 2> /dev/null; done) &
loop=$!
"$(dirname "$0")/gpu_check.sh" "$work/gpu_check"
status=$?
kill "$loop" 2> /dev/null
wait "$loop" 2> /dev/null
snapshot
exit $status
