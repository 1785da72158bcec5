"""Retraining-free structured pruning (FLAP): remove attention heads and MLP channels physically.

Removing input channel j of a linear layer `y = W x + b` changes its output by
`W[:, j] x_j`. Its mean part `W[:, j] E[x_j]` goes back into the bias exactly
("bias compensation"), so what is lost is the part that fluctuates. FLAP
scores a channel by that fluctuation at the layer, `Var(x_j) * ||W[:, j]||^2`
over the calibration tokens (padding excluded; `score="local"`), at the input
of the attention output projection `o` (a head is the sum of its `head_dim`
channels) and of the MLP down projection `fc2` (one intermediate channel each).
The default `score="output"` measures the same fluctuation where it matters,
at the model output: the squared change of the output when x_j is replaced by
its mean, to first order (an output-space Fisher score, one backward pass of
a random projection per calibration batch). It sees what later layers amplify
or wash out, which the local score cannot. "magnitude" is the data-free
baseline: `||W[:, j]||^2` alone, the same allocation, no compensation.

Allocation is global: candidates from all layers are ranked together and the
lowest go first until `ratio` of the prunable parameters (q/k/v/o and fc1/fc2
weights and biases) is gone, so how much each layer loses falls out of one
ranking. Two rankings:
- "per_param" (default): score divided by the parameters the structure
  removes (a head `4 * hidden * head_dim + 3 * head_dim`, a channel
  `2 * hidden + 1`). A score is an output error, so this removes the least
  error per parameter saved.
- "standardised" (the FLAP paper): scores z-scored within each layer and
  structure type, then pooled. Every layer gets the same score spread, and a
  head competes on equal terms with a channel about 2 * head_dim times cheaper.
With `steps > 1` the ratio is reached in equal steps, each scored on the model
the previous one left (after its refit), so structures that become important
once others are gone are seen.

The refit (on by default for flap; `refit=False` turns it off) goes past
the bias: layer by layer, in forward order, every kept linear layer is refit
by ridge least squares (pulled towards its current weights) against the
unpruned model on the calibration tokens: q/k/v and fc1 to its outputs at the
kept rows, o and fc2 so that the residual stream entering the next LayerNorm
matches. Each fit sees the inputs the already-pruned layers before it
produce, so it also absorbs their drift.

Measured on MiniLM at ratio 0.3 with the 160 built-in calibration sentences,
pooled cosine to float on the 160 held-out ones (bench/prune_minilm.py): the
paper's ranking 0.74; local score per parameter 0.89, with the o/fc2 refit
0.939; output score with the full refit 0.950, in 3 steps 0.952 (5 steps:
0.949). With 32 sentences (~600 tokens) everything is 0.01-0.02 lower, hence
the pipeline's larger pruning calibration set. Tried and dropped: sentence
fragments added to the calibration text, sentence-length weighting of the
refit, per-sentence (pooled) instead of per-token output scores, more random
projections, and ranking by the least-squares (OBS) removal error: none beat
the noise of about +-0.002.

Every layer keeps at least one head and one channel. With `prune_layers=True`
a pre-LN block (ViT) may lose a whole sublayer: it becomes the constant its
compensated bias leaves, added to the residual stream. A post-LN block (BERT)
cannot: its LayerNorm sits inside the residual, so it keeps >= 1.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from edgec.errors import InputError, UnsupportedModelError
from edgec.models.decoder import Decoder
from edgec.models.encoder import Attention, Block

METHODS = ("flap", "magnitude")
ALLOCATIONS = ("per_param", "standardised")
SCORES = ("output", "local")
# ridge strength, relative to the mean input energy: keeps a refit on few tokens near the start; on MiniLM
# it beats 0.1 and 3 at both 600 and 3,200 calibration tokens
REFIT_RIDGE = 1.0


@dataclass(frozen=True, kw_only=True)
class PruneConfig:
    ratio: float  # fraction of the prunable parameters to remove, in [0, 1)
    method: str = "flap"  # "flap" (fluctuation, bias compensation) or "magnitude" (weight norms only)
    prune_layers: bool = False  # let a pre-LN block lose a whole attention or MLP sublayer
    allocation: str = "per_param"  # global ranking: "per_param" or the paper's "standardised"
    refit: bool | None = None  # least-squares refit of the kept linear layers; None: on for flap encoders
    # flap on encoders (a Llama decoder is scored locally, in one step): fluctuation seen at the
    # model output ("output") or at the layer ("local", the paper's)
    score: str = "output"
    steps: int = 3  # flap: reach the ratio in this many equal steps, re-scoring the model each one leaves

    def __post_init__(self):
        real = isinstance(self.ratio, (int, float)) and not isinstance(self.ratio, bool)
        if not real or not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if not isinstance(self.prune_layers, bool):
            raise ValueError(f"prune_layers must be a bool, got {self.prune_layers!r}")
        if self.refit is not None and not isinstance(self.refit, bool):
            raise ValueError(f"refit must be a bool or None, got {self.refit!r}")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        if type(self.steps) is not int or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        if self.refit and self.method != "flap":
            raise ValueError("refit needs calibration statistics: use it with method='flap'")

    @property
    def refits(self) -> bool:
        """Whether the kept o/fc2 weights are refit: `refit`, or by default for flap."""
        return self.method == "flap" if self.refit is None else self.refit

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
    refit: bool = False
    attn_removed: bool = False  # the whole attention sublayer became a constant
    mlp_removed: bool = False
    notes: tuple[str, ...] = ()
    params_before: int = 0  # the block's parameters
    params_after: int = 0


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
        layers = [{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(l).items()} for l in self.layers]
        return {"config": self.config.to_dict(), "params_before": self.params_before,
                "params_after": self.params_after, "prunable_before": self.prunable_before,
                "prunable_after": self.prunable_after, "removed_fraction": self.removed_fraction, "layers": layers}

    def explain(self) -> list[str]:
        c = self.config
        lines = [f"{c.method} pruning, ratio {c.ratio:g}, {c.allocation} allocation: prunable parameters "
                 f"{self.prunable_before:,} -> {self.prunable_after:,} ({100 * self.removed_fraction:.1f}% "
                 f"removed); all parameters {self.params_before:,} -> {self.params_after:,}"]
        for l in self.layers:
            n_h, n_c = len(l.heads_kept) + len(l.heads_removed), len(l.channels_kept) + len(l.channels_removed)
            attn = "attention removed" if l.attn_removed else f"heads {len(l.heads_kept)}/{n_h} kept"
            attn += f" (removed {list(l.heads_removed)})" if l.heads_removed and not l.attn_removed else ""
            mlp = "MLP removed" if l.mlp_removed else f"MLP channels {len(l.channels_kept)}/{n_c} kept"
            done = [s for s, on in (("bias compensated", l.bias_compensated), ("refit", l.refit)) if on]
            lines.append(f"layer {l.layer}: {attn}; {mlp}; {l.params_before - l.params_after:,} parameters removed"
                         + "".join(f"; {s}" for s in done))
            lines += [f"layer {l.layer}: {note}" for note in l.notes]
        return lines


class ConstantSublayer(nn.Module):
    """A sublayer whose every input channel was removed: only its (compensated) bias is left."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, *args) -> torch.Tensor:
        return self.bias


