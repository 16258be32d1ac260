#!/usr/bin/env bash
# The CUDA backend's MatMul at LLM shapes (4096x4096, 4096x11008, 11008x4096, 8192x28672; fp32, int8, int4-g32;
# 1 row = decode GEMV, 128 / 512 rows = prefill) against this GPU's device-to-device copy bandwidth measured in the
# same run (build/cuda_bench), with PyTorch's fp16/fp32 matmul at the same shapes as the peer
# (bench/torch_matmul.py, where torch with CUDA is installed). Writes bench/cuda.json (one object per line).
# On the device machine the bundle of scripts/gpu_check.sh runs the same two programs.
# Usage: bash bench/cuda.sh [build] [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(realpath "${1:-build}")
[ -x "$build/cuda_bench" ] || { echo "cuda.sh: $build/cuda_bench is missing: build where nvcc is (CMake enables CUDA then)" >&2; exit 1; }
{
  "$build/cuda_bench" ${2:-}
  if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    python3 bench/torch_matmul.py ${2:-}
  else
    echo '{"engine": "torch", "skipped": "no PyTorch with CUDA here"}'
  fi
} | tee bench/cuda.json
