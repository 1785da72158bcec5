"""Static token dropping: keep a fixed number of tokens after an early block, inside the graph.

HiRED and EViT: the attention a ViT's CLS token pays to each patch in an early
block says which patches matter; keep the top K, run every later block on them,
and (EViT) append one fused token, the attention-weighted mean of the dropped
patches. GemFilter does the same for text with the attention of a query token.
K is fixed when the pass runs, so every shape in the exported graph is static.
The default score is the attention each token receives from all queries, which
kept more accuracy than the CLS row on vit-digits; `score="cls"` is HiRED's.

In the graph the selection is one TopK over the scores, a second TopK that puts
the kept indices back in sequence order (the exporter's form of a sort) and one
Gather of the hidden states; the fused token is the rest of the first TopK:
its values weigh a Gather of the dropped tokens in one MatMul. Quantized (QDQ,
16-bit activations) all of it runs on the HTP. On ORT CPU (vit-digits, 257
tokens, 2.4 ms float, 8.1 ms QDQ) keeping half the patches after block 0 runs
in 0.68x (float) and 0.59x (QDQ) of the full model's time; scoring, selection
and the fused token are 0.18 and 0.43 ms of that (bench/token_budget_vit.py).

Scores are the softmax probabilities of block `layer` itself, which the
canonical block returns on request: no second q/k projection.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from edgec.config import ConfigDict
from edgec.models.encoder import TextEncoder, VisionEncoder

SCORES = ("received", "cls")
SPECIALS = 2  # text: the first and the last real token ([CLS], [SEP]) are always kept
_EPS = 1e-6


@dataclass(frozen=True, kw_only=True)
class TokenBudgetConfig(ConfigDict):
    budget: float | int  # float in (0, 1]: fraction of the droppable tokens; int >= 1: how many to keep
    # the block whose attention decides; blocks after it run on the kept tokens. The first
    # block saves the most and kept as much as later ones: vit-digits at budget 0.5 kept
    # 96.5% top-1 after block 0 and 93.3% after block 1 (full model 96.3%), MiniLM's pooled
    # cosine was 0.9985 after either (min 0.920 vs 0.887, 160 held-out sentences, S=128)
    layer: int = 0
    fuse_dropped: bool = True  # EViT: append the attention-weighted mean of the dropped tokens
    # "received": the attention each token receives, mean over heads and (real) queries
    # (SpAtten's cumulative score; GemFilter reads one query); "cls": the CLS query's row,
    # mean over heads (HiRED, EViT). On vit-digits at budget 0.5 after block 0, "received"
    # kept 96.5% float top-1 and "cls" 95.5% (full model 96.25%), at 0.25 96.3% and 90.0%.
    score: str = "received"

    def __post_init__(self):
        b = self.budget
        fraction = isinstance(b, float) and 0.0 < b <= 1.0
        count = type(b) is int and b >= 1
        if not (fraction or count):
            raise ValueError(f"budget must be a fraction in (0, 1] (a float) or a token count >= 1 (an int), "
                             f"got {b!r}")
        if type(self.layer) is not int or self.layer < 0:
            raise ValueError(f"layer must be a block index >= 0, got {self.layer!r}")
        if type(self.fuse_dropped) is not bool:
            raise ValueError(f"fuse_dropped must be a bool, got {self.fuse_dropped!r}")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")

    def kept(self, droppable: int) -> int:
        """How many of `droppable` tokens the budget keeps: a fraction rounds half up, to at least 1."""
        if isinstance(self.budget, float):
            return max(1, min(droppable, math.floor(self.budget * droppable + 0.5)))
        if self.budget > droppable:
            raise ValueError(f"budget {self.budget} exceeds the {droppable} droppable tokens")
        return self.budget


@dataclass
class TokenBudgetResult:
    module: nn.Module
    kept: int  # K: droppable tokens kept
    total: int  # droppable tokens: patches, or text positions minus the two specials
    layer: int
    fused: bool  # a fused token is appended
    score: str  # "cls" or "received"
    tokens_after: int  # sequence length after block `layer`: CLS or specials + K + fused
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.kept < self.total

    def explain(self) -> list[str]:
        head = (f"block {self.layer}: keep {self.kept} of {self.total} tokens by {self.score} attention"
                f"{' + 1 fused' if self.fused else ''}; later blocks run on {self.tokens_after}")
        return [head, *self.notes]

    def to_dict(self) -> dict:
        return {"kept": self.kept, "total": self.total, "layer": self.layer, "fused": self.fused,
                "score": self.score, "tokens_after": self.tokens_after, "changed": self.changed,
                "notes": list(self.notes)}


def select(scores: torch.Tensor, k: int, fuse: bool):
    """The K best of scores [B, N]: indices [B, K] in sequence order; with `fuse`, also the
    others' scores and indices [B, N - K]. One TopK ranks all N, so the two sets partition N
    whatever the ties; a second TopK sorts the kept indices (the exporter's form of sort)."""
    if not fuse:
        return _ascending(scores.topk(k, dim=-1).indices), None, None
    values, idx = scores.topk(scores.shape[-1], dim=-1)
    return _ascending(idx[:, :k]), values[:, k:], idx[:, k:]


def _ascending(idx: torch.Tensor) -> torch.Tensor:
    """Sort by a smallest-first TopK: ONNX exports a sort as TopK anyway, and ExecuTorch's
    portable kernels have topk but not sort."""
    return idx.topk(idx.shape[-1], dim=-1, largest=False).values


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, N, ...] at idx [B, K] -> [B, K, ...]; batch 1 exports as one Gather, which the HTP runs."""
    if x.shape[0] == 1:
        return x.index_select(1, idx[0])
    return torch.gather(x, 1, idx.view(*idx.shape, *[1] * (x.dim() - 2)).expand(-1, -1, *x.shape[2:]))


def fuse_tokens(x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Mean [B, 1, H] of x's tokens idx [B, M] weighted by weights [B, M] (>= 0; all 0 gives 0)."""
    w = weights / torch.clamp(weights.sum(-1, keepdim=True), min=_EPS)
    return torch.matmul(w.unsqueeze(1), gather_tokens(x, idx))


