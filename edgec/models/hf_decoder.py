"""Rebuild a Hugging Face causal LM as the canonical `Decoder`.

Each family is a row of options over the Llama layout (Qwen2 is Llama with
q/k/v biases; Qwen3 adds per-head q/k norms; Gemma puts a norm before and
after attention and MLP; OLMo 2 only after; Phi-3 fuses q/k/v and gate/up).
RoPE comes from the model's own rotary module (transformers computes the
inverse frequencies and attention factor of every scaling type); every tensor
of the checkpoint must land somewhere, so nothing is dropped silently.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgec.errors import UnsupportedModelError
from edgec.models import DECODER_TYPES
from edgec.models.decoder import Decoder

# family -> options: norms ("pre", "sandwich", "post"), qk_norm ("head", "full"), plus_one (norm weights
# stored as w for a (1 + w) scale), fused (Phi-3's qkv_proj and gate_up_proj)
FAMILIES = {
    "llama": {}, "mistral": {}, "qwen2": {}, "granite": {}, "smollm3": {},
    "qwen3": {"qk_norm": "head"},
    "olmo2": {"norms": "post", "qk_norm": "full"},
    "phi3": {"fused": True},
    "gemma2": {"norms": "sandwich", "plus_one": True},
    "gemma3_text": {"norms": "sandwich", "plus_one": True, "qk_norm": "head"},
}
_NORMS = {"pre": {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"},
          "sandwich": {"attn_norm": "input_layernorm", "attn_post_norm": "post_attention_layernorm",
                       "mlp_norm": "pre_feedforward_layernorm", "mlp_post_norm": "post_feedforward_layernorm"},
          "post": {"attn_post_norm": "post_attention_layernorm", "mlp_post_norm": "post_feedforward_layernorm"}}
_LINEAR = {"attn.q": "self_attn.q_proj", "attn.k": "self_attn.k_proj", "attn.v": "self_attn.v_proj",
           "attn.o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
_STATIC_ROPE = {"default", "linear", "llama3", "yarn", "longrope"}  # computed once; "dynamic" changes per call


def static_positions(config) -> int:
    """The positions a static graph serves exactly: all of them, except past LongRoPE's original length,
    where transformers switches every position to the long table."""
    params = getattr(config, "rope_parameters", None) or {}
    if params.get("rope_type") == "longrope":
        original = params.get("original_max_position_embeddings") or \
            getattr(config, "original_max_position_embeddings", None)
        return min(config.max_position_embeddings, original or config.max_position_embeddings)
    return config.max_position_embeddings


def _ropes(hf_model: nn.Module, layer_types: list[str]) -> tuple[list[tuple[torch.Tensor, float]], list[int]]:
    """The RoPE tables (inverse frequencies, attention factor) from the model's own rotary module and the
    table each layer reads (Gemma 3 keeps one per layer type)."""
    rotary = getattr(getattr(hf_model, "model", hf_model), "rotary_emb", None)
    if rotary is None:
        raise UnsupportedModelError("this model has no rotary embedding module: edgec rebuilds RoPE decoders")
    kinds = rotary.rope_type if isinstance(rotary.rope_type, dict) else {None: rotary.rope_type}
    for kind in kinds.values():
        if kind not in _STATIC_ROPE:
            raise UnsupportedModelError(f"RoPE scaling '{kind}' changes with the sequence length, which a static "
                                        f"graph cannot follow: edgec takes {', '.join(sorted(_STATIC_ROPE))} RoPE")
    if None in kinds:
        return [(rotary.inv_freq.detach().float(), float(rotary.attention_scaling))], [0] * len(layer_types)
    names = list(kinds)
    tables = [(getattr(rotary, f"{t}_inv_freq").detach().float(), float(getattr(rotary, f"{t}_attention_scaling")))
              for t in names]
    return tables, [names.index(t) for t in layer_types]


def _layer_types(config) -> list[str]:
    n = config.num_hidden_layers
    types = getattr(config, "layer_types", None)
    return list(types) if types else ["full_attention"] * n


def _windows(config, layer_types: list[str]) -> list[int | None]:
    """Each layer's sliding window: layer_types where the config names them, else one window for all
    (Mistral, Phi-3) unless the config switches it off."""
    window = getattr(config, "sliding_window", None)
    if window is None or not getattr(config, "use_sliding_window", True):
        return [None] * len(layer_types)
    if getattr(config, "layer_types", None):
        return [int(window) if t == "sliding_attention" else None for t in layer_types]
    return [int(window)] * len(layer_types)


def _activation(config) -> str:
    act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    if act not in _ACTIVATIONS:
        raise UnsupportedModelError(f"activation '{act}' is not supported: edgec takes {', '.join(_ACTIVATIONS)} "
                                    "gated MLPs")
    return _ACTIVATIONS[act]


class _Weights:
    """The checkpoint's tensors, each handed out once; what is left at the end was not used."""

    def __init__(self, hf_model: nn.Module):
        self.state = {k: v.detach().float() for k, v in hf_model.state_dict().items()}
        self.used: set[str] = set()

    def take(self, key: str) -> torch.Tensor:
        self.used.add(key)
        return self.state[key]

    def get(self, key: str) -> torch.Tensor | None:
        return self.take(key) if key in self.state else None

    def unused(self) -> list[str]:
        return sorted(set(self.state) - self.used)


