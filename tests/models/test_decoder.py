"""Decoder / from_hf_llama: a tiny seeded Llama rebuilt logit for logit, per-layer heads, static ONNX."""

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
from edgec.models.hf_llama import from_hf_llama

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


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (1, SEQ), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("overrides", [
    {}, {"tie_word_embeddings": True}, {"attention_bias": True, "mlp_bias": True},
    {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}, {"head_dim": 32}])
def test_llama_rebuilds_logit_for_logit(overrides):
    hf = _llama(**overrides)
    ours = from_hf_llama(hf)
    assert isinstance(ours, Decoder) and not ours.training
    assert [(l.attn.heads, l.attn.kv_heads) for l in ours.layers] == [(4, 2), (4, 2)]
    assert ours.rope_theta == hf.config.rope_parameters["rope_theta"]
    ids = _ids()
    with torch.no_grad():
        want, got = hf(input_ids=ids).logits, ours(ids)
    assert got.shape == want.shape == (1, SEQ, 128)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    assert check_equivalent(hf, ours, {"input_ids": ids}) < TOL
    assert (ours.lm_head.weight is ours.embed.weight) == bool(overrides.get("tie_word_embeddings"))


def test_rope_theta_matters():
    hf = _llama()
    ours = from_hf_llama(hf)
    hf.config.rope_parameters["rope_theta"] = 500000.0
    assert check_equivalent(hf, from_hf_llama(hf), {"input_ids": _ids()}) > 1e-3
    assert from_hf_llama(hf).rope_theta == 500000.0 != ours.rope_theta


def test_logits_are_causal():
    ours = from_hf_llama(_llama())
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
    ours = from_hf_llama(_llama(tie_word_embeddings=True))
    ids = _ids(2)
    art = export_onnx(ours, {"input_ids": ids.numpy()}, ["logits"], tmp_path / "decoder.onnx")
    model = onnx.load(art.path)
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Shape", "NonZero", "Range", "ConstantOfShape", "Expand", "Trilu", "Where"}, ops
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
    {"rope_type": "yarn", "factor": 2.0}, {"rope_type": "linear", "factor": 2.0}])
def test_unsupported_rope_scaling_is_refused(rope):
    with pytest.raises(UnsupportedModelError, match=rope["rope_type"]):
        from_hf_llama(_llama(rope_parameters=rope))


def test_non_silu_activation_is_refused():
    with pytest.raises(UnsupportedModelError, match="gelu"):
        from_hf_llama(_llama(hidden_act="gelu"))


def test_qwen2_rebuilds_logit_for_logit():
    config = transformers.Qwen2Config(attn_implementation="eager", **LLAMA)
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    ours = from_hf_llama(hf)
    assert ours.layers[0].attn.q.bias.abs().max() > 0  # Qwen2's q/k/v biases are carried over
    with torch.no_grad():
        torch.testing.assert_close(ours(_ids()), hf(input_ids=_ids()).logits, atol=TOL, rtol=0)


def test_run_with_a_growing_cache_equals_one_full_pass():
    """Prefill 10 tokens, then decode the rest one at a time through the KVCache seam."""
    from edgec.models.decoder import causal_mask

    ours = from_hf_llama(_llama())
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
        got = torch.cat([ours.run(ids[:, a:b], ours.rope_cos[a:b], ours.rope_sin[a:b],
                                  causal_mask(b - a, b, ours.mask_value), grow) for a, b in steps], 1)
    assert past[0][0].shape[2] == SEQ
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
