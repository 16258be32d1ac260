#!/usr/bin/env bash
# Quantized CPU kernels at the hardware limit, side by side in one run (engines interleaved per row): crun with
# exact fp32 compute and with int8 activations (integer dot products: --int8-activations on), llama.cpp
# (node-llama-cpp 3.21.1's CPU build, Q8_0 / Q4_0 GGUF files of the same weights written by
# ../shared/tools/llamacpp/gguf.py) and ONNX Runtime (prefill, the same ONNX file, optimizations "all"), on the
# synthetic LLaMA-shape model (dim 768, 12 layers, 12 heads, hidden 2048, vocab 32000, untied classifier) as int8
# (rtn per channel, symmetric) and int4-g32 (rtn, asymmetric, MatMulNBits). Threads 1 and 2.
#   decode: crun generate on the cached export (a 16-token prompt, 32 one-token steps, median ms per step) against
#           llama.cpp's decode at the same context;
#   [1,1]:  crun bench on the uncached export: weight bytes read per token / median time, as a fraction of this
#           machine's read bandwidth (build/membw) with the same threads;
#   prefill 128: crun (classifier for the last row only, as llama.cpp does), ONNX Runtime (all 128 rows), llama.cpp.
# Prints Markdown tables and writes bench/cpu_kernels.json.
# Usage: bash bench/cpu_kernels.sh [build] ["1 2"] [rounds]
# Needs: bench/llamacpp (cd bench/llamacpp && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm ci), scripts/ort.
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(realpath "${1:-build}")
thread_list=${2:-"1 2"}
rounds=${3:-2}
shared=$(realpath ../shared)
llama_module=$(realpath bench/llamacpp)/node_modules/node-llama-cpp/dist/index.js
[ -f "$llama_module" ] || { echo "cpu_kernels.sh: install llama.cpp first: (cd bench/llamacpp && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm ci)" >&2; exit 1; }
mkdir -p build/bench
synth=build/bench/llama768_untied.pt
[ -f "$synth" ] || /usr/bin/python3 scripts/make_synthetic_llama.py "$synth" --untied
tmp=build/bench/cpu_kernels
mkdir -p "$tmp"

for f in int8 int4_g32; do
  case $f in
    int8) passes="[{rtn: {bits: 8, group_size: -1, symmetric: true}}]"; gg=q8_0 ;;
    int4_g32) passes="[{rtn: {bits: 4, group_size: 32, symmetric: false}}]"; gg=q4_0 ;;
  esac
  for kv in true false; do
    out=$tmp/${f}_kv$kv
    [ -f "$out/model.onnx" ] && continue
    cat > "$tmp/${f}_kv$kv.yaml" <<YAML
model: $(realpath $synth)
passes: $passes
latency_runs: 0
export: {onnx: {opset: 17, int4: matmulnbits, kv_cache: $kv, validate: false}}
output: $(realpath $out)
YAML
    "$build/compress" --config "$tmp/${f}_kv$kv.yaml" --quiet --overwrite > /dev/null
  done
  [ -f "$tmp/$gg.gguf" ] || /usr/bin/python3 "$shared/tools/llamacpp/gguf.py" torchscript "$synth" "$tmp/$gg.gguf" --type $gg > /dev/null
done
/usr/bin/python3 -c "import numpy as np; np.save('$tmp/tokens_128.npy', np.random.RandomState(128).randint(0, 500, (1, 128)).astype(np.int64))"

