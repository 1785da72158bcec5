"""Calibration statistics that pruning scores are made of, gathered with hooks on any model."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn


class _Stop(Exception):
    pass


def _halt(_module, _args):
    raise _Stop


def mask_getter(module: nn.Module):
    """inputs -> the forward argument named `attention_mask` (real tokens), or None."""
    names = list(inspect.signature(module.forward).parameters)
    where = names.index("attention_mask") if "attention_mask" in names else None
    return lambda inputs: inputs[where] if where is not None and len(inputs) > where else None


@torch.no_grad()
def record(module: nn.Module, calib_inputs, taps: dict, sink, stop: nn.Module | None = None) -> None:
    """Run the calibration inputs and hand `sink(key, x)` each tap's input ("in") or output ("out")
    as [real tokens, channels]; a forward argument named `attention_mask` marks the real tokens.
    With `stop`, each forward ends where `stop` would run."""
    mask_of, state = mask_getter(module), {}

    def select(x):
        mask = state["mask"]
        return x[mask != 0] if mask is not None and mask.shape == x.shape[:-1] else x.flatten(0, -2)

    def tap(key, side):
        if side == "in":
            return lambda _m, args: sink(key, select(args[0]))
        return lambda _m, _args, out: sink(key, select(out))

    handles = [m.register_forward_pre_hook(tap(k, side)) if side == "in" else m.register_forward_hook(tap(k, side))
               for k, (m, side) in taps.items()]
    if stop is not None:  # registered after the taps, so a tap on `stop` itself still runs
        handles.append(stop.register_forward_pre_hook(_halt))
    try:
        for inputs in calib_inputs:
            state["mask"] = mask_of(inputs)
            try:
                module(*inputs)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()


@dataclass
class Moments:
    """Per-channel token count, sum and sum of squares, in float64."""
    n: int = 0
    s: torch.Tensor | float = 0.0
    ss: torch.Tensor | float = 0.0

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        self.n, self.s, self.ss = self.n + x.shape[0], self.s + x.sum(0), self.ss + (x * x).sum(0)

    @property
    def mean(self) -> torch.Tensor:
        return self.s / self.n

    @property
    def var(self) -> torch.Tensor:
        return (self.ss / self.n - self.mean ** 2).clamp_min(0.0)


def moments(module: nn.Module, linears: dict, calib_inputs) -> dict:
    """key -> `Moments` of the input of `linears[key]` over the calibration tokens."""
    stats = {}
    taps = {key: (lin, "in") for key, lin in linears.items()}
    record(module, calib_inputs, taps, lambda key, x: stats.setdefault(key, Moments()).add(x))
    return stats


def output_scores(module: nn.Module, linears: dict[object, tuple[nn.Linear, int]], calib_inputs,
                  means: dict) -> dict:
    """FLAP's fluctuation, seen at the model output: for each structure (`width` adjacent input
    channels of `linears[key] = (linear, width)`), the expected squared change of the output when
    its input is replaced by the calibration mean (what bias compensation leaves), to first order:
    sum over samples of ||J_j||^2, with J_j = d output / d m_j for x_j' = mean_j + m_j (x_j - mean_j).
    It sees what later layers amplify or wash out, which the local score cannot. One backward per
    batch of a random projection r . output (E[(r . J)^2] = ||J||^2) gives every sample's J at once;
    the output is the first one a tuple holds (hidden states, logits)."""
    mask_of, seen = mask_getter(module), {}
    hooks = [lin.register_forward_pre_hook(lambda _m, args, key=key: seen.__setitem__(key, args[0]))
             for key, (lin, _width) in linears.items()]
    gen, fisher = torch.Generator().manual_seed(0), {}
    try:
        for inputs in calib_inputs:
            seen.clear()
            with torch.enable_grad():
                out = module(*inputs)
                out = out[0] if isinstance(out, tuple) else out
                mask = mask_of(inputs)
                weight = mask[..., None].to(out.dtype) if mask is not None and mask.shape == out.shape[:-1] else 1.0
                r = torch.randn(out.shape, generator=gen, dtype=out.dtype)
                grads = torch.autograd.grad((out * r * weight).sum(), list(seen.values()), allow_unused=True)
            for (key, x), g in zip(seen.items(), grads):
                if g is None:
                    continue
                dev = x.detach().double() - means[key]
                if mask is not None and mask.shape == x.shape[:-1]:
                    dev = dev * mask[..., None]
                j = (g.double() * dev).flatten(1, -2).sum(1) if x.dim() > 2 else g.double() * dev  # [B, C]
                width = linears[key][1]
                if width > 1:
                    j = j.view(len(j), -1, width).sum(-1)
                fisher[key] = fisher.get(key, 0.0) + (j * j).sum(0)
    finally:
        for h in hooks:
            h.remove()
    return fisher
