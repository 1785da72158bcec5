"""SmoothQuant-style smoothing: move activation outliers into the weights, exactly.

A few channels of a transformer's activations are 10-100x larger than the
rest, and one per-tensor 8-bit range for all of them leaves the others with a
handful of levels. For a linear layer fed by `x`, `W @ x = (W * s) @ (x / s)`
for any positive per-input-channel `s`; when whatever produces `x` can absorb
the `1 / s`, the model computes the same function with a flatter activation and
slightly wider weight columns, which per-output-channel int8 weights absorb.

Sites where the canonical encoder absorbs `1 / s` exactly:
- "vo", every block: the attention context's channel j is linear in v's output
  channel j (softmax weights mix tokens, not channels), so v's row j and bias
  are divided by s_j and o's column j is multiplied by it;
- "ln1" and "ln2", pre-LN blocks (ViT) only: ln1 feeds nothing but q, k, v and
  ln2 nothing but fc1, so the LayerNorm's affine weight and bias take the
  `1 / s`. In post-LN blocks (BERT) the LayerNorm output is also the residual
  stream, which would change; those sites are skipped and reported.

The scale is SmoothQuant's, s_j = max|X_j|^alpha / max_i |W_ij|^(1 - alpha),
with max|W_ij| over all consumers of channel j.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from edgec.config import ConfigDict
from edgec.errors import InputError, UnsupportedModelError
from edgec.models.encoder import Block

SITES = ("ln1", "ln2", "vo")
SCALE_RANGE = (1e-5, 1e5)


@dataclass(frozen=True, kw_only=True)
class SmoothConfig(ConfigDict):
    alpha: float = 0.5  # migration strength: 0 leaves activations alone, 1 moves all of it into weights
    sites: tuple[str, ...] = SITES

    def __post_init__(self):
        real = isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool)
        if not real or not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha!r}")
        object.__setattr__(self, "sites", tuple(self.sites))
        unknown = [s for s in self.sites if s not in SITES]
        if unknown or not self.sites:
            raise ValueError(f"sites must be a non-empty subset of {SITES}, got {self.sites!r}")


@dataclass(frozen=True)
class SmoothedSite:
    layer: int
    site: str  # "ln1", "ln2" or "vo"
    act_max_before: float  # max |x| over the smoothed activation on the calibration data
    act_max_after: float
    scale_min: float
    scale_max: float


@dataclass(frozen=True)
class SkippedSite:
    layer: int
    site: str
    reason: str


@dataclass
class SmoothResult:
    module: nn.Module
    smoothed: list[SmoothedSite] = field(default_factory=list)
    skipped: list[SkippedSite] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.smoothed)

    def explain(self) -> list[str]:
        lines = [f"layer {s.layer} {s.site}: max |x| {s.act_max_before:.3g} -> {s.act_max_after:.3g} "
                 f"(scales {s.scale_min:.3g}..{s.scale_max:.3g})" for s in self.smoothed]
        return lines + [f"layer {s.layer} {s.site}: skipped, {s.reason}" for s in self.skipped]

    def to_dict(self) -> dict:
        return {"smoothed": [asdict(s) for s in self.smoothed], "skipped": [asdict(s) for s in self.skipped]}


def _consumers(block: Block, site: str) -> list[nn.Linear]:
    a = block.attn
    return {"ln1": [a.q, a.k, a.v], "ln2": [block.fc1], "vo": [a.o]}[site]


@torch.no_grad()
def _input_absmax(module: nn.Module, watch: dict[tuple[int, str], nn.Linear],
                  calib_inputs: list[tuple[torch.Tensor, ...]]) -> dict[tuple[int, str], torch.Tensor]:
    """Per-input-channel max |x| of each watched linear layer over the calibration inputs."""
    amax: dict[tuple[int, str], torch.Tensor] = {}

    def hook(key):
        def record(_mod, args):
            x = args[0].detach().abs().flatten(0, -2).amax(0).double()
            amax[key] = x if key not in amax else torch.maximum(amax[key], x)
        return record

    handles = [lin.register_forward_pre_hook(hook(key)) for key, lin in watch.items()]
    try:
        for inputs in calib_inputs:
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return amax


def smooth_scales(act_max: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max_i |W_ij|^(1-alpha); 1 where channel j is dead in X or W."""
    w_max = torch.stack([w.detach().abs().amax(0).double() for w in weights]).amax(0)
    s = act_max.pow(alpha) / w_max.pow(1.0 - alpha)
    s = torch.where((act_max > 0) & (w_max > 0), s, torch.ones_like(s))
    return s.clamp(*SCALE_RANGE)


@torch.no_grad()
def _apply(block: Block, site: str, s: torch.Tensor) -> None:
    s32 = s.float()
    if site == "vo":
        v, o = block.attn.v, block.attn.o
        v.weight.div_(s32[:, None])
        if v.bias is not None:
            v.bias.div_(s32)
        o.weight.mul_(s32[None, :])
        return
    ln = block.ln1 if site == "ln1" else block.ln2
    ln.weight.div_(s32)
    if ln.bias is not None:
        ln.bias.div_(s32)
    for lin in _consumers(block, site):
        lin.weight.mul_(s32[None, :])


def smooth(module: nn.Module, calib_inputs: list[tuple[torch.Tensor, ...]],
           config: SmoothConfig = SmoothConfig()) -> SmoothResult:
    """Return a smoothed deep copy of `module` (eval mode) and what was done at each site.

    `calib_inputs` are positional argument tuples for `module`'s forward.
    """
    if not calib_inputs:
        raise InputError("smoothing needs calibration samples: give at least one")
    new = copy.deepcopy(module).eval()
    blocks = [m for m in new.modules() if isinstance(m, Block)]
    if not blocks:
        raise UnsupportedModelError(f"{type(module).__name__} has no encoder blocks to smooth: "
                                    "rebuild it with edgec.models.hf.from_hf first")
    result = SmoothResult(new)
    watch: dict[tuple[int, str], nn.Linear] = {}
    for i, block in enumerate(blocks):
        for site in config.sites:
            if site != "vo" and not block.pre_norm:
                result.skipped.append(SkippedSite(i, site, f"post-LN block: {site} output also feeds "
                                                           "the residual stream, so it cannot absorb a scale"))
            elif site != "vo" and not getattr(block, site).elementwise_affine:
                result.skipped.append(SkippedSite(i, site, f"{site} has no affine weight to absorb a scale"))
            else:
                watch[(i, site)] = _consumers(block, site)[0]
    amax = _input_absmax(new, watch, calib_inputs)
    # LayerNorm sites read v's columns, "vo" rescales v's rows: take every scale from the original weights.
    scales = {key: smooth_scales(amax[key], [lin.weight for lin in _consumers(blocks[key[0]], key[1])],
                                 config.alpha) for key in watch}
    for (i, site), s in scales.items():
        _apply(blocks[i], site, s)
        a = amax[(i, site)]
        result.smoothed.append(SmoothedSite(i, site, float(a.max()), float((a / s).max()),
                                            float(s.min()), float(s.max())))
    return result