class _Stop(Exception):
    pass


def _halt(_module, _args):
    raise _Stop


def _mask_getter(module: nn.Module):
    """inputs -> the forward argument named `attention_mask` (real tokens), or None."""
    names = list(inspect.signature(module.forward).parameters)
    where = names.index("attention_mask") if "attention_mask" in names else None
    return lambda inputs: inputs[where] if where is not None and len(inputs) > where else None


@torch.no_grad()
def _record(module: nn.Module, calib_inputs, taps: dict, sink, stop: nn.Module | None = None) -> None:
    """Run the calibration inputs and hand `sink(key, x)` each tap's input ("in") or output ("out")
    as [real tokens, channels]; a forward argument named `attention_mask` marks the real tokens.
    With `stop`, each forward ends where `stop` would run."""
    mask_of, state = _mask_getter(module), {}

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
class _Moments:
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


def _output_scores(module: nn.Module, blocks: list[Block], calib_inputs, means: dict) -> dict:
    """FLAP's fluctuation, seen at the model output: for each head and MLP channel, the expected
    squared change of the output when its input to o/fc2 is replaced by the calibration mean
    (what bias compensation leaves), to first order: sum over samples of ||J_j||^2, with
    J_j = d output / d m_j for x_j' = mean_j + m_j (x_j - mean_j). One backward per batch of a
    random projection r . output (E[(r . J)^2] = ||J||^2) gives every sample's J at once."""
    mask_of, seen = _mask_getter(module), {}
    hooks = [lin.register_forward_pre_hook(lambda _m, args, key=(i, sub): seen.__setitem__(key, args[0]))
             for i, b in enumerate(blocks) for sub, lin in _sublayers(b).items()]
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
                if key[1] == "attn":
                    j = j.view(len(j), -1, blocks[key[0]].attn.head_dim).sum(-1)
                fisher[key] = fisher.get(key, 0.0) + (j * j).sum(0)
    finally:
        for h in hooks:
            h.remove()
    return fisher


