#!/usr/bin/env bash
# The folders of core/ include one way: each only from the folders after it in this list (and the
# kernels: cpu/, cuda/, common/). An #include "FOLDER/..." of a folder before it is an arrow back
# up, and fails this test. Prints the graph by folder.
set -euo pipefail
cd "$(dirname "$0")/../core"
layers=(cli experiment config report workload engine sched speculative backend attention kv model base)
status=0
for i in "${!layers[@]}"; do
  d=${layers[$i]}
  allowed=" ${layers[*]:$((i + 1))} cpu cuda common "
  used=$(grep -ho '#include "[a-z_]*/' "$d"/*.cpp "$d"/*.hpp 2>/dev/null | sed 's/#include "//; s/\///' | sort -u | grep -vx "$d" || true)
  echo "$d -> $(echo $used)"
  for u in $used; do
    if [[ $allowed != *" $u "* ]]; then
      echo "  layering violation: core/$d includes $u/ (allowed: $allowed)"; status=1
    fi
  done
done
for d in */; do  # every folder is placed in the list
  [[ " ${layers[*]} " == *" ${d%/} "* ]] || { echo "core/${d%/} is not in the layer list of $0"; status=1; }
done
exit $status
