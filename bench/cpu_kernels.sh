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
#   prefill 128: crun (classifier for the last row only, as llama.cpp does), llama.cpp; and on the uncached export
#           (the classifier for all 128 rows) crun and ONNX Runtime at "all" (its default: QDQ int8 weights meet
#           int8 activations there, which the script checks against its "basic" level's logits) and at "basic"
#           (exact fp32 compute, the numerics of crun's exact mode).
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
# int4-g32 exported with accuracy_level 4: ONNX Runtime's int8-activation MatMulNBits, to meet crun's on equal numerics
if [ ! -f "$tmp/int4_g32_al4/model.onnx" ]; then
  cat > "$tmp/int4_g32_al4.yaml" <<YAML
model: $(realpath $synth)
passes: [{rtn: {bits: 4, group_size: 32, symmetric: false}}]
latency_runs: 0
export: {onnx: {opset: 17, int4: matmulnbits, accuracy_level: 4, validate: false}}
output: $(realpath $tmp)/int4_g32_al4
YAML
  "$build/compress" --config "$tmp/int4_g32_al4.yaml" --quiet --overwrite > /dev/null
fi
/usr/bin/python3 -c "import numpy as np; np.save('$tmp/tokens_128.npy', np.random.RandomState(128).randint(0, 500, (1, 128)).astype(np.int64))"
# which numerics ONNX Runtime's "all" level runs on each file: its logits against its "basic" level's on the exact
# export of the same weights (basic applies no fusions; accuracy_level 4 is the node's own attribute, so the
# al4 file is compared with the exact int4 file)
ort_numerics="{"
for f in int8 int4_g32 int4_g32_al4; do
  file=$tmp/${f}_kvfalse/model.onnx; ref=$file
  [ $f = int4_g32_al4 ] && file=$tmp/$f/model.onnx && ref=$tmp/int4_g32_kvfalse/model.onnx
  for o in basic all; do rm -rf "$tmp/ort_$o" && mkdir -p "$tmp/ort_$o"; done
  node scripts/ort/ort_run.js run "$ref" --in tokens="$tmp/tokens_128.npy" --out-dir "$tmp/ort_basic" --opt basic > /dev/null
  node scripts/ort/ort_run.js run "$file" --in tokens="$tmp/tokens_128.npy" --out-dir "$tmp/ort_all" --opt all > /dev/null
  d=$(/usr/bin/python3 -c "import glob, numpy as np; a, b = (np.load(glob.glob('$tmp/ort_%s/*.npy' % o)[0]) for o in ('all', 'basic')); print(float(np.abs(a - b).max()))")
  ort_numerics="$ort_numerics\"$f\": $d,"
done
ort_numerics="${ort_numerics%,}}"

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
        pa=$("$build/crun" bench "$tmp/${f}_kvfalse/model.onnx" --shape tokens=1x128 --threads $t --runs 5 --warmup 1 --json --int8-activations $m)
        rows="$rows{\"round\": $round, \"threads\": $t, \"format\": \"$f\", \"engine\": \"crun\", \"int8_acts\": \"$m\", \"decode\": $d, \"bench11\": $b, \"prefill\": $p, \"prefill_all_rows\": $pa},"
      done
      lc=$(llama bench "$tmp/$gg.gguf" --threads $t --reps 3 --prefill 128 --gen 32 --ctx 16)
      rows="$rows{\"round\": $round, \"threads\": $t, \"format\": \"$f\", \"engine\": \"llama.cpp\", \"r\": $lc},"
      ort=$(node scripts/ort/ort_run.js bench "$tmp/${f}_kvfalse/model.onnx" --in tokens="$tmp/tokens_128.npy" --runs 5 --opt all --threads $t)
      rows="$rows{\"round\": $round, \"threads\": $t, \"format\": \"$f\", \"engine\": \"ort\", \"r\": $ort},"
      ort=$(node scripts/ort/ort_run.js bench "$tmp/${f}_kvfalse/model.onnx" --in tokens="$tmp/tokens_128.npy" --runs 3 --opt basic --threads $t)
      rows="$rows{\"round\": $round, \"threads\": $t, \"format\": \"$f\", \"engine\": \"ort_basic\", \"r\": $ort},"
    done
    al4=$tmp/int4_g32_al4/model.onnx  # (crun takes the file's accuracy_level: int8 activations)
    pa=$("$build/crun" bench "$al4" --shape tokens=1x128 --threads $t --runs 5 --warmup 1 --json)
    ort=$(node scripts/ort/ort_run.js bench "$al4" --in tokens="$tmp/tokens_128.npy" --runs 5 --opt all --threads $t)
    rows="$rows{\"round\": $round, \"threads\": $t, \"format\": \"int4_g32_al4\", \"crun\": $pa, \"ort\": $ort},"
  done
done
echo "{\"ort_all_vs_basic_max_logit_diff\": $ort_numerics, \"rows\": ${rows%,}]}" > bench/cpu_kernels.json

