"""Retraining-free structured pruning (FLAP) of the canonical Llama decoder, GQA-aware.

The same method and contract as `prune.py` (`PruneConfig` in, `PruneResult`
out), on `edgec.models.decoder.Decoder`:
- Attention loses whole KV groups: one KV head and the g query heads that
  share it (heads j*g .. j*g+g-1). A group is scored by summing the FLAP scores
  `Var(x_c) * ||W_o[:, c]||^2` of its query heads' channels c at the input of
  `o`; removing it drops g*head_dim rows of q, head_dim rows of k and of v, and
  the matching columns of o. g stays constant, so `heads` and `kv_heads` shrink
  together and the attention keeps its GQA layout.
- The SwiGLU MLP loses intermediate channels, scored at the input of `down`;
  a channel is one row of `gate` and of `up` and one column of `down`.
- Allocation is global over both kinds and all layers (`_allocate`), per
  parameter removed or standardised per layer and kind, until `ratio` of the
  prunable parameters (q/k/v/o and gate/up/down) is gone. Every layer keeps at
  least one group and one channel.
- FLAP folds the removed inputs' calibration means into `o.bias` and
  `down.bias`; "magnitude" ranks by the column norms alone, uncompensated.

`refit` and `prune_layers` are encoder-only for now and are refused here.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgec.errors import InputError, UnsupportedModelError
from edgec.models.decoder import Block, Decoder
from edgec.passes.prune import (LayerPrune, PruneConfig, PruneResult, _allocate, _compensate, _Moments, _params,
                                _record, _slice_linear, _standardise)

SUBLAYERS = ("attn", "mlp")


def _inputs(b: Block) -> dict[str, nn.Linear]:
    """The projections whose input channels are scored: "attn" -> o, "mlp" -> down."""
    return {"attn": b.attn.o, "mlp": b.down}


def _costs(b: Block) -> dict[str, int]:
    """Parameters one KV group and one MLP channel take with them (o's and down's biases stay)."""
    a, hidden = b.attn, b.down.out_features
    g, d = a.heads // a.kv_heads, a.head_dim
    return {"attn": (2 * g + 2) * hidden * d + (g + 2) * d, "mlp": 3 * hidden + 2}


def _query_heads(groups: list[int], g: int) -> tuple[int, ...]:
    return tuple(j * g + t for j in groups for t in range(g))


def _candidates(blocks: list[Block], stats: dict, config: PruneConfig):
    """(ranking key, layer, sublayer, index, parameters removed) for every KV group and MLP
    channel, plus how many each sublayer has; every sublayer keeps at least one."""
    candidates, count = [], {}
    for i, b in enumerate(blocks):
        costs = _costs(b)
        for sub, lin in _inputs(b).items():
            score = lin.weight.detach().double().pow(2).sum(0)
            score = score * stats[(i, sub)].var if stats else score
            if sub == "attn":  # o's input columns of group j are contiguous: g heads of head_dim
                score = score.view(b.attn.kv_heads, -1).sum(1)
            key = _standardise(score) if config.allocation == "standardised" else score / costs[sub]
            candidates += [(k, i, sub, j, costs[sub]) for j, k in enumerate(key.tolist())]
            count[(i, sub)] = len(score)
    return candidates, count


@torch.no_grad()
def _cut(b: Block, kept: dict[str, list[int]], gone: dict[str, list[int]], moments: dict) -> None:
    """Remove block `b`'s `gone` KV groups and MLP channels, compensating biases when `moments` are given."""
    a = b.attn
    g, d = a.heads // a.kv_heads, a.head_dim
    span = lambda groups, width: torch.tensor([j * width + t for j in groups for t in range(width)])
    if gone["attn"]:
        if moments:
            _compensate(a.o, span(gone["attn"], g * d).tolist(), moments["attn"].mean)
        q_rows, kv_rows = span(kept["attn"], g * d), span(kept["attn"], d)
        a.q, a.o = _slice_linear(a.q, rows=q_rows), _slice_linear(a.o, cols=q_rows)
        a.k, a.v = _slice_linear(a.k, rows=kv_rows), _slice_linear(a.v, rows=kv_rows)
        a.kv_heads = len(kept["attn"])
        a.heads = a.kv_heads * g
    if gone["mlp"]:
        if moments:
            _compensate(b.down, gone["mlp"], moments["mlp"].mean)
        rows = torch.tensor(kept["mlp"], dtype=torch.long)
        b.gate, b.up, b.down = (_slice_linear(b.gate, rows=rows), _slice_linear(b.up, rows=rows),
                                _slice_linear(b.down, cols=rows))


def prune_decoder(module: Decoder, calib_inputs: list[tuple[torch.Tensor, ...]], config: PruneConfig) -> PruneResult:
    """Return a pruned deep copy of `module` (eval mode) and what was removed in each layer.

    `calib_inputs` are positional argument tuples for the decoder's forward, `(input_ids,)`.
    In each `LayerPrune`, heads are query heads; a note names the KV groups.
    """
    if not isinstance(module, Decoder):
        raise UnsupportedModelError(f"{type(module).__name__} is not a Decoder: rebuild it with "
                                    "edgec.models.hf_llama.from_hf_llama first")
    if config.refit or config.prune_layers:
        raise InputError("refit and prune_layers are not supported for decoders: "
                         "prune with refit=False and prune_layers=False")
    new = copy.deepcopy(module).eval()
    blocks = list(new.layers)
    flap = config.method == "flap" and config.ratio > 0
    if flap and not calib_inputs:
        raise InputError("FLAP pruning needs calibration samples: give at least one, or use method='magnitude'")
    prunable = lambda: sum(_params((b.attn, b.gate, b.up, b.down)) for b in blocks)
    params_before, prunable_before = _params([new]), prunable()
    block_before = [_params([b]) for b in blocks]
    stats: dict = {}
    if flap:
        taps = {(i, sub): (lin, "in") for i, b in enumerate(blocks) for sub, lin in _inputs(b).items()}
        _record(new, calib_inputs, taps, lambda key, x: stats.setdefault(key, _Moments()).add(x))

    candidates, count = _candidates(blocks, stats, config)
    chosen = (_allocate(candidates, config.ratio * prunable_before, count, dict.fromkeys(count, 1))
              if config.ratio > 0 else set())
    layers = []
    for i, b in enumerate(blocks):
        kept = {sub: [j for j in range(count[(i, sub)]) if (i, sub, j) not in chosen] for sub in SUBLAYERS}
        gone = {sub: [j for j in range(count[(i, sub)]) if (i, sub, j) in chosen] for sub in SUBLAYERS}
        g = b.attn.heads // b.attn.kv_heads
        notes = ((f"attention: KV groups {gone['attn']} removed, {kept['attn']} kept "
                  f"({g} query heads per group)"),) if gone["attn"] else ()
        _cut(b, kept, gone, {sub: stats[(i, sub)] for sub in SUBLAYERS} if flap else {})
        layers.append(LayerPrune(i, _query_heads(kept["attn"], g), _query_heads(gone["attn"], g),
                                 tuple(kept["mlp"]), tuple(gone["mlp"]), flap and bool(gone["attn"] or gone["mlp"]),
                                 notes=notes, params_before=block_before[i], params_after=_params([b])))
    return PruneResult(new, config, params_before, _params([new]), prunable_before, prunable(), layers)