class VisionTokenBudget(nn.Module):
    """pixel_values [B, C, H, W] -> logits, like the `VisionEncoder` it holds, dropping patches after `layer`."""

    def __init__(self, encoder: VisionEncoder, layer: int, k: int, fuse: bool, score: str):
        super().__init__()
        self.encoder, self.layer, self.k, self.fuse, self.score = encoder, layer, k, fuse, score
        # scores are probabilities (<= 1): CLS, ranked with the patches, always comes first
        bonus = torch.zeros(encoder.pos.shape[1])
        bonus[0] = 2.0
        self.register_buffer("cls_bonus", bonus, persistent=False)

    def drop(self, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """[CLS; N patches] -> [CLS; K kept patches in order (; fused)]."""
        if self.score == "cls":
            a = probs[:, :, 0].mean(1)  # [B, 1 + N]: the CLS query, mean over heads
        else:
            a = probs.mean((1, 2))  # mean over heads and queries
        idx, dropped_w, dropped = select(a + self.cls_bonus, self.k + 1, self.fuse)
        kept = gather_tokens(x, idx)
        if not self.fuse:
            return kept
        return torch.cat([kept, fuse_tokens(x, dropped_w, dropped)], dim=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        x = enc.patch(pixel_values).flatten(2).transpose(1, 2)
        cls = enc.cls if x.shape[0] == 1 else enc.cls.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + enc.pos
        for block in enc.layers[:self.layer]:
            x = block(x, None)
        x = self.drop(*enc.layers[self.layer](x, None, return_probs=True))
        for block in enc.layers[self.layer + 1:]:
            x = block(x, None)
        return enc.head(enc.ln(x[:, 0]))


class TextTokenBudget(nn.Module):
    """(input_ids, attention_mask) [B, S] -> (last_hidden_state [B, T, H], kept_mask [B, T] float 0/1).

    T = 2 + K (+1 fused). Rows are the kept positions in their original order:
    always the first and the last real token ([CLS], [SEP]), then the K real
    tokens that scored highest in block `layer`. Padding scores below every
    real token, so it is kept only where fewer than K real tokens exist, with
    kept_mask 0. The fused row (last) is the score-weighted mean of the dropped
    real tokens, kept_mask 1 where any was dropped, else 0 (and its row means nothing).
    Later blocks attend over kept_mask; pool over it for the sentence embedding.
    """

    def __init__(self, encoder: TextEncoder, seq_len: int, layer: int, k: int, fuse: bool, score: str):
        super().__init__()
        self.encoder, self.layer, self.k, self.fuse, self.score = encoder, layer, k, fuse, score
        idx = torch.arange(seq_len)
        self.register_buffer("before", (idx[:, None] < idx[None, :]).float(), persistent=False)  # [j, i]: j < i

    def drop(self, x: torch.Tensor, probs: torch.Tensor, mask: torch.Tensor):
        p = probs.mean(1)  # [B, S, S], over heads
        if self.score == "cls":
            w = p[:, 0] * mask
        else:  # mean over the real queries of the attention each key receives
            w = torch.matmul(mask.unsqueeze(1), p).squeeze(1) * mask / mask.sum(-1, keepdim=True)
        real_before = torch.matmul(mask, self.before)  # [B, S]: real tokens ahead of i
        first = mask * (real_before < 0.5).float()
        last = mask * (real_before > mask.sum(-1, keepdim=True) - 1.5).float()
        # specials above every real token (w <= 1), padding below every one
        scores = w + 2.0 * (first + last) + (mask - 1.0) * 2.0
        idx, dropped_s, dropped = select(scores, self.k + SPECIALS, self.fuse)
        kept, kept_mask = gather_tokens(x, idx), gather_tokens(mask, idx)
        if not self.fuse:
            return kept, kept_mask
        fused = fuse_tokens(x, torch.clamp(dropped_s, min=0.0), dropped)  # padding weighs 0
        # a real token was dropped: counts, not weights, so it survives quantization
        real = (mask.sum(-1, keepdim=True) - kept_mask.sum(-1, keepdim=True) > 0.5).float()
        return torch.cat([kept, fused], dim=1), torch.cat([kept_mask, real], dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        enc = self.encoder
        mask = attention_mask.to(torch.float32)
        x = enc.embed(input_ids)
        mask_add = ((1.0 - mask) * enc.mask_value)[:, None, None, :]
        for block in enc.layers[:self.layer]:
            x = block(x, mask_add)
        x, probs = enc.layers[self.layer](x, mask_add, return_probs=True)
        x, kept_mask = self.drop(x, probs, mask)
        mask_add = ((1.0 - kept_mask) * enc.mask_value)[:, None, None, :]
        for block in enc.layers[self.layer + 1:]:
            x = block(x, mask_add)
        return x, kept_mask


def apply_token_budget(module: nn.Module, config: TokenBudgetConfig,
                       seq_len_or_num_patches: int | None = None) -> TokenBudgetResult:
    """Wrap a deep copy of `module` (eval mode) that drops tokens beyond the budget after block `config.layer`.

    `seq_len_or_num_patches`: for a `TextEncoder` its static sequence length S
    (required: the budget is counted over S - 2 positions); for a `VisionEncoder`
    its patch count, checked against the model when given. A budget that keeps
    every token returns an unchanged copy. The input module is not modified.
    """
    if not isinstance(module, (VisionEncoder, TextEncoder)):
        raise TypeError(f"token dropping needs a canonical VisionEncoder or TextEncoder, "
                        f"got {type(module).__name__}: rebuild it with edgec.models.hf.from_hf")
    blocks = len(module.layers)
    if config.layer >= blocks:
        raise ValueError(f"layer {config.layer} does not exist: the model has blocks 0..{blocks - 1}")
    vision = isinstance(module, VisionEncoder)
    n = seq_len_or_num_patches
    if vision:
        patches = module.pos.shape[1] - 1
        if n is not None and n != patches:
            raise ValueError(f"the model has {patches} patches, not {n}")
        total, specials = patches, 1
    else:
        if isinstance(n, bool) or not isinstance(n, int) or n <= SPECIALS:
            raise ValueError(f"a text encoder needs its static sequence length (an int > {SPECIALS}), got {n!r}")
        total, specials = n - SPECIALS, SPECIALS
    k, score = config.kept(total), config.score
    new = copy.deepcopy(module).eval()
    if k == total:
        return TokenBudgetResult(new, k, total, config.layer, False, score, total + specials,
                                 ["the budget keeps every token: model unchanged"])
    fuse = config.fuse_dropped
    if vision:
        wrapped = VisionTokenBudget(new, config.layer, k, fuse, score)
    else:
        wrapped = TextTokenBudget(new, n, config.layer, k, fuse, score)
    notes = [] if config.layer < blocks - 1 else ["no block runs after the selection: only the output shrinks"]
    return TokenBudgetResult(wrapped.eval(), k, total, config.layer, fuse, score, specials + k + fuse, notes)
