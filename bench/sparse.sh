#!/usr/bin/env bash
# Pruned weights in crun's sparse form (runtime/sparse.h) against the same files run dense, in one run: the
# synthetic LLaMA-shape model (dim 768, 12 layers, hidden 2048, vocab 32000, untied; random weights) with every
# linear including the classifier magnitude-pruned to 50% unstructured or 2:4, as fp32, int8 (per channel,
# symmetric) and int4-g32 (asymmetric, MatMulNBits), and the unpruned files as the dense baseline. Each file is
# timed with `crun bench --sparse off` and `--sparse on`, interleaved over several rounds (the machine is shared),
# the int8 and int4 files also with int8 activations (`--int8-activations on`, formats "int8_acts" and "int4_g32_acts"),
# at [1,1] (decode GEMV) and [1,128] (prefill), with 1 and 2 threads; the median of the rounds' medians is kept.
# Prints a Markdown table and writes bench/sparse.json (not when `formats` picks some of them).
# Usage: bash bench/sparse.sh [build] [rounds] [formats: "fp32 int8 int8_acts int4_g32 int4_g32_acts"]
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(realpath "${1:-build}")
rounds=${2:-3}
all_formats="fp32 int8 int8_acts int4_g32 int4_g32_acts"
formats=${3:-$all_formats}
json=$([ "$formats" = "$all_formats" ] && echo bench/sparse.json || echo /dev/null)
mkdir -p build/bench
synth=build/bench/llama768_untied.pt
[ -f "$synth" ] || /usr/bin/python3 scripts/make_synthetic_llama.py "$synth" --untied
mkdir -p build/bench/sparse
tmp=$(realpath build/bench/sparse)  # the exports are kept for reruns (delete the folder to re-export)
mkdir -p "$tmp"

bw1=$("$build/membw" 1)
bw2=$("$build/membw" 2)
echo "memory bandwidth: $bw1 GB/s (1 thread), $bw2 GB/s (2 threads)" >&2

for prune in dense 50 2of4; do
  case $prune in
    dense) pp="" ;;
    50) pp="{magnitude-prune: {sparsity: 0.5, scope: matrix, targets: [Linear]}}, " ;;
    2of4) pp="{magnitude-prune: {pattern: \"2:4\", targets: [Linear]}}, " ;;
  esac
  for f in fp32 int8 int4_g32; do
    case $f in
      fp32) q="" ;;
      int8) q="{rtn: {bits: 8, group_size: -1, symmetric: true}}" ;;
      int4_g32) q="{rtn: {bits: 4, group_size: 32, symmetric: false}}" ;;
    esac
    passes="[${pp}${q}]"
    passes=${passes/, ]/]}
    cat > "$tmp/${prune}_$f.yaml" <<YAML
model: $(realpath $synth)
passes: $passes
latency_runs: 0
export: {onnx: {opset: 17, int4: matmulnbits, validate: false}}
output: $tmp/${prune}_$f
YAML
    [ -f "$tmp/${prune}_$f/model.onnx" ] && continue
    echo "export ${prune} $f" >&2
    "$build/compress" --config "$tmp/${prune}_$f.yaml" --quiet > /dev/null
  done
done

# one timing: median ms of `crun bench` for file, mode, threads, tokens, int8 activations (off|on)
timeit() {
  local runs=$([ "$4" = 1 ] && echo 30 || echo 5)
  "$build/crun" bench "$1" --shape tokens=1x$4 --threads "$3" --runs "$runs" --warmup 2 --sparse "$2" --json \
    --int8-activations "$5"
}

rows="["
for fmt in $formats; do  # *_acts: the int8 / int4 files with int8 activations (integer dot products)
  f=${fmt%_acts}
  acts=$([ "$fmt" != "$f" ] && echo on || echo off)
  for threads in 1 2; do
    for s in 1 128; do
      # every file and mode of this format once per round, so that the machine's noise hits them alike
      declare -A got=()
      for ((r = 0; r < rounds; ++r)); do
        for prune in dense 50 2of4; do
          for mode in off on; do
            [ $prune = dense ] && [ $mode = on ] && continue
            got[$prune.$mode]+="$(timeit "$tmp/${prune}_$f/model.onnx" $mode $threads $s $acts),"
          done
        done
      done
      for prune in dense 50 2of4; do
        for mode in off on; do
          [ $prune = dense ] && [ $mode = on ] && continue
          rows="$rows{\"format\": \"$fmt\", \"prune\": \"$prune\", \"sparse\": \"$mode\", \"threads\": $threads, \"shape\": \"1x$s\", \"file_bytes\": $(stat -c %s "$tmp/${prune}_$f/model.onnx"), \"runs\": [${got[$prune.$mode]%,}]},"
        done
      done
      unset got
    done
  done
done
echo "${rows%,}]" > "$tmp/rows.json"

/usr/bin/python3 - "$tmp/rows.json" "$bw1" "$bw2" "$json" <<'PY'
import json, statistics, sys
rows = json.load(open(sys.argv[1]))
bw = {1: float(sys.argv[2]), 2: float(sys.argv[3])}
for r in rows:
    r["median_ms"] = statistics.median(x["median_ms"] for x in r["runs"])
    r["weight_bytes"] = r["runs"][0]["weight_bytes"]
    r["sparse_matmuls"] = r["runs"][0]["sparse_matmuls"]
    r["sparse_pairs"] = r["runs"][0].get("sparse_pairs", 0)  # 2:4 weights (fp32, per-channel int8) in the pairs layout
    r["isa"] = r["runs"][0]["isa"]
json.dump({"bandwidth_gbs": bw, "rows": rows}, open(sys.argv[4], "w"), indent=1)
key = lambda r: (r["format"], r["threads"], r["shape"])
dense = {key(r): r for r in rows if r["prune"] == "dense"}
print(f"memory bandwidth: {bw[1]} GB/s (1 thread), {bw[2]} GB/s (2 threads); kernels {rows[0]['isa']}\n")
print("| format | threads | shape | pruning | crun --sparse | weight MB read | ms | / dense | GB/s (% of bandwidth) |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    d = dense[key(r)]
    gbs = r["weight_bytes"] / r["median_ms"] / 1e6
    rate = f"{gbs:.1f} ({100 * gbs / bw[r['threads']]:.0f}%)" if r["shape"] == "1x1" else ""
    print(f"| {r['format']} | {r['threads']} | [{r['shape'].replace('x', ',')}] | {r['prune'].replace('2of4', '2:4').replace('50', '50%')} | "
          f"{r['sparse']} | {r['weight_bytes'] / 1e6:.1f} | {r['median_ms']:.2f} | {r['median_ms'] / d['median_ms']:.2f} | {rate} |")
PY
