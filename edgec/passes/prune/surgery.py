"""Removing input channels for real: smaller linear layers, with the lost means folded into biases."""

from __future__ import annotations

import torch
from torch import nn


class ConstantSublayer(nn.Module):
    """A sublayer whose every input channel was removed: only its (compensated) bias is left."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, *args) -> torch.Tensor:
        return self.bias


def params(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def slice_linear(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    w = lin.weight.detach()
    w = w if rows is None else w[rows]
    w = w if cols is None else w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        new.weight.copy_(w)
        if lin.bias is not None:
            new.bias.copy_(lin.bias if rows is None else lin.bias[rows])
    return new


@torch.no_grad()
def compensate(lin: nn.Linear, removed: list[int], mean: torch.Tensor) -> None:
    """Removing input channel j of `y = W x + b` changes y by `W[:, j] x_j`; its mean part
    `W[:, j] E[x_j]` goes back into the bias exactly, so only the fluctuation is lost."""
    if lin.bias is None:
        lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device))
    lin.bias.add_((lin.weight[:, removed].double() @ mean[removed]).to(lin.bias.dtype))


def spans(groups: list[int], width: int) -> torch.Tensor:
    """The channels of structures `groups`, each `width` adjacent channels (a head, a KV group)."""
    return torch.tensor([j * width + t for j in groups for t in range(width)], dtype=torch.long)
