"""Rebuild Hugging Face models as the canonical `TextEncoder` / `VisionEncoder` / `Decoder`.

Each family is a name map from the canonical parameter names to the HF state
dict: adding a family is one table entry, not a class.
"""

from __future__ import annotations

import torch
from torch import nn

from edgec.errors import UnsupportedModelError
from edgec.models.encoder import ACTIVATIONS, TextEncoder, VisionEncoder
from edgec.models import DECODER_TYPES
from edgec.models.hf_decoder import from_hf_decoder

_BERT_LAYER = {"attn.q": "attention.self.query", "attn.k": "attention.self.key",
               "attn.v": "attention.self.value", "attn.o": "attention.output.dense",
               "ln1": "attention.output.LayerNorm", "fc1": "intermediate.dense",
               "fc2": "output.dense", "ln2": "output.LayerNorm"}
_BERT = {"kind": "text", "layers": "encoder.layer.{i}.", "layer": _BERT_LAYER,
         "top": {"word": "embeddings.word_embeddings", "pos": "embeddings.position_embeddings",
                 "segment": "embeddings.token_type_embeddings", "ln": "embeddings.LayerNorm"}}

FAMILIES: dict[str, dict] = {
    "bert": _BERT,
    "roberta": {**_BERT, "pos_offset": "pad+1"},
    "xlm-roberta": {**_BERT, "pos_offset": "pad+1"},
    "distilbert": {
        "kind": "text", "layers": "transformer.layer.{i}.",
        "layer": {"attn.q": "attention.q_lin", "attn.k": "attention.k_lin", "attn.v": "attention.v_lin",
                  "attn.o": "attention.out_lin", "ln1": "sa_layer_norm", "fc1": "ffn.lin1",
                  "fc2": "ffn.lin2", "ln2": "output_layer_norm"},
        "top": {"word": "embeddings.word_embeddings", "pos": "embeddings.position_embeddings",
                "ln": "embeddings.LayerNorm"}},
    "vit": {
        "kind": "image", "layers": "layers.{i}.",
        "layer": {"attn.q": "attention.q_proj", "attn.k": "attention.k_proj", "attn.v": "attention.v_proj",
                  "attn.o": "attention.o_proj", "ln1": "layernorm_before", "fc1": "mlp.fc1",
                  "fc2": "mlp.fc2", "ln2": "layernorm_after"},
        "top": {"patch": "embeddings.patch_embeddings.projection", "ln": "layernorm"},
        "head": {"head": "classifier"},  # outside the base model: no prefix
        "params": {"cls": "embeddings.cls_token", "pos": "embeddings.position_embeddings"}},
}


def family(config) -> dict:
    if config.model_type in DECODER_TYPES:
        return {"kind": "causal-lm"}
    spec = FAMILIES.get(config.model_type)
    if spec is None:
        raise UnsupportedModelError(
            f"model type '{config.model_type}' is not supported: edgec takes "
            f"{', '.join(sorted(FAMILIES))} encoders and {', '.join(DECODER_TYPES)} decoders")
    return spec


def _get(config, *names, default=None):
    for n in names:
        if getattr(config, n, None) is not None:
            return getattr(config, n)
    return default


def _layer_specs(config, state: dict, spec: dict) -> list[dict]:
    hidden = _get(config, "hidden_size", "dim")
    heads = _get(config, "num_attention_heads", "n_heads")
    n_layers = _get(config, "num_hidden_layers", "n_layers")
    head_dim = hidden // heads
    out = []
    for i in range(n_layers):
        p = spec["layers"].format(i=i)
        out.append({"heads": state[p + spec["layer"]["attn.q"] + ".weight"].shape[0] // head_dim,
                    "head_dim": head_dim,
                    "intermediate": state[p + spec["layer"]["fc1"] + ".weight"].shape[0]})
    return out


def _base_prefix(state: dict, spec: dict) -> str:
    """Where the base model sits in the state dict ("bert.", "roberta.", "vit.", or "")."""
    probe = spec["layers"].format(i=0) + spec["layer"]["attn.q"] + ".weight"
    for key in state:
        if key.endswith(probe) and (key == probe or key[-len(probe) - 1] == "."):
            return key[:-len(probe)]
    raise UnsupportedModelError(f"cannot find the encoder layers ({probe}) in this model's weights: "
                                "it differs from the standard architecture")


