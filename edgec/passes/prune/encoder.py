"""FLAP on encoders (BERT, ViT): remove attention heads and MLP channels physically, retraining-free."""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgec.errors import InputError, UnsupportedModelError
from edgec.models.encoder import Block
from edgec.passes.prune.allocation import allocate, local_score, rank, split
from edgec.passes.prune.config import LayerPrune, PruneConfig, PruneResult
from edgec.passes.prune.refit import refit, sublayers, targets
from edgec.passes.prune.statistics import moments, output_scores
from edgec.passes.prune.surgery import ConstantSublayer, compensate, params, slice_linear, spans

SUBLAYERS = ("attn", "mlp")


def _widths(blocks: list[Block]) -> dict[tuple[int, str], tuple[nn.Linear, int]]:
    """(o or fc2, input channels per structure): a head is head_dim channels of o, an MLP channel one of fc2."""
    return {(i, sub): (lin, b.attn.head_dim if sub == "attn" else 1)
            for i, b in enumerate(blocks) for sub, lin in sublayers(b).items()}


def _candidates(blocks: list[Block], stats: dict, fisher: dict, config: PruneConfig):
    """The ranked heads and MLP channels, plus how many each sublayer has and how few it may keep:
    one each, or none for a pre-LN block with `prune_layers` (a post-LN block's LayerNorm sits
    inside the residual, so it cannot lose a sublayer). `fisher` (output scores) replaces the
    local fluctuation where given; neither: magnitude."""
    scores, costs, count, floor = {}, {}, {}, {}
    for (i, sub), (lin, width) in _widths(blocks).items():
        hidden = lin.out_features
        scores[(i, sub)] = fisher[(i, sub)] if fisher else local_score(lin, stats.get((i, sub)), width)
        costs[(i, sub)] = 4 * hidden * width + 3 * width if sub == "attn" else 2 * hidden + 1
    for i, b in enumerate(blocks):
        for sub in SUBLAYERS:
            has = (i, sub) in scores
            count[(i, sub)] = len(scores[(i, sub)]) if has else 0
            floor[(i, sub)] = 0 if not has or (config.prune_layers and b.pre_norm) else 1
    return rank(scores, costs, config), count, floor


@torch.no_grad()
def _cut(b: Block, kept: dict[str, list[int]], gone: dict[str, list[int]], stats: dict, i: int) -> dict[str, bool]:
    """Remove block `b`'s `gone` heads and channels, compensating biases when `stats` are given;
    returns which sublayers were removed whole (a pre-LN block adds the constant left to the residual)."""
    removed = {"attn": False, "mlp": False}
    if gone["attn"]:
        a, d = b.attn, b.attn.head_dim
        if stats:
            compensate(a.o, spans(gone["attn"], d).tolist(), stats[(i, "attn")].mean)
        if kept["attn"]:
            a.q, a.k, a.v = (slice_linear(lin, rows=spans(kept["attn"], d)) for lin in (a.q, a.k, a.v))
            a.o, a.heads = slice_linear(a.o, cols=spans(kept["attn"], d)), len(kept["attn"])
        else:
            b.attn, b.ln1, removed["attn"] = ConstantSublayer(a.o.bias), nn.Identity(), True
    if gone["mlp"]:
        if stats:
            compensate(b.fc2, gone["mlp"], stats[(i, "mlp")].mean)
        if kept["mlp"]:
            rows = torch.tensor(kept["mlp"], dtype=torch.long)
            b.fc1, b.fc2 = slice_linear(b.fc1, rows=rows), slice_linear(b.fc2, cols=rows)
        else:
            b.ln2, b.fc1, b.fc2, removed["mlp"] = nn.Identity(), nn.Identity(), ConstantSublayer(b.fc2.bias), True
    return removed