llama() { NODE_LLAMA_CPP_MODULE=$llama_module node "$shared/tools/llamacpp/llama_bench.mjs" "$@"; }
rows="["
for round in $(seq "$rounds"); do
  for t in $thread_list; do
    rows="$rows{\"round\": $round, \"threads\": $t, \"engine\": \"membw\", \"gb_s\": $("$build/membw" "$t")},"
    for f in int8 int4_g32; do
      case $f in int8) gg=q8_0 ;; int4_g32) gg=q4_0 ;; esac
      for m in off on; do
        d=$("$build/crun" generate "$tmp/${f}_kvtrue/model.onnx" --prompt-len 16 -n 33 --ignore-eos --json --threads $t --warmup 1 --int8-activations $m)
        b=$("$build/crun" bench "$tmp/${f}_kvfalse/model.onnx" --shape tokens=1x1 --threads $t --runs 50 --warmup 3 --json --int8-activations $m)
        p=$("$build/crun" generate "$tmp/${f}_kvtrue/model.onnx" --prompt-len 128 -n 1 --json --threads $t --warmup 2 --int8-activations $m)
        rows="$rows{\"round\": $round, \"threads\": $t, \"format\": \"$f\", \"engine\": \"crun\", \"int8_acts\": \"$m\", \"decode\": $d, \"bench11\": $b, \"prefill\": $p},"
      done
      lc=$(llama bench "$tmp/$gg.gguf" --threads $t --reps 3 --prefill 128 --gen 32 --ctx 16)
      rows="$rows{\"round\": $round, \"threads\": $t, \"format\": \"$f\", \"engine\": \"llama.cpp\", \"r\": $lc},"
      ort=$(node scripts/ort/ort_run.js bench "$tmp/${f}_kvfalse/model.onnx" --in tokens="$tmp/tokens_128.npy" --runs 5 --opt all --threads $t)
      rows="$rows{\"round\": $round, \"threads\": $t, \"format\": \"$f\", \"engine\": \"ort\", \"r\": $ort},"
    done
  done
done
echo "${rows%,}]" > bench/cpu_kernels.json

/usr/bin/python3 - <<'PY'
import json, statistics
rows = json.load(open("bench/cpu_kernels.json"))
def pick(**k):
    return [r for r in rows if all(r.get(a) == b for a, b in k.items())]
def best(vals):  # the machine is shared: the fastest round is the least disturbed one
    return min(vals)
threads = sorted({r["threads"] for r in rows})
bw = {t: max(r["gb_s"] for r in pick(threads=t, engine="membw")) for t in threads}
print("read bandwidth (build/membw, best of the rounds): " + ", ".join(f"{bw[t]:.1f} GB/s with {t} thread{'s' if t > 1 else ''}" for t in threads))
print()
print("| threads | format | crun exact ms/token | crun int8 acts | llama.cpp | llama.cpp / crun-int8 time | [1,1] exact GB/s (% of bw) | [1,1] int8 acts GB/s (% of bw) |")
print("|---|---|---|---|---|---|---|---|")
for t in threads:
    for f in ("int8", "int4_g32"):
        dec = {m: best(r["decode"]["ms_per_token_p50"] for r in pick(threads=t, format=f, engine="crun", int8_acts=m)) for m in ("off", "on")}
        gbs = {}
        for m in ("off", "on"):
            b = pick(threads=t, format=f, engine="crun", int8_acts=m)
            gbs[m] = max(r["bench11"]["weight_bytes"] / (r["bench11"]["median_ms"] / 1e3) / 1e9 for r in b)
        lc = best(r["r"]["decode_ms_per_token"]["median"] for r in pick(threads=t, format=f, engine="llama.cpp"))
        print(f"| {t} | {f} | {dec['off']:.2f} | {dec['on']:.2f} | {lc:.2f} | {lc / dec['on']:.2f} | "
              f"{gbs['off']:.1f} ({100 * gbs['off'] / bw[t]:.0f}%) | {gbs['on']:.1f} ({100 * gbs['on'] / bw[t]:.0f}%) |")
print()
print("| threads | format | prefill 128: crun exact ms | crun int8 acts | ONNX Runtime | llama.cpp | crun-int8 / ORT | crun-int8 / llama.cpp |")
print("|---|---|---|---|---|---|---|---|")
for t in threads:
    for f in ("int8", "int4_g32"):
        pre = {m: best(r["prefill"]["prefill_ms"] for r in pick(threads=t, format=f, engine="crun", int8_acts=m)) for m in ("off", "on")}
        ort = best(r["r"]["median_ms"] for r in pick(threads=t, format=f, engine="ort"))
        lc = best(r["r"]["prefill_ms"]["median"] for r in pick(threads=t, format=f, engine="llama.cpp"))
        print(f"| {t} | {f} | {pre['off']:.1f} | {pre['on']:.1f} | {ort:.1f} | {lc:.1f} | {pre['on'] / ort:.2f} | {pre['on'] / lc:.2f} |")
PY