def _name_map(spec: dict, state: dict, n_layers: int, prefix: str = "") -> dict[str, str]:
    """Canonical parameter name -> the HF state-dict key that holds it (keys present in `state`)."""
    pairs = [(f"{ours}.{suffix}", f"{theirs}.{suffix}")
             for ours, theirs in {**spec["top"], **spec.get("head", {})}.items() for suffix in ("weight", "bias")]
    pairs += list(spec.get("params", {}).items())
    for i in range(n_layers):
        p = spec["layers"].format(i=i)
        pairs += [(f"layers.{i}.{ours}.{suffix}", f"{p}{theirs}.{suffix}")
                  for ours, theirs in spec["layer"].items() for suffix in ("weight", "bias")]
    head_names = set(spec.get("head", {}).values())
    full = {ours: theirs if theirs.split(".")[0] in head_names else prefix + theirs for ours, theirs in pairs}
    return {ours: theirs for ours, theirs in full.items() if theirs in state}


@torch.no_grad()
def load_into_hf(module: nn.Module, model: nn.Module) -> None:
    """Write a canonical encoder's weights back into the HF model it was built from (same shapes).

    The inverse of `from_hf`: lets a model be trained or edited in canonical form
    and still ship as a standard Hugging Face directory.
    """
    spec = family(model.config)
    state = model.state_dict()
    prefix = _base_prefix(state, spec)
    ours = module.state_dict()
    names = _name_map(spec, state, len(module.layers), prefix)
    lost = [n for n, v in ours.items() if n not in names and v.abs().max() > 0]
    if lost:  # e.g. token-type embeddings or biases the HF family does not have
        raise ValueError(f"the HF model has no place for {lost[:3]}: they must stay zero")
    for name, key in names.items():
        state[key].copy_(ours[name].to(state[key].dtype))


def from_hf(model: nn.Module) -> nn.Module:
    """Canonical encoder or decoder with the HF model's weights (eval mode, float32)."""
    config = model.config
    if config.model_type in DECODER_TYPES:
        return from_hf_decoder(model)
    spec = family(config)
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    if spec["kind"] == "image" and "classifier.weight" not in state:
        raise UnsupportedModelError("this ViT has no classification head: export a *ForImageClassification model")
    prefix = _base_prefix(state, spec)
    head_names = set(spec.get("head", {}).values())
    state = {k[len(prefix):] if k.startswith(prefix) and k.split(".")[0] not in head_names else k: v
             for k, v in state.items()}
    act = _get(config, "hidden_act", "activation", default="gelu")
    if act not in ACTIVATIONS:
        raise UnsupportedModelError(f"activation '{act}' is not supported: use one of {sorted(ACTIVATIONS)}")
    eps = _get(config, "layer_norm_eps", default=1e-12)
    layers = _layer_specs(config, state, spec)
    hidden = _get(config, "hidden_size", "dim")
    if spec["kind"] == "text":
        pos_offset = config.pad_token_id + 1 if spec.get("pos_offset") == "pad+1" else 0
        module = TextEncoder(
            vocab=config.vocab_size, max_pos=config.max_position_embeddings,
            type_vocab=_get(config, "type_vocab_size", default=0), hidden=hidden, layers=layers,
            act=act, eps=eps, pos_offset=pos_offset)
    else:
        module = VisionEncoder(
            channels=config.num_channels, patch=config.patch_size, image_size=config.image_size,
            hidden=hidden, layers=layers, act=act, eps=eps, num_labels=config.num_labels)
    names = _name_map(spec, state, len(layers))
    mapped = {ours: state[theirs] for ours, theirs in names.items()}
    for name in module.state_dict():  # biases the family leaves out (e.g. ViT with qkv_bias=False)
        if name.startswith("layers.") and name.endswith(".bias") and name not in mapped:
            mapped[name] = torch.zeros(mapped[name[:-len("bias")] + "weight"].shape[0])
    if spec["kind"] == "text" and "segment.weight" not in mapped:  # families without token types
        mapped["segment.weight"] = torch.zeros_like(module.segment.weight)
    missing, unexpected = module.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise UnsupportedModelError(
            f"cannot map the weights of this '{config.model_type}' model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}): it differs from the standard architecture")
    return module.eval()


@torch.no_grad()
def check_equivalent(hf_model: nn.Module, module: nn.Module, inputs: dict[str, torch.Tensor],
                     relative: bool = False) -> float:
    """Max abs difference between the HF model and its canonical rebuild (over the HF output's largest
    magnitude with `relative`)."""
    ours = module(*inputs.values())
    theirs = hf_model(**inputs)
    theirs = theirs.logits if hasattr(theirs, "logits") else theirs.last_hidden_state
    mask = inputs.get("attention_mask")
    if mask is not None:  # padded rows are meaningless in both
        keep = mask[..., None].bool()
        ours, theirs = ours * keep, theirs * keep
    diff = float((ours - theirs).abs().max())
    return diff / max(float(theirs.abs().max()), 1e-12) if relative else diff
