#!/usr/bin/env bash
# crun end to end on stories260K: greedy generation reproduces ../shared/README.md's text, perplexity through
# crun equals the reference, run writes .npy outputs, bench prints its numbers, errors exit with their codes.
# Usage: crun_test.sh SOURCE_DIR WORK_DIR   (COMPRESS, CRUN = binaries)
set -u
src=$1 work=$2
source "$src/tests/cli/common.sh"
"$CRUN" --help > "$work/help.txt"; check "--help exits 0 and lists commands" "[ $? -eq 0 ] && grep -q 'crun generate' $work/help.txt"
"$CRUN" ops > "$work/ops.txt"; check "ops lists MatMulNBits and DequantizeLinear" "grep -q 'com.microsoft.MatMulNBits' $work/ops.txt && grep -q '^DequantizeLinear' $work/ops.txt"
"$COMPRESS" export "$shared/models/stories260K/stories260K.pt" -o "$work/m.onnx" --no-validate > /dev/null
check "compress export wrote the fp32 model" "[ -s $work/m.onnx ]"

"$CRUN" generate "$work/m.onnx" --tokenizer "$shared/models/stories260K/tok512.bin" --prompt "Once upon a time" -n 40 \
  > "$work/gen.txt" 2> "$work/gen_err.txt"
check "greedy generation reproduces the README text" \
  "grep -qF 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.' $work/gen.txt"
check "generate reports tokens/s" "grep -q 'tokens/s' $work/gen_err.txt"
check "generate says the model has no KV cache" "grep -q 'no KV cache' $work/gen_err.txt"

"$COMPRESS" export "$shared/models/stories260K/stories260K.pt" -o "$work/m_kv.onnx" --kv-cache > "$work/kv_export.txt"
check "compress export --kv-cache checks the cached steps against the full logits and ONNX Runtime" \
  "grep -q 'prefill + steps reproduce the full logits' $work/kv_export.txt && grep -q 'max_abs_diff' $work/kv_export.txt"
"$CRUN" info "$work/m_kv.onnx" > "$work/kv_info.txt"
check "info shows the cache inputs and the context" "grep -q 'input past.0.key: float32\[batch,4,past,8\]' $work/kv_info.txt && grep -q 'kv cache: 5 layers.*context 512' $work/kv_info.txt"
for kv in f32 f16; do
  "$CRUN" generate "$work/m_kv.onnx" --tokenizer "$shared/models/stories260K/tok512.bin" --prompt "Once upon a time" -n 40 \
    --kv-dtype $kv > "$work/gen_kv_$kv.txt" 2> "$work/gen_kv_err.txt"
  check "greedy generation with the KV cache ($kv) reproduces the README text" \
    "grep -qF 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.' $work/gen_kv_$kv.txt"
done
check "generate says it uses the cache" "grep -q 'KV cache, f16' $work/gen_kv_err.txt"
"$CRUN" generate "$work/m_kv.onnx" --tokenizer "$shared/models/stories260K/tok512.bin" -n 300 --json --threads 1 > "$work/gen_kv.json"
check "generate --json: 300 cached tokens with the stats fields, same text as without the cache" \
  "/usr/bin/python3 -c \"import json,sys; d=json.load(open('$work/gen_kv.json')); k=['text','prompt_tokens','generated_tokens','prefill_ms','decode_tokens_per_s','ms_per_token_p50','ms_per_token_p90','peak_rss_mb']; sys.exit(0 if all(x in d for x in k) and d['kv_cache'] and d['generated_tokens']==300 and d['decode_tokens_per_s']>0 else 1)\""
"$CRUN" generate "$work/m_kv.onnx" --tokenizer "$shared/models/stories260K/tok512.bin" -n 300 --json --threads 1 --no-cache > "$work/gen_nokv.json" 2>/dev/null
check "the cached and the uncached 300-token texts are the same" \
  "/usr/bin/python3 -c \"import json,sys; a=json.load(open('$work/gen_kv.json')); b=json.load(open('$work/gen_nokv.json')); sys.exit(0 if a['text']==b['text'] and not b['kv_cache'] else 1)\""
"$CRUN" generate "$work/m_kv.onnx" --tokenizer "$shared/models/stories260K/tok512.bin" -n 10 --ctx 3 2> "$work/gen_ctx.txt"; rc=$?
check "a prompt longer than --ctx is a clear error (exit 2)" "[ $rc -eq 2 ] && grep -q 'longer than the context of 3' $work/gen_ctx.txt"
"$CRUN" generate "$work/m_kv.onnx" --tokenizer "$shared/models/stories260K/tok512.bin" -n 10 --ctx 4096 2> "$work/gen_ctx2.txt"; rc=$?
check "--ctx beyond the model's positions is a clear error" "[ $rc -eq 2 ] && grep -q \"longer than the model's 512\" $work/gen_ctx2.txt"
"$CRUN" generate "$work/m_kv.onnx" --tokenizer "$shared/models/stories260K/tok512.bin" -n 5 --temperature 0.8 --top-k 40 --top-p 0.9 \
  --repetition-penalty 1.1 --seed 7 > "$work/gen_s1.txt" 2>/dev/null
