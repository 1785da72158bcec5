"""Padding-free execution of a `TextEncoder`: run the layers on the real tokens only.

A typical sentence fills 10-20 of 128 positions, so a fixed-shape graph spends
most of its time on padding. `SkipPadding` gathers the positions where the mask
is 1 (NonZero + Gather in ONNX, so their count is read from the mask at run
time, not fixed at export), runs embedding and layers on that shorter sequence
without any mask, and scatters the result back to the input length with
exactly zero rows where the mask is 0.

The layers run unmasked, in the no-mask pattern ONNX Runtime's BERT optimizer
fuses into one `Attention` node (MatMul -> Div -> Softmax).

Real rows equal the `TextEncoder`'s up to float rounding: its masked keys get
weight exp(mask_value), which underflows to zero in float32. Real tokens keep
their positions, so this holds for any mask, not only right padding.
"""

from __future__ import annotations

import torch
from torch import nn

from edgec.models.encoder import TextEncoder


class SkipPadding(nn.Module):
    """(input_ids [1, S], attention_mask [1, S]) -> last_hidden_state [1, S, H], padded rows zero.

    Takes one sequence at a time: rows of a batch would keep different numbers
    of tokens. Shares the encoder's parameters (no copy).
    """

    def __init__(self, encoder: TextEncoder):
        super().__init__()
        if not isinstance(encoder, TextEncoder):
            raise TypeError(f"SkipPadding wraps a TextEncoder, got {type(encoder).__name__}")
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and (input_ids.dim() != 2 or input_ids.shape[0] != 1
                                           or attention_mask.shape != input_ids.shape):
            raise ValueError(f"SkipPadding takes input_ids and attention_mask of shape [1, S], got "
                             f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}: run one sequence per call")
        enc = self.encoder
        mask = attention_mask[0] != 0
        keep = torch.nonzero(mask).squeeze(1)  # positions of the real tokens, in order
        ids = input_ids.index_select(1, keep)
        pos = enc.pos.weight.index_select(0, keep + enc.pos_offset)
        x = enc.ln(enc.word(ids) + pos + enc.segment.weight[0])
        for layer in enc.layers:
            x = layer(x, None)  # only real tokens are left: no mask
        # Row j of the output is row slot[j] of [x; 0]: its rank among the real
        # tokens, or the appended zero row where the mask is 0.
        count = mask.to(torch.int64)
        slot = torch.where(mask, torch.cumsum(count, 0) - 1, count.sum())
        x = torch.cat([x, x.new_zeros(1, 1, enc.word.embedding_dim)], dim=1)
        return x.index_select(1, slot)
