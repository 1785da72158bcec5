"""A decoder as one GGUF file for llama.cpp: weights, hyperparameters and the tokenizer together.

The file is written the way llama.cpp's own converter writes it, so that
llama.cpp runs it on the same kernels and at the same speed: the `gguf`
package (the format's own writer) writes F32 tensors under llama.cpp's names,
then llama.cpp's own quantizer (`llama_model_quantize`, through
llama-cpp-python) turns them into Q4_0, Q8_0 or Q4_K_M and picks the types of
the embedding and output tables as `llama-quantize` does. (For tinylm, every
tensor of edgec's F32 file equals the converter's, and every Q4_0 tensor is
byte-identical after quantizing either.)

llama.cpp computes each architecture in its own C++ graph (src/models/<arch>.cpp),
so a model is written for the first architecture that computes exactly what the
canonical `Decoder` does: the family's own first, then the plain Llama layouts.
`ARCHS` lists what each one reads, in the Decoder's option names; anything a
module has that its architecture would silently drop (a nonzero bias without a
tensor, a sliding window, a soft cap, a RoPE table it cannot express) is refused
in one line. Constants the graph cannot hold are folded into weights where that
is exact: an attention scale into the queries, a logit scale into the final
norm. llama.cpp's loader reads per-layer head counts and FFN widths (a pruned
model) as arrays for any architecture, but of its dense Llama-like graphs only
`deci` (Llama with per-layer shapes, from NVIDIA's NAS models) and `openelm`
build their tensors from them; the others take layer 0's for all.

RoPE: edgec, like Hugging Face, rotates the two halves of each head; llama.cpp's
"normal" architectures (llama, deci, granite, smollm3) rotate adjacent pairs, so
their q and k rows are permuted head by head exactly as the converter does; the
NEOX ones (qwen2, qwen3, gemma, phi3, olmo2, openelm) take the halves as they are.
A RoPE table is written as a base frequency, a linear scale and, where the table
is not geometric (llama3, LongRoPE), per-frequency factors (`rope_freqs`).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgec.errors import BackendError, ExportError, InputError
from edgec.exporters.artifact import Artifact
from edgec.models.decoder import Decoder
from edgec.exporters.llama_bindings import llama_cpp, quiet

# llama.cpp's llama_ftype for each recipe name: F32/F16 are written directly, the rest quantized by llama.cpp
QUANTS = {"F32": 0, "F16": 1, "Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15}
THREADS = 2  # quantizer threads, like the runtimes here
LINEARS = ("q", "k", "v", "o", "gate", "up", "down")
ALL, QKV = frozenset(LINEARS), frozenset("qkv")


def _gguf():
    """The format's own Python package, or one line saying how to install it."""
    try:
        import gguf
    except ImportError as e:
        raise BackendError("the gguf package is not installed: pip install -e '.[llama]'") from e
    return gguf


# ----------------------------------------------------------------------------------------------------------
# what each llama.cpp architecture computes


@dataclass(frozen=True)
class Arch:
    """One llama.cpp architecture (src/models/<name>.cpp) in the Decoder's terms."""

    name: str
    neox: bool = False  # RoPE on the two halves of a head; False: on adjacent pairs (q/k rows permuted)
    norms: str = "pre"
    act: str = "silu"
    qk_norm: str | None = None
    biases: frozenset = frozenset()  # linear layers that may carry a bias
    keep_biases: frozenset = frozenset()  # biases written even when all zero (qwen2 always has them)
    per_layer: bool = False  # builds its tensors from per-layer head counts and FFN widths
    output: str = "either"  # "either"; "tied": the token table is the output layer; "own": an output tensor
    square_q: bool = False  # q and o are hidden x hidden: heads * head_dim must equal hidden
    fused_qkv: bool = False  # one attn_qkv tensor (q, k, v rows in that order)
    fused_gate_up: bool = False  # ffn_up holds gate then up rows (phi3)
    swa: bool = False  # a per-layer sliding-window pattern, sliding layers on their own RoPE base
    swa_scale: str = "one"  # the sliding layers' linear RoPE scale: "one", or "global" (gemma2)
    rope_factors: str | None = None  # "freqs": a rope_freqs tensor; "long_short": rope_factors_long/short
    nope_every: int | None = None  # RoPE skipped on layer i where (i + 1) % n == 0 (smollm3, fixed in C++)
    attn_softcap: bool = False  # scores always soft-capped (gemma2)
    final_softcap: str = "none"  # "none", "optional", "always"
    embed_scale: str = "none"  # "none"; "sqrt": sqrt(hidden), built in (gemma); "key": metadata (granite)
    scale_keys: bool = False  # attention and logit scales as metadata (granite)
    big_layers: int | None = None  # gemma: at this depth (the 27B) the score scale is (hidden / heads) ** -0.5


