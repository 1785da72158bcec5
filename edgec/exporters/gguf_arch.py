"""Which llama.cpp architecture computes a canonical `Decoder` exactly, and the plan for writing it.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from edgec.errors import ExportError
from edgec.models.decoder import Decoder

LINEARS = ("q", "k", "v", "o", "gate", "up", "down")
ALL, QKV = frozenset(LINEARS), frozenset("qkv")


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
    return {name for b in module.layers for name, lin in linears(b).items() if bool(lin.bias.detach().abs().max() > 0)}


def linears(block) -> dict:
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
