"""Retraining-free structured pruning (FLAP): remove attention heads and MLP channels physically.

Removing input channel j of a linear layer `y = W x + b` changes its output by
`W[:, j] x_j`. Of that, the mean part `W[:, j] E[x_j]` can be put back into
the bias exactly, so what is lost is the part that fluctuates: FLAP scores a
channel by `Var(x_j) * ||W[:, j]||^2`, over calibration tokens (padding
excluded), at the input of the attention output projection `o` (a head is the
sum of its `head_dim` channels) and of the MLP down projection `fc2` (one
intermediate channel each). Scores are standardised within each layer and
structure type, pooled over all layers, and the lowest go first, each weighted
by the parameters it removes, until `ratio` of the prunable parameters
(q/k/v/o and fc1/fc2 weights and biases) is gone. How much each layer loses
falls out of that one global ranking. The removed channels' mean contribution
is added to the bias of `o` and `fc2` ("bias compensation").

"magnitude" is the data-free baseline: the same allocation on `||W[:, j]||^2`
alone, without bias compensation.

Every layer keeps at least one head and one channel. With `prune_layers=True`
a pre-LN block (ViT) may lose a whole sublayer: it becomes the constant its
compensated bias leaves behind, added to the residual stream. A post-LN block
(BERT) cannot: its LayerNorm sits inside the residual, so it keeps >= 1.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from edgec.errors import InputError, UnsupportedModelError
from edgec.models.encoder import Attention, Block

METHODS = ("flap", "magnitude")


@dataclass(frozen=True, kw_only=True)
class PruneConfig:
    ratio: float  # fraction of the prunable parameters to remove, in [0, 1)
    method: str = "flap"  # "flap" (fluctuation + bias compensation) or "magnitude" (weight norms only)
    prune_layers: bool = False  # let a pre-LN block lose a whole attention or MLP sublayer

    def __post_init__(self):
        real = isinstance(self.ratio, (int, float)) and not isinstance(self.ratio, bool)
        if not real or not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not isinstance(self.prune_layers, bool):
            raise ValueError(f"prune_layers must be a bool, got {self.prune_layers!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PruneConfig":
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise ValueError(f"unknown PruneConfig keys {sorted(set(d) - known)}; known: {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class LayerPrune:
    layer: int
    heads_kept: tuple[int, ...]
    heads_removed: tuple[int, ...]
    channels_kept: tuple[int, ...]
    channels_removed: tuple[int, ...]
    bias_compensated: bool
    attn_removed: bool = False  # the whole attention sublayer became a constant
    mlp_removed: bool = False
    notes: tuple[str, ...] = ()


@dataclass
class PruneResult:
    module: nn.Module
    config: PruneConfig
    params_before: int
    params_after: int
    prunable_before: int
    prunable_after: int
    layers: list[LayerPrune] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.params_after != self.params_before

    @property
    def removed_fraction(self) -> float:
        """Fraction of the prunable parameters removed."""
        return 1.0 - self.prunable_after / self.prunable_before if self.prunable_before else 0.0

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "params_before": self.params_before,
                "params_after": self.params_after, "prunable_before": self.prunable_before,
                "prunable_after": self.prunable_after, "removed_fraction": self.removed_fraction,
                "layers": [{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(l).items()}
                           for l in self.layers]}

    def explain(self) -> list[str]:
        c = self.config
        lines = [f"{c.method} pruning, ratio {c.ratio:g}: prunable parameters {self.prunable_before:,} -> "
                 f"{self.prunable_after:,} ({100 * self.removed_fraction:.1f}% removed); all parameters "
                 f"{self.params_before:,} -> {self.params_after:,}"]
        for l in self.layers:
            n_h, n_c = len(l.heads_kept) + len(l.heads_removed), len(l.channels_kept) + len(l.channels_removed)
            attn = ("attention removed" if l.attn_removed else
                    f"heads {len(l.heads_kept)}/{n_h} kept" + (f", removed {list(l.heads_removed)}"
                                                              if l.heads_removed else ""))
            mlp = "MLP removed" if l.mlp_removed else f"MLP channels {len(l.channels_kept)}/{n_c} kept"
            comp = ", bias compensated" if l.bias_compensated else ""
            lines.append(f"layer {l.layer}: {attn}; {mlp}{comp}")
            lines += [f"layer {l.layer}: {note}" for note in l.notes]
        return lines


class ConstantSublayer(nn.Module):
    """A sublayer whose every input channel was removed: only its (compensated) bias is left."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, *args) -> torch.Tensor:
        return self.bias


