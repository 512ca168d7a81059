"""A plain PyTorch (eager) decoder with the same architecture and FLOPs convention as ``scaling``: pre-norm
RMSNorm, rotary embeddings (rotate-half), causal scaled-dot-product attention, SwiGLU with the same hidden size,
untied embeddings, AdamW with global-norm clipping, float32. Run it beside ``scaling bench`` on the same shapes
(``--preset``/``--set model.d_model=...``) to compare tokens per second.

Needs the benchmark extra (torch is not a dependency of the package): ``pip install -e .[bench]``.

    python benchmarks/torch_reference.py --d-model 256 --layers 4 --seq 256 --batch 16 --json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


def rope(x, sin, cos):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int):
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.gate = nn.Linear(d, d_ff, bias=False)
        self.up = nn.Linear(d, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d, bias=False)

    def forward(self, x, sin, cos):
        B, L, D = x.shape
        q, k, v = self.qkv(self.n1(x)).view(B, L, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        q, k = rope(q, sin, cos), rope(k, sin, cos)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, L, D))
        h = self.n2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Decoder(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, d_ff: int, seq: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([Block(d, heads, d_ff) for _ in range(layers)])
        self.norm = RMSNorm(d)
        self.unembed = nn.Linear(d, vocab, bias=False)
        hd = d // heads
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.arange(seq).float()[:, None] * inv[None]
        self.register_buffer("sin", ang.sin()[None, None])
        self.register_buffer("cos", ang.cos()[None, None])
        for p in self.parameters():
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens):
        x = self.embed(tokens)
        for b in self.blocks:
            x = b(x, self.sin, self.cos)
        return self.unembed(self.norm(x))


def bench(d_model: int, layers: int, seq: int, batch: int, heads: int | None = None, vocab: int = 256, steps: int = 20, warmup: int = 3) -> dict:
    heads = heads or max(1, d_model // (16 if d_model < 64 else 32 if d_model < 256 else 64))
    d_ff = max(8, 8 * round(d_model / 3))  # scaling's SwiGLU rule
    torch.manual_seed(0)
    model = Decoder(vocab, d_model, layers, heads, d_ff, seq)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    tokens = torch.randint(0, vocab, (batch, seq + 1))

    def step():
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step().item()
        times.append(time.perf_counter() - t)
    s = statistics.median(times)
    return {"framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(), "step_time_s": s,
            "tokens_per_sec": batch * seq / s, "d_model": d_model, "layers": layers, "seq": seq, "batch": batch,
            "heads": heads, "d_ff": d_ff, "n_params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    r = bench(a.d_model, a.layers, a.seq, a.batch, steps=a.steps)
    print(json.dumps(r) if a.json else f"{r['framework']}: {r['tokens_per_sec']:,.0f} tok/s, step {1e3 * r['step_time_s']:.1f} ms")


if __name__ == "__main__":
    main()