def _sublayers(block: Block) -> dict[str, nn.Linear]:
    """The projections whose input channels are pruned: "attn" -> o, "mlp" -> fc2 (absent once removed)."""
    out = {}
    if isinstance(block.attn, Attention):
        out["attn"] = block.attn.o
    if isinstance(block.fc2, nn.Linear):
        out["mlp"] = block.fc2
    return out


def _standardise(x: torch.Tensor) -> torch.Tensor:
    std = x.std() if x.numel() > 1 else x.new_zeros(())
    return (x - x.mean()) / std if std > 0 else torch.zeros_like(x)


def _allocate(candidates: list[tuple[float, int, str, int, int]], budget: float,
              count: dict[tuple[int, str], int], floor: dict[tuple[int, str], int]) -> set[tuple[int, str, int]]:
    """Lowest keys first, skipping any that would take a sublayer below its floor; stop at the
    prefix whose removed parameters come closest to `budget`."""
    count, chosen, removed = dict(count), [], 0
    for _key, layer, sub, idx, cost in sorted(candidates):
        if removed >= budget:
            break
        if count[(layer, sub)] > floor[(layer, sub)]:
            count[(layer, sub)] -= 1
            chosen.append(((layer, sub, idx), removed, removed + cost))
            removed += cost
    if chosen and abs(chosen[-1][1] - budget) < abs(chosen[-1][2] - budget):
        chosen.pop()
    return {key for key, _, _ in chosen}


def _slice_linear(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
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
def _compensate(lin: nn.Linear, removed: list[int], mean: torch.Tensor) -> None:
    if lin.bias is None:
        lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device))
    lin.bias.add_((lin.weight[:, removed].double() @ mean[removed]).to(lin.bias.dtype))


def _residual_taps(block: Block) -> dict[str, tuple[nn.Module, str]]:
    """Where each sublayer's residual stream can be read: the block input, and the stream before the MLP."""
    return {"attn": (block, "in"), "mlp": (block.ln1, "out") if not block.pre_norm else (block.ln2, "in")}


@torch.no_grad()
def _fit(lin: nn.Linear, x: torch.Tensor, target: torch.Tensor) -> None:
    """Ridge least squares of `lin` (weight and free bias) on x -> target, pulled towards its weights."""
    xt = torch.cat([x, x.new_ones(len(x), 1)], 1)
    if lin.bias is None:
        lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype))
    start = torch.cat([lin.weight.double(), lin.bias.double()[:, None]], 1)
    gram = xt.T @ xt
    ridge = torch.eye(len(gram), dtype=gram.dtype) * REFIT_RIDGE * gram.diagonal()[:-1].mean()
    ridge[-1, -1] = 0.0  # the bias is free
    theta = torch.linalg.solve(gram + ridge, xt.T @ target + ridge @ start.T).T
    lin.weight.copy_(theta[:, :-1])
    lin.bias.copy_(theta[:, -1])


def _input_taps(block: Block) -> dict[str, tuple[nn.Module, str]]:
    """The kept rows of q/k/v and fc1, refit to the unpruned model's outputs."""
    taps = {"fc1": (block.fc1, "out")} if isinstance(block.fc1, nn.Linear) else {}
    if isinstance(block.attn, Attention):
        taps.update({name: (getattr(block.attn, name), "out") for name in ("q", "k", "v")})
    return taps


def _inputs(module: nn.Module, calib_inputs, taps: dict, lin: nn.Module) -> dict[str, torch.Tensor]:
    """Each tap over the calibration tokens (float64), running each forward only up to `lin`."""
    got: dict = {}
    _record(module, calib_inputs, taps, lambda k, x: got.setdefault(k, []).append(x.double()), stop=lin)
    return {k: torch.cat(v) for k, v in got.items()}


