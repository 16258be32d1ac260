#!/usr/bin/env bash
# Wall time and peak memory of gptq and awq (int4, groups of 32) on stories260K (calibration 64 x 256
# tokens) and on a synthetic LLaMA-shape model with random weights (dim 768, 12 layers, hidden 2048, vocab
# 32000; calibration 16 x 256 tokens, which keeps this 2-core run in minutes). Writes bench/calibration.json.
# Usage: bash bench/calibration.sh [build/compress]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-build/compress}")
shared=$(realpath ../shared)
mkdir -p build/bench
synth=build/bench/llama768.pt
[ -f "$synth" ] || /usr/bin/python3 scripts/make_synthetic_llama.py "$synth"
tmp=$(mktemp -d)
results="["
for model in stories synthetic; do
  if [ $model = stories ]; then path=$shared/models/stories260K/stories260K.pt; samples=64; else path=$(realpath $synth); samples=16; fi
  for pass in gptq awq; do
    cat > "$tmp/r.yaml" <<YAML
model: $path
data:
  calibration: {tokens: $shared/data/tinystories/train_head.tok512.npy, samples: $samples, seq_len: 256}
passes:
  - $pass: {bits: 4, group_size: 32, symmetric: false, ignore: [output]}
latency_runs: 0
output: $tmp/out
YAML
    /usr/bin/time -f "%e %M" -o "$tmp/time" "$bin" --config "$tmp/r.yaml" --quiet > /dev/null
    read -r wall rss < "$tmp/time"
    secs=$(/usr/bin/python3 -c "import json; print(round(json.load(open('$tmp/out/report.json'))['passes'][0]['seconds'], 2))")
    echo "| $model | $pass | $samples x 256 | $secs | $wall | $((rss / 1024)) |"
    results="$results{\"model\": \"$model\", \"pass\": \"$pass\", \"samples\": $samples, \"pass_seconds\": $secs, \"wall_seconds\": $wall, \"peak_rss_mib\": $((rss / 1024))},"
  done
done
echo "${results%,}]" > bench/calibration.json
rm -rf "$tmp"
