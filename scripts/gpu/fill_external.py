#!/usr/bin/env python3
"""Writes the external weights of the device check's synthetic-model exports: each DIR holds a model.onnx whose
tensors of 1 KiB and more live in model.onnx.data (64-byte aligned) and a file data_bytes with that file's size;
the bundle carries only the graphs (the weights would be 0.5-1 GB), and this fills model.onnx.data with float32
N(0, 0.02) values (seeded), or float16 ones for a folder named *fp16* (an fp16 export's weights are float16; its few
float32 tensors then read pairs of halves as tiny finite floats). Every float tensor then holds small finite values,
int4/int8 weights and zero points random bytes, and the model runs as the real one would, for timing (its outputs
mean nothing).
Usage: fill_external.py DIR [DIR ...]   (needs PyTorch, no numpy)"""
import ctypes
import os
import sys

import torch


def fill(folder, seed):
    n = int(open(os.path.join(folder, "data_bytes")).read().strip())
    half = "fp16" in os.path.basename(os.path.normpath(folder))
    size = 2 if half else 4
    gen = torch.Generator().manual_seed(seed)
    chunk = 1 << 24  # values per write
    left = (n + size - 1) // size
    with open(os.path.join(folder, "model.onnx.data.tmp"), "wb") as f:
        while left > 0:
            t = torch.randn(min(chunk, left), generator=gen).mul_(0.02)
            t = (t.half() if half else t).contiguous()
            f.write(ctypes.string_at(t.data_ptr(), t.numel() * size))
            left -= t.numel()
        f.truncate(n)
    os.replace(os.path.join(folder, "model.onnx.data.tmp"), os.path.join(folder, "model.onnx.data"))
    return n


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for i, folder in enumerate(sys.argv[1:]):
        n = fill(folder, i)
        print("%s: %.1f MB of weights" % (folder, n / 1e6))


if __name__ == "__main__":
    main()
