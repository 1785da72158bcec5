"""A decoder as one GGUF file for llama.cpp: weights, hyperparameters and the tokenizer together.

The file is written the way llama.cpp's own converter writes it, so that
llama.cpp runs it on the same kernels and at the same speed: the `gguf`
package (the format's own writer) writes F32 tensors under llama.cpp's names,
then llama.cpp's own quantizer (`llama_model_quantize`, through
llama-cpp-python) turns them into Q4_0, Q8_0 or Q4_K_M and picks the types of
the embedding and output tables as `llama-quantize` does. (For tinylm, every
tensor of edgec's F32 file equals the converter's, and every Q4_0 tensor is
byte-identical after quantizing either.)

Which architecture computes a module, and how, is `gguf_arch`'s; the
tokenizer's translation `gguf_vocab`'s.

RoPE: edgec, like Hugging Face, rotates the two halves of each head; llama.cpp's
"normal" architectures (llama, deci, granite, smollm3) rotate adjacent pairs, so
their q and k rows are permuted head by head exactly as the converter does; the
NEOX ones (qwen2, qwen3, gemma, phi3, olmo2, openelm) take the halves as they are.
A RoPE table is written as a base frequency, a linear scale and, where the table
is not geometric (llama3, LongRoPE), per-frequency factors (`rope_freqs`).
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgec.errors import ExportError, InputError
from edgec.exporters.artifact import Artifact
from edgec.exporters.gguf_arch import QKV, Plan, linears, plan_for
from edgec.exporters.gguf_vocab import Vocab, model_name, read_vocab, write_vocab
from edgec.exporters.llama_bindings import gguf_package, llama_cpp, quiet
from edgec.models.decoder import Decoder

# llama.cpp's llama_ftype for each recipe name: F32/F16 are written directly, the rest quantized by llama.cpp
QUANTS = {"F32": 0, "F16": 1, "Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15}
THREADS = 2  # quantizer threads, like the runtimes here




# ----------------------------------------------------------------------------------------------------------
# tensors


def _interleave(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head from edgec's half-split RoPE layout into llama.cpp's adjacent pairs: row j of the
    first half and row j of the second become rows 2j and 2j + 1 (the converter's permute)."""
    return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def _tensors(module: Decoder, plan: Plan) -> dict[str, torch.Tensor]:
    """GGUF tensor name -> float32 data ([out, in] as torch stores it; the writer reverses to ggml's order)."""
    gguf = gguf_package()
    T, names = gguf.MODEL_TENSOR, gguf.TENSOR_NAMES
    arch = plan.arch
    known = set(gguf.MODEL_TENSORS[next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch.name)])

    def name(kind, bid=None, suffix="weight"):
        if kind not in known:
            raise ExportError(f"the gguf package lists no {names[kind]} tensor for {arch.name}: update gguf")
        return f"{names[kind].format(bid=bid)}.{suffix}"

    w = lambda t: t.detach().float().clone()  # noqa: E731
    out = {name(T.TOKEN_EMBD): w(module.embed.weight)}
    if arch.embed_scale == "none" and module.embed_scale != 1.0:
        out[name(T.TOKEN_EMBD)] *= module.embed_scale  # only where the output layer is written on its own
    if plan.rope is not None and plan.rope.factors is not None:
        factors = torch.from_numpy(plan.rope.factors)
        if arch.rope_factors == "freqs":
            out[name(T.ROPE_FREQS)] = factors
        else:  # edgec serves the positions of one table: the same factors for short and long contexts
            out[name(T.ROPE_FACTORS_SHORT)] = factors
            out[name(T.ROPE_FACTORS_LONG)] = factors.clone()
    for i, b in enumerate(module.layers):
        a = b.attn
        lin = {k: (w(m.weight), w(m.bias)) for k, m in linears(b).items()}
        q_norm = w(a.q_norm.weight) if a.qk_norm else None
        k_norm = w(a.k_norm.weight) if a.qk_norm else None
        if plan.q_scale[i] != 1.0:  # exact: the scores are linear in q (a norm on q is scaled after it)
            if q_norm is not None:
                q_norm *= plan.q_scale[i]
            else:
                lin["q"] = (lin["q"][0] * plan.q_scale[i], lin["q"][1] * plan.q_scale[i])
        if not arch.neox:
            lin["q"] = tuple(_interleave(t, a.heads) for t in lin["q"])
            lin["k"] = tuple(_interleave(t, a.kv_heads) for t in lin["k"])
        if b.norms != "post":
            out[name(T.ATTN_NORM, i)] = w(b.attn_norm.weight)
            out[name(T.FFN_NORM if b.norms == "pre" else T.FFN_PRE_NORM, i)] = w(b.mlp_norm.weight)
        if b.norms != "pre":
            out[name(T.ATTN_POST_NORM, i)] = w(b.attn_post_norm.weight)
            out[name(T.FFN_POST_NORM, i)] = w(b.mlp_post_norm.weight)
        if q_norm is not None:
            out[name(T.ATTN_Q_NORM, i)], out[name(T.ATTN_K_NORM, i)] = q_norm, k_norm
        if arch.fused_qkv:
            out[name(T.ATTN_QKV, i)] = torch.cat([lin[k][0] for k in "qkv"])
            if plan.biases & QKV:
                out[name(T.ATTN_QKV, i, "bias")] = torch.cat([lin[k][1] for k in "qkv"])
        else:
            for k, kind in (("q", T.ATTN_Q), ("k", T.ATTN_K), ("v", T.ATTN_V)):
                out[name(kind, i)] = lin[k][0]
                if k in plan.biases:
                    out[name(kind, i, "bias")] = lin[k][1]
        out[name(T.ATTN_OUT, i)] = lin["o"][0]
        if arch.fused_gate_up:
            out[name(T.FFN_UP, i)] = torch.cat([lin["gate"][0], lin["up"][0]])
        else:
            out[name(T.FFN_GATE, i)] = lin["gate"][0]
            out[name(T.FFN_UP, i)] = lin["up"][0]
        out[name(T.FFN_DOWN, i)] = lin["down"][0]
        for k, kind in (("o", T.ATTN_OUT), ("gate", T.FFN_GATE), ("up", T.FFN_UP), ("down", T.FFN_DOWN)):
            if k in plan.biases:
                out[name(kind, i, "bias")] = lin[k][1]
    norm = w(module.norm.weight)
    if not arch.scale_keys and module.logit_scale != 1.0:
        norm *= module.logit_scale  # the output layer is linear and has no bias: exact
    out[name(T.OUTPUT_NORM)] = norm
    if arch.output == "own" or not plan.tied:
        out[name(T.OUTPUT)] = w(module.lm_head.weight)
    return out


