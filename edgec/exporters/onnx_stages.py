"""The decoder cut at its attention cores: one ONNX graph per stretch between two attentions.

A whole-model decoder graph takes every layer's past keys and values at once,
so a runtime that keeps the KV cache on disk would have to bring all of it
into memory for every step. Cut at the attention cores instead, the graphs do
all the model math (embedding, o-projection, residuals, MLP, norms, q/k/v,
RoPE at the true `position_ids`, the head) and hand each layer's q, k and v
out, so attention can run over whatever chunks of the cache a policy picks.

Stage 0: input_ids, position_ids -> x, q, k, v of layer 0.
Stage i (0 < i < L): x, ctx (layer i-1's attention output), position_ids -> x, q, k, v of layer i.
Stage L: x, ctx -> logits.
q is [1, heads, S, D], k and v [1, kv_heads, S, D] (post-RoPE); ctx is [1, S, heads * D].
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from edgec.errors import ExportError
from edgec.exporters.onnx_genai import OPSET, WEIGHT_BITS, _quantize
from edgec.models.decoder import Decoder
from edgec.runtimes.tiered_lm import SPEC_FILE


def stage_file(i: int) -> str:
    return f"stage_{i:03d}.onnx"


class _Rope(nn.Module):
    """cos/sin computed from position_ids in the graph (as `rope_tables` does), not a [max_pos, D] table:
    long contexts would put megabytes of table in every stage."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor):
        freqs = position_ids.to(torch.float32)[:, None] * self.inv_freq[None]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()


class Stage(nn.Module):
    """Layer i-1's tail (o-projection, residual, MLP) then layer i's head (norm, q/k/v, RoPE)."""

    def __init__(self, module: Decoder, index: int):
        super().__init__()
        n = len(module.layers)
        self.index, self.last = index, index == n
        self.before = module.layers[index - 1] if index > 0 else None
        self.after = module.layers[index] if index < n else None
        self.embed = module.embed if index == 0 else None
        if self.last:
            self.norm, self.lm_head = module.norm, module.lm_head
        else:
            self.rope = _Rope(self.after.attn.head_dim, module.rope_theta)

    def forward(self, *args):
        if self.index == 0:
            ids, position_ids = args
            x = self.embed(ids)
        else:
            x, ctx = args[:2]
            x = x + self.before.attn.o(ctx)
            x = x + self.before.mlp(x)
            if self.last:
                return self.lm_head(self.norm(x))
            position_ids = args[2]
        cos, sin = self.rope(position_ids)
        return (x, *self.after.attn.project(self.after.attn_norm(x), cos, sin))


def export_stages(module: Decoder, out_dir: Path, weights: str = "float", progress=None) -> dict:
    """Write stage_000.onnx .. stage_L.onnx and stages.json (the spec a runtime needs) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(module.layers)
    module.eval()
    for i in range(n + 1):
        path = out_dir / stage_file(i)
        _export(Stage(module, i), path)
        if WEIGHT_BITS[weights]:
            _quantize(path, path, WEIGHT_BITS[weights])
        if progress is not None:
            progress(i + 1, n + 1)
    spec = stages_spec(module, weights)
    (out_dir / SPEC_FILE).write_text(json.dumps(spec, indent=2))
    return spec


def stages_spec(module: Decoder, weights: str) -> dict:
    return {"format": "edgec decoder stages", "version": 1, "weights": weights,
            "stages": [stage_file(i) for i in range(len(module.layers) + 1)],
            "layers": [{"heads": l.attn.heads, "kv_heads": l.attn.kv_heads, "head_dim": l.attn.head_dim}
                       for l in module.layers],
            "vocab": module.embed.num_embeddings, "hidden": module.embed.embedding_dim,
            "max_positions": module.max_pos, "rope_theta": module.rope_theta}


def _example(stage: Stage, seq: int = 3):
    g = torch.Generator().manual_seed(0)
    positions = torch.arange(5, 5 + seq)
    if stage.index == 0:
        return (torch.randint(0, stage.embed.num_embeddings, (1, seq), generator=g), positions)
    attn = stage.before.attn
    x = torch.randn(1, seq, attn.o.out_features, generator=g)
    ctx = torch.randn(1, seq, attn.heads * attn.head_dim, generator=g)
    return (x, ctx) if stage.last else (x, ctx, positions)


def _export(stage: Stage, path: Path) -> None:
    first, last = stage.index == 0, stage.last
    inputs = (["input_ids", "position_ids"] if first else ["x", "ctx"] + ([] if last else ["position_ids"]))
    outputs = ["logits"] if last else ["x_out", "q", "k", "v"]
    seq = "sequence"
    shapes = ({1: seq}, {0: seq}) if first else (({1: seq}, {1: seq}) if last else ({1: seq}, {1: seq}, {0: seq}))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(stage, _example(stage), dynamo=True, opset_version=OPSET,
                                        input_names=inputs, output_names=outputs, dynamic_shapes=(shapes,),  # *args is one tuple argument
                                       
                                        verbose=False)
            program.save(path)
    except Exception as e:  # the exporter raises many types; all mean the same to the user
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ExportError(f"ONNX export of decoder stage {stage.index} failed "
                          f"({type(cause).__name__}: {first_line})") from e