ARCHS = {a.name: a for a in [
    Arch("llama", biases=ALL, rope_factors="freqs"),
    Arch("deci", biases=ALL, rope_factors="freqs", per_layer=True),
    Arch("qwen2", neox=True, biases=QKV, keep_biases=QKV, square_q=True),
    Arch("qwen3", neox=True, qk_norm="head", biases=QKV),
    Arch("gemma2", neox=True, norms="sandwich", act="gelu_tanh", biases=QKV, output="tied", swa=True,
         swa_scale="global", attn_softcap=True, final_softcap="always", embed_scale="sqrt", big_layers=46),
    Arch("gemma3", neox=True, norms="sandwich", act="gelu_tanh", qk_norm="head", biases=QKV, swa=True,
         final_softcap="optional", embed_scale="sqrt", big_layers=62),
    Arch("phi3", neox=True, biases=QKV, square_q=True, fused_qkv=True, fused_gate_up=True, rope_factors="long_short"),
    Arch("smollm3", biases=QKV, nope_every=4),
    Arch("granite", biases=ALL, rope_factors="freqs", embed_scale="key", scale_keys=True),
    Arch("olmo2", neox=True, norms="post", qk_norm="full", biases=QKV, square_q=True, output="own", swa=True),
    Arch("openelm", neox=True, qk_norm="head", per_layer=True, output="tied", fused_qkv=True),
]}
# the architecture llama.cpp's converter picks for each family edgec rebuilds
FAMILY_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
               "gemma3_text": "gemma3", "phi3": "phi3", "smollm3": "smollm3", "granite": "granite", "olmo2": "olmo2"}
FALLBACKS = ("llama", "deci", "openelm")  # Llama layouts that take what a family's own may not (biases, shapes)


@dataclass(frozen=True)
class Rope:
    """A RoPE table as llama.cpp computes it: pair i turns at scale * base ** (-2i / dims) / factors[i]
    radians per position, cos and sin times `attn`."""

    base: float
    scale: float
    factors: np.ndarray | None
    attn: float


@dataclass(frozen=True)
class Plan:
    """How one module is written for one architecture."""

    arch: Arch
    rope: Rope | None  # the table of the full-attention layers (None: no layer uses RoPE)
    swa_rope: Rope | None  # the sliding layers' table, where the architecture keeps one
    window: int | None  # the sliding window of the layers in `sliding`
    sliding: list[bool]
    q_scale: list[float]  # folded into each layer's queries: the module's score scale / llama.cpp's
    attention_scale: float | None  # the score scale as metadata, where the architecture reads one
    tied: bool  # the module's output layer is its token table
    biases: set[str]  # the linear layers whose bias is written


def _config_thetas(hf_config) -> list[float]:
    """RoPE bases the HF config names (rope_parameters, possibly one per layer type, or rope_theta)."""
    found = []

    def walk(x):
        if isinstance(x, dict):
            if isinstance(x.get("rope_theta"), (int, float)):
                found.append(float(x["rope_theta"]))
            for v in x.values():
                walk(v)
    walk(getattr(hf_config, "rope_parameters", None) or {})
    for key in ("rope_theta", "rope_local_base_freq"):
        if isinstance(getattr(hf_config, key, None), (int, float)):
            found.append(float(getattr(hf_config, key)))
    return list(dict.fromkeys(found))