# ----------------------------------------------------------------------------------------------------------
# hyperparameters


def _per_layer(values: list[int], arrays: bool) -> int | list[int]:
    """A per-layer key: an array where the architecture builds per-layer shapes (as the converter writes
    them for deci), else the one value."""
    return values if arrays else values[0]


def _hyperparameters(writer, module: Decoder, plan: Plan, name: str | None) -> None:
    gguf = gguf_package()
    arch, layers = plan.arch, [b.attn for b in module.layers]
    head_dim = layers[0].head_dim
    if name:
        writer.add_name(name)
    writer.add_context_length(module.max_pos)
    writer.add_embedding_length(module.embed.embedding_dim)
    writer.add_block_count(len(layers))
    arrays = arch.per_layer
    writer.add_feed_forward_length(_per_layer([b.down.in_features for b in module.layers], arrays))
    writer.add_head_count(_per_layer([a.heads for a in layers], arrays))
    writer.add_head_count_kv(_per_layer([a.kv_heads for a in layers], arrays))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(float(module.norm.eps))
    writer.add_vocab_size(module.embed.num_embeddings)
    writer.add_rope_dimension_count(head_dim)
    rope = plan.rope or plan.swa_rope
    if rope is not None:
        writer.add_rope_freq_base(rope.base)
        if plan.rope is not None and plan.rope.scale != 1.0:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(1.0 / plan.rope.scale)
        if rope.attn != 1.0:
            writer.add_rope_scaling_attn_factors(rope.attn)
    if arch.swa:
        if plan.swa_rope is not None:
            writer.add_rope_freq_base_swa(plan.swa_rope.base)
        if plan.window is not None:
            writer.add_sliding_window(plan.window)
        writer.add_sliding_window_pattern(plan.sliding)
    if arch.attn_softcap:
        writer.add_attn_logit_softcapping(float(layers[0].softcap))
    if module.logit_softcap is not None:
        writer.add_final_logit_softcapping(float(module.logit_softcap))
    if arch.scale_keys:
        writer.add_logit_scale(1.0 / module.logit_scale)  # llama.cpp divides the logits by it
        if plan.attention_scale is not None:
            writer.add_attention_scale(float(plan.attention_scale))
    if arch.embed_scale == "key" and module.embed_scale != 1.0:
        writer.add_embedding_scale(float(module.embed_scale))


