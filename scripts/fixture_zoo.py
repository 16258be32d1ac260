"""fixture_zoo.py — one small model per mainstream architecture, written the way the usual PyTorch code
writes it (HF-style RoPE and masks computed at run time, GPT-2's Conv1D, OPT's cumsum positions, the fused
nn.TransformerEncoderLayer / MultiheadAttention fast paths, torchvision's CNNs and ViT).

Random weights, fixed seeds. For each family `write_zoo(out)` saves, under out/zoo/:
  <name>.pt      torch.jit.trace under torch.no_grad() at the traced size
  <name>.onnx    torch.onnx.export, opset 17, batch/sequence (or image) dims dynamic
  <name>.c<k>.<input>.npy / <name>.c<k>.out.npy   inputs and torch's output for cases k = 0, 1, whose sizes
                 differ from the traced one
and zoo.json, the manifest the C++ tests read (inputs with dtype and symbolic shape, cases, task).
"""
import json
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = 64


# ----------------------------------------------------------------------------------------------- decoders
class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(1.0 + 0.1 * torch.randn(d))

    def forward(self, x):  # HF LlamaRMSNorm
        dtype = x.dtype
        x = x.to(torch.float32)
        var = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(var + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(x, n_rep):
    b, h, t, d = x.shape
    if n_rep == 1:
        return x
    x = x[:, :, None, :, :].expand(b, h, n_rep, t, d)
    return x.reshape(b, h * n_rep, t, d)


class HFRotary(nn.Module):
    def __init__(self, dim, base=10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x, seq_len):
        t = torch.arange(seq_len, device=x.device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class HFLlamaAttention(nn.Module):
    def __init__(self, d, heads, kv_heads, window=None):
        super().__init__()
        self.h, self.kvh, self.hd, self.window = heads, kv_heads, d // heads, window
        self.q_proj = nn.Linear(d, heads * self.hd, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.o_proj = nn.Linear(heads * self.hd, d, bias=False)
        self.rotary_emb = HFRotary(self.hd)

    def forward(self, x, mask):
        b, t, _ = x.size()
        q = self.q_proj(x).view(b, t, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kvh, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kvh, self.hd).transpose(1, 2)
        cos, sin = self.rotary_emb(v, seq_len=t)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = repeat_kv(k, self.h // self.kvh)
        v = repeat_kv(v, self.h // self.kvh)
        w = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.hd)
        w = w + mask
        w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        y = torch.matmul(w, v).transpose(1, 2).contiguous().reshape(b, t, self.h * self.hd)
        return self.o_proj(y)


class HFLlamaMLP(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class HFLlamaLayer(nn.Module):
    def __init__(self, d, heads, kv_heads, hidden, window):
        super().__init__()
        self.self_attn = HFLlamaAttention(d, heads, kv_heads, window)
        self.mlp = HFLlamaMLP(d, hidden)
        self.input_layernorm = RMSNorm(d)
        self.post_attention_layernorm = RMSNorm(d)

    def forward(self, x, mask):
        x = x + self.self_attn(self.input_layernorm(x), mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class HFLlama(nn.Module):
    """HF LlamaForCausalLM (GQA); with `window` the Mistral sliding-window causal mask."""

    def __init__(self, d=32, heads=4, kv_heads=2, hidden=64, layers=2, window=None):
        super().__init__()
        self.window = window
        self.embed_tokens = nn.Embedding(VOCAB, d)
        self.layers = nn.ModuleList([HFLlamaLayer(d, heads, kv_heads, hidden, window) for _ in range(layers)])
        self.norm = RMSNorm(d)
        self.lm_head = nn.Linear(d, VOCAB, bias=False)

    def causal_mask(self, t, dtype):
        if self.window is None:  # HF: full(min) then triu(diagonal=1)
            mask = torch.full((t, t), torch.finfo(dtype).min)
            mask = torch.triu(mask, diagonal=1)
        else:  # Mistral: keep j <= i and j > i - window
            i = torch.arange(t).unsqueeze(1)
            j = torch.arange(t).unsqueeze(0)
            allowed = (j <= i) & (j > i - self.window)
            mask = torch.zeros(t, t).masked_fill(~allowed, torch.finfo(dtype).min)
        return mask[None, None, :, :]

    def forward(self, input_ids):
        x = self.embed_tokens(input_ids)
        mask = self.causal_mask(input_ids.shape[1], x.dtype)
        for layer in self.layers:
            x = layer(x, mask)
        return self.lm_head(self.norm(x))


class Llama2cAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.h, self.hd = heads, d // heads
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, d, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.h, self.hd)
        k = self.wk(x).view(b, t, self.h, self.hd)
        v = self.wv(x).view(b, t, self.h, self.hd)
        # llama2.c apply_rotary_emb: pairs (even, odd) from a reshape to [..., hd/2, 2]
        qr, qi = q.float().reshape(q.shape[:-1] + (-1, 2)).unbind(-1)
        kr, ki = k.float().reshape(k.shape[:-1] + (-1, 2)).unbind(-1)
        c, s = cos.view(1, t, 1, -1), sin.view(1, t, 1, -1)
        q = torch.stack([qr * c - qi * s, qr * s + qi * c], dim=-1).flatten(3)
        k = torch.stack([kr * c - ki * s, kr * s + ki * c], dim=-1).flatten(3)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.hd) + mask[:, :, :t, :t]
        y = torch.matmul(F.softmax(scores.float(), dim=-1).type_as(q), v)
        return self.wo(y.transpose(1, 2).contiguous().view(b, t, -1))


class Llama2c(nn.Module):
    """llama2.c model.py: precomputed freqs_cos/freqs_sin and an upper-triangular -inf mask buffer."""

    def __init__(self, d=32, heads=4, hidden=64, layers=2, tmax=32):
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, d)
        self.attn = nn.ModuleList([Llama2cAttention(d, heads) for _ in range(layers)])
        self.w1 = nn.ModuleList([nn.Linear(d, hidden, bias=False) for _ in range(layers)])
        self.w2 = nn.ModuleList([nn.Linear(hidden, d, bias=False) for _ in range(layers)])
        self.w3 = nn.ModuleList([nn.Linear(d, hidden, bias=False) for _ in range(layers)])
        self.n1 = nn.ModuleList([RMSNorm(d, 1e-5) for _ in range(layers)])
        self.n2 = nn.ModuleList([RMSNorm(d, 1e-5) for _ in range(layers)])
        self.norm = RMSNorm(d, 1e-5)
        self.output = nn.Linear(d, VOCAB, bias=False)
        self.output.weight = self.tok_embeddings.weight
        hd = d // heads
        freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
        f = torch.outer(torch.arange(tmax).float(), freqs)
        self.register_buffer("freqs_cos", torch.cos(f), persistent=False)
        self.register_buffer("freqs_sin", torch.sin(f), persistent=False)
        self.register_buffer("mask", torch.triu(torch.full((1, 1, tmax, tmax), float("-inf")), diagonal=1), persistent=False)

    def forward(self, tokens):
        t = tokens.shape[1]
        h = self.tok_embeddings(tokens)
        cos, sin = self.freqs_cos[:t], self.freqs_sin[:t]
        for i in range(len(self.attn)):
            h = h + self.attn[i](self.n1[i](h), cos, sin, self.mask)
            x = self.n2[i](h)
            h = h + self.w2[i](F.silu(self.w1[i](x)) * self.w3[i](x))
        return self.output(self.norm(h))


class Conv1D(nn.Module):  # HF GPT-2: weight [in, out], addmm
    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.randn(nf) * 0.02)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GPT2Layer(nn.Module):
    def __init__(self, d, heads, tmax):
        super().__init__()
        self.h, self.d = heads, d
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = Conv1D(3 * d, d)
        self.c_proj = Conv1D(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = Conv1D(4 * d, d)
        self.mlp_proj = Conv1D(d, 4 * d)
        self.register_buffer("bias", torch.tril(torch.ones((tmax, tmax), dtype=torch.bool)).view(1, 1, tmax, tmax),
                             persistent=False)

    def split_heads(self, x):
        return x.view(x.size()[:-1] + (self.h, self.d // self.h)).permute(0, 2, 1, 3)

    def forward(self, x):
        q, k, v = self.c_attn(self.ln_1(x)).split(self.d, dim=2)
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        w = torch.matmul(q, k.transpose(-1, -2)) / torch.full([], v.size(-1) ** 0.5, dtype=q.dtype)
        ql, kl = q.size(-2), k.size(-2)
        causal = self.bias[:, :, kl - ql: kl, :kl]
        mask_value = torch.full([], torch.finfo(w.dtype).min, dtype=w.dtype)
        w = torch.where(causal, w.to(w.dtype), mask_value)
        a = torch.matmul(F.softmax(w, dim=-1), v).permute(0, 2, 1, 3).contiguous()
        a = a.view(a.size()[:-2] + (self.d,))
        x = x + self.c_proj(a)
        return x + self.mlp_proj(gelu_new(self.c_fc(self.ln_2(x))))


class GPT2(nn.Module):
    def __init__(self, d=32, heads=4, layers=2, tmax=32):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, d)
        self.wpe = nn.Embedding(tmax, d)
        self.h = nn.ModuleList([GPT2Layer(d, heads, tmax) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)

    def forward(self, input_ids):
        t = input_ids.size(-1)
        position_ids = torch.arange(0, t, dtype=torch.long, device=input_ids.device).unsqueeze(0)
        x = self.wte(input_ids) + self.wpe(position_ids)
        for block in self.h:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # tied head


class OPTAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.h, self.hd = heads, d // heads
        self.scaling = self.hd ** -0.5
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)

    def shape(self, x, t, b):
        return x.view(b, t, self.h, self.hd).transpose(1, 2).contiguous()

    def forward(self, x, mask):
        b, t, d = x.size()
        q = self.shape(self.q_proj(x) * self.scaling, t, b).view(b * self.h, -1, self.hd)
        k = self.shape(self.k_proj(x), t, b).view(b * self.h, -1, self.hd)
        v = self.shape(self.v_proj(x), t, b).view(b * self.h, -1, self.hd)
        w = torch.bmm(q, k.transpose(1, 2)).view(b, self.h, t, t) + mask
        w = torch.max(w, torch.tensor(torch.finfo(w.dtype).min))
        w = F.softmax(w.view(b * self.h, t, t), dim=-1)
        y = torch.bmm(w, v).view(b, self.h, t, self.hd).transpose(1, 2).reshape(b, t, d)
        return self.out_proj(y)


class OPTLayer(nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.self_attn = OPTAttention(d, heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x, mask):
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask)
        return x + self.fc2(F.relu(self.fc1(self.final_layer_norm(x))))


class OPT(nn.Module):
    def __init__(self, d=32, heads=4, hidden=64, layers=2, tmax=32):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, d)
        self.embed_positions = nn.Embedding(tmax + 2, d)
        self.layers = nn.ModuleList([OPTLayer(d, heads, hidden) for _ in range(layers)])
        self.final_layer_norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, VOCAB, bias=False)

    def forward(self, input_ids, attention_mask):
        b, t = input_ids.shape
        positions = (torch.cumsum(attention_mask, dim=1).type_as(attention_mask) * attention_mask).long() - 1
        x = self.embed_tokens(input_ids) + self.embed_positions(positions + 2)
        big_neg = torch.finfo(x.dtype).min
        causal = torch.full((t, t), big_neg)
        cond = torch.arange(t)
        causal.masked_fill_(cond < (cond + 1).view(t, 1), 0.0)
        expanded = attention_mask[:, None, None, :].expand(b, 1, t, t).to(x.dtype)
        inverted = 1.0 - expanded
        pad = inverted.masked_fill(inverted.to(torch.bool), big_neg)
        mask = causal[None, None, :, :] + pad
        for layer in self.layers:
            x = layer(x, mask)
        return self.lm_head(self.final_layer_norm(x))


class NeoXAttention(nn.Module):
    def __init__(self, d, heads, rotary_pct):
        super().__init__()
        self.h, self.hd = heads, d // heads
        self.rot = int(self.hd * rotary_pct)
        self.query_key_value = nn.Linear(d, 3 * d)
        self.dense = nn.Linear(d, d)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.rot, 2).float() / self.rot))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x):
        b, t, d = x.shape
        qkv = self.query_key_value(x).view(b, t, self.h, 3 * self.hd).permute(0, 2, 1, 3)
        q, k, v = qkv[..., : self.hd], qkv[..., self.hd: 2 * self.hd], qkv[..., 2 * self.hd:]
        freqs = torch.einsum("i,j->ij", torch.arange(t, dtype=self.inv_freq.dtype), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        qr, qp = q[..., : self.rot], q[..., self.rot:]
        kr, kp = k[..., : self.rot], k[..., self.rot:]
        q = torch.cat((qr * cos + rotate_half(qr) * sin, qp), dim=-1)
        k = torch.cat((kr * cos + rotate_half(kr) * sin, kp), dim=-1)
        w = torch.baddbmm(torch.zeros(b * self.h, t, t), q.reshape(b * self.h, t, self.hd),
                          k.reshape(b * self.h, t, self.hd).transpose(1, 2), beta=1.0, alpha=1.0 / math.sqrt(self.hd))
        w = w.view(b, self.h, t, t)
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
        w = torch.where(causal, w, torch.tensor(torch.finfo(w.dtype).min))
        y = torch.matmul(F.softmax(w, dim=-1), v).permute(0, 2, 1, 3).reshape(b, t, d)
        return self.dense(y)


class NeoXLayer(nn.Module):
    def __init__(self, d, heads, rotary_pct):
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attention = NeoXAttention(d, heads, rotary_pct)
        self.dense_h_to_4h, self.dense_4h_to_h = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):  # parallel residual
        a = self.attention(self.input_layernorm(x))
        m = self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(self.post_attention_layernorm(x))))
        return x + a + m