def _rope(inv_freq: torch.Tensor, attn: float, thetas: list[float]) -> Rope:
    """The base, linear scale and (where the table is not geometric) per-pair factors that reproduce
    `inv_freq` [head_dim / 2]: the config's base when one fits, else the one the first two entries imply."""
    inv = inv_freq.double().numpy()
    half = len(inv)
    steps = np.arange(half) * 2.0 / (2 * half)
    fitted = float((inv[0] / inv[1]) ** half) if half > 1 else 10000.0
    fitted = float(f"{fitted:.6g}")
    for base in [*thetas, fitted]:
        ratio = inv / base ** -steps
        if np.allclose(ratio, ratio[0], rtol=1e-5, atol=0):
            return Rope(base, float(ratio[0]), None, attn)
    base = thetas[0] if thetas else fitted
    return Rope(base, 1.0, (base ** -steps / inv).astype(np.float32), attn)


def _default_scale(arch: Arch, module: Decoder, layer: int) -> float:
    """The score scale llama.cpp's graph applies to layer `layer`."""
    a = module.layers[layer].attn
    if arch.big_layers is not None and len(module.layers) == arch.big_layers:
        return (module.embed.embedding_dim / module.layers[0].attn.heads) ** -0.5
    return a.head_dim ** -0.5


def _nonzero_biases(module: Decoder) -> set[str]:
    return {name for b in module.layers for name, lin in _linears(b).items() if bool(lin.bias.detach().abs().max() > 0)}


def _linears(block) -> dict:
    a = block.attn
    return {"q": a.q, "k": a.k, "v": a.v, "o": a.o, "gate": block.gate, "up": block.up, "down": block.down}


def _one(values, what: str) -> object:
    distinct = sorted(set(values), key=str)
    if len(distinct) > 1:
        raise _Misfit(f"its layers differ in {what} ({', '.join(map(str, distinct))})")
    return distinct[0] if distinct else None


class _Misfit(Exception):
    """What an architecture cannot express about a module: the refusal's reason."""