/usr/bin/python3 - <<'PY'
import json, statistics
doc = json.load(open("bench/cpu_kernels.json"))
rows, ort_diff = doc["rows"], doc["ort_all_vs_basic_max_logit_diff"]
def pick(**k):
    return [r for r in rows if all(r.get(a) == b for a, b in k.items())]
def best(vals):  # the machine is shared: the fastest round is the least disturbed one
    return min(vals)
def crun_modes(t, f, get):  # the best round of crun's exact ("off") and int8-activation ("on") runs of get(row)
    return {m: best(get(r) for r in pick(threads=t, format=f, engine="crun", int8_acts=m)) for m in ("off", "on")}
def lcpp(t, f, get):
    return best(get(r["r"]) for r in pick(threads=t, format=f, engine="llama.cpp"))
threads = sorted({r["threads"] for r in rows})
bw = {t: max(r["gb_s"] for r in pick(threads=t, engine="membw")) for t in threads}
print("read bandwidth (build/membw, best of the rounds): " + ", ".join(f"{bw[t]:.1f} GB/s with {t} thread{'s' if t > 1 else ''}" for t in threads))
print()
print("| threads | format | crun exact ms/token | crun int8 acts | llama.cpp | llama.cpp / crun-int8 time | [1,1] exact GB/s (% of bw) | [1,1] int8 acts GB/s (% of bw) |")
print("|---|---|---|---|---|---|---|---|")
for t in threads:
    for f in ("int8", "int4_g32"):
        dec = crun_modes(t, f, lambda r: r["decode"]["ms_per_token_p50"])
        gbs = {}
        for m in ("off", "on"):
            b = pick(threads=t, format=f, engine="crun", int8_acts=m)
            gbs[m] = max(r["bench11"]["weight_bytes"] / (r["bench11"]["median_ms"] / 1e3) / 1e9 for r in b)
        lc = lcpp(t, f, lambda r: r["decode_ms_per_token"]["median"])
        print(f"| {t} | {f} | {dec['off']:.2f} | {dec['on']:.2f} | {lc:.2f} | {lc / dec['on']:.2f} | "
              f"{gbs['off']:.1f} ({100 * gbs['off'] / bw[t]:.0f}%) | {gbs['on']:.1f} ({100 * gbs['on'] / bw[t]:.0f}%) |")
print()
print("| threads | format | prefill 128, last row: crun exact ms | crun int8 acts | llama.cpp | crun-int8 / llama.cpp |")
print("|---|---|---|---|---|---|")
for t in threads:
    for f in ("int8", "int4_g32"):
        pre = crun_modes(t, f, lambda r: r["prefill"]["prefill_ms"])
        lc = lcpp(t, f, lambda r: r["prefill_ms"]["median"])
        print(f"| {t} | {f} | {pre['off']:.1f} | {pre['on']:.1f} | {lc:.1f} | {pre['on'] / lc:.2f} |")
print()
# All 128 rows (the uncached export), against ONNX Runtime in the same numerics: its "basic" level is exact fp32
# compute; its "all" level is int8 activations where its logits moved from basic's (QDQ int8), else exact too.
print("ONNX Runtime \"all\" against \"basic\" on the exact export, max |logit difference|: " + ", ".join(f"{f} {d:.3g}" for f, d in ort_diff.items()))
print()
print("| threads | format | prefill 128, all rows: crun exact ms | crun int8 acts | ORT basic (exact) | ORT all | ORT all computes | crun exact / ORT exact | crun int8 acts / ORT int8 acts |")
print("|---|---|---|---|---|---|---|---|---|")
for t in threads:
    for f in ("int8", "int4_g32"):
        pa = crun_modes(t, f, lambda r: r["prefill_all_rows"]["median_ms"])
        ob = best(r["r"]["median_ms"] for r in pick(threads=t, format=f, engine="ort_basic"))
        oa = best(r["r"]["median_ms"] for r in pick(threads=t, format=f, engine="ort"))
        acts = ort_diff[f] > 1e-3
        exact_ort = min(ob, oa) if not acts else ob  # both levels exact: the faster one
        int8_ratio = f"{pa['on'] / oa:.2f}" if acts else "-"  # (no int8-activation ORT run to compare with)
        print(f"| {t} | {f} | {pa['off']:.1f} | {pa['on']:.1f} | {ob:.1f} | {oa:.1f} | {'int8 activations' if acts else 'exact'} | "
              f"{pa['off'] / exact_ort:.2f} | {int8_ratio} |")
    al4 = pick(threads=t, format="int4_g32_al4")
    c, o = best(r["crun"]["median_ms"] for r in al4), best(r["ort"]["median_ms"] for r in al4)
    print(f"| {t} | int4_g32, accuracy_level 4 | - | {c:.1f} | - | {o:.1f} | "
          f"{'int8 activations' if ort_diff['int4_g32_al4'] > 1e-3 else 'exact'} | - | {c / o:.2f} |")
PY