class GPTNeoX(nn.Module):
    def __init__(self, d=32, heads=4, layers=2, rotary_pct=0.5):
        super().__init__()
        self.embed_in = nn.Embedding(VOCAB, d)
        self.layers = nn.ModuleList([NeoXLayer(d, heads, rotary_pct) for _ in range(layers)])
        self.final_layer_norm = nn.LayerNorm(d)
        self.embed_out = nn.Linear(d, VOCAB, bias=False)

    def forward(self, input_ids):
        x = self.embed_in(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.embed_out(self.final_layer_norm(x))


# ----------------------------------------------------------------------------------------------- encoders
class BertSelfAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.h, self.hd = heads, d // heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.dense = nn.Linear(d, d)
        self.LayerNorm = nn.LayerNorm(d, eps=1e-12)

    def transpose_for_scores(self, x):
        return x.view(x.size()[:-1] + (self.h, self.hd)).permute(0, 2, 1, 3)

    def forward(self, x, ext_mask):
        q = self.transpose_for_scores(self.query(x))
        k = self.transpose_for_scores(self.key(x))
        v = self.transpose_for_scores(self.value(x))
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.hd) + ext_mask
        c = torch.matmul(nn.functional.softmax(s, dim=-1), v).permute(0, 2, 1, 3).contiguous()
        c = c.view(c.size()[:-2] + (self.h * self.hd,))
        return self.LayerNorm(self.dense(c) + x)


