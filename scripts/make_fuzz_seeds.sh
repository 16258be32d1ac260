#!/usr/bin/env bash
# Regenerates the fuzz seed corpora in tests/fuzz/seeds/ from our own exports of the test fixtures (ONNX in
# fp32, int8 QDQ and int4 MatMulNBits; model.cir), small .npy files, a synthetic tokenizer and shipped
# recipes. Usage: scripts/make_fuzz_seeds.sh [BUILD_DIR]   (needs the main build; deterministic)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
fx=$build/tests/fixtures seeds=tests/fuzz/seeds work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p $seeds/{fuzz_onnx,fuzz_npy,fuzz_cir,fuzz_tokenizer,fuzz_recipe}
"$build/compress" export "$fx/llama_block.pt" -o $seeds/fuzz_onnx/llama_fp32.onnx --no-validate > /dev/null
"$build/compress" export "$fx/gpt2_block.pt" -o $seeds/fuzz_onnx/gpt2_fp32.onnx --no-validate > /dev/null
"$build/compress" export "$fx/zoo/llama2c.pt" -o $seeds/fuzz_onnx/llama2c_kv.onnx --kv-cache --no-validate > /dev/null  # a cached decoder
for spec in "int8|rtn: {bits: 8, group_size: -1, symmetric: true}" "int4|rtn: {bits: 4, group_size: 32, symmetric: false}"; do
  name=${spec%%|*}
  printf 'model: %s\ntask: causal-lm\npasses:\n  - %s\nexport: {onnx: {opset: 17, int4: matmulnbits, validate: false}}\nlatency_runs: 0\noutput: %s\n' \
    "$PWD/$fx/llama_block.pt" "${spec#*|}" "$work/out_$name" > "$work/r_$name.yaml"
  "$build/compress" --config "$work/r_$name.yaml" --quiet > /dev/null
  cp "$work/out_$name/model.onnx" $seeds/fuzz_onnx/llama_$name.onnx
  cp "$work/out_$name/model.cir" $seeds/fuzz_cir/llama_$name.cir
done
/usr/bin/python3 - "$seeds" <<'PY'
import struct, sys
import numpy as np
seeds = sys.argv[1]
np.save(f"{seeds}/fuzz_npy/tokens_i8.npy", np.arange(64, dtype=np.int64))
np.save(f"{seeds}/fuzz_npy/tokens_i4.npy", np.arange(32, dtype=np.int32).reshape(4, 8))
np.save(f"{seeds}/fuzz_npy/floats.npy", np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3))
np.save(f"{seeds}/fuzz_npy/half_scalar.npy", np.float16(1.5))
np.save(f"{seeds}/fuzz_npy/bool.npy", np.array([True, False, True]))
with open(f"{seeds}/fuzz_npy/v2.npy", "wb") as f:
    np.lib.format.write_array(f, np.zeros((0, 3), np.uint8), version=(2, 0))
# llama2.c tokenizer: <unk>, <s>, </s>, 256 byte tokens, then merges with scores
pieces = [(0.0, b"<unk>"), (0.0, b"<s>"), (0.0, b"</s>")] + [(0.0, b"<0x%02X>" % i) for i in range(256)]
for i, w in enumerate([b" ", b"On", b"ce", b"Once", b" u", b"pon", b" upon", b" a", b" time", b"e", b"t"]):
    pieces.append((-float(i), w))
with open(f"{seeds}/fuzz_tokenizer/tok.bin", "wb") as f:
    f.write(struct.pack("<i", max(len(p) for _, p in pieces)))
    for score, p in pieces:
        f.write(struct.pack("<fi", score, len(p)) + p)
PY
for r in prune50_int8 gptq_w4g32 sparsegpt50_int4_g32 structured_ffn25_distill; do cp configs/$r.yaml $seeds/fuzz_recipe/; done
echo "seeds written to $seeds"
