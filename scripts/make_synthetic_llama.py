#!/usr/bin/env python3
"""A LLaMA-shape model with random weights at a realistic size, traced to TorchScript, for benchmarks
(never for accuracy): dim 768, 12 layers, 12 heads, hidden 2048, vocab 32000, max seq 512, RMSNorm,
RoPE on adjacent pairs, SwiGLU, tied embedding/classifier — the stories260K architecture, scaled up.
--untied gives the classifier its own weights (LLaMA-2 style), so it can be quantized like the other linears.
Parameter names follow llama2.c (layers.N.wq.weight, ...), so the shipped recipes' patterns apply.
Usage: make_synthetic_llama.py OUT.pt [--layers 12] [--dim 768] [--hidden 2048] [--vocab 32000]
(needs Debian's python3-torch; deterministic)"""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.h, self.hd = heads, d // heads
        self.attention_norm = RMSNorm(d)
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, d, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)
        self.ffn_norm = RMSNorm(d)
        self.w1 = nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)
        self.w3 = nn.Linear(d, hidden, bias=False)

    def rope(self, t, cos, sin):
        a, b = t[..., 0::2], t[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        h = self.attention_norm(x)
        q = self.rope(self.wq(h).view(B, T, self.h, self.hd), cos, sin).transpose(1, 2)
        k = self.rope(self.wk(h).view(B, T, self.h, self.hd), cos, sin).transpose(1, 2)
        v = self.wv(h).view(B, T, self.h, self.hd).transpose(1, 2)
        att = F.softmax(q @ k.transpose(2, 3) / math.sqrt(self.hd) + mask, dim=-1)
        x = x + self.wo((att @ v).transpose(1, 2).reshape(B, T, -1))
        h = self.ffn_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class Llama(nn.Module):
    def __init__(self, layers, d, heads, hidden, vocab, tmax=512, tied=True):
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([Block(d, heads, hidden) for _ in range(layers)])
        self.norm = RMSNorm(d)
        self.output = nn.Linear(d, vocab, bias=False)
        if tied:
            self.output.weight = self.tok_embeddings.weight
        hd = d // heads
        freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(tmax).float(), freqs)
        self.register_buffer("cos", ang.cos().view(tmax, 1, -1))
        self.register_buffer("sin", ang.sin().view(tmax, 1, -1))
        self.register_buffer("mask", torch.full((tmax, tmax), float("-inf")).triu(1))

    def forward(self, tokens):
        T = tokens.size(1)
        x = self.tok_embeddings(tokens)
        cos, sin, mask = self.cos[:T], self.sin[:T], self.mask[:T, :T]
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.output(self.norm(x))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--untied", action="store_true", help="separate classifier weights")
    a = p.parse_args()
    torch.manual_seed(0)
    m = Llama(a.layers, a.dim, a.heads, a.hidden, a.vocab, tied=not a.untied).eval()
    with torch.no_grad():
        for name, prm in m.named_parameters():
            if prm.dim() == 2:
                prm.normal_(0.0, 0.02)
        torch.jit.save(torch.jit.trace(m, torch.randint(0, a.vocab, (1, 8))), a.out)


if __name__ == "__main__":
    main()