"$CRUN" generate "$work/m_kv.onnx" --tokenizer "$shared/models/stories260K/tok512.bin" -n 5 --temperature 0.8 --top-k 40 --top-p 0.9 \
  --repetition-penalty 1.1 --seed 7 > "$work/gen_s2.txt" 2>/dev/null
check "sampling with a seed is reproducible" "[ -s $work/gen_s1.txt ] && cmp -s $work/gen_s1.txt $work/gen_s2.txt"
cat > "$work/kv_recipe.yaml" <<YAML
model: $shared/models/stories260K/stories260K.pt
passes:
  - rtn: {bits: 8, group_size: -1, symmetric: true}
latency_runs: 0
export: {onnx: {opset: 17, kv_cache: true}}
output: $work/kv_run
YAML
"$COMPRESS" --config "$work/kv_recipe.yaml" --quiet --overwrite > /dev/null 2> "$work/kv_recipe_err.txt"
check "a recipe with export.onnx.kv_cache writes a cached int8 decoder checked in ONNX Runtime" \
  "/usr/bin/python3 -c \"import json,sys; e=json.load(open('$work/kv_run/report.json'))['export']; sys.exit(0 if e['kv_cache']['layers']==5 and e['kv_cache']['context_length']==512 and isinstance(e['validation']['onnxruntime'], dict) else 1)\""
"$CRUN" generate "$work/kv_run/model.onnx" --tokenizer "$shared/models/stories260K/tok512.bin" -n 20 > /dev/null 2> "$work/kv_run_gen.txt"
check "crun generates from the recipe's cached int8 export with its cache" "grep -q 'KV cache, f32' $work/kv_run_gen.txt"
check "the cached run's report.json validates against docs/report.schema.json" \
  "/usr/bin/python3 -c \"import json,jsonschema; jsonschema.validate(json.load(open('$work/kv_run/report.json')), json.load(open('$src/docs/report.schema.json')))\""

"$CRUN" ppl "$work/m.onnx" --tokens "$shared/data/tinystories/val.tok512.npy" --threads 2 > "$work/ppl.json"
check "perplexity through crun is 4.0780 (within 0.1%)" \
  "/usr/bin/python3 -c \"import json,sys; p=json.load(open('$work/ppl.json'))['perplexity']; sys.exit(0 if abs(p/4.0780-1) < 1e-3 else 1)\""

# a cached export is scored through the in-session cache, one token per run: fp32 gives the uncached number
"$CRUN" ppl "$work/m.onnx" --tokens "$shared/data/tinystories/val.tok512.npy" --max-tokens 4096 > "$work/ppl4k.json"
for kv in f32 i8; do
  "$CRUN" ppl "$work/m_kv.onnx" --tokens "$shared/data/tinystories/val.tok512.npy" --max-tokens 4096 --kv-dtype $kv > "$work/kvppl_$kv.json"
done
check "ppl through the KV cache: fp32 equals the uncached perplexity to 6 digits, an int8 cache within 1%" \
  "/usr/bin/python3 -c \"import json,sys; a=json.load(open('$work/ppl4k.json'))['perplexity']; f=json.load(open('$work/kvppl_f32.json')); i=json.load(open('$work/kvppl_i8.json')); sys.exit(0 if abs(f['perplexity']-a) < 1e-6*a and f['kv_dtype']=='f32' and i['perplexity'] != a and abs(i['perplexity']/a-1) < 0.01 else 1)\""

/usr/bin/python3 -c "import numpy as np; t = np.arange(40, dtype=np.int64) % 500; t[21] = 600; np.save('$work/oov.npy', t)"
"$CRUN" ppl "$work/m.onnx" --tokens "$work/oov.npy" --seq-len 8 --max-tokens 32 > /dev/null 2> "$work/ppl_oov.txt"; rc=$?
check "ppl on a stream with a token the vocabulary lacks: exit 4, which id, where, the vocabulary's size" \
  "[ $rc -eq 4 ] && grep -q 'holds token id 600 at position 21' $work/ppl_oov.txt && grep -q 'vocabulary has 512 tokens' $work/ppl_oov.txt"