class BertLayer(nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.attention = BertSelfAttention(d, heads)
        self.intermediate, self.output = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.LayerNorm = nn.LayerNorm(d, eps=1e-12)

    def forward(self, x, ext_mask):
        x = self.attention(x, ext_mask)
        return self.LayerNorm(self.output(F.gelu(self.intermediate(x))) + x)


class Bert(nn.Module):
    def __init__(self, d=32, heads=4, hidden=64, layers=2, tmax=32):
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, d)
        self.position_embeddings = nn.Embedding(tmax, d)
        self.token_type_embeddings = nn.Embedding(2, d)
        self.LayerNorm = nn.LayerNorm(d, eps=1e-12)
        self.layer = nn.ModuleList([BertLayer(d, heads, hidden) for _ in range(layers)])
        self.pooler = nn.Linear(d, d)
        self.register_buffer("position_ids", torch.arange(tmax).expand((1, -1)), persistent=False)

    def forward(self, input_ids, attention_mask, token_type_ids):
        t = input_ids.size(1)
        pos = self.position_ids[:, :t]
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids) + self.position_embeddings(pos)
        x = self.LayerNorm(x)
        ext = attention_mask[:, None, None, :].to(dtype=x.dtype)
        ext = (1.0 - ext) * torch.finfo(x.dtype).min
        for layer in self.layer:
            x = layer(x, ext)
        return torch.tanh(self.pooler(x[:, 0]))


