#!/usr/bin/env python3
"""The PyTorch peer of the device check's synthetic-model benchmark: the same LLaMA-shape architecture
(make_synthetic_llama.py's Llama: dim 768, 12 layers, 12 heads, hidden 2048, vocab 32000, untied classifier) with
random weights, in eager mode at the given dtype, timed as crun is: prefill of P tokens (a full forward, logits for
every row) and decode (a prompt of 16 tokens, then one-token steps over a KV cache; median ms per step).
Prints one JSON object per measurement.
Usage: torch_llama.py [--device cuda] [--dtype fp16|fp32] [--prefill 128 512] [--prompt 16] [--steps 32] [--runs 20]"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_synthetic_llama import Llama  # noqa: E402


def rope(t, cos, sin):
    a, b = t[..., 0::2], t[..., 1::2]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


@torch.no_grad()
def step(m, tokens, cache):
    """Logits of the last row for `tokens` [1, T] after the cached positions; appends to `cache` (per layer k, v)."""
    past = cache[0][0].shape[2] if cache else 0
    T = tokens.shape[1]
    x = m.tok_embeddings(tokens)
    cos, sin = m.cos[past:past + T], m.sin[past:past + T]
    mask = m.mask[past:past + T, :past + T]
    for i, layer in enumerate(m.layers):
        h = layer.attention_norm(x)
        q = rope(layer.wq(h).view(1, T, layer.h, layer.hd), cos, sin).transpose(1, 2)
        k = rope(layer.wk(h).view(1, T, layer.h, layer.hd), cos, sin).transpose(1, 2)
        v = layer.wv(h).view(1, T, layer.h, layer.hd).transpose(1, 2)
        if len(cache) > i:
            k, v = torch.cat([cache[i][0], k], 2), torch.cat([cache[i][1], v], 2)
            cache[i] = (k, v)
        else:
            cache.append((k, v))
        att = F.softmax(q @ k.transpose(2, 3) / math.sqrt(layer.hd) + mask, dim=-1)
        x = x + layer.wo((att @ v).transpose(1, 2).reshape(1, T, -1))
        h = layer.ffn_norm(x)
        x = x + layer.w2(F.silu(layer.w1(h)) * layer.w3(h))
    return m.output(m.norm(x[:, -1:]))


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="fp16", choices=["fp16", "fp32"])
    p.add_argument("--prefill", type=int, nargs="*", default=[128, 512])
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--runs", type=int, default=20)
    a = p.parse_args()
    dt = torch.float16 if a.dtype == "fp16" else torch.float32
    torch.manual_seed(0)
    m = Llama(12, 768, 12, 2048, 32000, tied=False).eval()
    with torch.no_grad():
        for prm in m.parameters():
            if prm.dim() == 2:
                prm.normal_(0.0, 0.02)
    m = m.to(a.device, dt)
    name = "pytorch eager %s (%s)" % (a.dtype, torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for P in a.prefill:
            tok = torch.randint(0, 32000, (1, P), generator=gen).to(a.device)
            times = []
            for r in range(a.runs + 3):
                sync(a.device)
                t0 = time.perf_counter()
                m(tok)
                sync(a.device)
                if r >= 3:
                    times.append((time.perf_counter() - t0) * 1e3)
            print(json.dumps({"engine": name, "what": "prefill", "tokens": P, "median_ms": statistics.median(times)}), flush=True)
        prompt = torch.randint(0, 32000, (1, a.prompt), generator=gen).to(a.device)
        per_step = []
        for r in range(3):  # (the first generation warms up)
            cache = []
            logits = step(m, prompt, cache)
            times = []
            for _ in range(a.steps):
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                sync(a.device)
                t0 = time.perf_counter()
                logits = step(m, nxt, cache)
                sync(a.device)
                times.append((time.perf_counter() - t0) * 1e3)
            per_step.append(statistics.median(times))
        print(json.dumps({"engine": name, "what": "decode", "prompt": a.prompt, "steps": a.steps, "ms_per_token_p50": min(per_step[1:])}),
              flush=True)


if __name__ == "__main__":
    main()
