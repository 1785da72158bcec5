"""The canonical decoder-only causal LM (Llama family) every pass and exporter works on.

The counterpart of `encoder.py` for LLMs: plain Linear/matmul/softmax
attention with rotary position embeddings and grouped-query attention,
RMSNorm and a SwiGLU MLP. Head counts, KV-head counts and MLP widths are per
layer, so structured pruning can remove whole KV groups and MLP channels
physically. The graph is static: the causal mask is built from the sequence
length alone, with a modest constant instead of float-minimum, and cos/sin
come from precomputed tables sliced by constants.

Attention is split into `project` (q, k, v with RoPE applied) and `attend`
(explicit k/v of any length). `Decoder.run` puts a `KVCache` callback between
the two: each export contract (a growing cache for ONNX Runtime GenAI, a static
buffer for ExecuTorch, cache-in/new-entries-out for the NPU) is one small
callback over the same layers.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

# (layer index, new keys, new values) -> the keys and values to attend over
KVCache = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps))


def inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rope_at(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [..., head_dim] at integer `positions` [...], the half-split layout Llama uses."""
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rope_tables(head_dim: int, max_pos: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each [max_pos, head_dim]."""
    return rope_at(torch.arange(max_pos), inverse_frequencies(head_dim, theta))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, S, D]; cos/sin [S, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def causal_mask(s: int, t: int, value: float) -> torch.Tensor:
    """[s, t] additive mask: query i (the last s of t positions) sees keys 0 .. t-s+i."""
    q_pos = torch.arange(t - s, t)[:, None]
    k_pos = torch.arange(t)[None, :]
    return (k_pos > q_pos).to(torch.float32) * value


class Attention(nn.Module):
    """Grouped-query attention: KV head j serves query heads j*g .. j*g+g-1 (g = heads // kv_heads)."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        if heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q = nn.Linear(hidden, heads * head_dim)
        self.k = nn.Linear(hidden, kv_heads * head_dim)
        self.v = nn.Linear(hidden, kv_heads * head_dim)
        self.o = nn.Linear(heads * head_dim, hidden)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [B, S, hidden] -> q [B, heads, S, D], k and v [B, kv_heads, S, D]; RoPE on q and k."""
        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask_add: torch.Tensor) -> torch.Tensor:
        """q [B, heads, S, D], k/v [B, kv_heads, T, D], mask_add [S, T] or [B, 1, S, T] -> [B, S, hidden].

        The query heads of a group are stacked along the rows ([B, kv_heads, g*S, D]), so each
        KV head is used as is: no repeated copies of k/v, and every tensor stays 4-D.
        """
        b, _, s, d = q.shape
        g = self.heads // self.kv_heads
        q = q.reshape(b, self.kv_heads, g * s, d)
        scores = torch.matmul(q, k.transpose(2, 3)) * (d ** -0.5)
        scores = scores + torch.cat([mask_add] * g, dim=-2)  # row (i, s) of the group is query position s
        ctx = torch.matmul(scores.softmax(dim=-1), v)
        ctx = ctx.reshape(b, self.heads, s, d).transpose(1, 2)
        return self.o(ctx.reshape(b, s, self.heads * d))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask_add: torch.Tensor) -> torch.Tensor:
        return self.attend(*self.project(x, cos, sin), mask_add)


class Block(nn.Module):
    """Pre-norm decoder layer: x + attn(norm(x)), then x + down(silu(gate(.)) * up(.))."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int,
                 intermediate: int, eps: float):
        super().__init__()
        self.attn_norm = RMSNorm(hidden, eps)
        self.attn = Attention(hidden, heads, kv_heads, head_dim)
        self.mlp_norm = RMSNorm(hidden, eps)
        self.gate = nn.Linear(hidden, intermediate)
        self.up = nn.Linear(hidden, intermediate)
        self.down = nn.Linear(intermediate, hidden)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp_norm(x)
        return self.down(F.silu(self.gate(h)) * self.up(h))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask_add: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask_add)
        return x + self.mlp(x)


class Decoder(nn.Module):
    """Llama-family causal LM: input_ids [B, S] int64 -> logits [B, S, vocab].

    Every projection has a bias (zeros where the source model has none), so
    pruning can fold compensation terms into it, as with the encoder.
    `mask_value` is the additive mask constant: small enough for a static
    16-bit range, large enough that masked keys get exactly zero weight.
    """

    def __init__(self, vocab: int, hidden: int, layers: list[dict], rms_eps: float,
                 rope_theta: float, max_pos: int, tie_embeddings: bool, mask_value: float = -1e4):
        super().__init__()
        head_dims = {l["head_dim"] for l in layers}
        if len(head_dims) != 1:
            raise ValueError(f"all layers must share one head_dim (the RoPE tables do), got {sorted(head_dims)}")
        self.embed = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(
            Block(hidden, l["heads"], l["kv_heads"], l["head_dim"], l["intermediate"], rms_eps)
            for l in layers)
        self.norm = RMSNorm(hidden, rms_eps)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.embed.weight
        head_dim = head_dims.pop()
        cos, sin = rope_tables(head_dim, max_pos, rope_theta)
        self.register_buffer("inv_freq", inverse_frequencies(head_dim, rope_theta), persistent=False)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.rope_theta, self.max_pos, self.mask_value = rope_theta, max_pos, mask_value

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        s = input_ids.shape[1]
        if s > self.max_pos:
            raise ValueError(f"sequence length {s} exceeds max_pos {self.max_pos}")
        return self.run(input_ids, self.rope_cos[:s], self.rope_sin[:s], causal_mask(s, s, self.mask_value))

    def run(self, input_ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask_add: torch.Tensor,
            cache: KVCache | None = None) -> torch.Tensor:
        """Logits for `input_ids` at the positions `cos`/`sin` belong to; `cache` turns each layer's
        new keys and values into the ones attended over (with no cache: just the new ones)."""
        x = self.embed(input_ids)
        for i, layer in enumerate(self.layers):
            q, k, v = layer.attn.project(layer.attn_norm(x), cos, sin)
            if cache is not None:
                k, v = cache(i, k, v)
            x = x + layer.attn.attend(q, k, v, mask_add)
            x = x + layer.mlp(x)
        return self.lm_head(self.norm(x))
