"""PyTorch's matmul on the GPU at the shapes of bench/cuda_bench.cpp (the peer for the CUDA backend's MatMul):
fp16 and fp32, 1 / 128 / 512 rows, CUDA-event timing (median of 20 after 3 warm-up runs). One JSON object per line.
Usage: python3 bench/torch_matmul.py [--quick]"""
import json
import sys

import torch

quick = "--quick" in sys.argv[1:]
shapes = [(4096, 4096)] if quick else [(4096, 4096), (4096, 11008), (11008, 4096), (8192, 28672)]
for K, N in shapes:
    for dt in (torch.float16, torch.float32):
        w = torch.randn(K, N, device="cuda", dtype=dt)
        for rows in (1, 128, 512):
            x = torch.randn(rows, K, device="cuda", dtype=dt)
            for _ in range(3):
                x @ w
            times = []
            for _ in range(20):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                x @ w
                e.record()
                torch.cuda.synchronize()
                times.append(s.elapsed_time(e))
            ms = sorted(times)[len(times) // 2]
            print(json.dumps({"engine": "torch", "shape": f"{K}x{N}", "dtype": str(dt).split(".")[1], "rows": rows,
                              "ms": round(ms, 4), "weight_gb_s": round(K * N * w.element_size() / ms / 1e6, 1),
                              "tflops": round(2 * rows * K * N / ms / 1e9, 2)}), flush=True)
        del w