/usr/bin/python3 -c "import numpy as np; np.save('$work/in.npy', np.array([[1, 403, 407]], dtype=np.int64))"
"$CRUN" run "$work/m.onnx" --input tokens="$work/in.npy" --output "$work/out.npy"
check "run writes logits [1,3,512]" "/usr/bin/python3 -c \"import numpy as np,sys; a=np.load('$work/out.npy'); sys.exit(0 if a.shape==(1,3,512) and np.isfinite(a).all() else 1)\""

"$CRUN" bench "$work/m.onnx" --shape tokens=1x16 --runs 5 --threads 1 > "$work/bench.txt"
check "bench prints median, p90, tokens/s and peak memory" "grep -q 'median' $work/bench.txt && grep -q 'p90' $work/bench.txt && grep -q 'tokens/s' $work/bench.txt && grep -q 'peak memory' $work/bench.txt"

"$CRUN" run "$work/missing.onnx" --input tokens="$work/in.npy" 2> "$work/e1.txt"; rc=$?
check "missing model exits 6 (i/o)" "[ $rc -eq 6 ] && grep -q 'cannot open' $work/e1.txt"
head -c 1000 "$work/m.onnx" > "$work/trunc.onnx"
"$CRUN" info "$work/trunc.onnx" 2> "$work/e2.txt"; rc=$?
check "truncated model exits 3 (model)" "[ $rc -eq 3 ] && grep -q 'not a valid ONNX model' $work/e2.txt"
/usr/bin/python3 -c "import numpy as np; np.save('$work/bad.npy', np.zeros((1,3), dtype=np.float32))"
"$CRUN" run "$work/m.onnx" --input tokens="$work/bad.npy" 2> "$work/e3.txt"; rc=$?
check "wrong input dtype exits 2 and says what was expected" "[ $rc -eq 2 ] && grep -q 'must be int64, got float32' $work/e3.txt"
/usr/bin/python3 -c "import numpy as np; np.save('$work/oob.npy', np.array([[1, 9999]], dtype=np.int64))"
"$CRUN" run "$work/m.onnx" --input tokens="$work/oob.npy" 2> "$work/e4.txt"; rc=$?
check "out-of-vocabulary token exits 4 (data) naming the Gather" "[ $rc -eq 4 ] && grep -q 'Gather' $work/e4.txt"
"$CRUN" bench "$work/m.onnx" --shape tokens=1xA 2> "$work/e5.txt"; rc=$?
check "malformed --shape exits 2" "[ $rc -eq 2 ] && grep -q 'separated by x' $work/e5.txt"
"$CRUN" frob 2> /dev/null; check "unknown command exits 2" "[ $? -eq 2 ]"

# int8 activations: a file exported with accuracy_level 4 asks for them, crun honours it and can be told otherwise
cat > "$work/al4.yaml" <<YAML
model: $shared/models/stories260K/stories260K.pt
passes: [{rtn: {bits: 4, group_size: 32, symmetric: false, ignore: [output]}}]
latency_runs: 0
export: {onnx: {opset: 17, int4: matmulnbits, validate: false, accuracy_level: 4}}
output: $work/al4
YAML
"$COMPRESS" --config "$work/al4.yaml" --quiet > /dev/null
"$CRUN" info "$work/al4/model.onnx" > "$work/al4_info.txt"
check "an accuracy_level 4 export runs its 35 int4 weights with int8 activations" "grep -q '35 with int8 activations' $work/al4_info.txt"
"$CRUN" info "$work/al4/model.onnx" --int8-activations off > "$work/al4_off.txt"
check "--int8-activations off keeps exact compute" "grep -q '(0 sparse, 0 with int8 activations' $work/al4_off.txt"
check "exact int4-g32 weights run in the fp32 panel order" "grep -q '35 in panel order' $work/al4_off.txt"
"$CRUN" info "$work/al4/model.onnx" --int8-activations off --no-simd > "$work/al4_scalar.txt"
check "the scalar kernels keep the rows" "grep -q ', 0 in panel order' $work/al4_scalar.txt"
for m in on off; do
  "$CRUN" ppl "$work/al4/model.onnx" --tokens "$shared/data/tinystories/val.tok512.npy" --max-tokens 4096 \
    --int8-activations $m > "$work/al4_ppl_$m.json"
done
check "int8 activations cost under 1% perplexity" \
  "/usr/bin/python3 -c \"import json,sys; a=json.load(open('$work/al4_ppl_on.json'))['perplexity']; b=json.load(open('$work/al4_ppl_off.json'))['perplexity']; sys.exit(0 if a != b and abs(a / b - 1) < 0.01 else 1)\""
"$CRUN" info "$work/al4/model.onnx" --int8-activations always 2> "$work/e6.txt"; rc=$?
check "a bad --int8-activations value exits 2 naming the choices" "[ $rc -eq 2 ] && grep -q 'takes model, on or off' $work/e6.txt"

