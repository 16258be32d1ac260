#!/usr/bin/env bash
# SmoothQuant W8A8 against fp32 and weight-only int8, side by side in one run (engines and formats interleaved per
# row): crun and ONNX Runtime (optimizations "all", the same ONNX files) on the synthetic LLaMA-shape model
# (dim 768, 12 layers, hidden 2048, vocab 32000, untied classifier) as
#   fp32     no passes;
#   int8     rtn int8 per channel (weight-only: crun's exact fp32 compute, --int8-activations off);
#   w8a8_dyn smoothquant, int8 activations per token (opset-21 QuantizeLinear with a per-row scale);
#   w8a8_sta smoothquant, int8 activations per tensor (static scale from calibration: ONNX Runtime's QDQ int8 path);
#   w8a8_u8  the same with uint8 weights (symmetric: false, as configs/smoothquant_w8a8_static.yaml): ONNX Runtime's
#            U8U8 kernel, exact on x86 CPUs without VNNI where w8a8_sta's U8S8 one saturates.
# Calibration: 16 sequences of 128 TinyStories tokens. Shapes [1,128] (prefill, every row through the classifier)
# and [1,1]; threads 1 and 2; the best of `rounds` rounds (the machine is shared). Prints a Markdown table with each
# format's time as a fraction of crun fp32 and of ONNX Runtime on the same file (and, on a CPU with AMX, W8A8 prefill
# on crun's AVX-512 VNNI kernels too: CRT_AMX=0); writes bench/w8a8.json.
# Usage: bash bench/w8a8.sh [build] ["1 2"] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(realpath "${1:-build}")
thread_list=${2:-"1 2"}
rounds=${3:-3}
shared=$(realpath ../shared)
mkdir -p build/bench
synth=build/bench/llama768_untied.pt
[ -f "$synth" ] || /usr/bin/python3 scripts/make_synthetic_llama.py "$synth" --untied
tmp=build/bench/w8a8
mkdir -p "$tmp"
formats="fp32 int8 w8a8_dyn w8a8_sta w8a8_u8"
for f in $formats; do
  case $f in
    fp32) passes="[]" ;;
    int8) passes="[{rtn: {bits: 8, group_size: -1, symmetric: true}}]" ;;
    w8a8_dyn) passes="[{smoothquant: {alpha: 0.5, activations: dynamic}}]" ;;
    w8a8_sta) passes="[{smoothquant: {alpha: 0.5, activations: static}}]" ;;
    w8a8_u8) passes="[{smoothquant: {alpha: 0.5, activations: static, symmetric: false}}]" ;;
  esac
  [ -f "$tmp/$f/model.onnx" ] && continue
  cat > "$tmp/$f.yaml" <<YAML
model: $(realpath $synth)
data: {calibration: {tokens: $shared/data/tinystories/train_head.tok512.npy, samples: 16, seq_len: 128}}
passes: $passes
latency_runs: 0
export: {onnx: {opset: 17, validate: false}}
output: $(realpath $tmp/$f)
YAML
  "$build/compress" --config "$tmp/$f.yaml" --quiet --overwrite > /dev/null
done
/usr/bin/python3 -c "import numpy as np
for n in (1, 128): np.save('$tmp/tokens_%d.npy' % n, np.random.RandomState(n).randint(0, 500, (1, n)).astype(np.int64))"

rows="["
for round in $(seq "$rounds"); do
  for t in $thread_list; do
    rows="$rows{\"round\": $round, \"threads\": $t, \"fma_peak_gflops\": $("$build/fmapeak" "$t")},"
    for n in 128 1; do
      for f in $formats; do
        m=model; [ $f = int8 ] && m=off
        c=$("$build/crun" bench "$tmp/$f/model.onnx" --shape tokens=1x$n --threads $t --runs $([ $n = 1 ] && echo 50 || echo 10) --warmup 2 --json --int8-activations $m)
        o=$(node scripts/ort/ort_run.js bench "$tmp/$f/model.onnx" --in tokens="$tmp/tokens_$n.npy" --runs $([ $n = 1 ] && echo 30 || echo 5) --opt all --threads $t)
        # where crun takes AMX tiles (W8A8 prefill), the same run on its AVX-512 VNNI kernels (CRT_AMX=0) beside it
        v=null
        if [ "$n" = 128 ] && [[ $f == w8a8* ]] && [[ $c == *'"int8_isa": "avx512-amx"'* ]]; then
          v=$(CRT_AMX=0 "$build/crun" bench "$tmp/$f/model.onnx" --shape tokens=1x$n --threads $t --runs 10 --warmup 2 --json --int8-activations $m)
        fi
        rows="$rows{\"round\": $round, \"threads\": $t, \"rows\": $n, \"format\": \"$f\", \"crun\": $c, \"crun_vnni\": $v, \"ort\": $o},"
      done
    done
  done
done
echo "${rows%,}]" > bench/w8a8.json

/usr/bin/python3 - <<'PY'
import json
rows = json.load(open("bench/w8a8.json"))
peak = {}
for r in rows:
    if "fma_peak_gflops" in r:
        peak[r["threads"]] = max(peak.get(r["threads"], 0), r["fma_peak_gflops"])
rows = [r for r in rows if "format" in r]
def best(t, n, f, eng):
    v = [r[eng]["median_ms"] for r in rows if r["threads"] == t and r["rows"] == n and r["format"] == f]
    return min(v)
def vnni(t, n, f):  # crun on AVX-512 VNNI where the default run took AMX tiles, else None
    v = [r["crun_vnni"]["median_ms"] for r in rows if r["threads"] == t and r["rows"] == n and r["format"] == f and r.get("crun_vnni")]
    return min(v) if v else None
amx = any(r.get("crun_vnni") for r in rows)
print("| threads | shape | format | crun ms | ONNX Runtime ms | crun / crun fp32 | crun / ORT |" + (" crun VNNI ms (CRT_AMX=0) | VNNI / ORT |" if amx else ""))
print("|---|---|---|---|---|---|---|" + ("---|---|" if amx else ""))
for t in sorted({r["threads"] for r in rows}):
    for n in (128, 1):
        base = best(t, n, "fp32", "crun")
        for f in ("fp32", "int8", "w8a8_dyn", "w8a8_sta", "w8a8_u8"):
            c, o = best(t, n, f, "crun"), best(t, n, f, "ort")
            v = vnni(t, n, f)
            extra = (f" {v:.2f} | {v / o:.2f} |" if v else " | |") if amx else ""
            print(f"| {t} | [1,{n}] | {f} | {c:.2f} | {o:.2f} | {c / base:.2f} | {c / o:.2f} |{extra}")
print()
# fp32 prefill against the FMA peak (build/fmapeak): 2 flops per weight per row, all 128 rows of every MatMul
params = next(r["crun"]["weight_bytes"] for r in rows if r["format"] == "fp32") / 4
for t in sorted(peak):
    c, o = best(t, 128, "fp32", "crun"), best(t, 128, "fp32", "ort")
    gf = 2 * params * 128 / 1e9
    print(f"{t} thread(s): fp32 [1,128] is {gf:.1f} GFLOP of MatMuls; crun {gf / c * 1e3:.0f} GFLOPS, ONNX Runtime {gf / o * 1e3:.0f}, "
          f"FMA peak {peak[t]:.0f} (build/fmapeak): 0.8 x ONNX Runtime's time would need {gf / (0.8 * o) * 1e3:.0f} GFLOPS "
          f"({gf / (0.8 * o) * 1e3 / peak[t] * 100:.0f}% of the peak, with no time left for the other ops)")
PY
