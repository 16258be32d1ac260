#!/usr/bin/env bash
# Fuzzes every target for MINUTES (default 10) from the committed seeds, JOBS targets at a time (default 2),
# and prints one line per target: executions, exec/s, edge coverage (cov), features (ft), corpus size and
# the outcome (crashes, leaks and sanitizer reports stop a target and leave the input in the artifacts dir).
# Usage: bench/fuzz.sh [MINUTES] [JOBS]   (builds build-fuzz with clang first; needs the main build for
# the recipe target). Results go to docs/benchmarks.md by hand, with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10} jobs=${2:-2}
bash scripts/fuzz_build.sh > /dev/null
dir=build-fuzz/tests/fuzz out=build-fuzz/fuzz-bench
mkdir -p "$out"
targets=(fuzz_onnx fuzz_npy fuzz_cir fuzz_tokenizer fuzz_recipe)
run() {
  local t=$1
  mkdir -p "$out/corpus-$t"
  ASAN_OPTIONS=detect_leaks=1 "$dir/$t" -max_total_time=$((minutes * 60)) -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$out/$t-" "$out/corpus-$t" "tests/fuzz/seeds/$t" > "$out/$t.log" 2>&1
  echo "rc=$?" >> "$out/$t.log"
}
running=0
for t in "${targets[@]}"; do
  run "$t" &
  running=$((running + 1))
  if [ $running -ge "$jobs" ]; then wait -n || true; running=$((running - 1)); fi
done
wait || true
printf '%-15s %12s %9s %6s %7s %8s %s\n' target execs exec/s cov ft corpus outcome
for t in "${targets[@]}"; do
  log=$out/$t.log
  execs=$(grep -oE 'stat::number_of_executed_units: +[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
  rate=$(grep -oE 'stat::average_exec_per_sec: +[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
  last=$(grep -E '(DONE|pulse|NEW|REDUCE) +cov' "$log" | tail -1)
  cov=$(echo "$last" | grep -oE 'cov: [0-9]+' | grep -oE '[0-9]+' || echo ?)
  ft=$(echo "$last" | grep -oE 'ft: [0-9]+' | grep -oE '[0-9]+' || echo ?)
  corp=$(echo "$last" | grep -oE 'corp: [0-9]+' | grep -oE '[0-9]+' || echo ?)
  rc=$(grep -oE '^rc=[0-9]+' "$log" | tail -1 | cut -d= -f2)
  outcome="clean (${minutes} min)"
  [ "$rc" = 0 ] || outcome="FAILED rc=$rc: $(grep -m1 -E 'ERROR|fuzz: ' "$log")"
  printf '%-15s %12s %9s %6s %7s %8s %s\n' "$t" "$execs" "$rate" "$cov" "$ft" "$corp" "$outcome"
done