@torch.no_grad()
def _refit(module: nn.Module, blocks: list[Block], calib_inputs, seen: dict, rows: dict) -> list[int]:
    """Refit every remaining linear layer, in forward order, against `seen`, the unpruned model's
    activations on the calibration tokens: q/k/v and fc1 to its outputs (their kept `rows`), o and
    fc2 so that residual + sublayer output matches."""
    refit = []
    for i, b in enumerate(blocks):
        inner, fitted = _input_taps(b), False
        for sub, names in (("attn", ("q", "k", "v")), ("mlp", ("fc1",))):
            lins = [(n, inner[n][0]) for n in names if n in inner]
            if lins:
                x = _inputs(module, calib_inputs, {"x": (lins[0][1], "in")}, lins[0][1])["x"]
                for name, lin in lins:
                    _fit(lin, x, torch.cat(seen[(i, name)]).double()[:, rows[(i, sub)]])
                fitted = True
            lin = _sublayers(b).get(sub)  # o or fc2
            if lin is not None:
                got = _inputs(module, calib_inputs, {"x": (lin, "in"), "res": _residual_taps(b)[sub]}, lin)
                target = torch.cat(seen[(i, sub, "out")]).double() + torch.cat(seen[(i, sub, "res")]).double()
                _fit(lin, got["x"], target - got["res"])
                fitted = True
        if fitted:
            refit.append(i)
    return refit