def _split(weights: _Weights, p: str, layer: dict, fused: bool) -> dict[str, torch.Tensor]:
    """The layer's linear weights by canonical name; Phi-3's fused qkv and gate/up cut apart."""
    if not fused:
        return {ours: weights.take(f"{p}{theirs}.weight") for ours, theirs in _LINEAR.items()}
    d, h, kv = layer["head_dim"], layer["heads"], layer["kv_heads"]
    q, k, v = weights.take(f"{p}self_attn.qkv_proj.weight").split([h * d, kv * d, kv * d])
    gate, up = weights.take(f"{p}mlp.gate_up_proj.weight").chunk(2)
    return {"attn.q": q, "attn.k": k, "attn.v": v, "attn.o": weights.take(f"{p}self_attn.o_proj.weight"),
            "gate": gate, "up": up, "down": weights.take(f"{p}mlp.down_proj.weight")}


def from_hf_decoder(hf_model: nn.Module) -> Decoder:
    """Canonical decoder with the HF model's weights (eval mode, float32)."""
    config = hf_model.config
    if config.model_type not in FAMILIES:
        raise UnsupportedModelError(f"model type '{config.model_type}' is not supported here: expected one of "
                                    f"{', '.join(DECODER_TYPES)}")
    fam = FAMILIES[config.model_type]
    norms, qk_norm, fused = fam.get("norms", "pre"), fam.get("qk_norm"), fam.get("fused", False)
    if getattr(config, "partial_rotary_factor", 1.0) not in (None, 1.0) or \
            (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModelError("partial rotary embeddings are not supported: edgec rotates whole heads")
    act, types = _activation(config), _layer_types(config)
    ropes, rope_of = _ropes(hf_model, types)
    windows = _windows(config, types)
    no_rope = getattr(config, "no_rope_layers", None)  # SmolLM3: 1 = the layer uses RoPE, 0 = NoPE
    weights = _Weights(hf_model)
    tied = bool(config.tie_word_embeddings)
    if "model.embed_tokens.weight" not in weights.state or ("lm_head.weight" not in weights.state and not tied):
        raise UnsupportedModelError("this model has no language-model head: export a ...ForCausalLM")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    n, heads, kv = config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads or \
        config.num_attention_heads
    scale = getattr(config, "attention_multiplier", None)  # Granite
    if getattr(config, "query_pre_attn_scalar", None):  # Gemma
        scale = config.query_pre_attn_scalar ** -0.5
    layers = [{"heads": heads, "kv_heads": kv, "head_dim": head_dim, "intermediate": config.intermediate_size,
               "norms": norms, "act": act, "qk_norm": qk_norm, "scale": scale,
               "softcap": getattr(config, "attn_logit_softcapping", None), "window": windows[i],
               "rope": None if no_rope is not None and not no_rope[i] else rope_of[i]} for i in range(n)]
    logit_scale = 1.0 / getattr(config, "logits_scaling", 1.0)
    embed_scale = math.sqrt(config.hidden_size) if fam.get("plus_one") else getattr(config, "embedding_multiplier", 1.0)
    positions = static_positions(config)
    module = Decoder(vocab=config.vocab_size, hidden=config.hidden_size, layers=layers,
                     rms_eps=config.rms_norm_eps, rope_theta=0.0, max_pos=positions,
                     tie_embeddings=tied, ropes=ropes, embed_scale=float(embed_scale), logit_scale=float(logit_scale),
                     logit_softcap=getattr(config, "final_logit_softcapping", None))
    norm = (lambda w: w + 1.0) if fam.get("plus_one") else (lambda w: w)
    residual = float(getattr(config, "residual_multiplier", 1.0))  # Granite scales each branch: fold it in
    mapped = {"embed.weight": weights.take("model.embed_tokens.weight"),
              "norm.weight": norm(weights.take("model.norm.weight"))}
    mapped["lm_head.weight"] = mapped["embed.weight"] if tied else weights.take("lm_head.weight")
    if tied:
        weights.get("lm_head.weight")  # some checkpoints store the tied copy too
    for i in range(n):
        p = f"model.layers.{i}."
        for ours, weight in _split(weights, p, layers[i], fused).items():
            theirs = _LINEAR[ours]
            bias = None if fused else weights.get(f"{p}{theirs}.bias")
            if ours in ("attn.o", "down"):
                weight, bias = weight * residual, None if bias is None else bias * residual
            mapped[f"layers.{i}.{ours}.weight"] = weight
            mapped[f"layers.{i}.{ours}.bias"] = bias if bias is not None else torch.zeros(weight.shape[0])
        for ours, theirs in _NORMS[norms].items():
            mapped[f"layers.{i}.{ours}.weight"] = norm(weights.take(f"{p}{theirs}.weight"))
        if qk_norm:
            for part in ("q", "k"):
                mapped[f"layers.{i}.attn.{part}_norm.weight"] = norm(weights.take(f"{p}self_attn.{part}_norm.weight"))
    if weights.unused():
        raise UnsupportedModelError(f"the checkpoint holds {len(weights.unused())} tensors the rebuild has no place "
                                    f"for ({', '.join(weights.unused()[:3])}): this variant of {config.model_type} "
                                    "is not supported")
    missing, unexpected = module.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise UnsupportedModelError(f"cannot map the weights of this {config.model_type} model (missing "
                                    f"{missing[:3]}, unexpected {unexpected[:3]}): it differs from the standard "
                                    "architecture")
    return module.eval()
