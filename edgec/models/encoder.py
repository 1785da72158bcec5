"""The canonical transformer encoder every pass and exporter works on.

Hugging Face models differ in naming, attention back-ends and mask handling,
and several of those choices do not survive export to an NPU (float-minimum
masks, GatherND, dynamic position ids). edgec therefore rebuilds each supported
encoder as this one explicit module: plain Linear/matmul/softmax attention, an
additive mask with a small constant, constant position ids. Heads and MLP
widths are per layer, so structured pruning can remove them physically, and
the layer loop is a plain list, so token dropping can sit between layers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.q = nn.Linear(hidden, inner)
        self.k = nn.Linear(hidden, inner)
        self.v = nn.Linear(hidden, inner)
        self.o = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor, mask_add: torch.Tensor | None, return_probs: bool = False):
        """`return_probs` also returns the softmax probabilities [B, heads, S, S], which token dropping ranks by."""
        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.heads, self.head_dim).permute(0, 2, 1, 3)
        k = self.k(x).view(b, s, self.heads, self.head_dim).permute(0, 2, 3, 1)
        v = self.v(x).view(b, s, self.heads, self.head_dim).permute(0, 2, 1, 3)
        # a Div by sqrt(d) is the pattern ONNX Runtime's attention fusion matches
        scores = torch.matmul(q, k) / math.sqrt(self.head_dim)
        if mask_add is not None:
            scores = scores + mask_add
        probs = scores.softmax(dim=-1)
        out = self.o(torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(b, s, self.heads * self.head_dim))
        return (out, probs) if return_probs else out


class Block(nn.Module):
    """One encoder layer; `pre_norm` picks ViT (pre-LN) or BERT (post-LN) order."""

    def __init__(self, hidden: int, heads: int, head_dim: int, intermediate: int,
                 act: str, eps: float, pre_norm: bool):
        super().__init__()
        self.attn = Attention(hidden, heads, head_dim)
        self.ln1 = nn.LayerNorm(hidden, eps=eps)
        self.fc1 = nn.Linear(hidden, intermediate)
        self.fc2 = nn.Linear(intermediate, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=eps)
        self.act_name, self.pre_norm = act, pre_norm

    def forward(self, x: torch.Tensor, mask_add: torch.Tensor | None, return_probs: bool = False):
        """`return_probs` returns (out, the attention's probabilities) instead of out."""
        act = ACTIVATIONS[self.act_name]
        h = self.ln1(x) if self.pre_norm else x
        # passed only when set: attentions that pruning or training swap in need not take it
        a, probs = self.attn(h, mask_add, return_probs=True) if return_probs else (self.attn(h, mask_add), None)
        if self.pre_norm:
            x = x + a
            out = x + self.fc2(act(self.fc1(self.ln2(x))))
        else:
            x = self.ln1(x + a)
            out = self.ln2(x + self.fc2(act(self.fc1(x))))
        return (out, probs) if return_probs else out


class TextEncoder(nn.Module):
    """BERT-family encoder: (input_ids, attention_mask) -> last_hidden_state.

    The mask becomes `(1 - mask) * mask_value`; a modest `mask_value` keeps
    the score range small enough for a static 16-bit range on an NPU.
    """

    def __init__(self, vocab: int, max_pos: int, type_vocab: int, hidden: int,
                 layers: list[dict], act: str, eps: float, pos_offset: int = 0,
                 mask_value: float = -100.0):
        super().__init__()
        self.word = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(max_pos, hidden)
        self.segment = nn.Embedding(max(type_vocab, 1), hidden)
        self.ln = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(
            Block(hidden, l["heads"], l["head_dim"], l["intermediate"], act, eps, pre_norm=False)
            for l in layers)
        self.pos_offset, self.mask_value = pos_offset, mask_value

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        s = input_ids.shape[1]
        pos = self.pos.weight[self.pos_offset:self.pos_offset + s]
        return self.ln(self.word(input_ids) + pos + self.segment.weight[0])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask_add = (1.0 - attention_mask[:, None, None, :].to(self.ln.weight.dtype)) * self.mask_value
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, mask_add)
        return x


class VisionEncoder(nn.Module):
    """ViT-family classifier: pixel_values -> logits (pre-LN, CLS pooling)."""

    def __init__(self, channels: int, patch: int, image_size: int, hidden: int,
                 layers: list[dict], act: str, eps: float, num_labels: int):
        super().__init__()
        self.patch = nn.Conv2d(channels, hidden, kernel_size=patch, stride=patch)
        n = (image_size // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
        self.pos = nn.Parameter(torch.zeros(1, n + 1, hidden))
        self.layers = nn.ModuleList(
            Block(hidden, l["heads"], l["head_dim"], l["intermediate"], act, eps, pre_norm=True)
            for l in layers)
        self.ln = nn.LayerNorm(hidden, eps=eps)
        self.head = nn.Linear(hidden, num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch(pixel_values).flatten(2).transpose(1, 2)
        # exports have batch 1: a plain concat keeps Expand/shape arithmetic out of the graph
        cls = self.cls if x.shape[0] == 1 else self.cls.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos
        for layer in self.layers:
            x = layer(x, None)
        return self.head(self.ln(x[:, 0]))
