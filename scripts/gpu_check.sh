#!/usr/bin/env bash
# gpu_check.sh — the one prepared device check for the CUDA backend (issue 17). Here (any machine with nvcc):
# builds crun, runtime_tests and cuda_bench with CUDA, exports stories260K (fp32, fp16, int8, int4-g32; plain and with a
# KV cache), and writes a self-contained bundle to build/gpu-bundle (well under 64 MiB): the binaries, every
# shared library they load with glibc's own loader (the device machine has no Debian packages), the models,
# the evaluation tokens and run.sh. It prints the command to run on the device machine, where run.sh
#   1. runs the CUDA and device tests of runtime_tests (every kernel against the CPU at tile-boundary sizes,
#      no leak over 1,000 runs),
#   2. compares perplexity (32,768 tokens) and greedy generation of every model on the GPU with the CPU,
#   3. times crun at [1,1] and [1,128] on both, and cuda_bench (GEMV / GEMM at LLM shapes against the GPU's
#      copy bandwidth), and PyTorch's matmul at the same shapes as the peer (fp32 and fp16),
#   4. times the synthetic LLaMA-shape model (fp32, fp16 and int4-g32: decode over a KV cache, prefill of 128 and 512
#      tokens) in crun on the GPU against PyTorch eager fp16 on the same GPU (scripts/gpu/torch_llama.py),
# writing everything under $OUT (the device tool brings it back) or build/gpu-bundle/out.
# Usage: bash scripts/gpu_check.sh        (then, through the device tool, with carry ["build/gpu-bundle"]:
#        bash build/gpu-bundle/run.sh [--quick])
set -euo pipefail
cd "$(dirname "$0")/.."
shared=$(realpath ../shared)
[ -f "$shared/models/stories260K/stories260K.pt" ] || { echo "gpu_check: ../shared (stories260K) must sit next to this checkout" >&2; exit 1; }
command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || { echo "gpu_check: no nvcc here: the bundle needs the CUDA build" >&2; exit 1; }
bash scripts/setup.sh >/dev/null
cmake --build build --target crun runtime_tests cuda_bench compress -j2 >/dev/null
[ -x build/cuda_bench ] || { echo "gpu_check: build/cuda_bench is missing (CMake found no CUDA compiler?)" >&2; exit 1; }

bundle=build/gpu-bundle
rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/lib" "$bundle/models" "$bundle/data"
cp build/crun build/tests/runtime_tests build/cuda_bench "$bundle/bin/"
# every shared library the binaries load, and glibc's loader to start them with those (not the device's)
for b in "$bundle"/bin/*; do ldd "$b" | awk '/=>/ && $3 ~ /^\// {print $3} /ld-linux/ && $1 ~ /^\// {print $1}'; done | sort -u |
  while read -r lib; do cp -L "$lib" "$bundle/lib/"; done

# the recipe passes of each format: fp32, fp16, int8 (per channel) and int4-g32 (MatMulNBits)
passes_of() {
  case $1 in
    fp32) echo "[]" ;;
    fp16) echo "[{fp16: {keep_io_types: true}}]" ;;
    int8) echo "[{rtn: {bits: 8, group_size: -1, symmetric: true}}]" ;;
    int4) echo "[{rtn: {bits: 4, group_size: 32, symmetric: false}}]" ;;
  esac
}

# the models: stories260K in every format, plain and with a KV cache
for fmt in fp32 fp16 int8 int4; do
  passes=$(passes_of $fmt)
  for kv in false true; do
    out=build/gpu-export/${fmt}_kv$kv
    mkdir -p build/gpu-export
    cat > "build/gpu-export/${fmt}_kv$kv.yaml" <<YAML
model: $shared/models/stories260K/stories260K.pt
passes: $passes
latency_runs: 0
export: {onnx: {opset: 17, int4: matmulnbits, kv_cache: $kv, validate: false}}
output: $(realpath -m "$out")
YAML
    build/compress --config "build/gpu-export/${fmt}_kv$kv.yaml" --quiet --overwrite >/dev/null
    cp "$out/model.onnx" "$bundle/models/${fmt}$([ "$kv" = true ] && echo _kv).onnx"
  done
done
# the synthetic LLaMA-shape model (scripts/make_synthetic_llama.py --untied: dim 768, 12 layers, vocab 32000, 110M
# parameters) as fp32, fp16 and int4-g32, plain and cached: graphs only, their weights (0.2-0.5 GB) are external data
# that run.sh writes there with random values (scripts/gpu/fill_external.py); data_bytes says how much
synth=build/bench/llama768_untied.pt
mkdir -p "$(dirname "$synth")"
[ -f "$synth" ] || /usr/bin/python3 scripts/make_synthetic_llama.py "$synth" --untied
for fmt in fp32 fp16 int4; do
  passes=$(passes_of $fmt)
  for kv in false true; do
    out=build/gpu-export/synth_${fmt}_kv$kv
    cat > "$out.yaml" <<YAML
model: $(realpath "$synth")
passes: $passes
latency_runs: 0
export: {onnx: {opset: 17, int4: matmulnbits, kv_cache: $kv, external_data: true, validate: false}}
output: $(realpath -m "$out")
YAML
    [ "$out/model.onnx" -nt "$synth" ] && [ "$out/model.onnx" -nt build/compress ] ||
      build/compress --config "$out.yaml" --quiet --overwrite >/dev/null
    dst=$bundle/synthetic/$fmt
    if [ "$kv" = true ]; then dst=${dst}_kv; fi
    mkdir -p "$dst"
    cp "$out/model.onnx" "$dst/"
    stat -c %s "$out/model.onnx.data" > "$dst/data_bytes"
  done
done
cp scripts/make_synthetic_llama.py scripts/gpu/torch_llama.py scripts/gpu/fill_external.py "$bundle/"
cp "$shared/data/tinystories/val.tok512.npy" "$shared/models/stories260K/tok512.bin" "$bundle/data/"
cp scripts/gpu_run.sh "$bundle/run.sh"
cp bench/torch_matmul.py "$bundle/"
size=$(du -sm "$bundle" | cut -f1)
[ "$size" -lt 64 ] || { echo "gpu_check: the bundle is ${size} MiB, over the device tool's 64 MiB" >&2; exit 1; }
echo "gpu_check: bundle ready: $bundle (${size} MiB)"
echo "on the device machine (device tool, carry [\"build/gpu-bundle\"], timeout 540):"
echo "  bash build/gpu-bundle/run.sh"
