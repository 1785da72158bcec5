"""FLAP on the canonical decoder: whole KV groups and gated-MLP channels go, so GQA stays intact."""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgec.errors import InputError, UnsupportedModelError
from edgec.models.decoder import Block, Decoder
from edgec.passes.prune.allocation import allocate, in_blocks, local_score, rank, split
from edgec.passes.prune.config import LayerPrune, PruneConfig, PruneResult
from edgec.passes.prune.statistics import moments, output_scores
from edgec.passes.prune.surgery import compensate, params, slice_linear, spans

SUBLAYERS = ("attn", "mlp")


def _widths(blocks: list[Block]) -> dict[tuple[int, str], tuple[nn.Linear, int]]:
    """(o or down, input channels per structure). A KV group is one KV head and the g query heads
    sharing it, whose o input columns are contiguous; an MLP channel is one column of down."""
    return {key: item for i, b in enumerate(blocks)
            for key, item in (((i, "attn"), (b.attn.o, b.attn.heads // b.attn.kv_heads * b.attn.head_dim)),
                              ((i, "mlp"), (b.down, 1)))}


def _costs(b: Block) -> dict[str, int]:
    """Parameters one KV group and one MLP channel take with them (o's and down's biases stay)."""
    a, hidden = b.attn, b.down.out_features
    g, d = a.heads // a.kv_heads, a.head_dim
    return {"attn": (2 * g + 2) * hidden * d + (g + 2) * d, "mlp": 3 * hidden + 2}


def _query_heads(groups: list[int], g: int) -> tuple[int, ...]:
    return tuple(j * g + t for j in groups for t in range(g))


@torch.no_grad()
def _cut(b: Block, kept: dict[str, list[int]], gone: dict[str, list[int]], stats: dict) -> None:
    """Remove block `b`'s `gone` KV groups and MLP channels, compensating biases when `stats` are
    given. g stays constant, so `heads` and `kv_heads` shrink together."""
    a = b.attn
    g, d = a.heads // a.kv_heads, a.head_dim
    if gone["attn"]:
        if stats:
            compensate(a.o, spans(gone["attn"], g * d).tolist(), stats["attn"].mean)
        q_rows, kv_rows = spans(kept["attn"], g * d), spans(kept["attn"], d)
        a.q, a.o = slice_linear(a.q, rows=q_rows), slice_linear(a.o, cols=q_rows)
        a.k, a.v = slice_linear(a.k, rows=kv_rows), slice_linear(a.v, rows=kv_rows)
        a.kv_heads = len(kept["attn"])
        a.heads = a.kv_heads * g
    if gone["mlp"]:
        if stats:
            compensate(b.down, gone["mlp"], stats["mlp"].mean)
        rows = torch.tensor(kept["mlp"], dtype=torch.long)
        b.gate, b.up, b.down = (slice_linear(b.gate, rows=rows), slice_linear(b.up, rows=rows),
                                slice_linear(b.down, cols=rows))


def prune_decoder(module: Decoder, calib_inputs: list[tuple[torch.Tensor, ...]], config: PruneConfig) -> PruneResult:
    """Return a pruned deep copy of `module` (eval mode) and what was removed in each layer.

    `calib_inputs` are positional argument tuples for the decoder's forward, `(input_ids,)`.
    Scores, allocation and steps are the encoder's: the output score is seen at the logits.
    In each `LayerPrune`, heads are query heads; a note names the KV groups.
    """
    if not isinstance(module, Decoder):
        raise UnsupportedModelError(f"{type(module).__name__} is not a Decoder: rebuild it with "
                                    "edgec.models.hf_decoder.from_hf_decoder first")
    if config.refit or config.prune_layers:
        raise InputError("refit and prune_layers are not supported for decoders: "
                         "prune with refit=False and prune_layers=False")
    if any(b.attn.qk_norm == "full" for b in module.layers):
        raise InputError("this decoder normalises queries and keys across all heads (OLMo 2), so removing a head "
                         "would change the others: export it without --prune")
    new = copy.deepcopy(module).eval()
    blocks = list(new.layers)
    flap = config.method == "flap" and config.ratio > 0
    if flap and not calib_inputs:
        raise InputError("FLAP pruning needs calibration samples: give at least one, or use method='magnitude'")
    prunable = lambda: sum(params((b.attn, b.gate, b.up, b.down)) for b in blocks)
    params_before, prunable_before = params([new]), prunable()
    block_before = [params([b]) for b in blocks]
    g = [b.attn.heads // b.attn.kv_heads for b in blocks]
    # original indices of the KV groups and channels each block still has
    ids = {(i, sub): list(range(n)) for i, b in enumerate(blocks)
           for sub, n in (("attn", b.attn.kv_heads), ("mlp", b.down.in_features))}
    gone = {key: [] for key in ids}
    steps = config.rounds
    for step in range(1, steps + 1):
        widths = _widths(blocks)
        stats = moments(new, {k: lin for k, (lin, _) in widths.items()}, calib_inputs) if flap else {}
        fisher = {}
        if flap and config.score == "output":
            fisher = output_scores(new, widths, calib_inputs, {k: m.mean for k, m in stats.items()})
        scores = {k: fisher[k] if fisher else local_score(lin, stats.get(k), w) for k, (lin, w) in widths.items()}
        costs = {(i, sub): cost for i, b in enumerate(blocks) for sub, cost in _costs(b).items()}
        count = {k: len(s) for k, s in scores.items()}
        budget = config.ratio * prunable_before * step / steps - (prunable_before - prunable())
        ranked = rank(scores, costs, config)
        chosen = in_blocks(allocate(ranked, budget, count, dict.fromkeys(count, 1)), ranked, count, "mlp",
                           config.mlp_block)
        for i, b in enumerate(blocks):
            kept_now, gone_now = split(chosen, count, i, SUBLAYERS)
            for sub in SUBLAYERS:
                gone[(i, sub)] += [ids[(i, sub)][j] for j in gone_now[sub]]
                ids[(i, sub)] = [ids[(i, sub)][j] for j in kept_now[sub]]
            _cut(b, kept_now, gone_now, {sub: stats[(i, sub)] for sub in SUBLAYERS} if flap else {})
    layers = []
    for i, b in enumerate(blocks):
        kept = {sub: ids[(i, sub)] for sub in SUBLAYERS}
        removed = {sub: sorted(gone[(i, sub)]) for sub in SUBLAYERS}
        notes = ((f"attention: KV groups {removed['attn']} removed, {kept['attn']} kept "
                  f"({g[i]} query heads per group)"),) if removed["attn"] else ()
        layers.append(LayerPrune(i, _query_heads(kept["attn"], g[i]), _query_heads(removed["attn"], g[i]),
                                 tuple(kept["mlp"]), tuple(removed["mlp"]),
                                 flap and bool(removed["attn"] or removed["mlp"]), notes=notes,
                                 params_before=block_before[i], params_after=params([b])))
    return PruneResult(new, config, params_before, params([new]), prunable_before, prunable(), layers,
                       config.ranked_by, steps)