class DistilBertLayer(nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.h, self.hd = heads, d // heads
        self.q_lin, self.k_lin, self.v_lin, self.out_lin = (nn.Linear(d, d) for _ in range(4))
        self.sa_layer_norm, self.output_layer_norm = nn.LayerNorm(d, eps=1e-12), nn.LayerNorm(d, eps=1e-12)
        self.lin1, self.lin2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x, mask):
        bs, t, d = x.size()

        def shape(y):
            return y.view(bs, -1, self.h, self.hd).transpose(1, 2)

        q = shape(self.q_lin(x)) / math.sqrt(self.hd)
        k, v = shape(self.k_lin(x)), shape(self.v_lin(x))
        scores = torch.matmul(q, k.transpose(2, 3))
        m = (mask == 0).view(bs, 1, 1, t).expand_as(scores)
        scores = scores.masked_fill(m, torch.tensor(torch.finfo(scores.dtype).min))
        ctx = torch.matmul(nn.functional.softmax(scores, dim=-1), v).transpose(1, 2).contiguous().view(bs, -1, d)
        x = self.sa_layer_norm(self.out_lin(ctx) + x)
        return self.output_layer_norm(self.lin2(F.gelu(self.lin1(x))) + x)


class DistilBert(nn.Module):
    def __init__(self, d=32, heads=4, hidden=64, layers=2, tmax=32):
        super().__init__()
        self.word_embeddings, self.position_embeddings = nn.Embedding(VOCAB, d), nn.Embedding(tmax, d)
        self.LayerNorm = nn.LayerNorm(d, eps=1e-12)
        self.layer = nn.ModuleList([DistilBertLayer(d, heads, hidden) for _ in range(layers)])
        self.classifier = nn.Linear(d, 3)

    def forward(self, input_ids, attention_mask):
        t = input_ids.size(1)
        pos = torch.arange(t, dtype=torch.long, device=input_ids.device).unsqueeze(0).expand_as(input_ids)
        x = self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(pos))
        for layer in self.layer:
            x = layer(x, attention_mask)
        return self.classifier(x[:, 0])