@dataclass
class _Moments:
    """Per-channel count, sum and sum of squares of a layer's input, in float64."""
    n: int = 0
    s: torch.Tensor | None = None
    ss: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        s, ss = x.sum(0), (x * x).sum(0)
        self.n += x.shape[0]
        self.s, self.ss = (s, ss) if self.s is None else (self.s + s, self.ss + ss)

    @property
    def mean(self) -> torch.Tensor:
        return self.s / self.n

    @property
    def var(self) -> torch.Tensor:
        return (self.ss / self.n - self.mean ** 2).clamp_min(0.0)


def _mask_position(module: nn.Module) -> int | None:
    names = list(inspect.signature(module.forward).parameters)
    return names.index("attention_mask") if "attention_mask" in names else None


@torch.no_grad()
def _input_moments(module: nn.Module, blocks: list[Block],
                   calib_inputs: list[tuple[torch.Tensor, ...]]) -> dict[tuple[int, str], _Moments]:
    """Moments of the inputs of `attn.o` and `fc2` over the real (unmasked) calibration tokens."""
    stats: dict[tuple[int, str], _Moments] = {}
    where = _mask_position(module)
    state = {"mask": None}

    def hook(key):
        def record(_mod, args):
            x, mask = args[0], state["mask"]
            x = x[mask != 0] if mask is not None and mask.shape == x.shape[:-1] else x.flatten(0, -2)
            stats.setdefault(key, _Moments()).add(x)
        return record

    handles = [lin.register_forward_pre_hook(hook((i, name)))
               for i, b in enumerate(blocks) for name, lin in (("o", _o(b)), ("fc2", _fc2(b))) if lin is not None]
    try:
        for inputs in calib_inputs:
            state["mask"] = inputs[where] if where is not None and len(inputs) > where else None
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return stats


def _o(block: Block) -> nn.Linear | None:
    return block.attn.o if isinstance(block.attn, Attention) else None


def _fc2(block: Block) -> nn.Linear | None:
    return block.fc2 if isinstance(block.fc2, nn.Linear) else None


def _standardise(x: torch.Tensor) -> torch.Tensor:
    if x.numel() < 2:
        return torch.zeros_like(x)
    std = x.std()
    return (x - x.mean()) / std if std > 0 else torch.zeros_like(x)


def _channel_scores(lin: nn.Linear, moments: _Moments | None) -> torch.Tensor:
    w2 = lin.weight.detach().double().pow(2).sum(0)
    return w2 if moments is None else moments.var * w2


def _allocate(candidates: list[tuple[float, int, str, int, int]], budget: float,
              floor: dict[tuple[int, str], int], count: dict[tuple[int, str], int]) -> set[tuple[int, str, int]]:
    """Lowest scores first, skipping any that would take a sublayer below its floor; stop at the
    prefix whose removed parameters come closest to `budget`."""
    count = dict(count)
    chosen, removed = [], 0
    for _score, layer, kind, idx, cost in sorted(candidates):
        if removed >= budget:
            break
        if count[(layer, kind)] - 1 < floor[(layer, kind)]:
            continue
        count[(layer, kind)] -= 1
        chosen.append(((layer, kind, idx), removed, removed + cost))
        removed += cost
    if chosen and abs(chosen[-1][1] - budget) < abs(chosen[-1][2] - budget):
        chosen.pop()
    return {key for key, _, _ in chosen}


def _slice_linear(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    w = lin.weight.detach()
    w = w if rows is None else w[rows]
    w = w if cols is None else w[:, cols]
    b = None if lin.bias is None else (lin.bias.detach() if rows is None else lin.bias.detach()[rows])
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


@torch.no_grad()
def _compensate(lin: nn.Linear, removed: torch.Tensor, moments: _Moments) -> None:
    shift = lin.weight[:, removed].double() @ moments.mean[removed]
    if lin.bias is None:
        lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype))
    lin.bias.add_(shift.to(lin.bias.dtype))


