"""Decoder / from_hf_decoder: every family rebuilt logit for logit from transformers' own classes, per-layer
heads, the cache seam, static ONNX."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers

from edgec.errors import UnsupportedModelError
from edgec.exporters.onnx_float import export_onnx
from edgec.models.decoder import Decoder
from edgec.models.hf import check_equivalent
from edgec.models.hf_decoder import from_hf_decoder
from edgec.zoo.seeded import FAMILY_CONFIGS

TOL = 1e-4
SEQ = 16
LLAMA = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def _llama(**overrides) -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(attn_implementation="eager", **{**LLAMA, **overrides})
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # HF initialises norms to one and biases to zero: make them matter
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def _family(name: str) -> torch.nn.Module:
    """transformers' own model class for the family, seeded, with its features switched on."""
    family = dict(FAMILY_CONFIGS[name])
    kind = family.pop("model_type", name)
    config = transformers.AutoConfig.for_model(kind, attn_implementation="eager", bos_token_id=0, eos_token_id=1,
                                               pad_token_id=2, **{**LLAMA, **family})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (1, SEQ), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("overrides", [
    {}, {"tie_word_embeddings": True}, {"attention_bias": True, "mlp_bias": True},
    {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}, {"head_dim": 32}])
def test_llama_rebuilds_logit_for_logit(overrides):
    hf = _llama(**overrides)
    ours = from_hf_decoder(hf)
    assert isinstance(ours, Decoder) and not ours.training
    assert [(l.attn.heads, l.attn.kv_heads) for l in ours.layers] == [(4, 2), (4, 2)]
    torch.testing.assert_close(ours.inv_freq[0], hf.model.rotary_emb.inv_freq, atol=0, rtol=0)
    ids = _ids()
    with torch.no_grad():
        want, got = hf(input_ids=ids).logits, ours(ids)
    assert got.shape == want.shape == (1, SEQ, 128)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    assert check_equivalent(hf, ours, {"input_ids": ids}) < TOL
    assert (ours.lm_head.weight is ours.embed.weight) == bool(overrides.get("tie_word_embeddings"))


@pytest.mark.parametrize("name", list(FAMILY_CONFIGS))
def test_every_family_rebuilds_logit_for_logit(name):
    hf = _family(name)
    ours = from_hf_decoder(hf)
    ids = _ids()
    with torch.no_grad():
        want, got = hf(input_ids=ids).logits, ours(ids)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=TOL * float(want.abs().max()), rtol=0)


def test_family_features_reach_the_rebuild():
    """Each option is on where its family has it (so the matrix above tests what it claims)."""
    rebuilt = {name: from_hf_decoder(_family(name)) for name in ("qwen3", "olmo2", "gemma2", "gemma3_text",
                                                                 "smollm3", "granite", "llama3", "phi3")}
    assert rebuilt["qwen3"].layers[0].attn.qk_norm == "head" and rebuilt["olmo2"].layers[0].attn.qk_norm == "full"
    assert rebuilt["olmo2"].layers[0].norms == "post" and rebuilt["gemma2"].layers[0].norms == "sandwich"
    assert rebuilt["gemma2"].layers[0].attn.softcap == 50.0 and rebuilt["gemma2"].logit_softcap == 30.0
    assert rebuilt["gemma2"].layers[0].act == "gelu_tanh" and rebuilt["gemma2"].embed_scale == 8.0
    assert len(rebuilt["gemma3_text"].rope_scale) == 2  # local and global RoPE tables
    assert sorted(b.attn.rope for b in rebuilt["gemma3_text"].layers) == [0, 1]
    assert [b.attn.rope for b in rebuilt["smollm3"].layers] == [0, None]  # NoPE in layer 1
    assert rebuilt["granite"].logit_scale == 0.25 and rebuilt["granite"].embed_scale == 6.0
    assert not torch.equal(rebuilt["llama3"].inv_freq[0], from_hf_decoder(_llama()).inv_freq[0])
    assert rebuilt["phi3"].rope_scale[0] > 1.0 and rebuilt["phi3"].max_pos == 48  # LongRoPE's short table


def test_rope_theta_matters():
    hf = _llama()
    ours = from_hf_decoder(hf)
    hf.config.rope_parameters["rope_theta"] = 500000.0
    hf.model.rotary_emb = type(hf.model.rotary_emb)(hf.config)
    assert check_equivalent(hf, ours, {"input_ids": _ids()}) > 1e-3
    assert check_equivalent(hf, from_hf_decoder(hf), {"input_ids": _ids()}) < TOL


def test_sliding_windows_hide_what_the_window_hides():
    hf = _family("mistral")
    hf.config.sliding_window = 4
    ours = from_hf_decoder(hf)
    assert ours.windows == [4, 4]
    with torch.no_grad():
        torch.testing.assert_close(ours(_ids()), hf(input_ids=_ids()).logits, atol=TOL * 10, rtol=0)
        full = from_hf_decoder(_family("mistral"))(_ids())
    assert (full - ours(_ids())).abs().max() > 1e-2