class TorchEncoder(nn.Module):
    """nn.TransformerEncoder (batch_first): in eval under no_grad it runs _transformer_encoder_layer_fwd."""

    def __init__(self, d=32, heads=4, hidden=64, layers=2, tmax=32):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.randn(1, tmax, d) * 0.1)
        layer = nn.TransformerEncoderLayer(d, heads, hidden, dropout=0.1, batch_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 5)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos[:, : tokens.size(1)]
        return self.head(self.encoder(x).mean(dim=1))


# ----------------------------------------------------------------------------------------------- CNNs
class SmallResNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        from torchvision.models.resnet import BasicBlock
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2, downsample=down)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


class TinyUNet(nn.Module):
    """Encoder-decoder: GroupNorm, InstanceNorm, pad, ConvTranspose2d, nearest and bilinear upsampling,
    adaptive pooling to 2x2, leaky_relu/elu, skip concatenation."""

    def __init__(self):
        super().__init__()
        self.e1 = nn.Conv2d(3, 8, 3, padding=1)
        self.g1 = nn.GroupNorm(2, 8)
        self.e2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.i2 = nn.InstanceNorm2d(16, affine=True)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.d1 = nn.Conv2d(16, 8, 3)
        self.ctx = nn.Conv2d(16, 8, 1)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        a = F.leaky_relu(self.g1(self.e1(x)), 0.1)
        b = F.elu(self.i2(self.e2(a)))
        u = self.up(b)
        y = F.pad(torch.cat([u, a], dim=1), (1, 1, 1, 1))
        y = F.relu(self.d1(y))
        c = F.adaptive_avg_pool2d(self.ctx(b), (2, 2))
        c = F.interpolate(c, size=y.shape[-2:], mode="bilinear", align_corners=False)
        n = F.interpolate(b[:, :8], scale_factor=2.0, mode="nearest")
        return self.out(y + c + n)


