"""A decoder `.pte` with a static KV cache, in the shape ExecuTorch's LLM runner drives.

The runner calls `forward(tokens [1, S], cache_position [S])` for a prompt
chunk and again for each new token, and samples from the logits of the last
position, which is all `forward` returns: a program that returned every row
would plan context x vocab floats of activations (311 MB at Qwen2.5's
vocabulary and context 512); scoring feeds one token per call. Each layer's
keys and values live in a mutable buffer written in place at
`cache_position`, and a query at position p sees the slots 0 .. p (within
its sliding window, where the layer has one), so what an earlier, longer
sequence left behind is never read. Slots never written are selected away,
keys in the scores and values before the weighted sum: an app's allocator
may leave any bit pattern there, NaN included, and NaN survives an additive
mask and a zero weight. The RoPE tables cover the exported context only.
Everything is plain aten (no `llama::` custom ops): the program runs in any
ExecuTorch runtime that links the portable, optimized and XNNPACK libraries.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from edgec.errors import ExportError, InputError
from edgec.exporters.artifact import Artifact
from edgec.exporters.atomic import write_atomic
from edgec.models.decoder import Decoder

WEIGHTS = ("float", "8da4w", "8da8w")
GROUP = 32  # 8da4w: one int4 scale per 32 input channels


class StaticCacheLM(nn.Module):
    """`Decoder` over one [1, kv_heads_i, context, head_dim] key and value buffer per layer; the logits
    of the last position fed (all of them with `every_position`, for checks in Python)."""

    def __init__(self, module: Decoder, context: int, every_position: bool = False):
        super().__init__()
        self.module, self.context, self.every_position = module, context, every_position
        for i, layer in enumerate(module.layers):
            shape = (1, layer.attn.kv_heads, context, layer.attn.head_dim)
            self.register_buffer(f"k_{i}", torch.zeros(shape))
            self.register_buffer(f"v_{i}", torch.zeros(shape))
        cos, sin = module.rope(torch.arange(context))
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        m = self.module
        slots = torch.arange(self.context, dtype=cache_position.dtype)
        written = (slots <= cache_position[-1])[None, None, :, None]  # positions come in order from 0

        def static(i: int, k: torch.Tensor, v: torch.Tensor):
            k_all, v_all = getattr(self, f"k_{i}"), getattr(self, f"v_{i}")
            k_all.index_copy_(2, cache_position, k)
            v_all.index_copy_(2, cache_position, v)
            return k_all, torch.where(written, v_all, torch.zeros_like(v_all[:, :, :1]))
        logits = m.run(input_ids, self.rope_cos[:, cache_position], self.rope_sin[:, cache_position],
                       m.masks(cache_position, slots), static, last_only=not self.every_position)
        return logits


def export_llm_pte(module: Decoder, hf_config, out_path: Path, context: int,
                   weights: str = "float", num_bos: int = 1) -> Artifact:
    """Write a `.pte` whose `forward` takes 1..`context` tokens at a time, with the runner's metadata.

    `8da4w` stores every linear layer (lm_head included) as int4 in groups of
    32 with int8 dynamic activations, `8da8w` as int8 per output channel;
    the token table is int8 per row in both. `module` itself is left unchanged.
    """
    if weights not in WEIGHTS:
        raise InputError(f"unknown weights '{weights}' for ExecuTorch: use one of {', '.join(WEIGHTS)}")
    if not 2 <= context <= module.max_pos:
        raise InputError(f"context {context} is out of range: use 2 .. {module.max_pos} (the model's positions)")
    out_path, was_training = Path(out_path), module.training
    try:  # quantization swaps weights and layers: it works on a copy
        wrapper = StaticCacheLM(copy.deepcopy(module) if weights != "float" else module, context).eval()
        if weights != "float":
            quantize_dynamic_int(wrapper, 4 if weights == "8da4w" else 8)
        program = _export(wrapper, context)
    finally:
        module.train(was_training)
    methods = metadata(module, hf_config, context, num_bos)
    lowered = _lower(program, methods)
    write_atomic(out_path, lambda tmp: Path(tmp).write_bytes(lowered.buffer))
    vocab, hidden = module.embed.num_embeddings, module.embed.embedding_dim
    # the token table, read one row a token: int8 rows and a float32 scale per row, else float32 (a tied
    # output head is XNNPACK's own packed copy, read whole)
    table = vocab * (hidden + 4) if weights != "float" else vocab * hidden * 4
    io = {"inputs": [{"name": "input_ids", "dtype": "int64", "shape": [1, "sequence"], "quantization": None},
                     {"name": "cache_position", "dtype": "int64", "shape": ["sequence"], "quantization": None}],
          "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, 1, vocab], "quantization": None}],
          "engine": {"reader": "ExecuTorch's TextLLMRunner, or Module::forward in a C++ loop",
                     "metadata_methods": methods, "weights": weights, "token_table_bytes": table,
                     "cache": (f"static, inside the program: one key and one value buffer per layer, [1, kv_heads, "
                               f"{context}, head_dim], written at cache_position; key slot j is visible to the "
                               "query at position p when j <= p; forward returns the last position's logits")}}
    return Artifact(out_path, "pte", "executorch", manifest=io)


def metadata(module: Decoder, hf_config, context: int, num_bos: int = 1) -> dict:
    """The constant methods ExecuTorch's LLM runner reads (extension/llm/runner/constants.h), and
    get_n_bos: how many BOS ids go before a prompt (the runner's GenerationConfig.num_bos)."""
    eos = getattr(hf_config, "eos_token_id", None)
    eos = [e for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
    bos = getattr(hf_config, "bos_token_id", None)
    if not eos:
        raise ExportError("the model config has no eos_token_id: ExecuTorch's LLM runner needs it to stop")
    return {"get_bos_id": bos if bos is not None else -1, "get_eos_ids": eos, "get_n_bos": num_bos if bos is not None else 0,
            "get_max_seq_len": context, "get_max_context_len": context,
            "get_vocab_size": module.embed.num_embeddings, "use_kv_cache": True,
            "enable_dynamic_shape": True, "use_sdpa_with_kv_cache": False}


def quantize_dynamic_int(wrapper: StaticCacheLM, bits: int) -> None:
    """In place: torchao int4 weights in groups of 32 (bits 4) or int8 weights per output channel (bits 8)
    with int8 dynamic activations on every linear layer (the patterns XNNPACK's dynamically quantized
    linear takes), the token table int8 per row."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    from edgec.exporters.executorch import _Int8Embedding

    config = (Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(GROUP))
              if bits == 4 else Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8,
                                                                      weight_granularity=PerAxis(0)))
    odd = [n for n, m in wrapper.named_modules() if isinstance(m, nn.Linear) and m.in_features % GROUP]
    if odd and bits == 4:
        raise ExportError(f"8da4w needs input widths divisible by {GROUP}; {odd[0]} has "
                          f"{wrapper.get_submodule(odd[0]).in_features}: export with weights='float'")
    m = wrapper.module
    if m.lm_head.weight is m.embed.weight:  # tied: each gets its own quantized copy
        m.lm_head.weight = nn.Parameter(m.lm_head.weight.detach().clone())
    quantize_(wrapper, config, filter_fn=lambda mod, _: isinstance(mod, nn.Linear))
    m.embed = _Int8Embedding(m.embed)


def _export(wrapper: StaticCacheLM, context: int) -> torch.export.ExportedProgram:
    seq = torch.export.Dim("seq", min=1, max=context)
    example = (torch.zeros(1, 2, dtype=torch.long), torch.arange(2, dtype=torch.long))
    try:
        with torch.no_grad():
            return torch.export.export(wrapper, example, dynamic_shapes=({1: seq}, {0: seq}), strict=True)
    except Exception as e:  # torch.export raises many unrelated types for untraceable code
        raise ExportError(f"torch.export failed on the static-cache decoder: {_first_line(e)}") from e


def _lower(program: torch.export.ExportedProgram, constants: dict):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    try:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                           constant_methods=constants)
        return edge.to_executorch()
    except Exception as e:  # lowering raises assertion, runtime and internal errors alike
        raise ExportError(f"ExecuTorch could not lower the decoder for XNNPACK: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
