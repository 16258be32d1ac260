#!/usr/bin/env bash
# gpu_scripts_test.sh — the device check's Python helpers, on this machine's CPU (they run on the GPU machine, where
# nothing can be fixed): the PyTorch peer's cached decode gives the full forward's logits, and fill_external.py
# writes a model's external weights so that crun runs it.
# Usage: gpu_scripts_test.sh SOURCE_DIR WORK_DIR   (COMPRESS, CRUN = binaries)
set -u
src=$1 work=$2
source "$src/tests/cli/common.sh"
py=/usr/bin/python3

"$py" - "$src/scripts" > "$work/peer.txt" 2>&1 <<'PY'
import sys, torch
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/gpu")
import torch_llama as tl
from make_synthetic_llama import Llama
torch.manual_seed(0)
m = Llama(2, 64, 4, 128, 100, tied=False).eval()
tok = torch.randint(0, 100, (1, 10))
with torch.no_grad():
    full = m(tok)
    cache = []
    rows = [tl.step(m, tok[:, :6], cache)[0, -1]] + [tl.step(m, tok[:, i:i + 1], cache)[0, -1] for i in range(6, 10)]
diff = max((r - full[0, 5 + j]).abs().max().item() for j, r in enumerate(rows))
print("max diff", diff)
sys.exit(0 if diff < 1e-5 else 1)
PY
check "the PyTorch peer's cached decode (prefill 6, 4 steps) gives the full forward's logits" "[ $? -eq 0 ]"

# small cached exports with external weights (int4-g32, and fp16 whose weights are float16: a folder named *fp16*);
# the weights dropped, then written back by fill_external.py
for m in m m_fp16; do
  passes="[{rtn: {bits: 4, group_size: 32, symmetric: false}}]"
  [ $m = m_fp16 ] && passes="[{fp16: {keep_io_types: true}}]"
  cat > "$work/recipe_$m.yaml" <<YAML
model: $shared/models/stories260K/stories260K.pt
passes: $passes
latency_runs: 0
export: {onnx: {opset: 17, int4: matmulnbits, kv_cache: true, external_data: true, validate: false}}
output: $work/$m
YAML
  "$COMPRESS" --config "$work/recipe_$m.yaml" --quiet --overwrite > /dev/null
  stat -c %s "$work/$m/model.onnx.data" > "$work/$m/data_bytes" && rm "$work/$m/model.onnx.data"
  "$py" "$src/scripts/gpu/fill_external.py" "$work/$m" > "$work/fill_$m.txt" 2>&1
  check "fill_external.py writes the external weights at their size ($m)" \
    "[ \$(stat -c %s $work/$m/model.onnx.data) -eq \$(cat $work/$m/data_bytes) ] && grep -q 'MB of weights' $work/fill_$m.txt"
  "$CRUN" generate "$work/$m/model.onnx" --prompt-len 8 -n 8 --ignore-eos --json > "$work/gen_$m.json" 2> "$work/gen_err_$m.txt"
  check "crun generates from the filled model, with its cache ($m)" \
    "$py -c \"import json,sys; d=json.load(open('$work/gen_$m.json')); sys.exit(0 if d['kv_cache'] and d['generated_tokens'] == 8 else 1)\""
done
[ $fails -eq 0 ] || { echo "$fails check(s) failed"; exit 1; }