def prune_encoder(module: nn.Module, calib_inputs: list[tuple[torch.Tensor, ...]], config: PruneConfig) -> PruneResult:
    """Return a pruned deep copy of `module` (eval mode) and what was removed in each layer.

    With `steps > 1` the ratio is reached in equal steps, each scored on the model the previous
    one left (after its refit), so structures that become important once others are gone are seen.
    """
    new = copy.deepcopy(module).eval()
    blocks = [m for m in new.modules() if isinstance(m, Block)]
    if not blocks:
        raise UnsupportedModelError(f"{type(module).__name__} has no encoder blocks to prune: "
                                    "rebuild it with edgec.models.hf.from_hf first")
    flap = config.method == "flap" and config.ratio > 0
    if flap and not calib_inputs:
        raise InputError("FLAP pruning needs calibration samples: give at least one, or use method='magnitude'")
    prunable = lambda: sum(params((b.attn, b.fc1, b.fc2)) for b in blocks)
    params_before, prunable_before = params([new]), prunable()
    block_before = [params([b]) for b in blocks]
    seen = targets(new, blocks, calib_inputs) if flap and config.refits else {}

    head_dim = {i: b.attn.head_dim for i, b in enumerate(blocks)}
    # original indices of the heads and channels each block still has
    ids = {(i, sub): list(range(n)) for i, b in enumerate(blocks)
           for sub, n in (("attn", b.attn.heads), ("mlp", b.fc1.out_features))}
    gone = {key: [] for key in ids}
    removed_whole, refitted, compensated = {}, set(), set()
    steps = config.rounds
    for step in range(1, steps + 1):
        stats = moments(new, {k: lin for k, (lin, _) in _widths(blocks).items()}, calib_inputs) if flap else {}
        fisher = {}
        if flap and config.score == "output":
            fisher = output_scores(new, _widths(blocks), calib_inputs, {k: m.mean for k, m in stats.items()})
        candidates, count, floor = _candidates(blocks, stats, fisher, config)
        budget = config.ratio * prunable_before * step / steps - (prunable_before - prunable())
        chosen = allocate(candidates, budget, count, floor)
        if not chosen:
            continue
        for i, b in enumerate(blocks):
            kept_now, gone_now = split(chosen, count, i, SUBLAYERS)
            if not (gone_now["attn"] or gone_now["mlp"]):
                continue
            for sub in SUBLAYERS:
                gone[(i, sub)] += [ids[(i, sub)][j] for j in gone_now[sub]]
                ids[(i, sub)] = [ids[(i, sub)][j] for j in kept_now[sub]]
            for sub, whole in _cut(b, kept_now, gone_now, stats, i).items():
                removed_whole[(i, sub)] = removed_whole.get((i, sub), False) or whole
            if flap:
                compensated.add(i)
        if config.refits:
            rows = {(i, sub): spans(kept, head_dim[i] if sub == "attn" else 1) for (i, sub), kept in ids.items()}
            refitted |= set(refit(new, blocks, calib_inputs, seen, rows))
    layers = []
    for i, b in enumerate(blocks):
        kept = {sub: tuple(ids[(i, sub)]) if not removed_whole.get((i, sub)) else () for sub in SUBLAYERS}
        note = tuple(f"{sub}: kept 1 {'head' if sub == 'attn' else 'channel'}; a post-LN block cannot drop a "
                     "sublayer (its LayerNorm is inside the residual)"
                     for sub in SUBLAYERS if config.prune_layers and not b.pre_norm and len(kept[sub]) == 1)
        layers.append(LayerPrune(i, kept["attn"], tuple(sorted(gone[(i, "attn")])), kept["mlp"],
                                 tuple(sorted(gone[(i, "mlp")])), i in compensated, i in refitted,
                                 removed_whole.get((i, "attn"), False), removed_whole.get((i, "mlp"), False), note,
                                 block_before[i], params([b])))
    return PruneResult(new, config, params_before, params([new]), prunable_before, prunable(), layers,
                       config.ranked_by, steps)
