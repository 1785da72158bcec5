"""The canonical decoder-only causal LM every pass and exporter works on.

The counterpart of `encoder.py` for LLMs: plain Linear/matmul/softmax
attention with rotary position embeddings and grouped-query attention,
RMSNorm and a gated MLP. Head counts, KV-head counts and MLP widths are per
layer, so structured pruning can remove whole KV groups and MLP channels
physically. The graph is static: the causal mask is a select on positions,
masked scores get a modest constant instead of float-minimum, and cos/sin are
computed at the positions they serve.

The families differ in small, named options, not in forks: where the norms
sit (`norms`), a norm on queries and keys (`qk_norm`), the attention scale and
soft cap, the MLP's activation, an embedding scale, a logit scale and soft cap,
which RoPE table a layer uses (or none: NoPE layers), and a per-layer sliding
window. Options that are plain constants on weights (Gemma's `1 + w` norms,
Granite's residual multiplier) are folded into the weights when loading.

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
ACTIVATIONS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}
NORMS = ("pre", "sandwich", "post")  # Llama, Gemma 2/3, OLMo 2


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps))


def inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rope_at(positions: torch.Tensor, inv_freq: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [..., head_dim] at integer `positions` [...], the half-split layout Llama uses; `scale` is
    the attention factor some scalings (YaRN, LongRoPE) apply to both."""
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    if scale == 1.0:
        return emb.cos(), emb.sin()
    return emb.cos() * scale, emb.sin() * scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, S, D]; cos/sin [S, D] or [B, 1, S, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Which keys each query sees: [..., S, T] bool from query positions [..., S] and key positions
    [..., T]: causal, and within the last `window` positions for a sliding-window layer."""
    q, k = q_pos[..., :, None], k_pos[..., None, :]
    seen = k <= q
    return seen if window is None else seen & (k > q - window)


class Attention(nn.Module):
    """Grouped-query attention: KV head j serves query heads j*g .. j*g+g-1 (g = heads // kv_heads).

    `qk_norm`: RMSNorm on each query and key head ("head": Qwen3, Gemma 3) or on the whole projection
    ("full": OLMo 2). `scale` replaces head_dim ** -0.5; `softcap` bounds scores by cap * tanh(s / cap)
    (Gemma 2). `rope` is the index of the RoPE table this layer reads, None for no position
    embedding (SmolLM3's NoPE layers); `window` the sliding window, None for full attention.
    """

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, *, qk_norm: str | None = None,
                 eps: float = 1e-6, scale: float | None = None, softcap: float | None = None,
                 rope: int | None = 0, window: int | None = None):
        super().__init__()
        if heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
        if qk_norm not in (None, "head", "full"):
            raise ValueError(f"qk_norm must be None, 'head' or 'full', got {qk_norm!r}")
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q = nn.Linear(hidden, heads * head_dim)
        self.k = nn.Linear(hidden, kv_heads * head_dim)
        self.v = nn.Linear(hidden, kv_heads * head_dim)
        self.o = nn.Linear(heads * head_dim, hidden)
        self.qk_norm = qk_norm
        if qk_norm is not None:
            self.q_norm = RMSNorm(head_dim if qk_norm == "head" else heads * head_dim, eps)
            self.k_norm = RMSNorm(head_dim if qk_norm == "head" else kv_heads * head_dim, eps)
        self.scale = head_dim ** -0.5 if scale is None else scale
        self.softcap, self.rope, self.window = softcap, rope, window

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [B, S, hidden] -> q [B, heads, S, D], k and v [B, kv_heads, S, D]; RoPE on q and k."""
        b, s, _ = x.shape
        q, k = self.q(x), self.k(x)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is None:
            return q, k, v
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
               mask_value: float = -1e4) -> torch.Tensor:
        """q [B, heads, S, D], k/v [B, kv_heads, T, D] -> [B, S, hidden]. `mask` [S, T] or [B, 1, S, T]:
        a bool mask of the keys each query sees (masked scores are selected away, so whatever an unwritten
        cache slot holds never reaches the softmax), or a float mask added to the scores (0 or mask_value).

        The query heads of a group are stacked along the rows ([B, kv_heads, g*S, D]), so each
        KV head is used as is: no repeated copies of k/v, and every tensor stays 4-D.
        """
        b, _, s, d = q.shape
        g = self.heads // self.kv_heads
        q = q.reshape(b, self.kv_heads, g * s, d)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scale
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        rows = torch.cat([mask] * g, dim=-2)  # row (i, s) of the group is query position s
        if rows.dtype == torch.bool:
            scores = torch.where(rows, scores, torch.full_like(scores[..., :1, :1], mask_value))
        else:
            scores = scores + rows
        ctx = torch.matmul(scores.softmax(dim=-1), v)
        ctx = ctx.reshape(b, self.heads, s, d).transpose(1, 2)
        return self.o(ctx.reshape(b, s, self.heads * d))


class Block(nn.Module):
    """A decoder layer. norms "pre": x + attn(norm(x)), then x + mlp(norm(x)) (Llama); "sandwich": a norm
    before and after each (Gemma 2/3); "post": x + norm(attn(x)), x + norm(mlp(x)) (OLMo 2).
    The MLP is down(act(gate(h)) * up(h))."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int, eps: float,
                 *, norms: str = "pre", act: str = "silu", **attention):
        super().__init__()
        if norms not in NORMS:
            raise ValueError(f"norms must be one of {NORMS}, got {norms!r}")
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        self.norms, self.act = norms, act
        self.attn_norm = RMSNorm(hidden, eps) if norms != "post" else nn.Identity()
        self.attn = Attention(hidden, heads, kv_heads, head_dim, eps=eps, **attention)
        self.mlp_norm = RMSNorm(hidden, eps) if norms != "post" else nn.Identity()
        if norms != "pre":
            self.attn_post_norm = RMSNorm(hidden, eps)
            self.mlp_post_norm = RMSNorm(hidden, eps)
        self.gate = nn.Linear(hidden, intermediate)
        self.up = nn.Linear(hidden, intermediate)
        self.down = nn.Linear(intermediate, hidden)

    def after_attention(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return x + (out if self.norms == "pre" else self.attn_post_norm(out))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP's residual update of x (its post-norm applied)."""
        h = self.mlp_norm(x)
        out = self.down(ACTIVATIONS[self.act](self.gate(h)) * self.up(h))
        return out if self.norms == "pre" else self.mlp_post_norm(out)


class Decoder(nn.Module):
    """Causal LM: input_ids [B, S] int64 -> logits [B, S, vocab].

    Every projection has a bias (zeros where the source model has none), so
    pruning can fold compensation terms into it, as with the encoder.
    `mask_value` is what masked scores become: small enough for a static
    16-bit range, large enough that masked keys get exactly zero weight.
    `ropes` are the RoPE tables' (inverse frequencies [head_dim / 2], attention
    factor); the default is one table from `rope_theta`. Each layer dict holds
    heads, kv_heads, head_dim and intermediate, and may hold Block/Attention
    options (norms, act, qk_norm, scale, softcap, rope, window).
    """

    def __init__(self, vocab: int, hidden: int, layers: list[dict], rms_eps: float,
                 rope_theta: float, max_pos: int, tie_embeddings: bool, mask_value: float = -1e4, *,
                 ropes: list[tuple[torch.Tensor, float]] | None = None, embed_scale: float = 1.0,
                 logit_scale: float = 1.0, logit_softcap: float | None = None):
        super().__init__()
        head_dims = {l["head_dim"] for l in layers}
        if len(head_dims) != 1:
            raise ValueError(f"all layers must share one head_dim (the RoPE tables do), got {sorted(head_dims)}")
        head_dim = head_dims.pop()
        ropes = ropes or [(inverse_frequencies(head_dim, rope_theta), 1.0)]
        self.embed = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(
            Block(hidden, l["heads"], l["kv_heads"], l["head_dim"], l["intermediate"], rms_eps,
                  **{k: v for k, v in l.items() if k not in ("heads", "kv_heads", "head_dim", "intermediate")})
            for l in layers)
        bad = [i for i, b in enumerate(self.layers) if b.attn.rope is not None and not 0 <= b.attn.rope < len(ropes)]
        if bad:
            raise ValueError(f"layer {bad[0]} reads RoPE table {self.layers[bad[0]].attn.rope}; there are {len(ropes)}")
        self.norm = RMSNorm(hidden, rms_eps)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.register_buffer("inv_freq", torch.stack([f.float() for f, _ in ropes]), persistent=False)
        self.rope_scale = [float(s) for _, s in ropes]
        self.max_pos, self.mask_value = max_pos, mask_value
        self.embed_scale, self.logit_scale, self.logit_softcap = embed_scale, logit_scale, logit_softcap

    @property
    def windows(self) -> list[int | None]:
        return [b.attn.window for b in self.layers]

    def attention(self) -> list[dict]:
        """What a runtime that computes attention itself needs per layer besides the shapes: the score scale,
        the soft cap and the sliding window."""
        return [{"scale": b.attn.scale, "softcap": b.attn.softcap, "window": b.attn.window} for b in self.layers]

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [tables, *positions.shape, head_dim]: every RoPE table at `positions`."""
        pairs = [rope_at(positions, self.inv_freq[i], s) for i, s in enumerate(self.rope_scale)]
        return torch.stack([c for c, _ in pairs]), torch.stack([s for _, s in pairs])

    def masks(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's bool mask: one per distinct window, shared by the layers that use it."""
        by_window = {w: visible(q_pos, k_pos, w) for w in dict.fromkeys(self.windows)}
        return [by_window[w] for w in self.windows]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        s = input_ids.shape[1]
        if s > self.max_pos:
            raise ValueError(f"sequence length {s} exceeds max_pos {self.max_pos}")
        pos = torch.arange(s)
        cos, sin = self.rope(pos)
        # additive: masks of positions alone fold into constants, so the plain graph keeps no select
        return self.run(input_ids, cos, sin, [(~m).float() * self.mask_value for m in self.masks(pos, pos)])

    def run(self, input_ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            mask: torch.Tensor | list[torch.Tensor], cache: KVCache | None = None,
            last_only: bool = False) -> torch.Tensor:
        """Logits for `input_ids` at the positions `cos`/`sin` [tables, ..., S, D] belong to (the last
        position's alone with `last_only`); `mask` is one mask for every layer or one per layer (see
        Attention.attend); `cache` turns each layer's new keys and values into the ones attended over
        (with no cache: just the new ones)."""
        x = self.embed(input_ids)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        for i, layer in enumerate(self.layers):
            a = layer.attn
            table = 0 if a.rope is None else a.rope
            q, k, v = a.project(layer.attn_norm(x), cos[table], sin[table])
            if cache is not None:
                k, v = cache(i, k, v)
            x = layer.after_attention(x, a.attend(q, k, v, mask[i] if isinstance(mask, list) else mask,
                                                   self.mask_value))
            x = x + layer.mlp(x)
        if last_only:
            x = x[:, -1:]
        logits = self.lm_head(self.norm(x))
        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        if self.logit_softcap is not None:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits
