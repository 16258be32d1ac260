#!/usr/bin/env bash
# Times every shipped recipe end to end (import, two evaluations, passes, writing results) and prints
# a table of wall time, peak memory and perplexity. Usage: bash bench/recipes.sh [build/compress]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/compress}
printf '| recipe | wall (s) | peak RSS (MiB) | baseline ppl | final ppl |\n|---|---|---|---|---|\n'
for c in baseline int8 int4_g32 prune50 prune50_int8 wanda50 sparsegpt50 sparsegpt_2of4 structured_ffn25; do  # export timings: bench/export_formats.sh
  out=$(mktemp -d)
  /usr/bin/time -f "%e %M" -o "$out/time" "$bin" --config "configs/$c.yaml" --output "$out/run" --quiet > "$out/log"
  read -r wall rss < "$out/time"
  base=$(grep -oP 'baseline perplexity: \K[0-9.]+' "$out/log")
  fin=$(grep -oP 'final perplexity: \K[0-9.]+' "$out/log")
  awk -v c="$c" -v w="$wall" -v r="$rss" -v b="$base" -v f="$fin" \
    'BEGIN { printf "| %s | %s | %.0f | %s | %s |\n", c, w, r / 1024, b, f }'
  rm -rf "$out"
done