def randomize_bn(m):
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)):
            if getattr(mod, "weight", None) is not None:
                mod.weight.data.uniform_(0.5, 1.5)
                mod.bias.data.uniform_(-0.2, 0.2)
            if getattr(mod, "running_mean", None) is not None:
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)


def torchvision_models():
    import torchvision
    from torchvision.models import efficientnet, convnext
    inv, last = efficientnet._efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
    return {
        "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=10),
        "mobilenet_v3": lambda: torchvision.models.mobilenet_v3_small(width_mult=0.25, num_classes=10),
        "efficientnet": lambda: efficientnet.EfficientNet(inv, 0.2, num_classes=10, last_channel=last),
        "convnext": lambda: convnext.ConvNeXt([convnext.CNBlockConfig(16, 32, 1), convnext.CNBlockConfig(32, None, 1)],
                                              stochastic_depth_prob=0.1, num_classes=10),
        "vit": lambda: torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                          hidden_dim=32, mlp_dim=64, num_classes=10),
    }


# ----------------------------------------------------------------------------------------------- the zoo
def tokens(b, t, seed):
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def lm_inputs(b, t, seed):
    return {"input_ids": tokens(b, t, seed)}


def padded_mask(b, t):
    m = torch.ones(b, t, dtype=torch.long)
    m[0, t - 2:] = 0  # the first sequence is right-padded
    return m


