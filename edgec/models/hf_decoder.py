"""Rebuild a Hugging Face Llama or Qwen2 causal LM as the canonical `Decoder`.

Qwen2 is Llama with biases on q, k and v: the same table maps both.
"""

from __future__ import annotations

import torch
from torch import nn

from edgec.models import DECODER_TYPES
from edgec.errors import UnsupportedModelError
from edgec.models.decoder import Decoder

_LAYER = {"attn.q": "self_attn.q_proj", "attn.k": "self_attn.k_proj", "attn.v": "self_attn.v_proj",
          "attn.o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
          "down": "mlp.down_proj", "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
_ROPE_TYPES = {"default"}  # others (linear, dynamic, yarn, llama3, longrope) rescale frequencies
_ACTIVATIONS = {"silu", "swish"}


def _rope_theta(config) -> float:
    """transformers 5 keeps RoPE settings in `config.rope_parameters` (`rope_type`, `rope_theta`, ...)."""
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in _ROPE_TYPES:
        raise UnsupportedModelError(
            f"RoPE scaling '{rope_type}' is not supported: edgec implements {', '.join(sorted(_ROPE_TYPES))} RoPE")
    return float(params.get("rope_theta", getattr(config, "rope_theta", None) or 10000.0))


def from_hf_llama(hf_model: nn.Module) -> Decoder:
    """Canonical decoder with the HF model's weights (eval mode, float32)."""
    config = hf_model.config
    if config.model_type not in DECODER_TYPES:
        raise UnsupportedModelError(f"model type '{config.model_type}' is not supported here: expected one of "
                                    f"{', '.join(DECODER_TYPES)}")
    if getattr(config, "use_sliding_window", False):
        raise UnsupportedModelError("sliding-window attention is not supported: export a model with "
                                    "use_sliding_window false")
    if config.hidden_act not in _ACTIVATIONS:
        raise UnsupportedModelError(f"activation '{config.hidden_act}' is not supported: Llama decoders use silu")
    rope_theta = _rope_theta(config)
    state = {k: v.detach().float() for k, v in hf_model.state_dict().items()}
    tied = bool(config.tie_word_embeddings)
    if "model.embed_tokens.weight" not in state or ("lm_head.weight" not in state and not tied):
        raise UnsupportedModelError("this model has no language-model head: export a ...ForCausalLM")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    n = config.num_hidden_layers
    layers = [{"heads": state[f"model.layers.{i}.self_attn.q_proj.weight"].shape[0] // head_dim,
               "kv_heads": state[f"model.layers.{i}.self_attn.k_proj.weight"].shape[0] // head_dim,
               "head_dim": head_dim,
               "intermediate": state[f"model.layers.{i}.mlp.gate_proj.weight"].shape[0]} for i in range(n)]
    module = Decoder(vocab=config.vocab_size, hidden=config.hidden_size, layers=layers,
                     rms_eps=config.rms_norm_eps, rope_theta=rope_theta,
                     max_pos=config.max_position_embeddings, tie_embeddings=tied)
    mapped = {"embed.weight": state["model.embed_tokens.weight"], "norm.weight": state["model.norm.weight"],
              "lm_head.weight": state["model.embed_tokens.weight"] if tied else state["lm_head.weight"]}
    for i in range(n):
        for ours, theirs in _LAYER.items():
            weight = state[f"model.layers.{i}.{theirs}.weight"]
            mapped[f"layers.{i}.{ours}.weight"] = weight
            if not ours.endswith("norm"):  # attention_bias / mlp_bias False: zero biases
                bias = state.get(f"model.layers.{i}.{theirs}.bias")
                mapped[f"layers.{i}.{ours}.bias"] = bias if bias is not None else torch.zeros(weight.shape[0])
    missing, unexpected = module.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise UnsupportedModelError(f"cannot map the weights of this llama model (missing {missing[:3]}, "
                                    f"unexpected {unexpected[:3]}): it differs from the standard architecture")
    return module.eval()
