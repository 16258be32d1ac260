#!/usr/bin/env bash
# run.sh of the device-check bundle (scripts/gpu_check.sh builds the bundle and copies this file into it): runs on
# the GPU machine with the bundle's own glibc loader and libraries; cuBLAS comes from that machine's CUDA
# toolkit or PyTorch. Results: $OUT/gpu_check.log and $OUT/*.json (or out/ next to this file).
# Usage: bash run.sh [--quick]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
quick=${1:-}
exec > >(tee "$out/gpu_check.log") 2>&1

# cuBLAS 13: the CUDA toolkit's, else PyTorch's wheel (nvidia-cublas)
cublas=$( (ls /usr/local/cuda*/lib64/libcublas.so.13 /usr/local/cuda*/lib/libcublas.so.13 2>/dev/null;
           ldconfig -p 2>/dev/null | awk '/libcublas.so.13 /{print $NF}';
           python3 -c "import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), 'lib', 'libcublas.so.13'))" 2>/dev/null;
           find / -name libcublas.so.13 -not -path "*/proc/*" 2>/dev/null) | while read -r f; do [ -f "$f" ] && echo "$f" && break; done)
[ -n "$cublas" ] || { echo "run.sh: no libcublas.so.13 on this machine"; exit 1; }
export CRT_CUBLAS=$cublas
libs="$here/lib:$(dirname "$cublas")"
loader=$(ls "$here"/lib/ld-linux-x86-64.so.2)
run() { "$loader" --library-path "$libs" "$@"; }
echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; echo "cuBLAS: $cublas"
status=0

echo "== 1. CUDA and device tests (runtime_tests [cuda],[device],[fuse]: the fused nodes' CUDA legs too)"
run "$here/bin/runtime_tests" "[cuda],[device],[fuse]" || status=1

echo "== 2. stories260K on the GPU against the CPU: perplexity (32,768 tokens) and greedy text"
for m in fp32 fp16 int8 int4; do
  for d in cpu cuda; do
    run "$here/bin/crun" ppl "$here/models/$m.onnx" --tokens "$here/data/val.tok512.npy" --seq-len 256 --max-tokens 32768 \
      --device $d --threads 2 > "$out/ppl_${m}_$d.txt" 2>&1 || status=1
    run "$here/bin/crun" generate "$here/models/${m}_kv.onnx" --tokenizer "$here/data/tok512.bin" --prompt "Once upon a time" \
      -n 60 --json --device $d --threads 2 > "$out/gen_${m}_$d.json" 2>&1 || status=1
  done
  python3 - "$m" "$out/ppl_${m}_cpu.txt" "$out/ppl_${m}_cuda.txt" <<'PY' || { echo "  perplexity differs (or a run failed)"; status=1; }
import json, sys
c, g = (json.loads(open(p).read().strip().splitlines()[-1])["perplexity"] for p in sys.argv[2:4])
print("%s: perplexity cpu %.4f cuda %.4f" % (sys.argv[1], c, g))
# fp16 activations: every op's result is rounded to 11 bits, so the GPU's other summation orders show more
sys.exit(0 if abs(g / c - 1) <= (5e-3 if sys.argv[1] == "fp16" else 1e-3) else 1)
PY
  python3 - "$m" "$out/gen_${m}_cpu.json" "$out/gen_${m}_cuda.json" <<'PY' || status=1
import json, sys
a, b = (json.loads(open(p).read().splitlines()[-1]) for p in sys.argv[2:4])
print("  text cpu :", a["text"][:100].replace("\n", " "))
print("  text cuda:", b["text"][:100].replace("\n", " "), "| decode tok/s cpu %.0f cuda %.0f" % (a["decode_tokens_per_s"], b["decode_tokens_per_s"]))
if a["text"] != b["text"] and sys.argv[1] == "fp16":
    print("  (fp16: the greedy texts part where two tokens' logits are within fp16 rounding; not a failure)")
sys.exit(0 if a["text"] == b["text"] or sys.argv[1] == "fp16" else 1)
PY
done