# devices and fusion: the emulated device and --no-fuse give the same perplexity and the same greedy text
for opt in "--device emulated" "--no-fuse" ""; do
  tag=$(echo "$opt" | tr -d ' -')
  "$CRUN" ppl "$work/m.onnx" --tokens "$shared/data/tinystories/val.tok512.npy" --max-tokens 4096 $opt > "$work/dev_ppl_$tag.json"
  "$CRUN" generate "$work/m_kv.onnx" --tokenizer "$shared/models/stories260K/tok512.bin" -n 40 --json $opt > "$work/dev_gen_$tag.json"
done
check "the emulated device and --no-fuse: the CPU's perplexity and text exactly" \
  "/usr/bin/python3 -c \"import json,sys; p=[json.load(open('$work/dev_ppl_%s.json' % t))['perplexity'] for t in ('deviceemulated','nofuse','')]; g=[json.load(open('$work/dev_gen_%s.json' % t))['text'] for t in ('deviceemulated','nofuse','')]; sys.exit(0 if p[0]==p[2] and p[1]==p[2] and g[0]==g[2] and g[1]==g[2] else 1)\""
"$CRUN" info "$work/m.onnx" --device emulated > "$work/dev_info.txt"
"$CRUN" info "$work/m.onnx" > "$work/cpu_info.txt"
check "info says how many nodes and copies the device took, and how many chains were fused (the same on the device)" \
  "grep -q 'device: emulated: [1-9][0-9]* nodes, [1-9][0-9]* copies.*on the host each run: Gather 1$' $work/dev_info.txt && grep -q 'fused chains 31' $work/dev_info.txt && grep -q 'fused chains 31' $work/cpu_info.txt"
"$CRUN" info "$work/m_kv.onnx" --device emulated > "$work/dev_kv_info.txt"
check "info on a cached export shows generate's decode step: everything but the embedding and position arithmetic on the device, 2 copies" \
  "grep -q '^generate (KV cache in place), device: emulated: [1-9][0-9]* nodes, 2 copies' $work/dev_kv_info.txt && ! grep '^generate' $work/dev_kv_info.txt | grep -q 'crt\.\|MatMul'"
cat > "$work/fp16.yaml" <<YAML
model: $shared/models/stories260K/stories260K.pt
passes: [{fp16: {}}]
latency_runs: 0
export: {onnx: {opset: 17, validate: false}}
output: $work/fp16
YAML
"$COMPRESS" --config "$work/fp16.yaml" --quiet --overwrite > /dev/null 2>&1
"$CRUN" bench "$work/fp16/model.onnx" --shape tokens=1x4 --runs 2 --device emulated > /dev/null 2> "$work/fp16_dev.txt"
"$CRUN" bench "$work/m.onnx" --shape tokens=1x4 --runs 2 --device emulated > /dev/null 2> "$work/fp32_dev.txt"
# a model of integer arithmetic only (torch's exporter): nothing the device takes
/usr/bin/python3 -c "
import torch
class M(torch.nn.Module):
    def forward(self, x):
        return (x * 3 + 1).argmax(-1)
torch.onnx.export(M(), (torch.ones(1, 4, dtype=torch.long),), '$work/int_only.onnx', input_names=['tokens'], output_names=['y'])
" > /dev/null 2>&1
"$CRUN" bench "$work/int_only.onnx" --shape tokens=1x4 --runs 2 --device emulated > /dev/null 2> "$work/int_dev.txt"
check "a device session where nothing runs on the device (integer arithmetic only) says so on stderr; fp32 and fp16 exports run there" \
  "grep -q 'no node of .* runs on the device (emulated)' $work/int_dev.txt && ! grep -q 'no node of' $work/fp32_dev.txt && ! grep -q 'no node of' $work/fp16_dev.txt"
"$CRUN" info "$work/m.onnx" --device tpu 2> "$work/e7.txt"; rc=$?
check "a bad --device value exits 2 naming the choices" "[ $rc -eq 2 ] && grep -q 'takes cpu, cuda, cuda:N, auto or emulated' $work/e7.txt"
if ! "$CRUN" info "$work/m.onnx" --device cuda > /dev/null 2> "$work/e8.txt"; then
  check "--device cuda without a usable GPU exits 2 and says how to run on the CPU" "grep -q -- '--device cpu' $work/e8.txt"
  "$CRUN" info "$work/m.onnx" --device auto > "$work/auto_info.txt"
  check "--device auto falls back to the CPU" "! grep -q '^device:' $work/auto_info.txt"
fi

[ $fails -eq 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all crun checks passed"