def bert_inputs(b, t, seed):
    tt = torch.zeros(b, t, dtype=torch.long)
    tt[:, t // 2:] = 1
    return {"input_ids": tokens(b, t, seed), "attention_mask": padded_mask(b, t), "token_type_ids": tt}


def image(b, hw, seed):
    return {"x": torch.randn(b, 3, hw, hw, generator=torch.Generator().manual_seed(seed))}


def families():
    """name -> (constructor, task, inputs(b, t_or_hw, seed), traced size, two test sizes)."""
    tv = torchvision_models()
    seq = ("batch", "seq")
    fam = {
        "llama2c": (Llama2c, "causal-lm", lambda b, t, s: {"tokens": tokens(b, t, s)}, (2, 8), [(1, 5), (3, 11)]),
        "hf_llama": (HFLlama, "causal-lm", lm_inputs, (2, 8), [(1, 5), (3, 11)]),
        "mistral": (lambda: HFLlama(window=3), "causal-lm", lm_inputs, (2, 8), [(1, 5), (3, 11)]),
        "gpt2": (GPT2, "causal-lm", lm_inputs, (2, 8), [(1, 5), (3, 11)]),
        "opt": (OPT, "causal-lm", lambda b, t, s: {"input_ids": tokens(b, t, s), "attention_mask": padded_mask(b, t)},
                (2, 8), [(1, 5), (3, 11)]),
        "gpt_neox": (GPTNeoX, "causal-lm", lm_inputs, (2, 8), [(1, 5), (3, 11)]),
        "bert": (Bert, "embedding", bert_inputs, (2, 8), [(1, 5), (3, 11)]),
        "distilbert": (DistilBert, "classifier",
                       lambda b, t, s: {"input_ids": tokens(b, t, s), "attention_mask": padded_mask(b, t)},
                       (2, 8), [(1, 5), (3, 11)]),
        "torch_encoder": (TorchEncoder, "classifier", lambda b, t, s: {"tokens": tokens(b, t, s)}, (2, 8),
                          [(1, 5), (3, 11)]),
        "vit": (tv["vit"], "classifier", image, (2, 32), [(1, 32), (3, 32)]),  # the position table fixes 32x32
        "resnet": (SmallResNet, "classifier", image, (2, 32), [(1, 24), (3, 40)]),
        "mobilenet_v2": (tv["mobilenet_v2"], "classifier", image, (2, 32), [(1, 24), (3, 40)]),
        "mobilenet_v3": (tv["mobilenet_v3"], "classifier", image, (2, 32), [(1, 24), (3, 40)]),
        "efficientnet": (tv["efficientnet"], "classifier", image, (2, 32), [(1, 24), (3, 40)]),
        "convnext": (tv["convnext"], "classifier", image, (2, 32), [(1, 24), (3, 40)]),
        "unet": (TinyUNet, "generic", image, (2, 16), [(1, 12), (3, 20)]),
    }
    del seq
    return fam


def input_spec(name, t, image_fixed):
    if t.dim() == 4:
        hw = "height" if not image_fixed else t.shape[2]
        ww = "width" if not image_fixed else t.shape[3]
        return {"name": name, "dtype": "float32", "shape": ["batch", t.shape[1], hw, ww]}
    return {"name": name, "dtype": "int64", "shape": ["batch", "seq"]}


# torch.onnx.export cannot write adaptive_avg_pool2d to 2x2 for dynamic image sizes: these families' ONNX
# files have a fixed image size (the traced one) and are checked on cases of that size.
ONNX_FIXED_IMAGE = {"unet", "vit"}


def save_case(zdir, name, tag, feed, y):
    files = {}
    for n, v in feed.items():
        f = "%s.%s.%s.npy" % (name, tag, n)
        np.save(os.path.join(zdir, f), v.numpy())
        files[n] = f
    f = "%s.%s.out.npy" % (name, tag)
    np.save(os.path.join(zdir, f), y.numpy())
    return {"inputs": files, "output": f}


def write_zoo(out, only=None):
    zdir = os.path.join(out, "zoo")
    os.makedirs(zdir, exist_ok=True)
    manifest = []
    for idx, (name, (make, task, inputs, traced, cases)) in enumerate(families().items()):
        if only and name not in only:
            continue
        torch.manual_seed(1000 + idx)
        model = make().eval()
        randomize_bn(model)
        with torch.no_grad():  # zero-initialized heads (torchvision's ViT) would make every output 0
            for p in model.parameters():
                if p.numel() > 1 and not p.any():
                    p.normal_(0, 0.1)
        example = inputs(*traced, 7)
        args = tuple(example.values())
        fixed_image = name in ONNX_FIXED_IMAGE
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(model, args, check_trace=False), os.path.join(zdir, name + ".pt"))
        # torch.onnx.export has no symbolic for the fused no-grad fast paths: export with grad enabled,
        # which takes the primitive path (the same math).
        dyn = {"output": {0: "batch"}}
        for k, v in example.items():
            dyn[k] = {0: "batch", 1: "seq"} if v.dim() == 2 else ({0: "batch"} if fixed_image else
                                                                  {0: "batch", 2: "height", 3: "width"})
        torch.onnx.export(model, args, os.path.join(zdir, name + ".onnx"), opset_version=17,
                          input_names=list(example.keys()), output_names=["output"], dynamic_axes=dyn,
                          do_constant_folding=True)
        with torch.no_grad():
            ours = []
            for k, (b, t) in enumerate(cases):
                feed = inputs(b, t, 100 + k)
                ours.append(save_case(zdir, name, "c%d" % k, feed, model(*feed.values())))
            onnx_cases = ours
            if fixed_image and name != "vit":
                onnx_cases = []
                for k, b in enumerate((1, 3)):
                    feed = inputs(b, traced[1], 200 + k)
                    onnx_cases.append(save_case(zdir, name, "o%d" % k, feed, model(*feed.values())))
        manifest.append({"name": name, "task": task,
                         "inputs": [input_spec(n, v, name == "vit") for n, v in example.items()],
                         "cases": ours, "onnx_cases": onnx_cases})
    with open(os.path.join(zdir, "zoo.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    import sys
    write_zoo(sys.argv[1] if len(sys.argv) > 1 else "fixtures", sys.argv[2:] or None)