def test_every_checkpoint_tensor_must_find_a_place():
    hf = _llama()
    hf.model.layers[0].self_attn.extra = torch.nn.Linear(4, 4)
    with pytest.raises(UnsupportedModelError, match="model.layers.0.self_attn.extra"):
        from_hf_decoder(hf)


def test_logits_are_causal():
    ours = from_hf_decoder(_llama())
    a, b = _ids(1), _ids(1).clone()
    b[0, 10:] = (b[0, 10:] + 1) % 128
    with torch.no_grad():
        la, lb = ours(a), ours(b)
    torch.testing.assert_close(la[:, :10], lb[:, :10], atol=1e-6, rtol=0)
    assert (la[:, 10:] - lb[:, 10:]).abs().max() > 1e-3


def test_per_layer_heads_equal_a_full_model_with_one_kv_group_silenced():
    """Layer 1 keeps KV head 0 and the query heads 0-1 it serves: same logits as zeroing heads 2-3."""
    spec = dict(vocab=128, hidden=64, rms_eps=1e-6, rope_theta=10000.0, max_pos=64, tie_embeddings=False)
    layer = dict(heads=4, kv_heads=2, head_dim=16, intermediate=128)
    torch.manual_seed(0)
    full = Decoder(layers=[layer, layer], **spec).eval()
    pruned = Decoder(layers=[layer, {**layer, "heads": 2, "kv_heads": 1, "intermediate": 96}], **spec).eval()
    state = full.state_dict()
    keep = {"attn.q": 32, "attn.k": 16, "attn.v": 16, "gate": 96, "up": 96}  # leading rows kept
    for name, rows in keep.items():
        for suffix in ("weight", "bias"):
            state[f"layers.1.{name}.{suffix}"] = state[f"layers.1.{name}.{suffix}"][:rows]
    state["layers.1.attn.o.weight"] = state["layers.1.attn.o.weight"][:, :32]
    state["layers.1.down.weight"] = state["layers.1.down.weight"][:, :96]
    pruned.load_state_dict(state)
    with torch.no_grad():
        full.layers[1].attn.o.weight[:, 32:] = 0
        full.layers[1].down.weight[:, 96:] = 0
        want, got = full(_ids()), pruned(_ids())
    assert [(l.attn.heads, l.attn.kv_heads) for l in pruned.layers] == [(4, 2), (2, 1)]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_heads_must_be_a_multiple_of_kv_heads():
    with pytest.raises(ValueError, match="multiple"):
        Decoder(128, 64, [dict(heads=3, kv_heads=2, head_dim=16, intermediate=64)], 1e-6, 1e4, 64, False)


def test_onnx_export_is_static_and_matches_eager(tmp_path: Path):
    ours = from_hf_decoder(_llama(tie_word_embeddings=True))
    ids = _ids(2)
    art = export_onnx(ours, {"input_ids": ids.numpy()}, ["logits"], tmp_path / "decoder.onnx")
    model = onnx.load(art.path)
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Shape", "NonZero", "Range", "ConstantOfShape", "Expand", "Trilu"}, ops
    assert {"MatMul", "Softmax"} <= ops
    (got,) = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids.numpy()})
    with torch.no_grad():
        want = ours(ids).numpy()
    assert got.shape == (1, SEQ, 128)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


@pytest.mark.parametrize("rope", [
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0, "original_max_position_embeddings": 32},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}])
def test_static_rope_scalings_rebuild_logit_for_logit(rope):
    hf = _llama(rope_parameters=rope)
    with torch.no_grad():
        torch.testing.assert_close(from_hf_decoder(hf)(_ids()), hf(input_ids=_ids()).logits, atol=TOL, rtol=0)


def test_dynamic_rope_scaling_is_refused():
    with pytest.raises(UnsupportedModelError, match="dynamic"):
        from_hf_decoder(_llama(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}))


def test_non_silu_activation_is_refused():
    with pytest.raises(UnsupportedModelError, match="gelu"):
        from_hf_decoder(_llama(hidden_act="gelu"))


def test_qwen2_rebuilds_logit_for_logit():
    config = transformers.Qwen2Config(attn_implementation="eager", **LLAMA)
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    ours = from_hf_decoder(hf)
    assert ours.layers[0].attn.q.bias.abs().max() > 0  # Qwen2's q/k/v biases are carried over
    with torch.no_grad():
        torch.testing.assert_close(ours(_ids()), hf(input_ids=_ids()).logits, atol=TOL, rtol=0)


def test_run_with_a_growing_cache_equals_one_full_pass():
    """Prefill 10 tokens, then decode the rest one at a time through the KVCache seam."""
    ours = from_hf_decoder(_llama())
    ids = _ids()
    past: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def grow(i, k, v):
        if i in past:
            k, v = torch.cat([past[i][0], k], 2), torch.cat([past[i][1], v], 2)
        past[i] = (k, v)
        return k, v

    steps = [(0, 10)] + [(p, p + 1) for p in range(10, SEQ)]
    with torch.no_grad():
        full = ours(ids)
        got = torch.cat([ours.run(ids[:, a:b], *ours.rope(torch.arange(a, b)),
                                  ours.masks(torch.arange(a, b), torch.arange(b)), grow) for a, b in steps], 1)
    assert past[0][0].shape[2] == SEQ
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
