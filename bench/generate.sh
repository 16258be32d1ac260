#!/usr/bin/env bash
# Generation with a KV cache, side by side in one run (interleaved): crun (our cached export), ONNX Runtime
# (the same cached ONNX file, its default optimizations) and llama.cpp (node-llama-cpp 3.21.1's CPU build,
# on GGUF files of the same weights written by ../shared/tools/llamacpp/gguf.py), on the synthetic
# LLaMA-shape model (dim 768, 12 layers, 12 heads, hidden 2048, vocab 32000, untied classifier) in
# fp32 / int8 / int4-g32 (llama.cpp: F32 / Q8_0 / Q4_0). Decode: a prompt of C random ids (C = 16, 128,
# 480), then 32 greedy one-token steps, ms per step (so positions C..C+32: 480 ends at 512, the model's
# context); prefill: 128 ids. Threads 1 and 2. Prints a Markdown table and writes bench/generate.json.
# Usage: bash bench/generate.sh [build] ["1 2"]
# Needs: bench/llamacpp (cd bench/llamacpp && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm ci), scripts/ort.
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(realpath "${1:-build}")
thread_list=${2:-"1 2"}
shared=$(realpath ../shared)
llama_module=$(realpath bench/llamacpp)/node_modules/node-llama-cpp/dist/index.js
[ -f "$llama_module" ] || { echo "generate.sh: install llama.cpp first: (cd bench/llamacpp && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm ci)" >&2; exit 1; }
mkdir -p build/bench
synth=build/bench/llama768_untied.pt
[ -f "$synth" ] || /usr/bin/python3 scripts/make_synthetic_llama.py "$synth" --untied
tmp=build/bench/generate
mkdir -p "$tmp"

for f in fp32 int8 int4_g32; do
  case $f in
    fp32) passes="[]"; gg=f32 ;;
    int8) passes="[{rtn: {bits: 8, group_size: -1, symmetric: true}}]"; gg=q8_0 ;;
    int4_g32) passes="[{rtn: {bits: 4, group_size: 32, symmetric: false}}]"; gg=q4_0 ;;
  esac
  if [ ! -f "$tmp/$f/model.onnx" ]; then
    cat > "$tmp/$f.yaml" <<YAML
model: $(realpath $synth)
passes: $passes
latency_runs: 0
export: {onnx: {opset: 17, int4: matmulnbits, kv_cache: true, validate: false}}
output: $(realpath $tmp)/$f
YAML
    "$build/compress" --config "$tmp/$f.yaml" --quiet --overwrite > /dev/null
  fi
  [ -f "$tmp/$gg.gguf" ] || /usr/bin/python3 "$shared/tools/llamacpp/gguf.py" torchscript "$synth" "$tmp/$gg.gguf" --type $gg > /dev/null
done

llama() { NODE_LLAMA_CPP_MODULE=$llama_module node "$shared/tools/llamacpp/llama_bench.mjs" "$@"; }
rows="["
for t in $thread_list; do
  for f in fp32 int8 int4_g32; do
    case $f in fp32) gg=f32 ;; int8) gg=q8_0 ;; int4_g32) gg=q4_0 ;; esac
    for c in 16 128 480; do
      for kv in f32 f16; do
        ours=$("$build/crun" generate "$tmp/$f/model.onnx" --prompt-len $c -n 33 --ignore-eos --json --threads $t --kv-dtype $kv --warmup 1)
        rows="$rows{\"threads\": $t, \"format\": \"$f\", \"ctx\": $c, \"engine\": \"crun\", \"kv\": \"$kv\", \"r\": $ours},"
      done
      ort=$(node scripts/ort/ort_run.js generate "$tmp/$f/model.onnx" --prefill $c --gen 32 --runs 3 --opt all --threads $t)
      rows="$rows{\"threads\": $t, \"format\": \"$f\", \"ctx\": $c, \"engine\": \"ort\", \"r\": $ort},"
      lc=$(llama bench "$tmp/$gg.gguf" --threads $t --reps 3 --prefill 128 --gen 32 --ctx $c)
      rows="$rows{\"threads\": $t, \"format\": \"$f\", \"ctx\": $c, \"engine\": \"llama.cpp\", \"r\": $lc},"
    done
    pre=$("$build/crun" generate "$tmp/$f/model.onnx" --prompt-len 128 -n 1 --json --threads $t --warmup 2)
    rows="$rows{\"threads\": $t, \"format\": \"$f\", \"ctx\": 128, \"engine\": \"crun-prefill\", \"r\": $pre},"
  done
done
echo "${rows%,}]" > bench/generate.json
/usr/bin/python3 - <<'PY'
import json
rows = json.load(open("bench/generate.json"))
def find(**k):
    return [r for r in rows if all(r.get(a) == b for a, b in k.items())]
print("| threads | format | context | crun f32 cache ms/token | crun f16 cache | ORT (cached export) | llama.cpp | llama.cpp / crun-f32 time | ORT / crun-f32 time |")
print("|---|---|---|---|---|---|---|---|---|")
for t in sorted({r["threads"] for r in rows}):
    for f in ("fp32", "int8", "int4_g32"):
        for c in (16, 128, 480):
            o32 = find(threads=t, format=f, ctx=c, engine="crun", kv="f32")[0]["r"]["ms_per_token_p50"]
            o16 = find(threads=t, format=f, ctx=c, engine="crun", kv="f16")[0]["r"]["ms_per_token_p50"]
            ort = find(threads=t, format=f, ctx=c, engine="ort")[0]["r"]["ms_per_token"]
            lc = find(threads=t, format=f, ctx=c, engine="llama.cpp")[0]["r"]["decode_ms_per_token"]["median"]
            print(f"| {t} | {f} | {c}..{c+32} | {o32:.2f} | {o16:.2f} | {ort:.2f} | {lc:.2f} | {lc/o32:.2f} | {ort/o32:.2f} |")
print()
print("| threads | format | prefill 128: crun ms | ORT ms | llama.cpp ms |")
print("|---|---|---|---|---|")
for t in sorted({r["threads"] for r in rows}):
    for f in ("fp32", "int8", "int4_g32"):
        p = find(threads=t, format=f, engine="crun-prefill")[0]["r"]["prefill_ms"]
        ort = find(threads=t, format=f, ctx=128, engine="ort")[0]["r"]["prefill_ms"]
        lc = find(threads=t, format=f, ctx=128, engine="llama.cpp")[0]["r"]["prefill_ms"]["median"]
        print(f"| {t} | {f} | {p:.1f} | {ort:.1f} | {lc:.1f} |")
PY
