#!/usr/bin/env bash
# Self-contained test of plots/plot.py: synthetic summary.csv -> line and bar figures.
# Uses $PYTHON if set, else the first python3 that has matplotlib and pandas
# (Debian's python3-matplotlib / python3-pandas live under /usr/bin/python3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PLOT="$HERE/../plots/plot.py"

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for cand in /usr/bin/python3 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import matplotlib, pandas' 2>/dev/null; then
      PY="$cand"; break
    fi
  done
fi
if [[ -z "$PY" ]]; then
  echo "plot_test: no python3 with matplotlib and pandas (apt-get install python3-matplotlib python3-pandas)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

passed=0
failed=0
ok()   { passed=$((passed + 1)); echo "ok   - $1"; }
fail() { failed=$((failed + 1)); echo "FAIL - $1"; }
check() { local name="$1"; shift; if "$@"; then ok "$name"; else fail "$name"; fi; }

# Two batching policies x three rates x two repeats; plus a layout column for the bar plot.
CSV="$TMP/summary.csv"
{
  echo "point,repeat,git_commit,batching,kv.layout,workload.rate,output_throughput,ttft_median_ms,kv_waste"
  p=0
  for b in static continuous; do
    for r in 1 2 4; do
      for rep in 0 1; do
        if [[ $b == static ]]; then layout=contiguous; per=100; else layout=paged; per=180; fi
        tput=$(( r * per + rep * 7 ))
        echo "$p,$rep,abc1234,$b,$layout,$r,$tput,$(( 20 + r * 3 + rep )),0.$(( 30 + rep * 5 ))"
      done
      p=$((p + 1))
    done
  done
} > "$CSV"

is_png() { [[ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" == "89504e470d0a1a0a" ]]; }
is_pdf() { [[ "$(head -c 5 "$1")" == "%PDF-" ]]; }

# 1. Line plot: throughput vs rate per batching policy.
LINE="$TMP/out/line"
if "$PY" "$PLOT" "$CSV" --x workload.rate --y output_throughput --hue batching --out "$LINE" >"$TMP/line.log" 2>&1; then
  ok "line plot exits 0"
else
  fail "line plot exits 0"; cat "$TMP/line.log"
fi
check "line PNG exists and is non-empty" test -s "$LINE.png"
check "line PDF exists and is non-empty" test -s "$LINE.pdf"
check "line PNG has PNG signature" is_png "$LINE.png"
check "line PDF has PDF header" is_pdf "$LINE.pdf"
check "no temp files left behind" test -z "$(find "$TMP/out" -name '*.tmp')"

# 2. Bar plot: kv_waste per layout, two CSVs concatenated, log y.
head -n 7 "$CSV" > "$TMP/a.csv"
{ head -n 1 "$CSV"; tail -n +8 "$CSV"; } > "$TMP/b.csv"
BAR="$TMP/out/bar"
if "$PY" "$PLOT" "$TMP/a.csv" "$TMP/b.csv" --x kv.layout --y kv_waste --hue batching --kind bar \
     --logy --title "KV waste" --out "$BAR" >"$TMP/bar.log" 2>&1; then
  ok "bar plot of two CSVs exits 0"
else
  fail "bar plot of two CSVs exits 0"; cat "$TMP/bar.log"
fi
check "bar PNG exists and is non-empty" test -s "$BAR.png"
check "bar PDF exists and is non-empty" test -s "$BAR.pdf"
check "bar PNG has PNG signature" is_png "$BAR.png"

# 3. Unknown column: exit 2, list the columns, suggest a close match.
rc=0
"$PY" "$PLOT" "$CSV" --x workload.rate --y output_thruput --out "$TMP/out/bad" >"$TMP/bad.log" 2>&1 || rc=$?
check "unknown column exits 2" test "$rc" -eq 2
check "unknown column lists available columns" grep -q "available columns:.*output_throughput" "$TMP/bad.log"
check "unknown column suggests a close match" grep -q "did you mean 'output_throughput'" "$TMP/bad.log"
check "unknown column writes no output" test ! -e "$TMP/out/bad.png"

# 4. Existing output without --force: exit 2, old file untouched; with --force: replaced.
before="$(cksum "$LINE.png" 2>/dev/null || echo missing)"
touch -c -d 2001-01-01 "$LINE.png"
rc=0
"$PY" "$PLOT" "$CSV" --x workload.rate --y ttft_median_ms --out "$LINE" >"$TMP/again.log" 2>&1 || rc=$?
check "re-run without --force exits 2" test "$rc" -eq 2
check "re-run without --force says to pass --force" grep -q -- "--force" "$TMP/again.log"
check "re-run without --force leaves PNG untouched" test "$(cksum "$LINE.png" 2>/dev/null)" = "$before"
check "re-run without --force keeps mtime" test "$(date -r "$LINE.png" +%Y 2>/dev/null)" = 2001
rc=0
"$PY" "$PLOT" "$CSV" --x workload.rate --y ttft_median_ms --force --out "$LINE" >"$TMP/force.log" 2>&1 || rc=$?
check "re-run with --force exits 0" test "$rc" -eq 0
check "re-run with --force replaces PNG" test "$(date -r "$LINE.png" +%Y 2>/dev/null)" != 2001

echo "$passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