def _params(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _candidates(blocks: list[Block], stats: dict, fisher: dict, config: PruneConfig):
    """(ranking key, layer, sublayer, index, parameters removed) for every head and MLP channel,
    plus how many each sublayer has and how few it may keep. `fisher` (output scores) replaces
    the local fluctuation `Var(x_j) ||W[:, j]||^2` where given; neither: magnitude."""
    candidates, count, floor = [], {}, {}
    for i, b in enumerate(blocks):
        for sub in ("attn", "mlp"):
            lin = _sublayers(b).get(sub)
            count[(i, sub)] = floor[(i, sub)] = 0
            if lin is None:
                continue
            hidden, d = lin.out_features, b.attn.head_dim if sub == "attn" else 1
            if fisher:
                score = fisher[(i, sub)]
            else:
                score = lin.weight.detach().double().pow(2).sum(0)
                score = (score * stats[(i, sub)].var if stats else score).view(-1, d).sum(1)
            cost = 4 * hidden * d + 3 * d if sub == "attn" else 2 * hidden + 1
            key = _standardise(score) if config.allocation == "standardised" else score / cost
            candidates += [(k, i, sub, j, cost) for j, k in enumerate(key.tolist())]
            count[(i, sub)], floor[(i, sub)] = len(score), 0 if config.prune_layers and b.pre_norm else 1
    return candidates, count, floor


@torch.no_grad()
def _cut(b: Block, kept: dict[str, list[int]], gone: dict[str, list[int]], stats: dict, i: int) -> dict[str, bool]:
    """Remove block `b`'s `gone` heads and channels, compensating biases when `stats` are given;
    returns which sublayers were removed whole."""
    removed = {"attn": False, "mlp": False}
    if gone["attn"]:
        a, d = b.attn, b.attn.head_dim
        cols = lambda heads: torch.tensor([j * d + t for j in heads for t in range(d)], dtype=torch.long)
        if stats:
            _compensate(a.o, cols(gone["attn"]).tolist(), stats[(i, "attn")].mean)
        if kept["attn"]:
            a.q, a.k, a.v = (_slice_linear(lin, rows=cols(kept["attn"])) for lin in (a.q, a.k, a.v))
            a.o, a.heads = _slice_linear(a.o, cols=cols(kept["attn"])), len(kept["attn"])
        else:
            b.attn, b.ln1, removed["attn"] = ConstantSublayer(a.o.bias), nn.Identity(), True
    if gone["mlp"]:
        if stats:
            _compensate(b.fc2, gone["mlp"], stats[(i, "mlp")].mean)
        if kept["mlp"]:
            rows = torch.tensor(kept["mlp"], dtype=torch.long)
            b.fc1, b.fc2 = _slice_linear(b.fc1, rows=rows), _slice_linear(b.fc2, cols=rows)
        else:
            b.ln2, b.fc1, b.fc2, removed["mlp"] = nn.Identity(), nn.Identity(), ConstantSublayer(b.fc2.bias), True
    return removed


def _moments(module: nn.Module, blocks: list[Block], calib_inputs) -> dict:
    stats = {}
    taps = {(i, sub): (lin, "in") for i, b in enumerate(blocks) for sub, lin in _sublayers(b).items()}
    _record(module, calib_inputs, taps, lambda key, x: stats.setdefault(key, _Moments()).add(x))
    return stats


def prune(module: nn.Module, calib_inputs: list[tuple[torch.Tensor, ...]], config: PruneConfig) -> PruneResult:
    """Return a pruned deep copy of `module` (eval mode) and what was removed in each layer.

    `calib_inputs` are positional argument tuples for `module`'s forward; a
    forward argument named `attention_mask` selects the real tokens. A `Decoder` goes to
    `prune_decoder`, which removes whole KV groups.
    """
    if isinstance(module, Decoder):
        from edgec.passes.prune_decoder import prune_decoder  # it imports this module's helpers
        return prune_decoder(module, calib_inputs, config)
    new = copy.deepcopy(module).eval()
    blocks = [m for m in new.modules() if isinstance(m, Block)]
    if not blocks:
        raise UnsupportedModelError(f"{type(module).__name__} has no encoder blocks to prune: "
                                    "rebuild it with edgec.models.hf.from_hf first")
    flap = config.method == "flap" and config.ratio > 0
    if flap and not calib_inputs:
        raise InputError("FLAP pruning needs calibration samples: give at least one, or use method='magnitude'")
    prunable = lambda: sum(_params((b.attn, b.fc1, b.fc2)) for b in blocks)
    params_before, prunable_before = _params([new]), prunable()
    block_before = [_params([b]) for b in blocks]
    seen = {}  # with refit: the unpruned model's o/fc2 outputs and residual streams, the refit's target
    if flap and config.refits:
        taps = {}
        for i, b in enumerate(blocks):
            for sub, lin in _sublayers(b).items():
                taps[(i, sub, "out")], taps[(i, sub, "res")] = (lin, "out"), _residual_taps(b)[sub]
            taps.update({(i, name): tap for name, tap in _input_taps(b).items()})
        _record(new, calib_inputs, taps, lambda key, x: seen.setdefault(key, []).append(x.float()))

    head_dim = {i: b.attn.head_dim for i, b in enumerate(blocks)}
    # original indices of the heads and channels each block still has
    ids = {(i, sub): list(range(n)) for i, b in enumerate(blocks)
           for sub, n in (("attn", b.attn.heads), ("mlp", b.fc1.out_features))}
    gone = {key: [] for key in ids}
    removed_whole, refit, compensated = {}, set(), set()
    steps = 0 if config.ratio == 0 else config.steps if flap else 1  # magnitude: nothing to re-score
    for step in range(1, steps + 1):
        stats = _moments(new, blocks, calib_inputs) if flap else {}
        fisher = {}
        if flap and config.score == "output":
            fisher = _output_scores(new, blocks, calib_inputs, {k: m.mean for k, m in stats.items()})
        candidates, count, floor = _candidates(blocks, stats, fisher, config)
        budget = config.ratio * prunable_before * step / steps - (prunable_before - prunable())
        chosen = _allocate(candidates, budget, count, floor)
        if not chosen:
            continue
        for i, b in enumerate(blocks):
            kept_now = {sub: [j for j in range(count[(i, sub)]) if (i, sub, j) not in chosen] for sub in ("attn", "mlp")}
            gone_now = {sub: [j for j in range(count[(i, sub)]) if (i, sub, j) in chosen] for sub in ("attn", "mlp")}
            if not (gone_now["attn"] or gone_now["mlp"]):
                continue
            for sub in ("attn", "mlp"):
                gone[(i, sub)] += [ids[(i, sub)][j] for j in gone_now[sub]]
                ids[(i, sub)] = [ids[(i, sub)][j] for j in kept_now[sub]]
            for sub, whole in _cut(b, kept_now, gone_now, stats, i).items():
                removed_whole[(i, sub)] = removed_whole.get((i, sub), False) or whole
            if flap:
                compensated.add(i)
        if config.refits:
            rows = {(i, sub): torch.tensor([h * head_dim[i] + t for h in kept for t in range(head_dim[i])]
                                           if sub == "attn" else kept, dtype=torch.long)
                    for (i, sub), kept in ids.items()}
            refit |= set(_refit(new, blocks, calib_inputs, seen, rows))
    layers = []
    for i, b in enumerate(blocks):
        kept = {sub: tuple(ids[(i, sub)]) if not removed_whole.get((i, sub)) else () for sub in ("attn", "mlp")}
        note = tuple(f"{sub}: kept 1 {'head' if sub == 'attn' else 'channel'}; a post-LN block cannot drop a "
                     "sublayer (its LayerNorm is inside the residual)"
                     for sub in ("attn", "mlp") if config.prune_layers and not b.pre_norm and len(kept[sub]) == 1)
        layers.append(LayerPrune(i, kept["attn"], tuple(sorted(gone[(i, "attn")])), kept["mlp"],
                                 tuple(sorted(gone[(i, "mlp")])), i in compensated, i in refit,
                                 removed_whole.get((i, "attn"), False), removed_whole.get((i, "mlp"), False), note,
                                 block_before[i], _params([b])))
    return PruneResult(new, config, params_before, _params([new]), prunable_before, prunable(), layers)
