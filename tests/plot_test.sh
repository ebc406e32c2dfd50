#!/usr/bin/env bash
# Self-contained test of plots/plot.py: synthetic summary.csv -> line and bar figures, with the
# 95 % bootstrap CI bars of plots/stats.py and --ratio-to.
# Uses $PYTHON if set, else the first python3 that has matplotlib, pandas and scipy
# (Debian's python3-matplotlib / python3-pandas / python3-scipy live under /usr/bin/python3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PLOT="$HERE/../plots/plot.py"

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for cand in /usr/bin/python3 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import matplotlib, pandas, scipy' 2>/dev/null; then
      PY="$cand"; break
    fi
  done
fi
if [[ -z "$PY" ]]; then
  echo "plot_test: no python3 with matplotlib, pandas and scipy (apt-get install python3-matplotlib python3-pandas python3-scipy)" >&2
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

# Two batching policies x three rates x five repeats (rate 4: two repeats only, so no interval there);
# plus a layout column for the bar plot.
CSV="$TMP/summary.csv"
{
  echo "point,repeat,git_commit,batching,kv.layout,workload.rate,output_throughput,ttft_median_ms,kv_waste"
  p=0
  for b in static continuous; do
    for r in 1 2 4; do
      reps=5; [[ $r == 4 ]] && reps=2
      for ((rep = 0; rep < reps; rep++)); do
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
check "line plot says its bars are bootstrap CIs" grep -q "bars: 95% bootstrap CI" "$TMP/line.log"
check "the PDF says so too (Subject)" grep -aq "bootstrap CI" "$LINE.pdf"
check "the PNG says so too (Description)" grep -aq "bootstrap CI" "$LINE.png"
check "caption states the n < 3 rule" grep -q "no bar where n < 3" "$TMP/line.log"

# 1b. The bars are stats.py's intervals: its CLI gives the same numbers the plot would use.
if "$PY" "$HERE/../plots/stats.py" ci "$CSV" --metric output_throughput --group-by batching,workload.rate \
     >"$TMP/ci.json" 2>"$TMP/ci.log"; then
  ok "stats.py ci exits 0"
else
  fail "stats.py ci exits 0"; cat "$TMP/ci.log"
fi
check "stats.py: n=5 points have an interval" grep -q '"method": "BCa"' "$TMP/ci.json"
check "stats.py: n=2 points have none" grep -q '"note": "n < 3: no interval"' "$TMP/ci.json"

# 1c. --ratio-to: each policy's ratio to static at the same rate, with the ratio's CI.
RATIO="$TMP/out/ratio"
if "$PY" "$PLOT" "$CSV" --x workload.rate --y output_throughput --hue batching --ratio-to batching=static \
     --out "$RATIO" >"$TMP/ratio.log" 2>&1; then
  ok "--ratio-to plot exits 0"
else
  fail "--ratio-to plot exits 0"; cat "$TMP/ratio.log"
fi
check "--ratio-to PNG has PNG signature" is_png "$RATIO.png"
check "--ratio-to caption names the baseline" grep -q "ratio of each group's median over repeats to batching=static" "$TMP/ratio.log"
rc=0
"$PY" "$PLOT" "$CSV" --x workload.rate --y output_throughput --ratio-to batching=dynamic --out "$TMP/out/r2" \
  >"$TMP/ratio2.log" 2>&1 || rc=$?
check "--ratio-to matching no rows exits 2" test "$rc" -eq 2
check "--ratio-to matching no rows lists the values" grep -q "batching has continuous, static" "$TMP/ratio2.log"

# 2. Bar plot: kv_waste per layout, two CSVs concatenated, log y.
head -n 13 "$CSV" > "$TMP/a.csv"
{ head -n 1 "$CSV"; tail -n +14 "$CSV"; } > "$TMP/b.csv"
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