def _fit(arch: Arch, module: Decoder, hf_config) -> Plan:
    """The plan for writing `module` as `arch`, or _Misfit naming the first thing `arch` would get wrong."""
    layers = [b.attn for b in module.layers]
    blocks = list(module.layers)
    hidden, ctx = module.embed.embedding_dim, module.max_pos
    if _one([b.norms for b in blocks], "norm placement") != arch.norms:
        raise _Misfit(f"its norms sit {blocks[0].norms} the sublayers ({arch.name} has {arch.norms}-norms)")
    if _one([b.act for b in blocks], "activation") != arch.act:
        raise _Misfit(f"its MLP uses {blocks[0].act} ({arch.name} uses {arch.act})")
    if _one([a.qk_norm for a in layers], "query/key norms") != arch.qk_norm:
        kind = {None: "none", "head": "per-head ones", "full": "whole-projection ones"}
        raise _Misfit(f"its query/key norms are {kind[layers[0].qk_norm]} where {arch.name}'s are {kind[arch.qk_norm]}")
    shapes = {(a.heads, a.kv_heads, b.down.in_features) for a, b in zip(layers, blocks)}
    if len(shapes) > 1 and not arch.per_layer:
        raise _Misfit("its layers have different head counts or FFN widths (a pruned model), which "
                      f"{arch.name} does not build")
    if arch.square_q and any(a.heads * a.head_dim != hidden for a in layers):
        raise _Misfit(f"its attention width differs from the hidden size ({arch.name} assumes they match)")
    extra = _nonzero_biases(module) - arch.biases
    if extra:
        raise _Misfit(f"it has nonzero {'/'.join(k for k in LINEARS if k in extra)} biases, which {arch.name} has "
                      "no tensor for")
    tied = module.lm_head.weight is module.embed.weight
    if arch.output == "tied" and not tied:
        raise _Misfit(f"its output layer is not its token table ({arch.name} reuses the token table)")
    own_output = arch.output == "own" or not tied
    # soft caps, embedding scale
    softcap = _one([a.softcap for a in layers], "attention soft caps")
    if bool(softcap) != arch.attn_softcap:
        raise _Misfit("it soft-caps attention scores" if softcap else f"{arch.name} soft-caps attention scores")
    if module.logit_softcap is not None and arch.final_softcap == "none":
        raise _Misfit(f"it soft-caps its logits, which {arch.name} does not")
    if module.logit_softcap is None and arch.final_softcap == "always":
        raise _Misfit(f"{arch.name} soft-caps logits and this model does not")
    if arch.embed_scale == "sqrt" and not math.isclose(module.embed_scale, math.sqrt(hidden), rel_tol=1e-6):
        raise _Misfit(f"its embeddings are scaled by {module.embed_scale:g} ({arch.name}: sqrt(hidden))")
    if arch.embed_scale == "none" and module.embed_scale != 1.0 and not own_output:
        raise _Misfit(f"it scales its embeddings by {module.embed_scale:g} and shares them with its output layer, "
                      f"which {arch.name} cannot")
    # sliding windows
    windows = [a.window for a in layers]
    live = sorted({w for w in windows if w is not None and w < ctx})
    if not arch.swa:
        if live:
            raise _Misfit(f"it has sliding-window attention ({live[0]} tokens within {ctx}), which {arch.name} lacks")
        sliding, window = [False] * len(layers), None
    else:
        window = _one([w for w in windows if w is not None], "sliding windows")
        sliding = [w is not None for w in windows]
    # RoPE: which layers rotate, with which table
    no_rope = [a.rope is None for a in layers]
    if arch.nope_every:
        expected = [(i + 1) % arch.nope_every == 0 for i in range(len(layers))]
        if no_rope != expected:
            raise _Misfit(f"its layers without RoPE are {[i for i, n in enumerate(no_rope) if n]} ({arch.name} skips "
                          f"RoPE on every {arch.nope_every}th layer)")
    elif any(no_rope):
        raise _Misfit(f"some of its layers have no position embedding (NoPE), which {arch.name} lacks")
    thetas = _config_thetas(hf_config)
    tables = [_rope(module.inv_freq[i], module.rope_scale[i], thetas) for i in range(len(module.rope_scale))]
    full = _one([a.rope for a, s in zip(layers, sliding) if a.rope is not None and not s], "RoPE tables")
    local = _one([a.rope for a, s in zip(layers, sliding) if a.rope is not None and s], "sliding-layer RoPE tables")
    rope = tables[full] if full is not None else None  # without a window pattern every layer is "full"
    swa_rope = tables[local] if local is not None else None
    for t in (rope, swa_rope):
        if t is not None and t.factors is not None and arch.rope_factors is None:
            raise _Misfit(f"its RoPE frequencies are not a geometric series (llama3/LongRoPE scaling), which "
                          f"{arch.name} cannot read")
    if swa_rope is not None:
        if swa_rope.factors is not None:
            raise _Misfit("its sliding layers' RoPE frequencies are not a geometric series")
        want = rope.scale if arch.swa_scale == "global" and rope is not None else 1.0
        if not math.isclose(swa_rope.scale, want, rel_tol=1e-5):
            raise _Misfit(f"its sliding layers' RoPE is scaled by {swa_rope.scale:g} ({arch.name}: {want:g})")
        if rope is not None and not math.isclose(swa_rope.attn, rope.attn, rel_tol=1e-6):
            raise _Misfit("its RoPE tables have different attention factors")
    # score scales: a metadata key where the architecture has one, else folded into the queries
    scales = [a.scale for a in layers]
    key = scales[0] if arch.scale_keys and len(set(scales)) == 1 else None
    q_scale = [1.0 if key else s / _default_scale(arch, module, i) for i, s in enumerate(scales)]
    written = (_nonzero_biases(module) | arch.keep_biases) & arch.biases
    return Plan(arch, rope, swa_rope, window, sliding, q_scale, key, tied, written)