echo "== 3. speed: crun on stories260K, cuda_bench, PyTorch matmul"
for m in fp32 fp16 int4; do
  for shape in 1x1 1x128; do
    for d in cpu cuda; do
      run "$here/bin/crun" bench "$here/models/$m.onnx" --shape tokens=$shape --runs 50 --device $d --threads 2 --json > "$out/bench_${m}_${shape}_$d.json" 2>&1
      echo "$m $shape $d: $(grep -o '"median_ms": [0-9.]*' "$out/bench_${m}_${shape}_$d.json")"
    done
  done
done
run "$here/bin/cuda_bench" $quick | tee "$out/cuda_bench.jsonl" || status=1
python3 "$here/torch_matmul.py" $quick | tee "$out/torch_matmul.jsonl" || status=1
echo "== 4. the synthetic LLaMA-shape model (110M parameters, random weights): crun on the GPU against PyTorch eager fp16"
syn=$here/synthetic
python3 "$here/fill_external.py" "$syn/fp32" "$syn/fp32_kv" "$syn/fp16" "$syn/fp16_kv" "$syn/int4" "$syn/int4_kv" || status=1
for m in fp32 fp16 int4 int4_i8cache; do
  kvfmt=${m%_i8cache}; kvdt=f32; [ "$m" = int4_i8cache ] && kvdt=i8
  run "$here/bin/crun" generate "$syn/${kvfmt}_kv/model.onnx" --prompt-len 480 -n 31 --ignore-eos --warmup 1 --json --device cuda \
    --kv-dtype $kvdt > "$out/synth_decode_long_$m.json" 2>> "$out/synth_err.txt" || status=1
  [ "$m" = int4_i8cache ] && continue
  run "$here/bin/crun" generate "$syn/${m}_kv/model.onnx" --prompt-len 16 -n 33 --ignore-eos --warmup 1 --json --device cuda \
    > "$out/synth_decode_$m.json" 2>> "$out/synth_err.txt" || status=1
  for P in 128 512; do
    run "$here/bin/crun" bench "$syn/$m/model.onnx" --shape tokens=1x$P --runs 20 --warmup 3 --device cuda --json \
      > "$out/synth_prefill_${m}_$P.json" 2>> "$out/synth_err.txt" || status=1
  done
done
python3 "$here/torch_llama.py" --device cuda --dtype fp16 | tee "$out/synth_torch.jsonl" || status=1
python3 - "$out" <<'PY' || status=1
import json, os, sys
out = sys.argv[1]
last = lambda f: json.loads(open(os.path.join(out, f)).read().strip().splitlines()[-1])
torch = [json.loads(l) for l in open(os.path.join(out, "synth_torch.jsonl")) if l.startswith("{")]
t_dec = next(r["ms_per_token_p50"] for r in torch if r["what"] == "decode")
t_pre = {r["tokens"]: r["median_ms"] for r in torch if r["what"] == "prefill"}
print("decode ms/token (16-token prompt, 32 steps): pytorch fp16 %.3f" % t_dec)
target = {"fp16": " (target > 1x)", "int4": " (target >= 2.5x)"}
for m in ("fp32", "fp16", "int4"):
    d = last("synth_decode_%s.json" % m)["ms_per_token_p50"]
    print("  crun %s %.3f: %.2fx pytorch fp16's tokens/s%s" % (m, d, t_dec / d, target.get(m, "")))
print("decode ms/token after a 480-token prompt (crun only): " +
      ", ".join("%s %.3f" % (m, last("synth_decode_long_%s.json" % m)["ms_per_token_p50"]) for m in ("fp32", "fp16", "int4", "int4_i8cache")))
for P in (128, 512):
    line = "prefill %d tokens ms: pytorch fp16 %.2f" % (P, t_pre[P])
    for m in ("fp32", "fp16", "int4"):
        b = last("synth_prefill_%s_%d.json" % (m, P))
        line += "; crun %s %.2f (%.2fx its time)" % (m, b["median_ms"], b["median_ms"] / t_pre[P])
    print(line)
PY

echo "== done: status $status (0 = every check passed); results in $out"
exit $status