# ----------------------------------------------------------------------------------------------------------
# writing and quantizing


def _write(path: Path, module: Decoder, plan: Plan, vocab: Vocab, half: bool, name: str | None) -> None:
    """F32 (or, with `half`, F16 matrices and F32 vectors, as the converter's --outtype f16) GGUF at `path`."""
    gguf = gguf_package()
    writer = gguf.GGUFWriter(str(path), plan.arch.name)
    writer.add_type(gguf.GGUFType.MODEL)
    _hyperparameters(writer, module, plan, name)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(QUANTS["F16"] if half else QUANTS["F32"])
    write_vocab(writer, vocab)
    for key, t in _tensors(module, plan).items():
        data = t.contiguous().numpy()
        if half and data.ndim > 1:
            data = data.astype(np.float16)
        writer.add_tensor(key, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize(src: Path, dst: Path, quant: str, threads: int = THREADS) -> None:
    """llama.cpp's own quantizer (what `llama-quantize src dst <quant>` does), from Python."""
    lib = llama_cpp()
    params = lib.llama_model_quantize_default_params()
    params.ftype, params.nthread = QUANTS[quant], threads
    quiet(lib)
    rc = lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise ExportError(f"llama.cpp's quantizer failed on {src.name} ({quant}, code {rc})")


def export_gguf(module: Decoder, hf_config, tokenizer_dir: Path, out_path: Path, quant: str = "Q4_0") -> Artifact:
    """Write `module` with its tokenizer as `out_path` (model.gguf) for llama.cpp, quantized to `quant`
    (Q4_0, Q8_0, Q4_K_M by llama.cpp's quantizer; F16 or F32 as written)."""
    if quant not in QUANTS:
        raise InputError(f"unknown GGUF quantization '{quant}': use one of {', '.join(QUANTS)}")
    plan = plan_for(module, hf_config)
    vocab = read_vocab(Path(tokenizer_dir), module.embed.num_embeddings, hf_config)
    if quant not in ("F32", "F16"):
        llama_cpp()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as tmp:
        written = Path(tmp) / "model-f32.gguf"
        _write(written, module, plan, vocab, quant == "F16", model_name(hf_config, vocab))
        final = written if quant in ("F32", "F16") else Path(tmp) / "model-q.gguf"
        if final is not written:
            quantize(written, final, quant)
        os.replace(final, out_path)
    engine = {"reader": "llama.cpp (llama-cpp-python's Llama, or llama-cli -m this file)",
              "architecture": plan.arch.name, "quant": quant, "context": module.max_pos,
              "tokenizer": f"embedded ({vocab.pre} BPE)"}
    io = {"inputs": [{"name": "tokens", "dtype": "int32", "shape": ["sequence"], "quantization": None}],
          "outputs": [{"name": "logits", "dtype": "float32", "shape": ["sequence", module.embed.num_embeddings],
                      "quantization": None}]}
    return Artifact(out_path, "gguf", "llama-cpp", manifest={**io, "engine": engine})
