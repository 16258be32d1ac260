#!/usr/bin/env bash
# Our runtime (crun) against ONNX Runtime (onnxruntime-node, graph optimizations at their default "all",
# same thread count) on the same ONNX files, in one run: stories260K and a synthetic LLaMA-shape model
# (dim 768, 12 layers, 12 heads, hidden 2048, vocab 32000, untied classifier; random weights), each as
# fp32, int8 (per-channel, symmetric) and int4-g32 (asymmetric, MatMulNBits), at [1,1] (decode-like GEMV)
# and [1,128] (prefill). Also measures this machine's memory bandwidth and rates [1,1] as weight bytes/s.
# Prints a Markdown table and writes bench/runtime.json.
# Usage: bash bench/runtime.sh [build] [threads]
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(realpath "${1:-build}")
threads=${2:-2}
shared=$(realpath ../shared)
mkdir -p build/bench
synth=build/bench/llama768_untied.pt
[ -f "$synth" ] || /usr/bin/python3 scripts/make_synthetic_llama.py "$synth" --untied
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

bw=$("$build/membw" "$threads")
echo "memory bandwidth ($threads threads): $bw GB/s" >&2

# exports: the shipped stories recipes, and the same formats of the synthetic model (every linear quantized)
for f in fp32 int8 int4_g32; do
  "$build/compress" --config "configs/$f.yaml" --output "$tmp/stories_$f" --quiet > /dev/null
  case $f in
    fp32) passes="[]" ;;
    int8) passes="[{rtn: {bits: 8, group_size: -1, symmetric: true}}]" ;;
    int4_g32) passes="[{rtn: {bits: 4, group_size: 32, symmetric: false}}]" ;;
  esac
  cat > "$tmp/synth_$f.yaml" <<YAML
model: $(realpath $synth)
passes: $passes
latency_runs: 0
export: {onnx: {opset: 17, int4: matmulnbits, validate: false}}
output: $tmp/synthetic_$f
YAML
  "$build/compress" --config "$tmp/synth_$f.yaml" --quiet > /dev/null
done

/usr/bin/python3 - "$tmp" > "$tmp/inputs.log" <<'PY'
import numpy as np, sys
for s in (1, 128):
    np.save(f"{sys.argv[1]}/tokens_{s}.npy", np.random.RandomState(s).randint(0, 500, (1, s)).astype(np.int64))
PY

rows="["
for model in stories synthetic; do
  for f in fp32 int8 int4_g32; do
    onnx="$tmp/${model}_$f/model.onnx"
    for s in 1 128; do
      if [ $model = stories ]; then runs=$([ $s = 1 ] && echo 500 || echo 200); else runs=$([ $s = 1 ] && echo 100 || echo 15); fi
      ours=$("$build/crun" bench "$onnx" --shape tokens=1x$s --threads "$threads" --runs "$runs" --warmup 3 --json)
      ort=$(node scripts/ort/ort_run.js bench "$onnx" --in tokens="$tmp/tokens_$s.npy" --runs "$runs" --opt all --threads "$threads")
      rows="$rows{\"model\": \"$model\", \"format\": \"$f\", \"shape\": \"1x$s\", \"bytes\": $(stat -c %s "$onnx"), \"ours\": $ours, \"ort\": $ort},"
    done
  done
done
echo "${rows%,}]" > "$tmp/rows.json"

/usr/bin/python3 - "$tmp/rows.json" "$bw" "$threads" <<'PY'
import json, sys
rows, bw, threads = json.load(open(sys.argv[1])), float(sys.argv[2]), int(sys.argv[3])
print(f"memory bandwidth: {bw:.1f} GB/s ({threads} threads); ONNX Runtime 1.30 (node), graph optimizations all\n")
print("| model | format | shape | ONNX MB | ours ms | ORT ms | ours / ORT | weight GB/s (% of bandwidth) |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    o, t = r["ours"]["median_ms"], r["ort"]["median_ms"]
    r["ratio"] = o / t
    wb = ""
    if r["shape"] == "1x1":
        gbs = r["ours"]["weight_bytes"] / (o / 1e3) / 1e9
        r["weight_gb_per_s"], r["bandwidth_fraction"] = gbs, gbs / bw
        wb = f"{gbs:.1f} ({100 * gbs / bw:.0f}%)"
    print(f'| {r["model"]} | {r["format"]} | [{r["shape"].replace("x", ",")}] | {r["bytes"] / 1e6:.1f} | {o:.3f} | {t:.3f} | {o / t:.2f} | {wb} |')
json.dump({"memory_bandwidth_gb_s": bw, "threads": threads, "rows": rows}, open("bench/runtime.json", "w"), indent=1)
PY
