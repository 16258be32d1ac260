#!/usr/bin/env python3
"""Make the small TorchScript fixtures the tests import: a scripted MLP, a GPT-2-style block (LayerNorm,
GELU, biases, learned positions, tied head), a LLaMA-style block (RMSNorm, RoPE, GQA, SwiGLU), a small CNN
(conv, batch norm, pooling), a model with ops the importer does not map (negative test), and for the
corrupt-input tests: a token model whose weights hold NaN and mlp.pt with one tensor record truncated.
Usage: make_fixtures.py OUTDIR   (needs Debian's python3-torch; deterministic)"""
import math
import os
import sys
import warnings
import zipfile

import torch

import fixture_zoo
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 32)
        self.fc2 = nn.Linear(32, 32)
        self.out = nn.Linear(32, 5)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        h = self.drop(F.relu(self.fc2(h)) + torch.sigmoid(h))
        return F.log_softmax(self.out(h), dim=-1)


class GPT2Block(nn.Module):
    def __init__(self, vocab=64, d=32, heads=4, tmax=16):
        super().__init__()
        self.d, self.h = d, heads
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(tmax, d)
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.lnf = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight  # tied
        m = torch.full((tmax, tmax), -1e9).triu(1)
        self.register_buffer("mask", m.view(1, 1, tmax, tmax))

    def forward(self, idx):
        B, T = idx.size()
        x = self.wte(idx) + self.wpe.weight[:T]
        q, k, v = self.attn(self.ln1(x)).split(self.d, dim=2)
        hd = self.d // self.h
        q = q.view(B, T, self.h, hd).transpose(1, 2)
        k = k.view(B, T, self.h, hd).transpose(1, 2)
        v = v.view(B, T, self.h, hd).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        att = F.softmax(att + self.mask[:, :, :T, :T], dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, self.d)
        x = x + self.proj(y)
        x = x + self.fc2(F.gelu(self.fc(self.ln2(x))))
        return self.head(self.lnf(x))


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d) + 0.1 * torch.randn(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LlamaBlock(nn.Module):
    def __init__(self, vocab=64, d=32, heads=4, kv_heads=2, hidden=48, tmax=16):
        super().__init__()
        self.h, self.kv, self.hd = heads, kv_heads, d // heads
        self.tok = nn.Embedding(vocab, d)
        self.attention_norm = RMSNorm(d)
        self.wq = nn.Linear(d, heads * self.hd, bias=False)
        self.wk = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.wv = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.wo = nn.Linear(d, d, bias=False)
        self.ffn_norm = RMSNorm(d)
        self.w1 = nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)
        self.w3 = nn.Linear(d, hidden, bias=False)
        self.norm = RMSNorm(d)
        self.output = nn.Linear(d, vocab, bias=False)
        freqs = 1.0 / (10000.0 ** (torch.arange(0, self.hd, 2).float() / self.hd))
        ang = torch.outer(torch.arange(tmax).float(), freqs)
        self.register_buffer("cos", ang.cos().view(tmax, 1, -1))
        self.register_buffer("sin", ang.sin().view(tmax, 1, -1))
        self.register_buffer("mask", torch.full((tmax, tmax), float("-inf")).triu(1))

    def rope(self, t, cos, sin):
        a, b = t[..., 0::2], t[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)

    def forward(self, tokens):
        B, T = tokens.shape
        x = self.tok(tokens)
        cos, sin, mask = self.cos[:T], self.sin[:T], self.mask[:T, :T]
        h = self.attention_norm(x)
        q = self.rope(self.wq(h).view(B, T, self.h, self.hd), cos, sin)
        k = self.rope(self.wk(h).view(B, T, self.kv, self.hd), cos, sin)
        v = self.wv(h).view(B, T, self.kv, self.hd)
        k = k.repeat_interleave(self.h // self.kv, dim=2)
        v = v.repeat_interleave(self.h // self.kv, dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        att = F.softmax(q @ k.transpose(2, 3) / math.sqrt(self.hd) + mask, dim=-1)
        x = x + self.wo((att @ v).transpose(1, 2).reshape(B, T, -1))
        h = self.ffn_norm(x)
        x = x + self.w2(F.silu(self.w1(h)) * self.w3(h))
        return self.output(self.norm(x))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.avg_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return self.fc(torch.flatten(x, 1))


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        y = torch.cummax(self.fc(x), dim=-1)[0]
        y = torch.cummax(y, dim=-1)[0]
        return torch.flip(y, dims=[-1])


def randomize_bn(m):
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)


class TinyLM(nn.Module):
    def __init__(self, vocab=64, d=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        return self.head(torch.tanh(self.emb(tokens)))


def truncate_record(src, dst):
    """dst = src with its largest tensor record cut to half: a corrupt archive that LibTorch loads silently."""
    with zipfile.ZipFile(src) as z:
        records = [i for i in z.infolist() if "/data/" in i.filename and i.filename.rsplit("/", 1)[1].isdigit()]
        victim = max(records, key=lambda i: i.file_size).filename
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
            for info in z.infolist():
                data = z.read(info.filename)
                out.writestr(info, data[: len(data) // 2] if info.filename == victim else data)


def main():
    warnings.filterwarnings("ignore")  # the tracer's and torch.onnx's warnings are expected for these models
    out = sys.argv[1] if len(sys.argv) > 1 else "fixtures"
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    with torch.no_grad():
        mlp = MLP().eval()
        torch.jit.save(torch.jit.script(mlp), os.path.join(out, "mlp.pt"))
        gpt = GPT2Block().eval()
        torch.jit.save(torch.jit.trace(gpt, torch.randint(0, 64, (2, 8))), os.path.join(out, "gpt2_block.pt"))
        llama = LlamaBlock().eval()
        torch.jit.save(torch.jit.trace(llama, torch.randint(0, 64, (2, 8))), os.path.join(out, "llama_block.pt"))
        cnn = SmallCNN().eval()
        randomize_bn(cnn)
        torch.jit.save(torch.jit.trace(cnn, torch.randn(2, 3, 16, 16)), os.path.join(out, "cnn.pt"))
        bad = Unsupported().eval()
        torch.jit.save(torch.jit.trace(bad, torch.randn(2, 8)), os.path.join(out, "unsupported.pt"))
        nan = TinyLM().eval()
        nan.head.weight[3, 5] = float("nan")
        torch.jit.save(torch.jit.trace(nan, torch.randint(0, 64, (1, 4))), os.path.join(out, "nan_lm.pt"))
    truncate_record(os.path.join(out, "mlp.pt"), os.path.join(out, "truncated_record.pt"))
    fixture_zoo.write_zoo(out)
    with open(os.path.join(out, "README.txt"), "w") as f:
        f.write("Generated by scripts/make_fixtures.py; do not edit.\n")


if __name__ == "__main__":
    main()