def plan_for(module: Decoder, hf_config) -> Plan:
    """The first architecture that computes exactly what `module` does: its family's own, then the Llama
    layouts; ExportError in one line where none does (for a pruned model: why neither per-layer one fits)."""
    family = getattr(hf_config, "model_type", None)
    names = list(dict.fromkeys([*([FAMILY_ARCH[family]] if family in FAMILY_ARCH else []), *FALLBACKS]))
    reasons = {}
    for name in names:
        try:
            return _fit(ARCHS[name], module, hf_config)
        except _Misfit as e:
            reasons[name] = str(e)
    what = f"this {family or 'decoder'}"
    if len({(b.attn.heads, b.attn.kv_heads, b.down.in_features) for b in module.layers}) > 1:
        per_layer = [n for n in names if ARCHS[n].per_layer]
        raise ExportError(f"llama.cpp cannot run {what} (pruned: per-layer head counts or FFN widths) as a GGUF: "
                          f"only its {' and '.join(per_layer)} architectures build those, and "
                          + "; ".join(f"for {n} {reasons[n]}" for n in per_layer))
    first, *others = names
    raise ExportError(f"llama.cpp cannot run {what} as a GGUF: {reasons[first]}"
                      + (f" (nor do {', '.join(others)} fit)" if others else ""))


# ----------------------------------------------------------------------------------------------------------
# tensors