def _prunable(block: Block) -> int:
    return sum(p.numel() for m in (block.attn, block.fc1, block.fc2) for p in m.parameters())


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def prune(module: nn.Module, calib_inputs: list[tuple[torch.Tensor, ...]], config: PruneConfig) -> PruneResult:
    """Return a pruned deep copy of `module` (eval mode) and what was removed in each layer.

    `calib_inputs` are positional argument tuples for `module`'s forward; a
    forward argument named `attention_mask` selects the real tokens.
    """
    new = copy.deepcopy(module).eval()
    blocks = [m for m in new.modules() if isinstance(m, Block)]
    if not blocks:
        raise UnsupportedModelError(f"{type(module).__name__} has no encoder blocks to prune: "
                                    "rebuild it with edgec.models.hf.from_hf first")
    flap = config.method == "flap"
    if flap and config.ratio > 0 and not calib_inputs:
        raise InputError("FLAP pruning needs calibration samples: give at least one, or use method='magnitude'")
    params_before, prunable_before = _params(new), sum(_prunable(b) for b in blocks)
    stats = _input_moments(new, blocks, calib_inputs) if flap and config.ratio > 0 else {}

    candidates, floor, count, notes = [], {}, {}, {i: [] for i in range(len(blocks))}
    for i, b in enumerate(blocks):
        for kind, lin in (("head", _o(b)), ("channel", _fc2(b))):
            if lin is None:
                count[(i, kind)], floor[(i, kind)] = 0, 0
                continue
            hidden = lin.out_features
            scores = _channel_scores(lin, stats.get((i, "o" if kind == "head" else "fc2")))
            if kind == "head":
                d = b.attn.head_dim
                scores, cost = scores.view(-1, d).sum(1), 4 * hidden * d + 3 * d
            else:
                cost = 2 * hidden + 1
            for j, z in enumerate(_standardise(scores).tolist()):
                candidates.append((z, i, kind, j, cost))
            count[(i, kind)] = len(scores)
            floor[(i, kind)] = 0 if config.prune_layers and b.pre_norm else 1
            if config.prune_layers and not b.pre_norm:
                notes[i].append(f"{kind}s: kept >= 1, a post-LN block cannot drop a sublayer "
                                "(its LayerNorm is inside the residual)")
    chosen = _allocate(candidates, config.ratio * prunable_before, floor, count) if config.ratio > 0 else set()

    layers = []
    for i, b in enumerate(blocks):
        o, fc2 = _o(b), _fc2(b)
        heads = count[(i, "head")]
        h_gone = [j for j in range(heads) if (i, "head", j) in chosen]
        h_kept = [j for j in range(heads) if (i, "head", j) not in chosen]
        c_gone = [j for j in range(count[(i, "channel")]) if (i, "channel", j) in chosen]
        c_kept = [j for j in range(count[(i, "channel")]) if (i, "channel", j) not in chosen]
        attn_removed = mlp_removed = False
        if h_gone:
            d = b.attn.head_dim
            gone = torch.tensor([j * d + t for j in h_gone for t in range(d)])
            keep = torch.tensor([j * d + t for j in h_kept for t in range(d)], dtype=torch.long)
            if flap:
                _compensate(o, gone, stats[(i, "o")])
            if h_kept:
                a = b.attn
                a.q, a.k, a.v = (_slice_linear(lin, rows=keep) for lin in (a.q, a.k, a.v))
                a.o, a.heads = _slice_linear(o, cols=keep), len(h_kept)
            else:
                b.attn, b.ln1, attn_removed = ConstantSublayer(o.bias), nn.Identity(), True
        if c_gone:
            gone, keep = torch.tensor(c_gone), torch.tensor(c_kept, dtype=torch.long)
            if flap:
                _compensate(fc2, gone, stats[(i, "fc2")])
            if c_kept:
                b.fc1, b.fc2 = _slice_linear(b.fc1, rows=keep), _slice_linear(fc2, cols=keep)
            else:
                b.ln2, b.fc1, b.fc2, mlp_removed = nn.Identity(), nn.Identity(), ConstantSublayer(fc2.bias), True
        layers.append(LayerPrune(i, tuple(h_kept), tuple(h_gone), tuple(c_kept), tuple(c_gone),
                                 flap and bool(h_gone or c_gone), attn_removed, mlp_removed, tuple(notes[i])))
    return PruneResult(new, config, params_before, _params(new), prunable_before,
                       sum(_prunable(b) for b in blocks), layers)