def _interleave(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head from edgec's half-split RoPE layout into llama.cpp's adjacent pairs: row j of the
    first half and row j of the second become rows 2j and 2j + 1 (the converter's permute)."""
    return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def _tensors(module: Decoder, plan: Plan) -> dict[str, torch.Tensor]:
    """GGUF tensor name -> float32 data ([out, in] as torch stores it; the writer reverses to ggml's order)."""
    gguf = _gguf()
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
        lin = {k: (w(m.weight), w(m.bias)) for k, m in _linears(b).items()}
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
    gguf = _gguf()
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
# tokenizer

# pre-tokenizer regexes of HF tokenizer.json files -> the llama.cpp pre-tokenizer that splits the same way, and
# whether it looks a whole piece up in the vocabulary before merging (llama.cpp's ignore_merges, HF's too)
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {_LLAMA3: ("llama-bpe", True), _QWEN2: ("qwen2", False)}


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    special: dict[str, int]  # bos / eos / pad / unk -> id
    add_bos: bool
    add_eos: bool
    chat_template: str | None


def _pre_tokenizer(spec: dict | None, ignore_merges: bool) -> str:
    """llama.cpp's name for a byte-level BPE pre-tokenizer: GPT-2's ByteLevel regex, or a Split regex
    followed by a regex-free ByteLevel (Llama 3, Qwen2)."""
    spec = spec or {}
    byte_level = lambda p: p.get("type") == "ByteLevel" and not p.get("add_prefix_space", False)  # noqa: E731
    found = None
    if byte_level(spec) and spec.get("use_regex", True):
        found = ("gpt-2", False)
    steps = spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else []
    if len(steps) == 2 and steps[0].get("type") == "Split" and byte_level(steps[1]) \
            and not steps[1].get("use_regex", True) and steps[0].get("behavior") == "Isolated" \
            and not steps[0].get("invert"):
        found = SPLITS.get(steps[0].get("pattern", {}).get("Regex"))
    if found is None or found[1] != ignore_merges:
        raise ExportError(f"llama.cpp has no pre-tokenizer that splits text like this tokenizer's "
                          f"({json.dumps(spec)[:60]}..., ignore_merges {ignore_merges}): edgec writes the "
                          "byte-level BPE of GPT-2, Llama 3 and Qwen2")
    return found[0]


def read_vocab(tokenizer_dir: Path, vocab_size: int, hf_config=None) -> Vocab:
    """The HF fast tokenizer in `tokenizer_dir` as GGUF's tokenizer keys (llama.cpp's "gpt2" BPE model)."""
    gguf = _gguf()
    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        raise InputError(f"{tokenizer_dir} has no tokenizer.json: a GGUF embeds the HF fast tokenizer")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = "byte-fallback BPE (SentencePiece style)" if model.get("type") == "BPE" else model.get("type")
        raise ExportError(f"the tokenizer is {kind}: edgec writes byte-level BPE tokenizers into GGUF files")
    if (spec.get("normalizer") or {}).get("type") not in (None, "NFC"):
        raise ExportError(f"the tokenizer normalizes text ({spec['normalizer'].get('type')}), which llama.cpp's "
                          "BPE tokenizer does not")
    pre = _pre_tokenizer(spec.get("pre_tokenizer"), bool(model.get("ignore_merges", False)))
    ids = dict(model["vocab"])
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    ids.update({t["content"]: i for i, t in added.items()})
    n = max(ids.values()) + 1
    if n > vocab_size:
        raise ExportError(f"the tokenizer has {n} tokens and the model's embedding only {vocab_size}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for text, i in ids.items():
        tokens[i] = text
        types[i] = int(gguf.TokenType.NORMAL)
    for i, t in added.items():
        types[i] = int(gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    config_path = Path(tokenizer_dir) / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    special = {}
    for kind in ("bos", "eos", "pad", "unk"):
        token = config.get(f"{kind}_token")
        token = token.get("content") if isinstance(token, dict) else token
        fallback = getattr(hf_config, f"{kind}_token_id", None)
        fallback = fallback[0] if isinstance(fallback, (list, tuple)) and fallback else fallback
        if token in ids:
            special[kind] = ids[token]
        elif isinstance(fallback, int):
            special[kind] = fallback
    add_bos = config.get("add_bos_token")
    if add_bos is None:  # from the post-processor: does a single sequence start with BOS?
        post = spec.get("post_processor") or {}
        template = next((p for p in [post, *post.get("processors", [])] if p.get("type") == "TemplateProcessing"), {})
        first = (template.get("single") or [{}])[0].get("SpecialToken", {}).get("id")
        add_bos = first is not None and ids.get(first) == special.get("bos")
    return Vocab(tokens, types, merges, pre, special, bool(add_bos), bool(config.get("add_eos_token", False)),
                 config.get("chat_template") if isinstance(config.get("chat_template"), str) else None)


# llama.cpp sets token attributes by general.name: a Phi-3 name makes it look these tokens up, and abort loading
# where the vocabulary lacks one
_PHI3_NAMES, _PHI3_TOKENS = ("phi3", "phi-3"), ("<unk>", "<s>", "<|endoftext|>", "</s>")


def _model_name(hf_config, vocab: Vocab) -> str | None:
    """general.name: the checkpoint's folder name, left out where llama.cpp would trip over it."""
    name = Path(str(getattr(hf_config, "name_or_path", "") or "")).name or getattr(hf_config, "model_type", None)
    if name and any(n in name.lower() for n in _PHI3_NAMES) and not set(vocab.tokens).issuperset(_PHI3_TOKENS):
        return None
    return name or None


def _write_vocab(writer, vocab: Vocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    add = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "pad": writer.add_pad_token_id,
           "unk": writer.add_unk_token_id}
    for kind, i in vocab.special.items():
        add[kind](i)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


# ----------------------------------------------------------------------------------------------------------
# writing and quantizing


def _write(path: Path, module: Decoder, plan: Plan, vocab: Vocab, half: bool, name: str | None) -> None:
    """F32 (or, with `half`, F16 matrices and F32 vectors, as the converter's --outtype f16) GGUF at `path`."""
    gguf = _gguf()
    writer = gguf.GGUFWriter(str(path), plan.arch.name)
    writer.add_type(gguf.GGUFType.MODEL)
    _hyperparameters(writer, module, plan, name)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(QUANTS["F16"] if half else QUANTS["F32"])
    _write_vocab(writer, vocab)
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
        _write(written, module, plan, vocab, quant == "F16", _model_name(hf_config, vocab))
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
